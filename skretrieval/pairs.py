"""Image-pair lists for visual localization and structure-from-motion.

Retrieval picks, for every query image, the database images worth matching
with local features; localisation and SfM pipelines read those choices from
a *pairs file*.  Two formats are written and read:

``"kapture"``
    The pairs files of NAVER's kapture / kapture-localization
    (``compute_image_pairs.py``, read by ``get_pairs_from_file``): comment
    lines, then one ``query_name, map_name, score`` line per pair, fields
    separated by a comma and a space, the best pairs of each query first::

        # kapture format: 1.1
        # query_image, map_image, score
        query/q1.jpg, db/a.jpg, 0.91
        query/q1.jpg, db/b.jpg, 0.87

``"colmap"`` (alias ``"hloc"``)
    The image-pair list of COLMAP's custom matching (``matches_importer
    --match_type pairs``) and of hloc (``pairs_from_retrieval``): one
    ``query_name database_name`` line per pair, separated by a single
    space, no score::

        query/q1.jpg db/a.jpg
        query/q1.jpg db/b.jpg

Image names are written as given, with forward slashes (a ``pathlib`` path
or the ``os.sep`` of Windows is converted): they should be relative to the
image root the consumer uses (the labels of an index built by ``skretrieval
index`` are relative to its folder).

Scores are **similarities** (higher is better).  The distances returned by
:meth:`NearestNeighborRetriever.kneighbors` are converted by
:func:`scores_from_distances`: ``1 - distance`` for the cosine metric (the
cosine similarity) and ``-distance`` for every other metric
(``"inner_product"``: the inner product; ``"euclidean"``: minus the
Euclidean distance).

Functions
---------
:func:`pairs_from_retriever`
    Rank a database for queries (or for itself) with a fitted retriever or
    retrieval pipeline and return an :class:`ImagePairs`.
:func:`write_pairs`, :func:`read_pairs`
    Write and read pairs files.
:func:`scores_from_distances`
    Similarities from the retriever's distances.
"""

from __future__ import annotations

import os
from numbers import Integral
from pathlib import PurePath
from typing import NamedTuple, Optional

import numpy as np

from .utils._arrays import similarities_from_distances

__all__ = [
    "ImagePairs",
    "pairs_from_retriever",
    "read_pairs",
    "scores_from_distances",
    "write_pairs",
]

FORMATS = ("kapture", "colmap")
_ALIASES = {"kapture": "kapture", "colmap": "colmap", "hloc": "colmap"}
# what kapture.io.csv.table_to_file writes before the header of a table
KAPTURE_VERSION_LINE = "# kapture format: 1.1"
KAPTURE_HEADER = "# query_image, map_image, score"


class ImagePairs(NamedTuple):
    """Top-ranked database images of each query, as :func:`write_pairs` takes them.

    Pass it whole, ``write_pairs(path, pairs)``, or unpacked,
    ``write_pairs(path, *pairs)``.

    Attributes
    ----------
    query_names : ndarray of str, shape (n_queries,)
        Name of every query image.

    database_names : ndarray of str, shape (n_database,)
        Name of every database image (unique).

    indices : ndarray of int, shape (n_queries, n_columns)
        Database indices of the pairs of each query, best first; ``-1``
        pads the rows that have fewer pairs (e.g. after dropping a self-pair
        when the database is smaller than ``k``).

    scores : ndarray of float, shape (n_queries, n_columns), or None
        Similarities of the pairs (higher is better, non-increasing along
        each row); NaN where ``indices`` is ``-1``.
    """

    query_names: np.ndarray
    database_names: np.ndarray
    indices: np.ndarray
    scores: Optional[np.ndarray] = None

    def to_list(self):
        """The pairs as a list of ``(query_name, database_name, score)`` tuples.

        In the order :func:`write_pairs` writes them (queries in order, best
        pairs first); ``score`` is a float, or None without scores.  This is
        also what :func:`read_pairs` returns.
        """
        query_names, database_names, indices, scores = _validate(*self)
        return [
            (str(query), str(name), None if scores is None else float(scores[q, c]))
            for query, name, q, c in _iter_pairs(query_names, database_names, indices,
                                                 k=None, exclude_self=False)
        ]


