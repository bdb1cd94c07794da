"""k-reciprocal re-ranking of a short list (Zhong et al., CVPR 2017)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted

from ..neighbors._base import WrappingRetrieverMixin
from ..utils._state import LABELS, Attr, StateSpec
from ._common import database_vectors, fit_similarity_retriever, wrapped_queries

__all__ = ["KReciprocalRetriever", "k_reciprocal_distances"]


def _reciprocal_sets(rank, k):
    """Boolean ``M[p, g]``: ``g`` in ``R(p, k)`` (each in the ``k + 1`` first of the other)."""
    n = rank.shape[0]
    near = np.zeros((n, n), dtype=bool)
    np.put_along_axis(near, rank[:, : k + 1], True, axis=1)
    return near & near.T


def _encodings(dist, rank, k1):
    """The rows ``V_p``: Gaussian weights over the expanded k-reciprocal sets ``R*(p, k1)``."""
    base = _reciprocal_sets(rank, k1)
    half = _reciprocal_sets(rank, int(np.around(k1 / 2.0)))
    # overlap[c, p] = |R(c, k1/2) & R(p, k1)|; c's set joins p's when over 2/3 of it
    overlap = half.astype(np.int32) @ base.T.astype(np.int32)
    size = half.sum(axis=1)
    joins = base & (overlap.T > 2.0 / 3.0 * size[None, :])
    star = base | ((joins.astype(np.int32) @ half.astype(np.int32)) > 0)
    V = np.where(star, np.exp(-dist), 0.0)
    return V / V.sum(axis=1, keepdims=True)


def k_reciprocal_distances(V_rows, k1, k2, lambda_value):
    """Final distances of item 0 (the query) to items ``1..n-1`` of a set.

    Parameters
    ----------
    V_rows : ndarray of shape (n, D)
        L2-normalised vectors: the query first, then its short list.
    k1, k2, lambda_value : int, int, float
        As in :class:`KReciprocalRetriever`.

    Returns
    -------
    final : ndarray of shape (n - 1,)
        ``lambda * d + (1 - lambda) * d_J`` to the short-list items.
    scale : float
        The largest original distance of the query in the set (``d`` is the
        squared Euclidean distance divided by it).
    """
    G = V_rows.astype(np.float64) @ V_rows.T.astype(np.float64)
    raw = np.maximum(2.0 - 2.0 * G, 0.0)
    np.fill_diagonal(raw, 0.0)
    top = raw.max(axis=1, keepdims=True)
    dist = raw / np.where(top > 0, top, 1.0)  # each row divided by its maximum (Zhong's code)
    keys = dist.copy()
    np.fill_diagonal(keys, -1.0)  # each item first in its own list, even among duplicates
    rank = np.argsort(keys, axis=1, kind="stable")
    V = _encodings(dist, rank, k1)
    if k2 > 1:  # local query expansion: the mean of the k2 nearest rows
        V = V[rank[:, :k2]].mean(axis=1)
    m = np.minimum(V[0], V[1:]).sum(axis=1)
    jaccard = 1.0 - m / (2.0 - m)
    return lambda_value * dist[0, 1:] + (1.0 - lambda_value) * jaccard, float(top[0, 0])


class KReciprocalRetriever(WrappingRetrieverMixin, BaseEstimator):
    """Search, then k-reciprocal re-ranking of the short list (Zhong et al., CVPR 2017).

    The wrapped retriever gives every query its first ``n_rerank`` results;
    on the set made of the query and that short list (as PyRetri does, rather
    than on the whole database), with ``d(p, g) = |p - g|^2`` of the
    L2-normalised vectors divided by its maximum over ``g`` in the set:

    * ``N(p, k)`` are the ``k + 1`` nearest items of ``p`` (itself
      included) and ``R(p, k) = {g in N(p, k) : p in N(g, k)}`` its
      k-reciprocal set;
    * the expansion ``R*(p, k1)`` adds ``R(c, k1 / 2)`` (rounded) of every
      ``c`` in ``R(p, k1)`` whose set shares more than two thirds of its
      items with ``R(p, k1)``;
    * ``V_p`` is ``exp(-d(p, g))`` on ``R*(p, k1)``, normalised to sum 1,
      then replaced by the mean of the ``V`` of its ``k2`` nearest items
      (local query expansion; ``k2 = 1`` keeps it);
    * the Jaccard distance is ``d_J(p, g) = 1 - sum_i min(V_pi, V_gi) /
      sum_i max(V_pi, V_gi)`` (``= 1 - m / (2 - m)`` with ``m`` the sum of
      minima, the rows summing to 1);
    * the short list is re-ordered by
      ``lambda * d(p, g) + (1 - lambda) * d_J(p, g)``.

    Results beyond the short list keep the first search's order, with the
    distance the formula gives them (``d_J = 1``: they share nothing with
    the set), which is never below that of a short-listed item.

    Parameters
    ----------
    retriever : estimator, default=None
        The search to wrap (cloned at ``fit``, cosine or inner product);
        None: ``NearestNeighborRetriever()``.
    n_rerank : int, default=100
        Length of the re-ranked short list.
    k1 : int, default=20
        Size of the k-reciprocal neighbourhoods (the paper's 20).
    k2 : int, default=6
        Neighbours averaged by the local query expansion (the paper's 6).
    lambda_value : float, default=0.3
        Weight of the original distance (the paper's 0.3).

    Attributes
    ----------
    retriever_ : estimator
        The fitted wrapped search, on the L2-normalised database.
    y_ : ndarray or None
        Database labels.
    n_features_in_ : int
        Descriptor dimension.

    Notes
    -----
    **Deviations.**  Zhong et al. compute the encodings over all queries and
    gallery images at once; here each query is re-ranked on its own short
    list (``R + 1`` items, ``O(R^2 D)`` per query), so the neighbourhoods of
    the short-listed items are those inside the set.  Distances of the
    similarity search become squared Euclidean distances of L2-normalised
    vectors, ``2 - 2 s``.  With a wrapped :class:`QueryExpansionRetriever`,
    the short list comes from its (DBA / QE) search and the set's
    distances from the vectors it searches (augmented by DBA).  Nothing is
    stored besides the wrapped retriever.

    References
    ----------
    .. [1] Z. Zhong, L. Zheng, D. Cao and S. Li, "Re-ranking person
       re-identification with k-reciprocal encoding", CVPR 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import KReciprocalRetriever
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 8))
    >>> kr = KReciprocalRetriever(n_rerank=15, k1=5, k2=2).fit(X)
    >>> kr.kneighbors(X[:2], n_neighbors=4)[1].shape
    (2, 4)
    """

    _fitted_attr = "retriever_"

    _parameter_constraints = {
        "retriever": [HasMethods(["fit", "kneighbors"]), None],
        "n_rerank": [Interval(Integral, 1, None, closed="left")],
        "k1": [Interval(Integral, 1, None, closed="left")],
        "k2": [Interval(Integral, 1, None, closed="left")],
        "lambda_value": [Interval(Real, 0, 1, closed="both")],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = StateSpec({
        "n_features_in_": Attr("int", values=(1, None)),
        "feature_names_in_": Attr("array", dtype="UO", shape=("n_features_in_",),
                                  optional=True),
        "retriever_": Attr("estimator"),
        "y_": Attr("array", dtype=LABELS, shape=(None,), none=True),
    })

    def __init__(self, retriever=None, *, n_rerank=100, k1=20, k2=6, lambda_value=0.3):
        self.retriever = retriever
        self.n_rerank = n_rerank
        self.k1 = k1
        self.k2 = k2
        self.lambda_value = lambda_value

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the wrapped search on the L2-normalised database.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Database descriptors.
        y : array-like of shape (n_samples,), default=None
            Database labels (for :meth:`predict` and :meth:`score`).

        Returns
        -------
        self : KReciprocalRetriever
        """
        _, self.retriever_ = fit_similarity_retriever(self, X, y, "k-reciprocal re-ranking")
        return self

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Search, then re-rank the short list by the k-reciprocal distance.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Query descriptors; None queries every database item against the
            others (leave-one-out).
        n_neighbors : int or "all", default=None
            Results per query (default: the wrapped retriever's
            ``n_neighbors``).
        return_distance : bool, default=True
            Also return the final distances.

        Returns
        -------
        distances : ndarray of shape (n_queries, n_neighbors)
            Only when ``return_distance``.
        indices : ndarray of shape (n_queries, n_neighbors)
        """
        check_is_fitted(self, "retriever_")
        DB = database_vectors(self.retriever_)
        Q, rows, n_avail, k = wrapped_queries(self, X, n_neighbors)
        depth = min(n_avail, max(k, self.n_rerank))
        dist, ind = self.retriever_.kneighbors(Q, n_neighbors=depth)
        R = min(self.n_rerank, depth)
        out_d = np.empty((ind.shape[0], k), dtype=np.float32)
        out_i = ind[:, :k].copy()
        for j in range(ind.shape[0]):
            q = DB[rows[j]] if rows is not None else Q[j]
            short = ind[j, :R]
            vectors = np.vstack([np.asarray(q, np.float32)[None],
                                 np.asarray(DB[short], np.float32)])
            final, scale = k_reciprocal_distances(vectors, self.k1, self.k2,
                                                  self.lambda_value)
            order = np.argsort(final, kind="stable")
            m = min(R, k)
            out_i[j, :m] = short[order[:m]]
            out_d[j, :m] = final[order[:m]]
            if k > R:  # beyond: d_J = 1, d divided by the set's scale
                rest = np.asarray(DB[ind[j, R:k]], np.float32) @ np.asarray(q, np.float32)
                d = np.maximum(2.0 - 2.0 * rest.astype(np.float64), 0.0) / (scale or 1.0)
                out_d[j, R:] = self.lambda_value * d + (1.0 - self.lambda_value)
        return (out_d, out_i) if return_distance else out_i

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = None
        return tags
