"""Evaluation metrics for instance image retrieval.

The average precision (AP) used throughout follows the Oxford Buildings
``compute_ap.cpp`` program and the revisited Oxford/Paris (revisitop)
``compute_map`` function, which differ from
:func:`sklearn.metrics.average_precision_score` in two ways:

* **Junk items are removed** from the ranking before anything is computed:
  they are neither hits nor misses and do not take a rank.
* **Precision is integrated with the trapezoid rule** over recall.  Let the
  junk-free ranking have the ``j``-th positive (0-based) at 0-based rank
  ``r``.  Its contribution to the AP is::

      (1 / n_positives) * (p0 + p1) / 2,
      p0 = 1 if r == 0 else j / r,      # precision just before the hit
      p1 = (j + 1) / (r + 1)            # precision just after the hit

  Positives that are never retrieved (a truncated ranking) contribute 0.

A query without any positive has an undefined AP (``nan``); the ``mean_*``
functions skip such queries and emit an
:class:`~sklearn.exceptions.UndefinedMetricWarning`.

:class:`~skretrieval.metrics.RetrievalMAP` (in :mod:`._scorer`) turns the label mAP of
a fitted retrieval pipeline into a scorer for
:class:`~sklearn.model_selection.GridSearchCV`.
"""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

__all__ = [
    "average_precision",
    "average_precision_from_relevance",
    "mean_average_precision",
    "precision_at_k",
    "mean_precision_at_k",
    "revisitop_map",
    "ukbench_score",
]


# ---------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------
def _check_ranking(ranking, name="ranking"):
    """Return ``ranking`` as a 1-D int64 array of distinct non-negative indices."""
    arr = np.asarray(ranking)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D sequence of database indices, got an array "
            f"with {arr.ndim} dimension(s) and shape {arr.shape}."
        )
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must contain integer database indices, got dtype {arr.dtype}."
        )
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise ValueError(
            f"{name} must contain non-negative database indices, got "
            f"{int(arr.min())} (remove padding such as -1 before scoring)."
        )
    sorted_arr = np.sort(arr)
    dup = sorted_arr[1:][sorted_arr[1:] == sorted_arr[:-1]]
    if dup.size:
        raise ValueError(
            f"{name} contains duplicate index {int(dup[0])}: each database item "
            "may be ranked at most once."
        )
    return arr


def _check_index_set(values, name):
    """Return the distinct indices of an iterable as a sorted int64 array."""
    if values is None:
        return np.zeros(0, dtype=np.int64)
    if not isinstance(values, np.ndarray):
        if isinstance(values, (str, bytes)):
            raise TypeError(
                f"{name} must be an iterable of integer database indices, "
                f"got {type(values).__name__}."
            )
        try:
            values = list(values)
        except TypeError:
            raise TypeError(
                f"{name} must be an iterable of integer database indices, "
                f"got {type(values).__name__}."
            ) from None
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a flat collection of database indices, got shape "
            f"{arr.shape}."
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must contain integer database indices, got dtype {arr.dtype}."
        )
    arr = np.unique(arr.astype(np.int64, copy=False))
    if arr[0] < 0:
        raise ValueError(
            f"{name} must contain non-negative database indices, got {int(arr[0])}."
        )
    return arr


def _check_query(ranking, positives, junk, suffix=""):
    """Validate the inputs of one query; return (ranking, positives, junk)."""
    ranking = _check_ranking(ranking, f"ranking{suffix}")
    positives = _check_index_set(positives, f"positives{suffix}")
    junk = _check_index_set(junk, f"junk{suffix}")
    both = np.intersect1d(positives, junk, assume_unique=True)
    if both.size:
        shown = ", ".join(str(int(i)) for i in both[:5])
        more = ", ..." if both.size > 5 else ""
        raise ValueError(
            f"indices {{{shown}{more}}} are both in positives{suffix} and in "
            f"junk{suffix}; an item is either positive, junk or negative."
        )
    return ranking, positives, junk


def _hits_without_junk(ranking, positives, junk):
    """Boolean relevance of the junk-free ranking."""
    if junk.size:
        ranking = ranking[~np.isin(ranking, junk, assume_unique=True)]
    return np.isin(ranking, positives, assume_unique=True)


def _check_k(k):
    """Return (array of k values, whether k was a scalar)."""
    scalar = isinstance(k, Integral) and not isinstance(k, bool)
    ks = np.atleast_1d(np.asarray(k))
    if (
        ks.ndim != 1
        or ks.size == 0
        or not np.issubdtype(ks.dtype, np.integer)
        or np.any(ks < 1)
    ):
        raise ValueError(
            f"k must be a positive integer or a non-empty sequence of positive "
            f"integers, got {k!r}."
        )
    return ks.astype(np.int64), scalar


def _check_rankings(rankings):
    """Return a list of per-query rankings (not yet validated individually)."""
    if isinstance(rankings, np.ndarray):
        if rankings.ndim != 2:
            raise ValueError(
                "rankings must be a 2-D array (n_queries, k) or a list of 1-D "
                f"rankings, got an array of shape {rankings.shape}."
            )
        return list(rankings)
    try:
        return list(rankings)
    except TypeError:
        raise TypeError(
            "rankings must be a 2-D array (n_queries, k) or a list of 1-D "
            f"rankings, got {type(rankings).__name__}."
        ) from None


def _check_per_query(values, n_queries, name, allow_none):
    """Return a list with one entry per query for positives / junk."""
    if values is None:
        if allow_none:
            return [None] * n_queries
        raise ValueError(f"{name} is required (one iterable of indices per query).")
    try:
        values = list(values)
    except TypeError:
        raise TypeError(
            f"{name} must be a list with one iterable of indices per query, got "
            f"{type(values).__name__}."
        ) from None
    if len(values) != n_queries:
        raise ValueError(
            f"{name} has {len(values)} entries but there are {n_queries} "
            "rankings (queries); give one entry per query."
        )
    return values


