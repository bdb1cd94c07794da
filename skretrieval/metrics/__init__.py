"""Evaluation metrics for instance image retrieval and the grid-search scorer.

The average precision follows the Oxford ``compute_ap.cpp`` program and
revisitop's ``compute_map`` (junk removed, trapezoidal integration), not
:func:`sklearn.metrics.average_precision_score`; see
:func:`average_precision`. :class:`RetrievalMAP` scores a fitted retrieval
pipeline for :class:`~sklearn.model_selection.GridSearchCV`;
:func:`skretrieval.datasets.evaluate_benchmark` (which searches, so it sits
above :mod:`skretrieval.neighbors`) runs a pipeline over a benchmark with its
protocol; it is still found here under its old name.
"""

from ..utils import _legacy
from ._ranking import (
    average_precision,
    average_precision_from_relevance,
    mean_average_precision,
    mean_precision_at_k,
    precision_at_k,
    revisitop_map,
    ukbench_score,
)
from ._scorer import RetrievalMAP

__all__ = [
    "RetrievalMAP",
    "average_precision",
    "average_precision_from_relevance",
    "mean_average_precision",
    "mean_precision_at_k",
    "precision_at_k",
    "revisitop_map",
    "ukbench_score",
]


def __getattr__(name):
    # evaluate_benchmark & co. moved to skretrieval.datasets (utils/_legacy.py: MOVED_NAMES)
    return _legacy.moved_name(__name__, name)
