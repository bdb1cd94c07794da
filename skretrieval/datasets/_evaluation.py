"""Evaluate a descriptor pipeline on a benchmark with its standard protocol.

:func:`evaluate_benchmark` is what the ``skretrieval evaluate`` command and
``benchmarks/report.py`` run: extract and pool the descriptors of the
database (and of the query crops), optionally learn whitening on *another*
benchmark (the paired one of the papers: Paris6k for Oxford5k and back),
rank the whole database for every query and score the rankings with the
benchmark's protocols.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone

from ..neighbors import NearestNeighborRetriever
from ..utils._arrays import similarities_from_distances

__all__ = ["EvaluationReport", "evaluate_benchmark", "evaluate_descriptors"]


@dataclass
class EvaluationReport:
    """What :func:`evaluate_benchmark` measured.

    Attributes
    ----------
    benchmark : str
        Name of the evaluated benchmark.
    results : dict of str to dict
        Per protocol, the metrics of
        :meth:`~skretrieval.datasets.RetrievalBenchmark.evaluate` (``"mAP"``,
        ``"mP@k"``, per-query ``"ap"``, UKBench's ``"N-S"``).
    n_images, n_queries, n_dims : int
        Database size, number of queries, descriptor dimension.
    whitening : str or None
        The benchmark the whitening was learned on.
    seconds : dict of str to float
        Wall time of every stage (``"extract"``, ``"whiten"``, ``"search"``,
        ``"total"``).
    rankings : ndarray of int of shape (n_queries, n_images)
        Ranking of the whole database for every query.
    similarities : ndarray of shape (n_queries, n_images)
        The matching cosine similarities.
    """

    benchmark: str
    results: dict
    n_images: int
    n_queries: int
    n_dims: int
    whitening: str | None
    seconds: dict
    rankings: np.ndarray = field(repr=False)
    similarities: np.ndarray = field(repr=False)

    def summary(self, ks=(1, 5, 10)):
        """The figures of every protocol, without the per-query arrays."""
        out = {}
        for protocol, res in self.results.items():
            out[protocol] = {k: float(v) for k, v in res.items()
                             if k == "mAP" or k == "N-S" or k.startswith("mP@")}
        return out

    def table(self):
        """The standard table: mAP (and mP@k, N-S) in percent per protocol."""
        summary = self.summary()
        columns = []
        for res in summary.values():
            for k in res:
                if k not in columns:
                    columns.append(k)
        head = f"{'dataset':<14} {'protocol':<9}" + "".join(f"{c:>8}" for c in columns)
        lines = [head, "-" * len(head)]
        for protocol, res in summary.items():
            cells = []
            for c in columns:
                v = res.get(c)
                if v is None:
                    cells.append(f"{'':>8}")
                elif c == "N-S":
                    cells.append(f"{v:>8.3f}")
                else:
                    cells.append(f"{100 * v:>8.2f}")
            lines.append(f"{self.benchmark:<14} {protocol:<9}" + "".join(cells))
        return "\n".join(lines)

    def to_dict(self):
        """JSON-ready summary (fractions, not percent)."""
        return {"benchmark": self.benchmark, "n_images": self.n_images,
                "n_queries": self.n_queries, "n_dims": self.n_dims,
                "whitening": self.whitening, "seconds": dict(self.seconds),
                "results": self.summary()}


def _describe(features, items):
    return np.asarray(features.transform(items), dtype=np.float32)


def evaluate_benchmark(benchmark, features, *, whitener=None, whitening_benchmark=None,
                       ks=(1, 5, 10)):
    """Evaluate a descriptor pipeline on a benchmark.

    Parameters
    ----------
    benchmark : RetrievalBenchmark
        From :mod:`skretrieval.datasets`.
    features : estimator
        Fitted transformer from images to global descriptors, e.g.
        ``make_pipeline(ConvFeatureExtractor(...).fit(), GeMPooler())``.
        Give its extractor a ``cache`` to reuse features between runs.
    whitener : estimator, default=None
        Unfitted post-processing learned on ``whitening_benchmark`` (e.g.
        :class:`~skretrieval.PCAWhitener`); it is cloned, fitted on the
        descriptors of that benchmark's database images, and applied to the
        evaluated database and queries.
    whitening_benchmark : RetrievalBenchmark, default=None
        Where the whitening is learned.  Required with ``whitener``: learning
        it on the evaluated images is the classic protocol error that
        inflates results, so it is not offered here.
    ks : sequence of int, default=(1, 5, 10)
        Cut-offs of the mean precision.

    Returns
    -------
    EvaluationReport
    """
    if whitener is not None and whitening_benchmark is None:
        raise ValueError(
            "a whitener needs a whitening_benchmark to learn on: learning the "
            f"whitening on {benchmark.name} itself would inflate the results; use "
            f"its pair {benchmark.paired!r} as the papers do"
            if benchmark.paired else "a whitener needs a whitening_benchmark to learn on"
        )
    if whitening_benchmark is not None and whitening_benchmark.name == benchmark.name:
        raise ValueError(
            f"the whitening must be learned on another benchmark than {benchmark.name}")
    t_start = time.perf_counter()
    X_db = _describe(features, benchmark.images)
    X_q = None
    if benchmark.query_indices is None:
        X_q = _describe(features, benchmark.queries)
    X_w = None
    if whitener is not None:
        X_w = _describe(features, whitening_benchmark.images)
    extract = time.perf_counter() - t_start
    report = evaluate_descriptors(
        benchmark, X_db, X_q, whitener=whitener, whitening_descriptors=X_w,
        whitening_name=None if whitening_benchmark is None else whitening_benchmark.name,
        ks=ks)
    report.seconds["extract"] = extract
    report.seconds["total"] = time.perf_counter() - t_start
    return report


def evaluate_descriptors(benchmark, database, queries=None, *, whitener=None,
                         whitening_descriptors=None, whitening_name=None, ks=(1, 5, 10)):
    """Evaluate precomputed global descriptors on a benchmark.

    Parameters
    ----------
    benchmark : RetrievalBenchmark
        From :mod:`skretrieval.datasets`.
    database : array-like of shape (n_images, n_features)
        Descriptors of ``benchmark.images``, in order.
    queries : array-like of shape (n_queries, n_features), default=None
        Descriptors of ``benchmark.queries``; None when the queries are
        database images (``benchmark.query_indices``), whose rows of
        ``database`` are then used.
    whitener : estimator, default=None
        Unfitted post-processing, cloned and fitted on
        ``whitening_descriptors`` (which must come from another benchmark).
    whitening_descriptors : array-like of shape (n_samples, n_features), default=None
        Descriptors to learn the whitening on.
    whitening_name : str, default=None
        Where they come from, for the report.
    ks : sequence of int, default=(1, 5, 10)
        Cut-offs of the mean precision.

    Returns
    -------
    EvaluationReport
        ``seconds["extract"]`` is 0 (nothing was extracted here).
    """
    X_db = np.asarray(database, dtype=np.float32)
    if X_db.ndim != 2 or X_db.shape[0] != benchmark.n_images:
        raise ValueError(f"database must have one row per image of {benchmark.name} "
                         f"({benchmark.n_images}), got shape {X_db.shape}")
    if queries is None:
        if benchmark.query_indices is None:
            raise ValueError(f"the queries of {benchmark.name} are not database images: "
                             "give their descriptors")
        X_q = X_db[benchmark.query_indices]
    else:
        X_q = np.asarray(queries, dtype=np.float32)
        if X_q.shape != (benchmark.n_queries, X_db.shape[1]):
            raise ValueError(f"queries must have shape ({benchmark.n_queries}, "
                             f"{X_db.shape[1]}), got {X_q.shape}")
    if (whitener is None) != (whitening_descriptors is None):
        raise ValueError("give both a whitener and the descriptors to learn it on")
    seconds = {"extract": 0.0}
    t_start = time.perf_counter()
    whitening = None
    if whitener is not None:
        t = time.perf_counter()
        fitted = clone(whitener).fit(np.asarray(whitening_descriptors, dtype=np.float32))
        X_db = np.asarray(fitted.transform(X_db), dtype=np.float32)
        X_q = np.asarray(fitted.transform(X_q), dtype=np.float32)
        whitening = whitening_name or "another benchmark"
        seconds["whiten"] = time.perf_counter() - t

    t = time.perf_counter()
    retriever = NearestNeighborRetriever(metric="cosine").fit(X_db)
    dist, rankings = retriever.kneighbors(X_q, n_neighbors="all")
    results = benchmark.evaluate(rankings, ks=ks)
    seconds["search"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_start
    return EvaluationReport(
        benchmark=benchmark.name, results=results, n_images=benchmark.n_images,
        n_queries=benchmark.n_queries, n_dims=int(X_db.shape[1]), whitening=whitening,
        seconds=seconds, rankings=rankings, similarities=similarities_from_distances(dist),
    )
