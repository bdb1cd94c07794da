"""What the re-rankers of a global short list share (:class:`RegionReranker`,
:class:`SpatialVerificationReranker`): the global description of the maps by a
wrapped aggregator, the global search, the similarity of its distances."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from ..extraction._maps import FeatureMaps, check_maps, iter_maps
from ..neighbors._base import RetrieverMixin
from ..neighbors._retriever import NearestNeighborRetriever
from ..utils._arrays import l2_normalize

__all__ = ["ShortListMixin", "as_feature_maps", "l2_float32"]


def l2_float32(V):
    """Rows L2-normalised, as float32."""
    return l2_normalize(np.asarray(V, dtype=np.float32))


def as_feature_maps(X):
    """``X`` (checked) as :class:`FeatureMaps`, and its number of images."""
    n = check_maps(X)
    if not isinstance(X, FeatureMaps):
        X = FeatureMaps(list(iter_maps(X)))
    return X, n


class ShortListMixin(RetrieverMixin):
    """Global search over ``aggregator_`` vectors, for re-rankers of its short list.

    Expects the parameters ``aggregator`` and ``retriever``; sets
    ``aggregator_``, ``global_``, ``y_`` and ``retriever_``.
    """

    def _fit_global(self, X, y):
        retriever = NearestNeighborRetriever() if self.retriever is None else self.retriever
        if getattr(retriever, "metric", "cosine") == "euclidean":
            raise ValueError("re-ranking compares similarities: use a retriever with "
                             "metric='cosine' or 'inner_product'")
        self.aggregator_ = clone(self.aggregator).fit(X, y)
        self.global_ = l2_float32(self.aggregator_.transform(X))
        self.y_ = None if y is None else np.asarray(y)
        self.retriever_ = clone(retriever).fit(self.global_, y)

    def _queries(self, X):
        """Global query vectors, and the database rows for leave-one-out (X None)."""
        if X is None:
            return self.global_, np.arange(self.global_.shape[0])
        X, _ = as_feature_maps(X)
        return l2_float32(self.aggregator_.transform(X)), None

    def _similarity(self, dist):
        metric = getattr(self.retriever_, "metric", "cosine")
        return 1.0 - dist if metric == "cosine" else -dist

    def _distance(self, sim):
        metric = getattr(self.retriever_, "metric", "cosine")
        return 1.0 - sim if metric == "cosine" else -sim

    def _depths(self, rows, n_neighbors, n_rerank):
        """Results ``k`` returned and ``depth`` searched for the re-ranking."""
        n_avail = self.global_.shape[0] - (rows is not None)
        if n_neighbors is None:
            n_neighbors = getattr(self.retriever_, "n_neighbors", 10)
        k = n_avail if isinstance(n_neighbors, str) and n_neighbors == "all" else min(
            int(n_neighbors), n_avail)
        return k, max(k, min(n_rerank, n_avail))

    def _search(self, Q, rows, k):
        """Global search of ``k`` results (leave-one-out for ``rows``)."""
        n_db = self.global_.shape[0]
        if rows is None:
            return self.retriever_.kneighbors(Q, n_neighbors=k)
        if Q is self.global_:
            return self.retriever_.kneighbors(None, n_neighbors=k)
        dist, ind = self.retriever_.kneighbors(Q, n_neighbors=min(k + 1, n_db))
        keep = ind != rows[:, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ind, order, axis=1)

    @property
    def n_samples_fit_(self):
        return self.global_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.estimator_type = None
        return tags