# ---------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------
def scores_from_distances(distances, metric="cosine"):
    """Similarities (higher is better) from nearest-neighbour distances.

    Parameters
    ----------
    distances : array-like of float
        Distances as returned by :meth:`NearestNeighborRetriever.kneighbors`
        (smaller is closer).

    metric : str, default="cosine"
        The retriever's metric.  ``"cosine"``: ``1 - distance``, the cosine
        similarity; any other (``"inner_product"``, ``"euclidean"``, or the
        metrics of scikit-learn's neighbours estimators): ``-distance``,
        i.e. the inner product for ``"inner_product"`` and minus the
        Euclidean distance for ``"euclidean"``.

    Returns
    -------
    scores : ndarray of the same shape (float32 for float32 distances)
    """
    return similarities_from_distances(distances, metric)


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------
def _as_name(value, what):
    """One image name as a str with forward slashes."""
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, (str, np.str_)):
        name = str(value)
    elif isinstance(value, os.PathLike):
        name = os.fspath(value)
        if not isinstance(name, str):
            raise TypeError(f"{what} must be image names (str), got bytes path {name!r}")
    else:
        raise TypeError(
            f"{what} must be image names (str or path), got {type(value).__name__} "
            f"{value!r}"
        )
    for sep in (os.sep, os.altsep):
        if sep and sep != "/":
            name = name.replace(sep, "/")
    return name


def _as_names(values, what):
    if isinstance(values, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be a sequence of image names, got one {values!r}")
    names = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        names[i] = _as_name(value, what)
    return names


def _check_name(name, fmt, query):
    """Raise a ValueError if ``name`` cannot be written in a ``fmt`` pairs file."""
    role = "query image" if query else "database image"
    if not name:
        raise ValueError(f"empty {role} name: pairs files need a name for every image")
    if "\n" in name or "\r" in name:
        raise ValueError(f"{role} name {name!r} contains a line break, which a pairs "
                         "file cannot hold")
    if query and name.startswith("#"):
        raise ValueError(f"{role} name {name!r} starts with '#': its lines would be "
                         "read as comments")
    if fmt == "colmap":
        if any(c.isspace() for c in name):
            raise ValueError(
                f"{role} name {name!r} contains whitespace, which the COLMAP / hloc "
                "pairs format cannot hold (its two names are separated by a space); "
                "rename the image or use the kapture format"
            )
    else:
        if "," in name:
            raise ValueError(
                f"{role} name {name!r} contains a comma, which the kapture pairs format "
                "cannot hold (its fields are comma-separated); rename the image or use "
                "the COLMAP format"
            )
        if name != name.strip():
            raise ValueError(
                f"{role} name {name!r} starts or ends with whitespace, which kapture "
                "strips when it reads a pairs file"
            )


def check_names(names, fmt, query):
    """Check image names for a pairs format (used by the command line too)."""
    fmt = _check_format(fmt)
    for name in names:
        _check_name(_as_name(name, "names"), fmt, query)


def _check_format(fmt):
    if not isinstance(fmt, str) or fmt.lower() not in _ALIASES:
        raise ValueError(f"format must be 'kapture' or 'colmap' (or 'hloc'), got {fmt!r}")
    return _ALIASES[fmt.lower()]


# ---------------------------------------------------------------------------
# validation and pair list
# ---------------------------------------------------------------------------
def _validate(query_names, database_names, indices, scores):
    query_names = _as_names(query_names, "query_names")
    database_names = _as_names(database_names, "database_names")
    seen = set()
    for name in database_names:
        if name in seen:
            raise ValueError(f"database_names must be unique, {name!r} appears more than "
                             "once: a pairs file identifies images by name")
        seen.add(name)

    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"indices must be 2-D (n_queries, n_neighbors), got shape "
                         f"{indices.shape}")
    if indices.size and indices.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
    indices = indices.astype(np.intp, copy=False)
    if indices.shape[0] != len(query_names):
        raise ValueError(f"indices has {indices.shape[0]} row(s) but there are "
                         f"{len(query_names)} query name(s)")
    n_db = len(database_names)
    bad = (indices < -1) | (indices >= n_db)
    if bad.any():
        q, c = np.argwhere(bad)[0]
        raise ValueError(
            f"indices out of range: indices[{q}, {c}] = {indices[q, c]}, but there are "
            f"{n_db} database name(s) (valid: 0 to {n_db - 1}, or -1 for no pair)"
        )
    valid = indices >= 0

    if scores is not None:
        scores = np.asarray(scores)
        if scores.dtype.kind not in "fiu":
            raise ValueError(f"scores must be numbers, got dtype {scores.dtype}")
        if scores.dtype.kind != "f":
            scores = scores.astype(np.float64)
        if scores.shape != indices.shape:
            raise ValueError(f"scores has shape {scores.shape}, indices {indices.shape}: "
                             "they must match")
        finite = np.isfinite(scores)
        if not finite[valid].all():
            q, c = np.argwhere(valid & ~finite)[0]
            raise ValueError(f"scores must be finite, got scores[{q}, {c}] = {scores[q, c]} "
                             f"for the pair ({query_names[q]!r}, "
                             f"{database_names[indices[q, c]]!r})")
        for q in range(scores.shape[0]):
            row = scores[q, valid[q]]
            if row.size > 1 and np.any(row[1:] > row[:-1]):
                raise ValueError(
                    f"the scores of query {q} ({query_names[q]!r}) are not sorted best "
                    "first: scores must be similarities (higher is better) in "
                    "decreasing order; convert the distances of kneighbors with "
                    "scores_from_distances(distances, metric)"
                )
    return query_names, database_names, indices, scores


