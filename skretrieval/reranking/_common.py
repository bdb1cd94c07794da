"""What the re-rankers share: the fit of a wrapped similarity search, its
queries and database, and the global short list of the region and spatial
re-rankers (:class:`ShortListMixin`)."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import validate_data

from ..extraction._maps import FeatureMaps, check_maps, iter_maps
from ..neighbors._base import (
    RetrieverMixin,
    check_similarity_search,
    resolve_n_neighbors,
    through_wrappers,
)
from ..neighbors._retriever import NearestNeighborRetriever
from ..utils._arrays import distances_from_similarities, l2_normalize, similarities_from_distances

__all__ = ["ShortList", "ShortListMixin", "as_feature_maps", "database_vectors", "fit_similarity_retriever",
           "l2_float32", "prepare_similarity_fit", "wrapped_queries"]


def l2_float32(V):
    """Rows L2-normalised, as float32."""
    return l2_normalize(np.asarray(V, dtype=np.float32))


def as_feature_maps(X):
    """``X`` (checked) as :class:`FeatureMaps`, and its number of images."""
    n = check_maps(X)
    if not isinstance(X, FeatureMaps):
        X = FeatureMaps(list(iter_maps(X)))
    return X, n


def database_vectors(retriever):
    """The database vectors that a (possibly wrapped) fitted retriever searches."""
    for _ in range(16):
        inner = getattr(retriever, "retriever_", None)
        if isinstance(retriever, NearestNeighborRetriever) or inner is None:
            break
        retriever = inner
    return retriever.X_fit_


def prepare_similarity_fit(estimator, X, y, what, ensure_min_samples=1):
    """Validate ``X, y`` and L2-normalise ``X`` for a re-ranker of a similarity search.

    Sets ``estimator.y_`` (and ``n_features_in_`` through ``validate_data``).
    Refuses a Euclidean search: ``what`` (e.g. "diffusion") needs
    similarities.  Returns ``(X_normalised, retriever)``: the (unfitted)
    ``estimator.retriever``, or the default retriever.
    """
    if y is None:
        X = validate_data(estimator, X, dtype=np.float32, ensure_min_samples=ensure_min_samples)
    else:
        X, y = validate_data(estimator, X, y, dtype=np.float32,
                             ensure_min_samples=ensure_min_samples)
    retriever = NearestNeighborRetriever() if estimator.retriever is None else estimator.retriever
    check_similarity_search(retriever, what)
    estimator.y_ = None if y is None else np.asarray(y)
    return l2_float32(X), retriever


def fit_similarity_retriever(estimator, X, y, what, ensure_min_samples=1):
    """:func:`prepare_similarity_fit`, then fit a clone of the retriever on ``X``.

    Returns ``(X_normalised, fitted_retriever)``.
    """
    X, retriever = prepare_similarity_fit(estimator, X, y, what, ensure_min_samples)
    return X, clone(retriever).fit(X, estimator.y_)


def wrapped_queries(estimator, X, n_neighbors):
    """The queries of a re-ranker wrapping a fitted ``retriever_``, and their depth.

    Returns ``(Q, rows, n_available, k)``: ``Q`` the validated,
    L2-normalised queries and ``rows`` None, or, for leave-one-out (``X``
    None), ``Q`` None and ``rows`` every database row; ``n_available`` the
    items a query can return; ``k`` the checked ``n_neighbors`` (None: the
    wrapped retriever's, at most ``n_available``).
    """
    if X is None:
        Q, rows = None, np.arange(estimator.n_samples_fit_)
    else:
        X = validate_data(estimator, X, dtype=np.float32, reset=False)
        Q, rows = l2_float32(X), None
    n_available = estimator.n_samples_fit_ - (rows is not None)
    default = min(through_wrappers(estimator.retriever_, "n_neighbors", Integral, 10),
                  n_available)
    k = resolve_n_neighbors(n_neighbors, n_available, default=default,
                            exclude_self=rows is not None)
    return Q, rows, n_available, k


class ShortList:
    """The global search of a short-list re-ranker over maps.

    Parameters
    ----------
    aggregator : estimator
        The fitted aggregator of the maps into global vectors.
    database : ndarray of shape (n_samples, n_features), float32
        The L2-normalised global vectors of the database.
    retriever : estimator
        The retriever fitted on ``database``.
    """

    def __init__(self, aggregator, database, retriever):
        self.aggregator = aggregator
        self.database = database
        self.retriever = retriever

    @classmethod
    def fit(cls, aggregator, retriever, X, y):
        """Fit clones of ``aggregator`` on the maps ``X`` and of ``retriever``
        (None: the default one) on their global vectors."""
        retriever = NearestNeighborRetriever() if retriever is None else retriever
        check_similarity_search(retriever, "re-ranking")
        aggregator = clone(aggregator).fit(X, y)
        database = l2_float32(aggregator.transform(X))
        return cls(aggregator, database, clone(retriever).fit(database, y))

    def queries(self, X):
        """Global query vectors, and the database rows for leave-one-out (X None)."""
        if X is None:
            return self.database, np.arange(self.database.shape[0])
        X, _ = as_feature_maps(X)
        return l2_float32(self.aggregator.transform(X)), None

    def _metric(self):
        return getattr(self.retriever, "metric", "cosine")

    def similarity(self, dist):
        """Similarities of the distances of the global search."""
        return similarities_from_distances(dist, self._metric())

    def distance(self, sim):
        """Distances, in the global search's convention, of similarities."""
        return distances_from_similarities(sim, self._metric())

    def depths(self, rows, n_neighbors, n_rerank):
        """Results ``k`` returned and ``depth`` searched for the re-ranking."""
        n_avail = self.database.shape[0] - (rows is not None)
        k = resolve_n_neighbors(n_neighbors, n_avail,
                                default=getattr(self.retriever, "n_neighbors", 10),
                                exclude_self=rows is not None, clip=True)
        return k, max(k, min(n_rerank, n_avail))

    def search(self, Q, rows, k):
        """Global search of ``k`` results (leave-one-out for ``rows``)."""
        n_db = self.database.shape[0]
        if rows is None:
            return self.retriever.kneighbors(Q, n_neighbors=k)
        if Q is self.database:
            return self.retriever.kneighbors(None, n_neighbors=k)
        dist, ind = self.retriever.kneighbors(Q, n_neighbors=min(k + 1, n_db))
        keep = ind != rows[:, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ind, order, axis=1)


class ShortListMixin(RetrieverMixin):
    """A re-ranker of the :class:`ShortList` kept in its fitted attributes.

    Expects the parameters ``aggregator`` and ``retriever``;
    :meth:`_fit_global` sets ``aggregator_``, ``global_`` (the global
    database vectors), ``y_`` and ``retriever_``, from which
    :meth:`_short_list` makes the :class:`ShortList` that the other methods
    ask.
    """

    def _fit_global(self, X, y):
        short = ShortList.fit(self.aggregator, self.retriever, X, y)
        self.aggregator_, self.global_, self.retriever_ = (
            short.aggregator, short.database, short.retriever)
        self.y_ = None if y is None else np.asarray(y)

    def _short_list(self):
        return ShortList(self.aggregator_, self.global_, self.retriever_)

    def _queries(self, X):
        return self._short_list().queries(X)

    def _similarity(self, dist):
        return self._short_list().similarity(dist)

    def _distance(self, sim):
        return self._short_list().distance(sim)

    def _depths(self, rows, n_neighbors, n_rerank):
        return self._short_list().depths(rows, n_neighbors, n_rerank)

    def _search(self, Q, rows, k):
        return self._short_list().search(Q, rows, k)

    @property
    def n_samples_fit_(self):
        return self.global_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.estimator_type = None
        return tags
