"""Checks of the arguments of :class:`~skretrieval.RetrievalDisplay`, and relevance.

:class:`Relevance` tells, from per-query positives (and junk) or from labels,
whether each ranked result is a positive, a junk item or a negative.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

__all__ = ["Relevance", "check_int", "check_names", "check_rankings", "check_scores",
           "index_set", "per_query", "select_queries"]


def check_int(value, name, minimum=1):
    """``value`` as an int of at least ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_rankings(rankings, n_database, name="rankings"):
    """``rankings`` as a 2-D intp array of database indices."""
    rankings = np.asarray(rankings)
    if rankings.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_queries, k), got shape "
            f"{rankings.shape}"
        )
    if rankings.size and not np.issubdtype(rankings.dtype, np.integer):
        raise ValueError(
            f"{name} must hold integer database indices, got dtype {rankings.dtype}"
        )
    rankings = rankings.astype(np.intp, copy=False)
    if rankings.size and (rankings.min() < 0 or rankings.max() >= n_database):
        bad = rankings[(rankings < 0) | (rankings >= n_database)]
        raise ValueError(
            f"{name} must hold indices of the database images, in [0, {n_database}); "
            f"got {bad[0]}"
        )
    return rankings


def check_names(names, n, name):
    """``names`` as a list of ``n`` strings (None stays None)."""
    if names is None:
        return None
    if isinstance(names, str):
        raise TypeError(f"{name} must be a list of {n} strings, got a single string")
    names = [str(s) for s in names]
    if len(names) != n:
        raise ValueError(f"{name} has {len(names)} entries for {n} images")
    return names


def check_scores(scores, shape, name="similarities"):
    """Float array of ``shape`` (rows must match; extra columns are cut)."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[0] != shape[0] or scores.shape[1] < shape[1]:
        raise ValueError(
            f"{name} of shape {scores.shape} do not match the rankings of shape "
            f"{shape}"
        )
    return scores[:, : shape[1]]


def index_set(values, name, n_database):
    """``values`` as a 1-D intp array of database indices."""
    try:
        arr = np.asarray(list(values))
    except TypeError:
        raise TypeError(
            f"{name} must be an iterable of database indices, got "
            f"{type(values).__name__}"
        ) from None
    if arr.size == 0:
        return arr.astype(np.intp)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D list of integer database indices")
    if arr.min() < 0 or arr.max() >= n_database:
        raise ValueError(
            f"{name} holds indices outside the database images [0, {n_database})"
        )
    return arr.astype(np.intp)


def per_query(values, n_queries, name):
    """``values`` as a list of one entry per query (None stays None)."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a list with one list of indices per query")
    values = list(values)
    if len(values) != n_queries:
        raise ValueError(
            f"{name} has {len(values)} entries for {n_queries} query images; give "
            "one list of database indices per query"
        )
    return values


class Relevance:
    """Validated source of relevance: per-query index sets or labels."""

    def __init__(self, n_queries, n_database, *, positives=None, junk=None,
                 query_labels=None, database_labels=None):
        has_labels = query_labels is not None or database_labels is not None
        if positives is not None and has_labels:
            raise ValueError(
                "give the relevance either as positives (and junk) or as "
                "query_labels and database_labels, not both"
            )
        if has_labels and (query_labels is None or database_labels is None):
            missing = "query_labels" if query_labels is None else "database_labels"
            raise ValueError(
                f"relevance from labels needs both query_labels and "
                f"database_labels; {missing} is missing"
            )
        if junk is not None and positives is None and not has_labels:
            raise ValueError(
                "junk needs positives (or labels): without them the other "
                "results cannot be told positive or negative"
            )
        self.n_database = n_database
        self.positives = per_query(positives, n_queries, "positives")
        self.junk = per_query(junk, n_queries, "junk")
        self.query_labels = self.database_labels = None
        if has_labels:
            self.query_labels = np.asarray(query_labels)
            self.database_labels = np.asarray(database_labels)
            if self.query_labels.ndim != 1 or self.query_labels.shape[0] != n_queries:
                raise ValueError(
                    f"query_labels must have one label per query image "
                    f"({n_queries}), got shape {self.query_labels.shape}"
                )
            if (self.database_labels.ndim != 1
                    or self.database_labels.shape[0] != n_database):
                raise ValueError(
                    f"database_labels must have one label per database image "
                    f"({n_database}), got shape {self.database_labels.shape}"
                )

    @property
    def known(self):
        return self.positives is not None or self.query_labels is not None

    def __call__(self, queries, rankings):
        """Relevance (n_selected, k) of ``rankings`` of the ``queries``; or None."""
        if not self.known:
            return None
        rel = np.zeros(rankings.shape, dtype=np.int8)
        for row, q in enumerate(queries):
            if self.positives is not None:
                pos = index_set(self.positives[q], f"positives[{q}]", self.n_database)
                hit = np.isin(rankings[row], pos)
            else:
                hit = self.database_labels[rankings[row]] == self.query_labels[q]
            rel[row, hit] = 1
            if self.junk is not None:
                jnk = index_set(self.junk[q], f"junk[{q}]", self.n_database)
                if self.positives is not None:
                    both = np.intersect1d(pos, jnk)
                    if both.size:
                        raise ValueError(
                            f"database index {both[0]} is both in positives[{q}] "
                            f"and junk[{q}]; an item is either positive, junk or "
                            "negative"
                        )
                rel[row, np.isin(rankings[row], jnk)] = -1
        return rel


def select_queries(queries, n_queries, n_total):
    """The indices of the queries to plot: ``queries``, or the first ``n_queries``."""
    if queries is None:
        n_queries = check_int(n_queries, "n_queries")
        return np.arange(min(n_queries, n_total))
    queries = np.asarray(queries)
    if queries.ndim == 0:
        queries = queries.reshape(1)
    if queries.ndim != 1 or (queries.size
                             and not np.issubdtype(queries.dtype, np.integer)):
        raise ValueError("queries must be a 1-D list of integer query indices")
    if queries.size == 0:
        raise ValueError("queries is empty: no query to plot")
    if queries.min() < 0 or queries.max() >= n_total:
        bad = queries[(queries < 0) | (queries >= n_total)][0]
        raise ValueError(
            f"queries must be indices of the query images, in [0, {n_total}); "
            f"got {bad}"
        )
    return queries.astype(np.intp)