def _iter_pairs(query_names, database_names, indices, *, k, exclude_self):
    """Yield ``(query_name, database_name, row, column)`` of the pairs to write."""
    for q, query in enumerate(query_names):
        n = 0
        for c, i in enumerate(indices[q]):
            if k is not None and n >= k:
                break
            if i < 0:
                continue
            name = database_names[i]
            if exclude_self and name == query:
                continue
            yield query, name, q, c
            n += 1


def _format_score(value, decimals):
    value = value + value.dtype.type(0.0)  # no "-0.0"
    if decimals is None:
        return np.format_float_positional(value, unique=True, trim="0")
    return np.format_float_positional(value, precision=decimals, unique=True, trim="0")


# ---------------------------------------------------------------------------
# writing and reading
# ---------------------------------------------------------------------------
def write_pairs(path, query_names, database_names=None, indices=None, scores=None, *,
                k=None, format="kapture", exclude_self=True, decimals=None):
    """Write the top-ranked database images of queries as a pairs file.

    Parameters
    ----------
    path : str or path-like
        File to write (overwritten; its folder must exist).  Written in
        UTF-8 with ``\\n`` line ends.

    query_names : sequence of str, or ImagePairs
        Name of every query image (``str`` or ``pathlib`` paths; written with
        forward slashes).  An :class:`ImagePairs` (from
        :func:`pairs_from_retriever`) may be passed instead of the four
        arrays.

    database_names : sequence of str
        Name of every database image; unique.

    indices : array-like of int, shape (n_queries, n_neighbors)
        Database indices of the neighbours of each query, best first (as
        returned by ``kneighbors``); ``-1`` marks no neighbour and is
        skipped.

    scores : array-like of float, shape (n_queries, n_neighbors), default=None
        Similarities of the neighbours, higher is better and non-increasing
        along each row (see :func:`scores_from_distances`); finite.  Needed
        by the kapture format, ignored (but checked) by the COLMAP one.

    k : int, default=None
        Write at most ``k`` pairs per query (after leaving out self-pairs);
        None writes them all.

    format : {"kapture", "colmap"}, default="kapture"
        ``"kapture"``: kapture-localization's pairs file, comment lines
        ``# kapture format: 1.1`` and ``# query_image, map_image, score``
        then ``query, map, score`` lines.  ``"colmap"`` (alias ``"hloc"``):
        ``query database`` lines, the image-pair list of COLMAP's custom
        matching and of hloc.

    exclude_self : bool, default=True
        Leave out the pairs of a query with a database image of the same
        name: a query matched with itself (e.g. when the database images are
        their own queries, for mapping) is useless to localise it or to
        reconstruct the scene.  ``k`` counts the remaining pairs.

    decimals : int, default=None
        Round the scores to at most this many decimals; None writes the
        shortest text that reads back as the same float (float32 scores stay
        short: ``0.95238096``).

    Returns
    -------
    n_pairs : int
        Number of pairs written.

    Raises
    ------
    ValueError
        Mismatched shapes, indices out of range, non-finite or unsorted
        scores, duplicate database names, or a written image name the format
        cannot hold (empty, a line break, a query starting with ``#``; for
        COLMAP any whitespace; for kapture a comma or leading / trailing
        whitespace), named in the message.

    Examples
    --------
    >>> import io, os, tempfile
    >>> from skretrieval.pairs import read_pairs, write_pairs
    >>> path = os.path.join(tempfile.mkdtemp(), "pairs.txt")
    >>> write_pairs(path, ["q.jpg", "b.jpg"], ["a.jpg", "b.jpg", "c.jpg"],
    ...             [[1, 0], [1, 2]], [[0.9, 0.5], [1.0, 0.25]])
    3
    >>> print(open(path).read(), end="")
    # kapture format: 1.1
    # query_image, map_image, score
    q.jpg, b.jpg, 0.9
    q.jpg, a.jpg, 0.5
    b.jpg, c.jpg, 0.25
    >>> read_pairs(path)[0]
    ('q.jpg', 'b.jpg', 0.9)
    """
    if isinstance(query_names, ImagePairs):
        if database_names is not None or indices is not None or scores is not None:
            raise TypeError("pass either an ImagePairs or query_names, database_names, "
                            "indices (and scores), not both")
        query_names, database_names, indices, scores = query_names
    elif database_names is None or indices is None:
        raise TypeError("write_pairs needs database_names and indices (or an ImagePairs)")
    fmt = _check_format(format)
    if k is not None and (not isinstance(k, Integral) or isinstance(k, bool) or k < 1):
        raise ValueError(f"k must be a positive int or None, got {k!r}")
    if decimals is not None and (not isinstance(decimals, Integral) or decimals < 0):
        raise ValueError(f"decimals must be a non-negative int or None, got {decimals!r}")
    query_names, database_names, indices, scores = _validate(
        query_names, database_names, indices, scores)
    if fmt == "kapture" and scores is None:
        raise ValueError("the kapture pairs format needs scores (similarities); pass "
                         "scores, or use format='colmap'")

    lines = [KAPTURE_VERSION_LINE, KAPTURE_HEADER] if fmt == "kapture" else []
    checked = set()
    n_pairs = 0
    for query, name, q, c in _iter_pairs(query_names, database_names, indices,
                                         k=k, exclude_self=exclude_self):
        for value, is_query in ((query, True), (name, False)):
            if (value, is_query) not in checked:
                _check_name(value, fmt, is_query)
                checked.add((value, is_query))
        if fmt == "kapture":
            lines.append(f"{query}, {name}, {_format_score(scores[q, c], decimals)}")
        else:
            lines.append(f"{query} {name}")
        n_pairs += 1
    text = "".join(line + "\n" for line in lines)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return n_pairs


