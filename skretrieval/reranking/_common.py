"""What the graph re-rankers share: the metric of a wrapped search, similarities, depths."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import validate_data

from ..neighbors._retriever import NearestNeighborRetriever
from ..utils._arrays import l2_normalize

__all__ = ["database_vectors", "fit_similarity_retriever", "normalized_queries",
           "resolve_n_neighbors", "retriever_metric", "to_similarity"]


def _through_wrappers(retriever, name, kind, default):
    """The first ``name`` attribute of type ``kind`` of a retriever or the ones it wraps."""
    for _ in range(16):
        if retriever is None:
            break
        value = getattr(retriever, name, None)
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        retriever = getattr(retriever, "retriever_", getattr(retriever, "retriever", None))
    return default


def retriever_metric(retriever):
    """The metric of a retriever, looked up through wrappers (default "cosine")."""
    return _through_wrappers(retriever, "metric", str, "cosine")


def to_similarity(dist, metric):
    """Similarities from the distances of a cosine or inner-product search."""
    dist = np.asarray(dist, dtype=np.float64)
    return 1.0 - dist if metric == "cosine" else -dist


def database_vectors(retriever):
    """The database vectors that a (possibly wrapped) fitted retriever searches."""
    for _ in range(16):
        inner = getattr(retriever, "retriever_", None)
        if isinstance(retriever, NearestNeighborRetriever) or inner is None:
            break
        retriever = inner
    return retriever.X_fit_


def fit_similarity_retriever(estimator, X, y, what, ensure_min_samples=1):
    """Validate ``X, y``, L2-normalise ``X`` and fit a clone of ``estimator.retriever``.

    Sets ``estimator.y_`` (and ``n_features_in_`` through ``validate_data``).
    Refuses a Euclidean search: ``what`` (e.g. "diffusion") needs
    similarities.  Returns ``(X_normalised, fitted_retriever)``.
    """
    if y is None:
        X = validate_data(estimator, X, dtype=np.float32, ensure_min_samples=ensure_min_samples)
    else:
        X, y = validate_data(estimator, X, y, dtype=np.float32,
                             ensure_min_samples=ensure_min_samples)
    retriever = NearestNeighborRetriever() if estimator.retriever is None else estimator.retriever
    if retriever_metric(retriever) == "euclidean":
        raise ValueError(f"{what} needs a similarity search: use a retriever with "
                         "metric='cosine' or 'inner_product'")
    X = l2_normalize(X).astype(np.float32)
    estimator.y_ = None if y is None else np.asarray(y)
    return X, clone(retriever).fit(X, y)


def normalized_queries(estimator, X):
    """``(None, rows)`` for leave-one-out, else ``(validated L2-normalised X, None)``."""
    if X is None:
        return None, np.arange(estimator.n_samples_fit_)
    X = validate_data(estimator, X, dtype=np.float32, reset=False)
    return l2_normalize(X).astype(np.float32), None


def resolve_n_neighbors(n_neighbors, retriever, n_available):
    """``n_neighbors`` (None: the retriever's; "all": every item) as an int."""
    if n_neighbors is None:
        n_neighbors = min(_through_wrappers(retriever, "n_neighbors", Integral, 10), n_available)
    if isinstance(n_neighbors, str):
        if n_neighbors != "all":
            raise ValueError(f"n_neighbors must be a positive int, 'all' or None, "
                             f"got {n_neighbors!r}")
        return n_available
    n_neighbors = int(n_neighbors)
    if n_neighbors < 1:
        raise ValueError(f"Expected n_neighbors > 0. Got {n_neighbors}")
    if n_neighbors > n_available:
        raise ValueError(f"Expected n_neighbors <= {n_available} (the items a query can "
                         f"return), got {n_neighbors}")
    return n_neighbors
