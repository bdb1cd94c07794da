"""The label-mAP scorer of retrieval pipelines, for model selection (``GridSearchCV``)."""

from __future__ import annotations

import inspect
from numbers import Integral

import numpy as np
from sklearn.pipeline import Pipeline

from ._ranking import mean_average_precision

__all__ = ["RetrievalMAP"]


def _accepts_n_neighbors(method):
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):  # builtins without a signature: try it
        return True
    return "n_neighbors" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


class RetrievalMAP:
    """Label mAP scorer for retrieval pipelines, for ``GridSearchCV``.

    Calling ``scorer(estimator, X, y)`` uses the samples ``X`` as queries
    against the database the final step was fitted on; a database item is
    relevant to a query when it has the same label.  If ``estimator`` is a
    :class:`~sklearn.pipeline.Pipeline`, ``X`` is transformed by all the steps
    but the last, and the last step (a
    :class:`~skretrieval.NearestNeighborRetriever`) computes the score with
    ``score(Xt, y, n_neighbors=k)``.  Greater is better.

    With ``ground_truth`` (a :class:`skretrieval.datasets.GroundTruth`, e.g.
    ``benchmark.ground_truth["medium"]`` of revisited Oxford), relevance is
    not by label: ``y`` holds the query numbers (indices into the ground
    truth), the final step ranks its database with ``kneighbors`` and the
    score is :func:`mean_average_precision` with the ground truth's
    positives and junk.

    Parameters
    ----------
    k : int, default=None
        ``None`` scores the full ranking of the database (mAP); an int scores
        only the top ``k`` results (mAP@k, positives beyond rank ``k`` count
        as not retrieved).
    ground_truth : GroundTruth, default=None
        Per-query positives and junk, indexed by ``y``; ``None`` scores by
        label.

    Examples
    --------
    >>> from sklearn.model_selection import GridSearchCV
    >>> from skretrieval.metrics import RetrievalMAP
    >>> RetrievalMAP(k=100)
    RetrievalMAP(k=100)

    Used as ``GridSearchCV(pipeline, param_grid, scoring=RetrievalMAP())``.
    """

    def __init__(self, k=None, ground_truth=None):
        if k is not None and (
            not isinstance(k, Integral) or isinstance(k, bool) or k < 1
        ):
            raise ValueError(f"k must be None or a positive integer, got {k!r}.")
        if ground_truth is not None and not (
            hasattr(ground_truth, "positives") and hasattr(ground_truth, "junk")
        ):
            raise TypeError(
                "ground_truth must have per-query 'positives' and 'junk' (a "
                f"skretrieval.datasets.GroundTruth), got {type(ground_truth).__name__}."
            )
        self.k = None if k is None else int(k)
        self.ground_truth = ground_truth

    def __call__(self, estimator, X, y):
        """Score ``estimator`` on queries ``X`` with labels ``y``.

        Parameters
        ----------
        estimator : Pipeline or retriever
            Fitted pipeline whose final step is a retriever, or a fitted
            retriever.
        X : array-like or FeatureMaps
            Query samples, in the input format of ``estimator``.
        y : array-like of shape (n_queries,)
            Query labels.

        Returns
        -------
        score : float
            Label mAP (or mAP@k) of the queries; greater is better.

        Raises
        ------
        TypeError
            If the final step has no ``score(X, y, n_neighbors=...)`` method.
        """
        if isinstance(estimator, Pipeline):
            final = estimator.steps[-1][1]
            Xt = estimator[:-1].transform(X) if len(estimator.steps) > 1 else X
        else:
            final, Xt = estimator, X
        score = getattr(final, "score", None)
        if not callable(score) or not _accepts_n_neighbors(score):
            raise TypeError(
                "RetrievalMAP needs a retriever as the final estimator, with a "
                "method score(X, y, n_neighbors=None) that returns the label "
                f"mAP (e.g. skretrieval.NearestNeighborRetriever); got "
                f"{type(final).__name__}."
            )
        if self.ground_truth is not None:
            return self._score_ground_truth(final, Xt, y)
        return float(score(Xt, y, n_neighbors=self.k))

    def _score_ground_truth(self, final, Xt, y):
        gt = self.ground_truth
        ids = np.asarray(y).ravel()
        if not np.issubdtype(ids.dtype, np.integer) or (
            ids.size and (ids.min() < 0 or ids.max() >= len(gt.positives))
        ):
            raise ValueError(
                "with a ground_truth, y must hold query numbers in "
                f"[0, {len(gt.positives)}) (indices into the ground truth)."
            )
        ind = final.kneighbors(Xt, n_neighbors="all" if self.k is None else self.k,
                               return_distance=False)
        return mean_average_precision(
            ind, [gt.positives[i] for i in ids], [gt.junk[i] for i in ids]
        )

    def __repr__(self):
        extra = "" if self.ground_truth is None else ", ground_truth=..."
        return f"{type(self).__name__}(k={self.k!r}{extra})"