def read_pairs(path, format="kapture"):
    """Read a pairs file written by :func:`write_pairs` (or by kapture, COLMAP, hloc).

    Parameters
    ----------
    path : str or path-like
        The pairs file (UTF-8).

    format : {"kapture", "colmap"}, default="kapture"
        Its format (``"hloc"`` is an alias of ``"colmap"``).  Empty lines
        and lines starting with ``#`` are skipped in both.

    Returns
    -------
    pairs : list of (str, str, float or None)
        ``(query_name, database_name, score)`` in file order; ``score`` is
        None in the COLMAP format.

    Raises
    ------
    ValueError
        A line without exactly 3 comma-separated fields (kapture) or 2
        space-separated names (COLMAP), or a score that is not a number,
        with its line number.
    """
    fmt = _check_format(format)
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if fmt == "kapture":
                fields = [field.strip() for field in text.split(",")]
                if len(fields) != 3:
                    raise ValueError(f"{os.fspath(path)}, line {number}: expected "
                                     f"'query_image, map_image, score', got {text!r}")
                try:
                    score = float(fields[2])
                except ValueError:
                    raise ValueError(f"{os.fspath(path)}, line {number}: score "
                                     f"{fields[2]!r} is not a number") from None
                pairs.append((fields[0], fields[1], score))
            else:
                fields = text.split()
                if len(fields) != 2:
                    raise ValueError(f"{os.fspath(path)}, line {number}: expected "
                                     f"'query_name database_name', got {text!r}")
                pairs.append((fields[0], fields[1], None))
    return pairs


