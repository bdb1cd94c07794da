"""Search with online class aggregation (Jimenez, Alvarez & Giro-i-Nieto, BMVC 2017).

The database keeps the class vectors of every image
(:class:`~skretrieval.CAMWeighter` with ``aggregation="online"``), and each
query aggregates them over its own top classes at search time.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ..neighbors._base import RetrieverMixin, resolve_n_neighbors
from ..pooling._cam import ClassVectors
from ..utils._arrays import distances_from_similarities, l2_normalize
from ..utils._state import LABELS, Attr, StateSpec

__all__ = ["OnlineCAMRetriever"]


class OnlineCAMRetriever(RetrieverMixin, BaseEstimator):
    """Search with online class aggregation (Jimenez et al., BMVC 2017).

    A query ``q`` with top classes ``C_q`` (its ``n_classes`` most probable
    ones) is ``normalize(sum_{c in C_q} v_qc)``; every database image ``i``
    is, for that query, ``normalize(sum_{c in C_q} v_ic)`` over its stored
    class vectors of those classes.  The similarity is their dot product,
    computed exactly and without building the per-query database vectors:
    ``sum_c q.v_ic / sqrt(m^T G_i m)`` with each image's Gram matrix ``G_i``
    of its class vectors (stored at ``fit``) and ``m`` the indicator of the
    query's classes among the image's.  Images sharing none of the query's
    classes rank last (similarity 0).

    Parameters
    ----------
    n_neighbors : int, default=10
        Results per query.
    n_classes : int or None, default=None
        Query classes aggregated (None: all the query's stored classes).

    Attributes
    ----------
    classes_ : ndarray of shape (n_samples, K)
    vectors_ : ndarray of shape (n_samples, K, D)
    gram_ : ndarray of shape (n_samples, K, K)
    y_ : ndarray or None
        Database labels.
    n_samples_fit_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import ClassVectors, OnlineCAMRetriever
    >>> rng = np.random.default_rng(0)
    >>> cv = ClassVectors(rng.permuted(np.tile(np.arange(5), (6, 1)), axis=1)[:, :3],
    ...                   rng.normal(size=(6, 3, 4)))
    >>> OnlineCAMRetriever(n_neighbors=2).fit(cv).kneighbors(cv[:1])[1].shape
    (1, 2)
    """

    _fitted_attr = "gram_"

    _parameter_constraints = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "n_classes": [Interval(Integral, 1, None, closed="left"), None],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = StateSpec({
        "classes_": Attr("array", dtype="iu", shape=("n_samples_fit_", None)),
        "vectors_": Attr("array", dtype="f", shape=("n_samples_fit_", "classes_[1]", None)),
        "gram_": Attr("array", dtype="f",
                      shape=("n_samples_fit_", "classes_[1]", "classes_[1]")),
        "y_": Attr("array", dtype=LABELS, shape=("n_samples_fit_",), none=True),
        "n_samples_fit_": Attr("int", values=(1, None)),
    })

    def __init__(self, n_neighbors=10, *, n_classes=None):
        self.n_neighbors = n_neighbors
        self.n_classes = n_classes

    @staticmethod
    def _check(X):
        if not isinstance(X, ClassVectors):
            raise TypeError("OnlineCAMRetriever searches ClassVectors: put "
                            "CAMWeighter(aggregation='online') before it")
        return X

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Store the database class vectors and their Gram matrices.

        Parameters
        ----------
        X : ClassVectors
        y : array-like of shape (n_samples,), default=None
            Database labels (for :meth:`score`).

        Returns
        -------
        self : OnlineCAMRetriever
        """
        X = self._check(X)
        if len(X) == 0:
            raise ValueError("no database items")
        self.classes_ = X.classes.copy()
        self.vectors_ = l2_normalize(X.vectors).astype(np.float32)
        self.gram_ = np.einsum("nkd,nld->nkl", self.vectors_, self.vectors_)
        self.y_ = None if y is None else np.asarray(y)
        if self.y_ is not None and self.y_.shape[0] != len(X):
            raise ValueError(f"{len(X)} items but {self.y_.shape[0]} labels")
        self.n_samples_fit_ = len(X)
        return self

    def similarities(self, X=None):
        """Online-aggregated similarities, shape (n_queries, n_samples_fit).

        ``X=None`` scores the database against itself (the diagonal is then
        ``-inf``: an item is not its own result).
        """
        check_is_fitted(self, "gram_")
        if X is None:
            classes, vectors = self.classes_, self.vectors_
        else:
            X = self._check(X)
            classes, vectors = X.classes, l2_normalize(X.vectors)
        k = classes.shape[1] if self.n_classes is None else min(self.n_classes,
                                                                 classes.shape[1])
        n_db, K, D = self.vectors_.shape
        flat = self.vectors_.reshape(n_db * K, D)
        out = np.empty((classes.shape[0], n_db), np.float32)
        for j in range(classes.shape[0]):
            q = l2_normalize(vectors[j, :k].sum(axis=0, dtype=np.float64))
            mask = np.isin(self.classes_, classes[j, :k]).astype(np.float32)  # (n, K)
            num = ((flat @ q.astype(np.float32)).reshape(n_db, K) * mask).sum(axis=1)
            den = np.sqrt(np.maximum(np.einsum("nk,nkl,nl->n", mask, self.gram_, mask), 0))
            out[j] = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
        if X is None:
            np.fill_diagonal(out, -np.inf)
        return out

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Top results: distances ``1 - similarity`` and database indices.

        Parameters
        ----------
        X : ClassVectors or None
            Queries; None ranks each database item against the others.
        n_neighbors : int or "all", default=None
        return_distance : bool, default=True

        Returns
        -------
        distances, indices : ndarray of shape (n_queries, n_neighbors)
        """
        S = self.similarities(X)
        n_db = self.n_samples_fit_ - (X is None)
        k = resolve_n_neighbors(n_neighbors, n_db, default=self.n_neighbors,
                                exclude_self=X is None, clip=True)
        # stable: ties keep database order
        ind = np.argsort(-S, axis=1, kind="stable")[:, :k]
        if not return_distance:
            return ind
        return distances_from_similarities(np.take_along_axis(S, ind, axis=1)), ind

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags
