"""Query expansion and database-side augmentation around a retriever."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, _fit_context, clone
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from ..neighbors._base import WrappingRetrieverMixin, resolve_n_neighbors
from ..utils._arrays import l2_normalize, similarities_from_distances
from ..utils._state import LABELS, Attr, StateSpec
from ._common import l2_float32, prepare_similarity_fit

__all__ = ["QueryExpansionRetriever", "weighted_mean"]


def weighted_mean(V, X, ind, sims, alpha, self_weight=True):
    """``normalize(v + sum_j w_j x_j)``, ``w_j = max(sim_j, 0) ** alpha``.

    ``alpha = 0`` gives equal weights (average query expansion).  With
    ``self_weight=False``, ``V`` is not added (its first neighbour already
    is itself, as in database-side augmentation).
    """
    w = np.maximum(sims, 0.0) ** alpha if alpha else np.ones_like(sims)
    out = np.einsum("qk,qkd->qd", w, X[ind])
    if self_weight:
        out = out + V
    return l2_normalize(out).astype(np.float32)


class QueryExpansionRetriever(WrappingRetrieverMixin, BaseEstimator):
    """A retriever with query expansion and database-side augmentation.

    Wraps a :class:`~skretrieval.NearestNeighborRetriever` (cosine or inner
    product on L2-normalised descriptors) and re-ranks with the two classic
    refinements of global-descriptor retrieval:

    * **Query expansion (QE)**: the query is searched, then replaced by
      ``normalize(q + sum_{j <= qe_k} w_j x_j)`` over its top ``qe_k``
      results and searched again.  ``qe_alpha = 0`` gives the average QE of
      Chum et al. (ICCV 2007); ``qe_alpha > 0`` the alpha-QE of Radenović
      et al. (TPAMI 2018), ``w_j = max(sim(q, x_j), 0) ** qe_alpha`` (they use
      ``alpha = 3``).
    * **Database-side augmentation (DBA)**: at ``fit``, every database
      vector is replaced by ``normalize(sum_{j <= dba_k} w_j x_j)`` over its
      ``dba_k`` nearest database vectors, itself included (weight 1), with
      the same weights (Arandjelović & Zisserman 2012; alpha-DBA of
      Radenović et al.).  Queries are then searched against the augmented
      vectors.

    Every parameter is searchable with ``GridSearchCV``
    (``queryexpansionretriever__qe_k``...), and the wrapper pickles like the
    retriever.

    Parameters
    ----------
    retriever : estimator, default=None
        The search to wrap, cloned at ``fit``; None means
        ``NearestNeighborRetriever()``.
    qe_k : int, default=0
        Number of top results averaged into the query; 0 disables QE.
    qe_alpha : float, default=3.0
        Power of the similarity weights of QE; 0 for average QE.
    dba_k : int, default=0
        Number of neighbours (the vector itself included) averaged into
        every database vector; 0 or 1 disables DBA.
    dba_alpha : float, default=3.0
        Power of the similarity weights of DBA.

    Attributes
    ----------
    retriever_ : NearestNeighborRetriever
        The fitted inner retriever, on the augmented database.
    X_fit_ : ndarray of shape (n_samples, n_features)
        The L2-normalised database descriptors before augmentation.
    y_ : ndarray or None
        Database labels.
    n_features_in_ : int
        Descriptor dimension.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import QueryExpansionRetriever
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(20, 8))
    >>> qe = QueryExpansionRetriever(qe_k=2, dba_k=2).fit(X)
    >>> qe.kneighbors(X[:1], n_neighbors=3)[1].shape
    (1, 3)
    """

    _fitted_attr = "retriever_"

    _parameter_constraints = {
        "retriever": [HasMethods(["fit", "kneighbors"]), None],
        "qe_k": [Interval(Integral, 0, None, closed="left")],
        "qe_alpha": [Interval(Real, 0, None, closed="left")],
        "dba_k": [Interval(Integral, 0, None, closed="left")],
        "dba_alpha": [Interval(Real, 0, None, closed="left")],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = StateSpec({
        "n_features_in_": Attr("int", values=(1, None)),
        "feature_names_in_": Attr("array", dtype="UO", shape=("n_features_in_",),
                                  optional=True),
        "X_fit_": Attr("array", dtype="f", shape=(None, "n_features_in_")),
        "y_": Attr("array", dtype=LABELS, shape=("X_fit_",), none=True),
        "retriever_": Attr("estimator"),
    })

    def __init__(self, retriever=None, *, qe_k=0, qe_alpha=3.0, dba_k=0, dba_alpha=3.0):
        self.retriever = retriever
        self.qe_k = qe_k
        self.qe_alpha = qe_alpha
        self.dba_k = dba_k
        self.dba_alpha = dba_alpha

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Normalise and augment the database, and fit the inner retriever.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Database descriptors.
        y : array-like of shape (n_samples,), default=None
            Database labels (for :meth:`predict` and :meth:`score`).

        Returns
        -------
        self : QueryExpansionRetriever
        """
        self.X_fit_, retriever = prepare_similarity_fit(self, X, y, "query expansion")
        X_db = self.X_fit_
        k = min(self.dba_k, X_db.shape[0])
        if k > 1:
            # every vector's k nearest database vectors, itself first
            plain = clone(retriever).fit(X_db)
            dist, ind = plain.kneighbors(X_db, n_neighbors=k)
            X_db = weighted_mean(X_db, X_db, ind, self._similarity(dist), self.dba_alpha,
                                  self_weight=False)
        self.retriever_ = clone(retriever).fit(X_db, self.y_)
        return self

    def _expand(self, Q, rows):
        """The expanded queries (``rows``: database rows queried leave-one-out)."""
        k = min(self.qe_k, self.retriever_.n_samples_fit_ - (rows is not None))
        if k < 1:
            return Q
        dist, ind = self.retriever_.kneighbors(None if rows is not None else Q, n_neighbors=k)
        if rows is not None:
            dist, ind = dist[rows], ind[rows]
        X_db = self.retriever_.X_fit_
        return weighted_mean(Q, X_db, ind, self._similarity(dist), self.qe_alpha)

    def _similarity(self, dist):
        # (retriever None: a cosine retriever)
        return similarities_from_distances(dist, getattr(self.retriever, "metric", "cosine"))

    def _queries(self, X):
        if X is None:
            return self.X_fit_, np.arange(self.X_fit_.shape[0])
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return l2_float32(X), None

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Search with the (expanded) queries.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Query descriptors; None queries every database item against the
            others (leave-one-out: an item is never its own result).
        n_neighbors : int or "all", default=None
            Results per query (default: the inner retriever's
            ``n_neighbors``).
        return_distance : bool, default=True
            Also return the distances (to the augmented database, of the
            expanded queries).

        Returns
        -------
        distances : ndarray of shape (n_queries, n_neighbors)
            Only when ``return_distance``.
        indices : ndarray of shape (n_queries, n_neighbors)
        """
        check_is_fitted(self, "retriever_")
        Q, rows = self._queries(X)
        Q = self._expand(Q, rows)
        n_db = self.retriever_.n_samples_fit_
        if n_neighbors is None:
            n_neighbors = self.retriever_.n_neighbors
        k = n_db if isinstance(n_neighbors, str) and n_neighbors == "all" else n_neighbors
        if rows is None:
            return self.retriever_.kneighbors(Q, n_neighbors=k, return_distance=return_distance)
        # leave-one-out with expanded queries: search one more, drop the item
        k = resolve_n_neighbors(k, n_db - 1, default=k, exclude_self=True, clip=True)
        dist, ind = self.retriever_.kneighbors(Q, n_neighbors=min(k + 1, n_db))
        keep = ind != rows[:, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        ind = np.take_along_axis(ind, order, axis=1)
        dist = np.take_along_axis(dist, order, axis=1)
        return (dist, ind) if return_distance else ind

    def score(self, X=None, y=None, n_neighbors=None):
        """Label mAP of the queries (leave-one-out when ``X`` is None).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Query descriptors, or None for leave-one-out.
        y : array-like of shape (n_queries,), default=None
            Query labels (None with ``X=None``).
        n_neighbors : int, default=None
            Rank depth; None ranks the whole database.

        Returns
        -------
        score : float
        """
        return super().score(X, y, n_neighbors)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = None
        return tags