# ---------------------------------------------------------------------------
# from a retriever
# ---------------------------------------------------------------------------
def _split_estimator(estimator):
    """``(retriever, transform)`` of a retrieval pipeline or a bare retriever."""
    if hasattr(estimator, "steps") and hasattr(estimator, "__getitem__"):
        retriever = estimator[-1]
        head = estimator[:-1] if len(estimator) > 1 else None
        transform = head.transform if head is not None else None
    else:
        retriever, transform = estimator, None
    if not hasattr(retriever, "kneighbors"):
        raise TypeError(f"{type(retriever).__name__} has no kneighbors method; pass a "
                        "fitted NearestNeighborRetriever or a pipeline ending with one")
    if getattr(retriever, "n_samples_fit_", None) is None:
        raise ValueError(f"this {type(retriever).__name__} is not fitted yet; call fit "
                         "first")
    return retriever, transform


def _default_database_names(retriever):
    labels = getattr(retriever, "y_", None)
    if labels is None:
        raise ValueError("the retriever was fitted without labels: pass database_names "
                         "(the image name of every database item)")
    labels = np.asarray(labels)
    if not all(isinstance(v, (str, np.str_)) for v in labels.ravel()):
        raise ValueError(f"the retriever's labels (dtype {labels.dtype}) are not image "
                         "names: pass database_names (the image name of every database "
                         "item)")
    if len(np.unique(labels)) != len(labels):
        raise ValueError("the retriever's labels are not unique image names (classes?): "
                         "pass database_names (the image name of every database item)")
    return labels


