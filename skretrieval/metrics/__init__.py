"""Evaluation metrics for instance image retrieval, the grid-search scorer, benchmark runs.

The average precision follows the Oxford ``compute_ap.cpp`` program and
revisitop's ``compute_map`` (junk removed, trapezoidal integration), not
:func:`sklearn.metrics.average_precision_score`; see
:func:`average_precision`. :class:`RetrievalMAP` scores a fitted retrieval
pipeline for :class:`~sklearn.model_selection.GridSearchCV`;
:func:`evaluate_benchmark` runs a pipeline over a benchmark with its protocol.
"""

from ._evaluation import EvaluationReport, evaluate_benchmark, evaluate_descriptors
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
    "EvaluationReport",
    "RetrievalMAP",
    "average_precision",
    "average_precision_from_relevance",
    "evaluate_benchmark",
    "evaluate_descriptors",
    "mean_average_precision",
    "mean_precision_at_k",
    "precision_at_k",
    "revisitop_map",
    "ukbench_score",
]
