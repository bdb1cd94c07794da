"""What the retrievers share: ``predict`` and the label ``score`` of a ranking."""

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ..metrics._ranking import mean_average_precision

__all__ = ["RetrieverMixin", "WrappingRetrieverMixin", "label_score"]


def label_score(estimator, X, y, n_neighbors):
    """Label mAP of the queries ``X`` of a fitted retriever with database labels
    ``estimator.y_`` (leave-one-out when ``X`` is None): the shared ``score``."""
    if estimator.y_ is None:
        raise ValueError("score needs the database labels: fit with y")
    if X is None:
        if y is not None:
            raise ValueError("y must be None when X is None (leave-one-out)")
        y = estimator.y_
    ind = estimator.kneighbors(X, n_neighbors="all" if n_neighbors is None else n_neighbors,
                               return_distance=False)
    positives = []
    for q, label in enumerate(np.asarray(y)):
        same = np.flatnonzero(estimator.y_ == label)
        positives.append(same[same != q] if X is None else same)
    return mean_average_precision(ind, positives)


class RetrieverMixin:
    """``predict`` and ``score`` of an estimator with ``kneighbors`` and labels ``y_``.

    ``_fitted_attr`` names the attribute :func:`check_is_fitted` looks for
    (None: any fitted attribute).  :meth:`score` is the label mAP of
    :func:`label_score` (the full rankings of ``kneighbors(X, "all")``).
    """

    _fitted_attr = None

    def _check_labels_fitted(self, method):
        if self.y_ is None:
            raise ValueError(f"{method} needs the database labels: fit with y")

    def predict(self, X=None):
        """Labels of the top results, shape (n_queries, n_neighbors)."""
        check_is_fitted(self, self._fitted_attr)
        self._check_labels_fitted("predict")
        return self.y_[self.kneighbors(X, return_distance=False)]

    def score(self, X=None, y=None, n_neighbors=None):
        """Label mAP of the queries (leave-one-out when ``X`` is None)."""
        check_is_fitted(self, self._fitted_attr)
        return label_score(self, X, y, n_neighbors)


class WrappingRetrieverMixin(RetrieverMixin):
    """A :class:`RetrieverMixin` that searches with a fitted ``retriever_``."""

    @property
    def n_samples_fit_(self):
        return self.retriever_.n_samples_fit_