def pairs_from_retriever(estimator, queries=None, *, query_names=None,
                         database_names=None, k=20, exclude_self=True):
    """Top-``k`` database images of queries, for a pairs file.

    Parameters
    ----------
    estimator : NearestNeighborRetriever or Pipeline
        A fitted retriever, or a fitted retrieval pipeline ending with one
        (e.g. loaded from a file of ``skretrieval index``), whose steps
        before the retriever transform ``queries`` into descriptors.

    queries : array-like, default=None
        Query images (for a pipeline: what its first step takes, e.g. image
        paths) or descriptors (for a bare retriever).  None pairs the
        database with itself (``kneighbors(X=None)``: each image ranks the
        others, never itself), as used for mapping / SfM.

    query_names : sequence of str, default=None
        Name of every query.  Defaults to ``database_names`` when
        ``queries`` is None, and to ``queries`` themselves when they are
        paths (str or path-like); required otherwise.

    database_names : sequence of str, default=None
        Name of every database item, in the order it was fitted.  Defaults
        to the retriever's labels ``y_`` when they are unique strings (an
        index built by ``skretrieval index`` holds the image paths relative
        to its folder).

    k : int, default=20
        Pairs per query; at most the size of the database (minus the query
        itself).

    exclude_self : bool, default=True
        Leave out a database image named like the query (one more neighbour
        is searched so that ``k`` pairs remain).  With ``queries=None`` each
        image is always left out of its own ranking.

    Returns
    -------
    pairs : ImagePairs
        ``(query_names, database_names, indices, scores)`` with scores the
        similarities of :func:`scores_from_distances` for the retriever's
        metric, best first; pass it to :func:`write_pairs`.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import NearestNeighborRetriever
    >>> from skretrieval.pairs import pairs_from_retriever
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> names = np.array(["a.jpg", "b.jpg", "c.jpg"])
    >>> retriever = NearestNeighborRetriever().fit(X, names)
    >>> pairs_from_retriever(retriever, k=1).to_list()[0][:2]
    ('a.jpg', 'b.jpg')
    """
    if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    retriever, transform = _split_estimator(estimator)
    n_db = int(retriever.n_samples_fit_)
    if database_names is None:
        database_names = _default_database_names(retriever)
    database_names = _as_names(database_names, "database_names")
    if len(database_names) != n_db:
        raise ValueError(f"database_names has {len(database_names)} name(s) but the "
                         f"retriever holds {n_db} item(s)")
    metric = getattr(retriever, "metric", "cosine")

    if queries is None:
        if n_db < 2:
            raise ValueError("pairing the database with itself needs at least 2 items, "
                             f"got {n_db}")
        query_names = database_names if query_names is None else _as_names(
            query_names, "query_names")
        if len(query_names) != n_db:
            raise ValueError(f"query_names has {len(query_names)} name(s); with "
                             f"queries=None the queries are the {n_db} database items")
        dist, ind = retriever.kneighbors(None, n_neighbors=min(k, n_db - 1))
        return ImagePairs(query_names, database_names, np.asarray(ind, dtype=np.intp),
                          scores_from_distances(dist, metric))

    if query_names is None:
        if isinstance(queries, (list, tuple, np.ndarray)) and all(
                isinstance(q, (str, np.str_, os.PathLike)) for q in queries):
            query_names = queries
        else:
            raise ValueError("pass query_names (the name of every query image)")
    query_names = _as_names(query_names, "query_names")
    X = transform(queries) if transform is not None else queries
    n_queries = len(query_names)
    n_x = X.shape[0] if hasattr(X, "shape") else len(X)
    if n_x != n_queries:
        raise ValueError(f"{n_x} query descriptor(s) but {n_queries} query name(s)")
    n_request = min(k + int(bool(exclude_self)), n_db)
    dist, ind = retriever.kneighbors(X, n_neighbors=n_request)
    ind = np.asarray(ind, dtype=np.intp)
    scores = scores_from_distances(dist, metric)
    width = min(k, n_request)
    if exclude_self:
        drop = database_names[ind] == query_names[:, np.newaxis]
        # move the self-pairs to the end of their row (stable), pad them
        order = np.argsort(drop, axis=1, kind="stable")
        ind = np.take_along_axis(ind, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        drop = np.take_along_axis(drop, order, axis=1)
        ind[drop] = -1
        scores[drop] = np.nan
        ind, scores = ind[:, :width], scores[:, :width]
    return ImagePairs(query_names, database_names, ind, scores)