def _warn_skipped(n_skipped, n_queries):
    if n_skipped:
        warnings.warn(
            f"{n_skipped} of {n_queries} queries have no positives; their "
            "metric is undefined and they were skipped"
            + (" (the result is nan)." if n_skipped == n_queries else "."),
            UndefinedMetricWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------
# average precision
# ---------------------------------------------------------------------------
def _ap_from_hit_positions(rows, ranks, n_positives):
    """AP of every query from the (row, rank) positions of its hits.

    ``rows`` and ``ranks`` must be sorted by row then rank (C order, as
    returned by :func:`numpy.nonzero`); ``ranks`` are 0-based ranks in the
    junk-free ranking.
    """
    n_positives = np.asarray(n_positives, dtype=np.int64)
    n_queries = n_positives.shape[0]
    counts = np.bincount(rows, minlength=n_queries)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # ordinal j (0-based) of each hit among the hits of its query
    j = np.arange(rows.shape[0], dtype=np.float64) - starts[rows]
    r = ranks.astype(np.float64)
    p0 = np.where(r == 0, 1.0, j / np.maximum(r, 1.0))
    p1 = (j + 1.0) / (r + 1.0)
    sums = np.bincount(rows, weights=(p0 + p1) / 2.0, minlength=n_queries)
    ap = np.full(n_queries, np.nan)
    defined = n_positives > 0
    ap[defined] = sums[defined] / n_positives[defined]
    return ap


def average_precision_from_relevance(relevance, n_positives):
    """Average precision of many queries from the relevance of their ranks.

    Uses the trapezoid-rule definition of the Oxford Buildings benchmark (see
    the module docstring); fully vectorised over queries and ranks.

    Parameters
    ----------
    relevance : array-like of shape (n_queries, k)
        ``relevance[i, r]`` is True when the item at 0-based rank ``r`` of
        query ``i`` is relevant.  Junk items must already have been removed
        from the rankings.  Boolean, or numeric with values in {0, 1}.
    n_positives : array-like of int of shape (n_queries,)
        Total number of relevant items of each query.  It may exceed
        ``relevance.sum(axis=1)`` when the rankings are truncated; the
        positives that were not retrieved then contribute 0.

    Returns
    -------
    ap : ndarray of shape (n_queries,)
        Average precision of each query, ``nan`` where ``n_positives == 0``.

    Raises
    ------
    ValueError
        If ``relevance`` is not 2-D or not binary, if ``n_positives`` does not
        have one non-negative integer per query, or if a row has more relevant
        items than its ``n_positives``.

    See Also
    --------
    mean_average_precision : mAP from rankings and positive/junk index sets.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.metrics import average_precision_from_relevance
    >>> relevance = np.array([[True, False, True], [False, True, False]])
    >>> average_precision_from_relevance(relevance, [2, 1])
    array([0.79166667, 0.25      ])
    """
    rel = np.asarray(relevance)
    if rel.ndim != 2:
        raise ValueError(
            "relevance must be a 2-D array (n_queries, k); got an array of shape "
            f"{rel.shape}. For a single query use relevance[np.newaxis, :]."
        )
    if rel.dtype != bool:
        if not (
            np.issubdtype(rel.dtype, np.number)
            and np.all((rel == 0) | (rel == 1))
        ):
            raise ValueError(
                "relevance must be boolean (or numeric with values 0 and 1), "
                f"got dtype {rel.dtype}."
            )
        rel = rel.astype(bool)
    n_queries = rel.shape[0]

    npos = np.asarray(n_positives)
    if npos.shape != (n_queries,):
        raise ValueError(
            f"n_positives must have shape ({n_queries},) (one count per query), "
            f"got shape {npos.shape}."
        )
    if npos.size and not (
        np.issubdtype(npos.dtype, np.integer)
        or (
            np.issubdtype(npos.dtype, np.floating)
            and np.all(np.isfinite(npos))
            and np.all(npos == np.round(npos))
        )
    ):
        raise ValueError(
            f"n_positives must contain integer counts, got dtype {npos.dtype}."
        )
    npos = npos.astype(np.int64)
    if npos.size and npos.min() < 0:
        raise ValueError("n_positives must be non-negative.")
    found = rel.sum(axis=1)
    too_many = np.flatnonzero(found > npos)
    if too_many.size:
        i = int(too_many[0])
        raise ValueError(
            f"row {i} of relevance has {int(found[i])} relevant items but "
            f"n_positives[{i}] is {int(npos[i])}; n_positives must count all "
            "the relevant items of the query."
        )
    rows, ranks = np.nonzero(rel)
    return _ap_from_hit_positions(rows, ranks, npos)


def average_precision(ranking, positives, junk=()):
    """Average precision of one ranked list (Oxford ``compute_ap``).

    Junk items are removed from the ranking (they neither count as hits nor
    take a rank), and precision is integrated over recall with the trapezoid
    rule: the ``j``-th positive (0-based) at 0-based junk-free rank ``r`` adds
    ``(p0 + p1) / (2 * n_positives)`` with ``p0 = 1 if r == 0 else j / r`` and
    ``p1 = (j + 1) / (r + 1)``.  This is *not*
    :func:`sklearn.metrics.average_precision_score`.

    Parameters
    ----------
    ranking : array-like of int of shape (n_ranked,)
        Database indices, best match first.  May be truncated (shorter than
        the database); positives missing from it contribute 0.
    positives : iterable of int
        Database indices of the items relevant to the query.
    junk : iterable of int, default=()
        Database indices to ignore (removed from the ranking).

    Returns
    -------
    ap : float
        Average precision in [0, 1], or ``nan`` when ``positives`` is empty
        (the AP of a query without relevant items is undefined).

    Raises
    ------
    ValueError
        If ``ranking`` is not a 1-D sequence of non-negative integers, contains
        an index twice, or if an index is both in ``positives`` and ``junk``.

    See Also
    --------
    mean_average_precision : mean AP over queries.

    Examples
    --------
    >>> from skretrieval.metrics import average_precision
    >>> average_precision([7, 3, 5], positives=[7, 5])
    0.7916666666666666
    >>> average_precision([7, 3, 5], positives=[7, 5], junk=[3])
    1.0
    """
    ranking, positives, junk = _check_query(ranking, positives, junk)
    if positives.size == 0:
        return float("nan")
    hits = _hits_without_junk(ranking, positives, junk)
    ranks = np.flatnonzero(hits)
    ap = _ap_from_hit_positions(
        np.zeros(ranks.shape[0], dtype=np.int64), ranks, [positives.size]
    )
    return float(ap[0])


def mean_average_precision(rankings, positives, junk=None, *, return_ap=False):
    """Mean average precision (mAP) over queries.

    Every query is scored with :func:`average_precision` (junk removed,
    trapezoid rule); queries without positives are skipped.

    Parameters
    ----------
    rankings : array-like of int of shape (n_queries, k) or list of 1-D arrays
        One ranking of database indices per query, best first.  Rankings may
        be truncated and, when given as a list, may have different lengths.
    positives : list of iterables of int
        ``positives[i]`` holds the database indices relevant to query ``i``.
    junk : list of iterables of int, default=None
        ``junk[i]`` holds the database indices to ignore for query ``i``;
        ``None`` means no junk.
    return_ap : bool, default=False
        If True, also return the per-query average precisions.

    Returns
    -------
    mAP : float
        Mean of the AP of the queries that have positives; ``nan`` if none has.
    ap : ndarray of shape (n_queries,)
        Per-query AP (``nan`` for skipped queries).  Only returned when
        ``return_ap=True``.

    Warns
    -----
    UndefinedMetricWarning
        When some queries have no positives, saying how many were skipped.

    Raises
    ------
    ValueError
        On malformed rankings (see :func:`average_precision`), or when
        ``positives`` / ``junk`` do not have one entry per query.

    Examples
    --------
    >>> from skretrieval.metrics import mean_average_precision
    >>> mean_average_precision([[0, 1, 2], [2, 1, 0]], [[0], [0, 1]])
    0.7083333333333333
    """
    rankings = _check_rankings(rankings)
    n_queries = len(rankings)
    positives = _check_per_query(positives, n_queries, "positives", False)
    junk = _check_per_query(junk, n_queries, "junk", True)

    rows, ranks = [], []
    n_positives = np.zeros(n_queries, dtype=np.int64)
    for i in range(n_queries):
        ranking, pos, jnk = _check_query(
            rankings[i], positives[i], junk[i], suffix=f"[{i}]"
        )
        n_positives[i] = pos.size
        if pos.size == 0:
            continue
        r = np.flatnonzero(_hits_without_junk(ranking, pos, jnk))
        ranks.append(r)
        rows.append(np.full(r.shape[0], i, dtype=np.int64))
    if rows:
        rows = np.concatenate(rows)
        ranks = np.concatenate(ranks)
    else:
        rows = ranks = np.zeros(0, dtype=np.int64)
    ap = _ap_from_hit_positions(rows, ranks, n_positives)

    n_skipped = int(np.sum(n_positives == 0))
    _warn_skipped(n_skipped, n_queries)
    mean = float(np.mean(ap[n_positives > 0])) if n_skipped < n_queries else np.nan
    if return_ap:
        return mean, ap
    return mean


def revisitop_map(rankings, positives, junk=None, ks=(1, 5, 10)):
    """mAP and mean precision at k exactly as revisitop's ``compute_map``.

    The evaluation of the revisited Oxford and Paris benchmarks (Radenović
    et al., CVPR 2018).  The AP is that of :func:`mean_average_precision`
    (junk removed, trapezoid rule).  The precision at ``k`` is revisitop's:
    with ``pos`` the 1-based junk-free ranks of the query's positives,
    ``kq = min(max(pos), k)`` and ``P@k = |{pos <= kq}| / kq``, i.e. the
    cut-off shrinks to the rank of the last positive when every positive is
    found before rank ``k`` (a query with 3 positives at ranks 1-3 has
    P@10 = 1).  Queries without positives are skipped (``nan``), as in
    revisitop.

    Parameters
    ----------
    rankings : array-like of int of shape (n_queries, n_ranked) or list of 1-D arrays
        Ranking of the database for every query, best first.  revisitop
        ranks the whole database; with truncated rankings, positives not
        ranked count as missed, and a query none of whose positives is
        ranked has ``P@k = 0``.
    positives : list of iterables of int
        Database indices relevant to every query (revisitop's ``ok``).
    junk : list of iterables of int, default=None
        Database indices ignored for every query (revisitop's ``junk``).
    ks : sequence of int, default=(1, 5, 10)
        Cut-offs (revisitop's ``kappas``).

    Returns
    -------
    mAP : float
        Mean AP over the queries that have positives.
    aps : ndarray of shape (n_queries,)
        AP of every query (``nan`` when it has no positives).
    mpr : ndarray of shape (len(ks),)
        Mean precision at every cut-off.
    prs : ndarray of shape (n_queries, len(ks))
        Precision of every query at every cut-off (``nan`` rows for queries
        without positives).

    Examples
    --------
    >>> from skretrieval.metrics import revisitop_map
    >>> m, aps, mpr, prs = revisitop_map([[3, 0, 1, 2]], [[0, 2]], [[1]], ks=[1, 5])
    >>> round(m, 4), mpr.tolist()
    (0.4167, [0.0, 0.6666666666666666])
    """
    ks, _ = _check_k(list(ks) if not isinstance(ks, Integral) else ks)
    rankings = _check_rankings(rankings)
    n_queries = len(rankings)
    positives = _check_per_query(positives, n_queries, "positives", False)
    junk = _check_per_query(junk, n_queries, "junk", True)
    aps = np.full(n_queries, np.nan)
    prs = np.full((n_queries, ks.shape[0]), np.nan)
    for i in range(n_queries):
        ranking, pos, jnk = _check_query(rankings[i], positives[i], junk[i], f"[{i}]")
        if pos.size == 0:
            continue
        ranks = np.flatnonzero(_hits_without_junk(ranking, pos, jnk))
        aps[i] = _ap_from_hit_positions(np.zeros(ranks.shape[0], np.int64), ranks,
                                        [pos.size])[0]
        if ranks.size == 0:
            prs[i] = 0.0
            continue
        one_based = ranks + 1
        kq = np.minimum(one_based.max(), ks)
        prs[i] = (one_based[None, :] <= kq[:, None]).sum(axis=1) / kq
    defined = ~np.isnan(aps)
    _warn_skipped(int(n_queries - defined.sum()), n_queries)
    if not defined.any():
        return float("nan"), aps, np.full(ks.shape[0], np.nan), prs
    return float(aps[defined].mean()), aps, prs[defined].mean(axis=0), prs


# ---------------------------------------------------------------------------
# precision at k and UKBench
# ---------------------------------------------------------------------------
def _precision_at_ks(ranking, positives, junk, ks):
    hits = _hits_without_junk(ranking, positives, junk)[: int(ks.max())]
    cum = np.concatenate(([0], np.cumsum(hits)))
    return cum[np.minimum(ks, hits.shape[0])] / ks


def precision_at_k(ranking, positives, k, junk=()):
    """Precision at rank ``k`` of one ranked list.

    The fraction of the top ``k`` items of the junk-free ranking that are
    positive.  The denominator is always ``k``: when fewer than ``k`` items
    remain (truncated ranking), the missing ones count as non-relevant.

    Parameters
    ----------
    ranking : array-like of int of shape (n_ranked,)
        Database indices, best match first.
    positives : iterable of int
        Database indices of the items relevant to the query.
    k : int or sequence of int
        Cut-off rank(s), each >= 1.
    junk : iterable of int, default=()
        Database indices removed from the ranking before counting.

    Returns
    -------
    precision : float or ndarray of shape (len(k),)
        A float when ``k`` is an int, else one value per cut-off.  ``nan``
        when ``positives`` is empty (as in revisitop, the query is undefined).

    Raises
    ------
    ValueError
        On malformed inputs (see :func:`average_precision`) or when ``k`` is
        not a positive integer (or a sequence of them).

    Examples
    --------
    >>> from skretrieval.metrics import precision_at_k
    >>> precision_at_k([4, 2, 9, 1], positives=[4, 9], k=2)
    0.5
    >>> precision_at_k([4, 2, 9, 1], positives=[4, 9], k=[1, 3])
    array([1.        , 0.66666667])
    """
    ks, scalar = _check_k(k)
    ranking, positives, junk = _check_query(ranking, positives, junk)
    if positives.size == 0:
        prec = np.full(ks.shape[0], np.nan)
    else:
        prec = _precision_at_ks(ranking, positives, junk, ks)
    return float(prec[0]) if scalar else prec


def mean_precision_at_k(rankings, positives, k, junk=None):
    """Mean precision at rank ``k`` over queries.

    See :func:`precision_at_k`; queries without positives are skipped.

    Parameters
    ----------
    rankings : array-like of int of shape (n_queries, n_ranked) or list of 1-D arrays
        One ranking of database indices per query, best first.
    positives : list of iterables of int
        ``positives[i]`` holds the database indices relevant to query ``i``.
    k : int or sequence of int
        Cut-off rank(s), each >= 1.
    junk : list of iterables of int, default=None
        ``junk[i]`` holds the indices to ignore for query ``i``; ``None`` means
        no junk.

    Returns
    -------
    precision : float or ndarray of shape (len(k),)
        Mean precision at each cut-off over the queries with positives
        (``nan`` if there is none).

    Warns
    -----
    UndefinedMetricWarning
        When some queries have no positives, saying how many were skipped.

    Examples
    --------
    >>> from skretrieval.metrics import mean_precision_at_k
    >>> mean_precision_at_k([[0, 1], [1, 0]], [[0], [0]], k=1)
    0.5
    """
    ks, scalar = _check_k(k)
    rankings = _check_rankings(rankings)
    n_queries = len(rankings)
    positives = _check_per_query(positives, n_queries, "positives", False)
    junk = _check_per_query(junk, n_queries, "junk", True)

    precisions = []
    n_skipped = 0
    for i in range(n_queries):
        ranking, pos, jnk = _check_query(
            rankings[i], positives[i], junk[i], suffix=f"[{i}]"
        )
        if pos.size == 0:
            n_skipped += 1
            continue
        precisions.append(_precision_at_ks(ranking, pos, jnk, ks))
    _warn_skipped(n_skipped, n_queries)
    if precisions:
        mean = np.mean(precisions, axis=0)
    else:
        mean = np.full(ks.shape[0], np.nan)
    return float(mean[0]) if scalar else mean


def ukbench_score(rankings, positives):
    """UKBench N-S score: mean number of positives among the top 4 results.

    On the UKBench benchmark (Nistér & Stewénius) every object has 4 images,
    each image is used as a query against the whole collection, and **the
    query image itself is in the database and counts**: ``positives[i]``
    must therefore include query ``i``'s own database index, and a perfect
    system scores 4.

    Parameters
    ----------
    rankings : array-like of int of shape (n_queries, k) or list of 1-D arrays
        One ranking of database indices per query, best first (only the first
        4 entries are used; shorter rankings are allowed).
    positives : list of iterables of int
        ``positives[i]`` holds the database indices of the images of query
        ``i``'s object, the query included.

    Returns
    -------
    score : float
        Mean over queries of the number of positives in the top 4, in [0, 4]
        (``nan`` when there are no queries).

    Examples
    --------
    >>> from skretrieval.metrics import ukbench_score
    >>> ukbench_score([[0, 1, 5, 2, 3]], [[0, 1, 2, 3]])
    3.0
    """
    rankings = _check_rankings(rankings)
    n_queries = len(rankings)
    positives = _check_per_query(positives, n_queries, "positives", False)
    if n_queries == 0:
        return float("nan")
    counts = np.empty(n_queries)
    for i in range(n_queries):
        ranking, pos, _ = _check_query(rankings[i], positives[i], None, f"[{i}]")
        counts[i] = np.isin(ranking[:4], pos, assume_unique=True).sum()
    return float(counts.mean())
