"""Nearest-neighbour search over a database of global image descriptors."""

import contextlib
import math
import os
import warnings
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.preprocessing import normalize
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ..utils._files import atomic_write, file_lock, remove_stale_temps
from ..utils._state import LABELS, Attr, PathParam, StateSpec
from ..metrics._ranking import average_precision_from_relevance

__all__ = ["NearestNeighborRetriever"]

# Budget of one block of the brute-force similarity matrix, in bytes.
_BLOCK_BYTES = 256 * 2**20
# Budget of the (queries, neighbours, features) gathers used to compute exact
# distances of approximate neighbours, in bytes.
_GATHER_BYTES = 64 * 2**20
# Metric names of pynndescent.
_NNDESCENT_METRICS = {
    "cosine": "cosine",
    "inner_product": "dot",
    "euclidean": "euclidean",
}
# Budget of one block of database rows read from a memory-mapped or float16
# store (converted to float32) by the brute-force search, in bytes.
_STORE_BLOCK_BYTES = 8 * 2**20
# Database items searched at once as queries (kneighbors(None)) when the
# database is streamed.
_STREAMED_QUERY_ROWS = 65536
# Rows added to a FAISS index per call (bounds the float32 copy of a store).
_FAISS_ADD_ROWS = 65536
# Keys of ``algorithm_params`` with algorithm="faiss".
_FAISS_PARAMS = {"factory", "nlist", "m", "nprobe", "k_factor", "train_size"}
_FAISS_DEFAULT_FACTORY = "IVF{nlist},Flat"
_FAISS_DEFAULT_NPROBE = 16


def _import_faiss():
    """The faiss module, or an ImportError naming the extra that installs it."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "algorithm='faiss' needs the faiss package (faiss-cpu), an optional "
            "dependency of skretrieval: pip install skretrieval[faiss] (or pip "
            "install faiss-cpu)"
        ) from exc
    return faiss


@contextlib.contextmanager
def _faiss_threads(faiss, n_jobs):
    """Run FAISS with ``n_jobs`` OpenMP threads (None or -1: leave as is)."""
    if n_jobs is None or n_jobs == -1:
        yield
        return
    before = faiss.omp_get_max_threads()
    n = n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    faiss.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _default_nlist(n_samples):
    """Number of IVF lists: about ``4 sqrt(n)``, at least 39 points per list."""
    return int(max(1, min(round(4 * math.sqrt(n_samples)), n_samples // 39)))


def _default_pq_m(n_features):
    """Sub-quantizers of PQ: the largest divisor of ``d`` up to ``d / 4``."""
    for m in range(max(1, n_features // 4), 0, -1):
        if n_features % m == 0:
            return m
    return 1


def _id_kind(ids):
    """'int', 'str' or 'other': ids of different kinds cannot be mixed."""
    kind = ids.dtype.kind
    if kind in "iu":
        return "int"
    if kind in "US":
        return "str"
    if kind == "O" and all(isinstance(v, str) for v in ids.tolist()):
        return "str"
    return "other"


def _block_size(k, n_cols):
    """Columns per block of :func:`_top_k_blocked`, or 0 to select directly.

    About ``sqrt(n_cols / k)`` (a power of two), when that leaves at least
    ``8 k`` blocks.
    """
    size = 1 << max(0, int(math.log2(max(1.0, math.sqrt(n_cols / max(k, 1))))))
    size = min(size, 1024)
    return size if size >= 16 and n_cols >= 8 * k * size else 0


def _top_k_blocked(keys, k, size):
    """:func:`_top_k` of long rows, by way of the minima of column blocks.

    The columns are split into blocks of ``size`` columns (block ``j`` holds
    the columns ``j, j + n_blocks, j + 2 n_blocks...``: its minimum is then
    an element-wise minimum of contiguous slices, one fast pass over the
    keys; the last ``n_columns % size`` columns form one more block).  Every
    key among the ``k`` smallest of a row (ties included) lies in a block
    whose minimum is at most the ``k``-th smallest block minimum, so only
    those blocks, about ``k x size`` keys per row, are then looked at, in
    column order: the result (ties by lower column) is that of the direct
    selection.
    """
    n_rows, n_cols = keys.shape
    n_blocks = n_cols // size
    stop = n_blocks * size
    has_tail = stop < n_cols
    mins = np.empty((n_rows, n_blocks + int(has_tail)), dtype=keys.dtype)
    # fmin ignores NaN (excluded items) unless a whole block is NaN
    np.fmin.reduce(keys[:, :stop].reshape(n_rows, size, n_blocks), axis=1,
                   out=mins[:, :n_blocks])
    if has_tail:
        np.fmin.reduce(keys[:, stop:], axis=1, out=mins[:, n_blocks])
    threshold = np.partition(mins, k - 1, axis=1)[:, k - 1 : k]
    selected = mins <= threshold
    n_selected = int(np.count_nonzero(selected, axis=1).max())
    # the selected blocks of every row (padded with unselected ones)
    blocks = np.argsort(~selected, axis=1, kind="stable")[:, :n_selected]
    valid = np.take_along_axis(selected, blocks, axis=1)[:, :, np.newaxis]
    offsets = np.arange(size)
    cols = np.where(blocks[:, :, np.newaxis] < n_blocks,
                    blocks[:, :, np.newaxis] + offsets * n_blocks,
                    stop + offsets)
    cols[~valid | (cols >= n_cols)] = n_cols  # nothing: sorted last
    cols = np.sort(cols.reshape(n_rows, n_selected * size), axis=1)
    missing = cols == n_cols
    cols[missing] = n_cols - 1
    values = np.take_along_axis(keys, cols, axis=1)
    values[missing] = np.nan
    values, pos = _top_k(values, k, blocked=False)
    return values, np.take_along_axis(cols, pos, axis=1)


def _top_k(keys, k, scratch=None, blocked=True):
    """The ``k`` smallest keys of every row, ties broken by the lower column.

    ``keys`` is a float array of shape (n_rows, n_columns); NaN entries are
    never selected (they rank after everything) as long as every row has at
    least ``k`` non-NaN entries.  ``scratch``, an optional array of the same
    shape and dtype, is overwritten (it saves an allocation per call).
    Returns ``(values, columns)`` of shape (n_rows, k) sorted by increasing
    value, then increasing column.  Rows much longer than ``k`` go through
    :func:`_top_k_blocked` (unless ``blocked=False``), with the same result.
    """
    n_rows, n_cols = keys.shape
    if k == 0:
        return (
            np.empty((n_rows, 0), dtype=keys.dtype),
            np.empty((n_rows, 0), dtype=np.intp),
        )
    if k >= n_cols - 1:
        # (Almost) the full ranking: a stable sort keeps ties in column order
        # and puts NaN last.
        cols = np.argsort(keys, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(keys, cols, axis=1), cols
    size = _block_size(k, n_cols) if blocked else 0
    if size:
        return _top_k_blocked(keys, k, size)

    if scratch is None:
        scratch = np.empty_like(keys)
    np.copyto(scratch, keys)
    scratch.partition(k - 1, axis=1)
    kth = scratch[:, k - 1 : k].copy()
    selected = keys <= kth  # NaN compares False
    over = np.flatnonzero(np.count_nonzero(selected, axis=1) > k)
    if over.size:
        # Rows with ties at the k-th value: keep all the keys smaller than it
        # and the first tied keys, by column, up to k in all.
        sub, value = keys[over], kth[over]
        less = sub < value
        tied = sub == value
        needed = k - np.count_nonzero(less, axis=1)
        tied &= np.cumsum(tied, axis=1, dtype=np.int32) <= needed[:, np.newaxis]
        selected[over] = less | tied
    # np.nonzero lists the selected columns row by row, in increasing order.
    cols = np.nonzero(selected)[1].reshape(n_rows, k)
    values = np.take_along_axis(keys, cols, axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    return (
        np.take_along_axis(values, order, axis=1),
        np.take_along_axis(cols, order, axis=1),
    )


def _as_float32(block, buffer=None):
    """A C-contiguous float32 copy of ``block`` (or ``block`` itself).

    float16 is converted by torch (a hard dependency), several times faster
    than numpy's conversion, into the first rows of ``buffer`` if given (a
    float32 array of at least as many rows, reused from one block to the
    next: a fresh array of tens of MB costs its page faults at every block).
    """
    if block.dtype != np.float16:
        return np.ascontiguousarray(block, dtype=np.float32)
    import torch

    if buffer is None:
        out = np.empty(block.shape, dtype=np.float32)
    else:
        out = buffer[: block.shape[0]]
    with warnings.catch_warnings():  # a read-only memory map: torch warns
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(np.ascontiguousarray(block))
    torch.from_numpy(out).copy_(source)
    return out


def _products(Q, X, out=None):
    """``Q @ X.T`` (float32), into ``out`` if given.

    A single query is a matrix-vector product ``X @ q``, which reads the
    rows of ``X`` in order (the memory-bound case).
    """
    if out is None:
        out = np.empty((Q.shape[0], X.shape[0]), dtype=np.float32)
    if Q.shape[0] == 1 and out[0].flags.c_contiguous:
        np.matmul(X, Q[0], out=out[0])
    else:
        np.matmul(Q, X.T, out=out)
    return out


def _sort_by_key_then_index(keys, ind):
    """Sort every row by increasing key, ties by increasing index."""
    order = np.argsort(ind, axis=1, kind="stable")
    ind = np.take_along_axis(ind, order, axis=1)
    keys = np.take_along_axis(keys, order, axis=1)
    order = np.argsort(keys, axis=1, kind="stable")
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(
        ind, order, axis=1
    )


class NearestNeighborRetriever(BaseEstimator):
    """Database of descriptors with nearest-neighbour search.

    Stores the (global) descriptors of a database of images, with their labels
    and ids, and ranks the database for query descriptors, either exactly by
    brute force (blocks of float32 matrix products) or approximately with a
    :class:`pynndescent.NNDescent` graph or a FAISS inverted-file index.  The
    database can grow (:meth:`partial_fit`) and shrink (:meth:`remove`)
    without being rebuilt, and its descriptors can live in a memory-mapped
    file (``store``).  The API mirrors the
    :meth:`~sklearn.neighbors.KNeighborsMixin.kneighbors` method of the
    scikit-learn neighbours estimators; :meth:`score` computes the label-based
    mean average precision of queries, which makes the retriever the final step
    of retrieval pipelines tuned with
    :class:`~sklearn.model_selection.GridSearchCV`.

    Parameters
    ----------
    n_neighbors : int, default=10
        Number of neighbours returned by :meth:`kneighbors` and :meth:`predict`
        by default.  With ``algorithm="nndescent"`` it is also the depth of the
        rankings used by :meth:`score`.

    metric : {"cosine", "inner_product", "euclidean"}, default="cosine"
        Similarity used to rank the database.  Distances returned by
        :meth:`kneighbors` are ``1 - cosine similarity`` for ``"cosine"``,
        ``-inner product`` for ``"inner_product"`` and the Euclidean distance
        for ``"euclidean"``; smaller is more similar.

    algorithm : {"brute", "nndescent", "faiss"}, default="brute"
        ``"brute"`` computes exact rankings; ``"nndescent"`` builds a
        :class:`pynndescent.NNDescent` index in :meth:`fit` and gives
        approximate nearest neighbours, much faster on large databases;
        ``"faiss"`` builds a FAISS index (by default an inverted file,
        ``"IVF{nlist},Flat"``; IVF-PQ with ``algorithm_params={"factory":
        "IVF{nlist},PQ{m}"}``), which grows without being rebuilt.  FAISS is
        an optional dependency: ``pip install skretrieval[faiss]``.

    chunk_size : int, default=None
        Number of queries per block of the brute-force search.  ``None``
        chooses it so that the block of similarities (float32, ``chunk_size x
        n_samples_fit_``) takes at most about 256 MB.

    algorithm_params : dict, default=None
        With ``algorithm="nndescent"``: extra keyword arguments of
        :class:`pynndescent.NNDescent` (e.g. ``{"n_neighbors": 60}`` for the
        degree of its graph, which defaults to ``max(30, n_neighbors + 1)``),
        and ``"epsilon"``, the breadth of the graph search of the queries
        (default 0.1; larger: slower, higher recall; changes need no
        rebuild); ``metric``, ``random_state`` and ``n_jobs`` are set by the
        parameters of the same names.  With ``algorithm="faiss"``, any of:

        * ``"factory"`` (str, default ``"IVF{nlist},Flat"``): a
          :func:`faiss.index_factory` string, in which ``{nlist}`` and
          ``{m}`` are replaced by the values below (e.g.
          ``"IVF{nlist},PQ{m}"``, ``"IVF1024,SQ8"``, ``"HNSW32"``);
        * ``"nlist"`` (int): number of inverted lists, default about
          ``4 sqrt(n_samples)`` (at least 39 training points per list);
        * ``"m"`` (int): number of PQ sub-quantizers (bytes per vector),
          default the largest divisor of ``n_features`` up to a quarter of it;
        * ``"nprobe"`` (int, default 16): lists visited per query (more:
          slower, higher recall); it can be changed after fitting with
          :meth:`set_params`;
        * ``"k_factor"`` (number >= 1, default 1): ``ceil(k_factor * k)``
          candidates are taken from the index and re-ranked exactly with the
          stored descriptors (raise it with PQ);
        * ``"train_size"`` (int): descriptors used to train the quantizers,
          default ``max(40 * nlist, 10000)`` (all of them if fewer; FAISS
          warns below 39 points per list).

    n_jobs : int, default=None
        Number of threads used to build the NN-descent index, or used by
        FAISS (``None`` or ``-1``: all).  The brute-force search runs on the
        multithreaded BLAS.

    random_state : int, RandomState instance or None, default=None
        Seeds the construction of the NN-descent index and the training of
        the FAISS quantizers.  Pass an int for reproducible results across
        multiple function calls.  See :term:`Glossary <random_state>`.

    dtype : {"float32", "float16"}, default="float32"
        Precision of the stored database descriptors ``X_fit_``.
        ``"float16"`` halves the memory (or the size of the ``store`` file);
        the search still computes in float32, converting blocks of the
        database as it reads them.

    store : str or path-like, default=None
        File in which :meth:`fit` writes the database descriptors (raw rows of
        ``dtype``, C order; an existing file is replaced), which are then
        memory-mapped (``X_fit_`` is a :class:`numpy.memmap`), so the database
        need not fit in RAM: the brute-force search reads it block by block.
        :meth:`partial_fit` appends to it and :meth:`remove` compacts it.
        ``None`` keeps the descriptors in memory.  A pickled (joblib)
        retriever references the file, which must stay in place; see Notes.

    Attributes
    ----------
    X_fit_ : ndarray of shape (n_samples_fit_, n_features_in_)
        Database descriptors (float32, or float16 with ``dtype="float16"``;
        a :class:`numpy.memmap` with ``store``), L2-normalised when
        ``metric="cosine"``.

    y_ : ndarray of shape (n_samples_fit_,) or None
        Database labels, or ``None`` when fitted without labels.

    ids_ : ndarray of shape (n_samples_fit_,)
        Database ids, unique: those given to :meth:`fit` and
        :meth:`partial_fit` (e.g. image paths), by default consecutive ints
        (the row numbers of the items added by the first :meth:`fit`).
        ``kneighbors(..., return_ids=True)`` returns them instead of row
        numbers, and :meth:`remove` takes them.

    fingerprints_ : ndarray of str of shape (n_samples_fit_,) or None
        Content fingerprints of the items, given to :meth:`fit` or
        :meth:`partial_fit` (:func:`skretrieval.add_to_index` gives the
        hashes of the images), ``""`` where unknown; ``None`` when none was
        ever given.

    n_samples_fit_ : int
        Number of database items.

    n_features_in_ : int
        Number of features seen during :term:`fit`.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :term:`fit`. Defined only when `X`
        has feature names that are all strings.

    See Also
    --------
    sklearn.neighbors.NearestNeighbors : Exact neighbours with tree indexes.
    pynndescent.NNDescent : Approximate nearest neighbours by NN-descent.
    skretrieval.add_to_index : Add images to a fitted retrieval pipeline.
    PCAWhitener : Post-processing of the descriptors before the search.
    skretrieval.metrics.RetrievalMAP : Scorer that calls :meth:`score`.

    Notes
    -----
    **Precision.**  Descriptors are stored and compared in float32 (any other
    input dtype is converted): retrieval databases are large, and the BLAS
    products are twice as fast.  Distances are float32 too.  Euclidean distances
    are computed from ``|q|^2 + |x|^2 - 2 q.x`` by brute force, with rounding
    errors of the order of ``1e-7 * |x|^2``.

    **Ties** are broken by the lower database index, so rankings are
    deterministic.  The brute-force top-``k`` is a partial selection (the
    ``k``-th smallest key of each query by :func:`numpy.partition`, then the
    keys below it and the first tied ones), after which only the ``k``
    selected items are sorted.  The full rankings of :meth:`score` only look
    up the ranks of the relevant items in the sorted keys.  The search runs
    in blocks of ``chunk_size`` queries, so memory stays bounded (about three
    times the block of similarities) whatever the number of queries.

    **NN-descent.**  The index is built in :meth:`fit` (pynndescent compiles
    its functions with numba the first time, which takes tens of seconds).
    Distances of the returned neighbours are recomputed exactly, in the
    convention above, and the neighbours sorted by them.  The index is not
    pickled (its pickles depend on the numba version): an unpickled retriever
    rebuilds it, with the same seed, on its first query.  pynndescent's
    ``"dot"`` metric L2-normalises the data, so with
    ``metric="inner_product"`` the candidates are those of the cosine
    similarity; use it only on L2-normalised descriptors (e.g. the output of
    :class:`PCAWhitener`), for which both rankings agree.  Full rankings
    (``n_neighbors="all"``) need ``algorithm="brute"``, and :meth:`score`
    then ranks only the top ``n_neighbors`` items: it is a mAP@k, where the
    relevant items beyond rank ``k`` count as not retrieved.  (The same holds
    for FAISS.)  :meth:`partial_fit` and :meth:`remove` drop the NN-descent
    graph, which is rebuilt over the whole database on the next query:
    pynndescent's own incremental ``update`` was slower than a rebuild here.

    **FAISS.**  The index is trained on (a sample of) the descriptors given to
    :meth:`fit`; :meth:`partial_fit` adds vectors to it with their ids and
    :meth:`remove` removes them, neither retraining the quantizers nor
    touching the other vectors.  Candidates are re-ranked with the exact
    distances of the stored descriptors (``k_factor``), and queries for
    which the index returns fewer than ``k`` items (e.g. with a small
    ``nprobe``) are searched exactly.  Pickling serialises the index
    (:func:`faiss.serialize_index`), so a joblib round trip gives identical
    results; so does :func:`skretrieval.persistence.save_pipeline`.

    **Growing and shrinking.**  :meth:`partial_fit` appends items without
    refitting anything upstream (e.g. the whitening of a pipeline: see
    :func:`skretrieval.add_to_index`): with ``algorithm="brute"`` the result
    is exactly that of a :meth:`fit` on all the items.  :meth:`remove`
    deletes items by id; row numbers (the indices returned by
    :meth:`kneighbors`) are those of the current database, ids never change.

    **Memory-mapped store.**  With ``store``, :meth:`fit` writes the
    descriptors to the file and maps it; the brute-force search reads it in
    blocks of about 8 MB (as float32), so its memory is bounded
    whatever the database size, and its speed is that of the disk when the
    file is not in the page cache.  Pickling (joblib) a retriever with a
    store writes the file's path, not its content: the file must stay where it
    is (and only one retriever should append to it); ``save_pipeline``
    copies the descriptors into the model instead (loaded back in memory).

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import NearestNeighborRetriever
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> y = np.array([0, 0, 1, 1])
    >>> retriever = NearestNeighborRetriever(n_neighbors=2).fit(X, y)
    >>> dist, ind = retriever.kneighbors([[1.0, 0.05]])
    >>> ind
    array([[0, 1]])
    >>> retriever.predict([[0.05, 1.0]])
    array([[1, 1]])
    >>> retriever.score(None, None)  # leave-one-out label mAP
    1.0
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions({"cosine", "inner_product", "euclidean"})],
        "algorithm": [StrOptions({"brute", "nndescent", "faiss"})],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
        "algorithm_params": [dict, None],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "dtype": [StrOptions({"float32", "float16"})],
        "store": [None, str, os.PathLike],
    }

    # The state skretrieval.persistence stores and accepts (see _persist.py).
    _state_spec = StateSpec(
        {
            "n_features_in_": Attr("int", values=(1, None)),
            "feature_names_in_": Attr("array", dtype="UO", shape=("n_features_in_",),
                                      optional=True),
            "X_fit_": Attr("array", dtype=("float32", "float16"),
                           shape=("n_samples_fit_", "n_features_in_")),
            "n_samples_fit_": Attr("int", values=(1, None)),
            "y_": Attr("array", dtype=LABELS, shape=("n_samples_fit_",), none=True),
            "_classes": Attr("array", dtype=LABELS, shape=(None,), optional=True),
            "_y_codes": Attr("array", dtype="iu", shape=("n_samples_fit_",),
                             values=(0, "_classes-1"), optional=True),
            "_class_counts": Attr("array", dtype="iu", shape=("_classes",), optional=True),
            # absent from models saved before ids existed (_after_load adds them)
            "ids_": Attr("array", dtype="iuUO", shape=("n_samples_fit_",), optional="ids"),
            "_next_id": Attr("int", optional="ids"),
            "_keys": Attr("array", dtype="iu", shape=("n_samples_fit_",),
                          values=(0, "_n_keys-1"), optional="ids"),
            "_n_keys": Attr("int", values=(0, None), optional="ids"),
            "fingerprints_": Attr("array", dtype="UO", shape=("n_samples_fit_",),
                                  none=True, optional=True),
            "_index_kind": Attr("str", choices=("faiss", "nndescent"), none=True,
                                optional=True),
            "_index_seed": Attr("int", optional=True),
            "_faiss_index": Attr("array", dtype=("uint8",), shape=(None,), optional=True),
        },
        # the index is rebuilt; a store's descriptors are loaded in memory
        transient={"_index": None, "_store_path": None, "_store_dtype": None},
        paths={"store": PathParam(None)},
    )

    def __init__(
        self,
        n_neighbors=10,
        *,
        metric="cosine",
        algorithm="brute",
        chunk_size=None,
        algorithm_params=None,
        n_jobs=None,
        random_state=None,
        dtype="float32",
        store=None,
    ):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.algorithm = algorithm
        self.chunk_size = chunk_size
        self.algorithm_params = algorithm_params
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.dtype = dtype
        self.store = store

    # ------------------------------------------------------------------
    # fitting
    # ------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, ids=None, fingerprints=None):
        """Store the database descriptors (and labels) and build the index.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Database descriptors.

        y : array-like of shape (n_samples,), default=None
            Database labels (any sortable type), needed by :meth:`predict`
            and :meth:`score`.

        ids : array-like of shape (n_samples,), default=None
            Unique ids of the database items (ints or strings, e.g. image
            paths), returned by ``kneighbors(..., return_ids=True)`` and taken
            by :meth:`remove`.  ``None`` numbers the items ``0, 1, ...``.

        fingerprints : array-like of str of shape (n_samples,), default=None
            Content fingerprints of the items (e.g. hashes of the image
            files, see :func:`skretrieval.item_fingerprint`), kept in
            ``fingerprints_`` beside the ids so that
            :func:`skretrieval.add_to_index` can tell an unchanged image from
            an edited one.  ``None`` stores none.

        Returns
        -------
        self : object
            The fitted retriever.
        """
        self._check_algorithm_params()
        if y is None:
            X = validate_data(self, X, dtype=np.float32)
        else:
            X, y = validate_data(self, X, y, dtype=np.float32)
        n_samples = X.shape[0]
        # checks before any state changes
        ids = self._new_ids(ids, n_samples, reset=True)
        fingerprints = self._check_fingerprints(fingerprints, n_samples)
        self._set_labels(y)
        X = self._prepare_rows(X, np.dtype(self.dtype))
        if self.metric == "inner_product" and self.algorithm == "nndescent":
            norms = np.linalg.norm(X, axis=1)
            if not np.allclose(norms, 1.0, atol=1e-3):
                warnings.warn(
                    "With algorithm='nndescent', metric='inner_product' uses "
                    "pynndescent's 'dot' metric, which L2-normalises the "
                    "descriptors: the neighbours are found by cosine "
                    "similarity (the returned distances are -inner "
                    "products). These descriptors are not L2-normalised; "
                    "normalise them or use algorithm='brute' for an exact "
                    "maximum inner product search.",
                    UserWarning,
                    stacklevel=2,
                )
        self.ids_ = ids
        self.fingerprints_ = fingerprints
        if ids.dtype.kind in "iu":
            self._next_id = int(ids.max()) + 1
        else:
            self._next_id = 0
        self._keys = np.arange(n_samples, dtype=np.int64)
        self._n_keys = n_samples
        self._store_path = None
        self._store_dtype = None
        if self.store is not None:
            X = self._write_store(X)
        self.X_fit_ = X
        self.n_samples_fit_ = n_samples

        self._index = None
        self._index_kind = None
        self.__dict__.pop("_faiss_index", None)
        if self.algorithm != "brute":
            self._index_seed = int(
                check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
            )
            self._get_index()
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, ids=None, fingerprints=None):
        """Add items to the database without rebuilding it.

        The first call (on an unfitted retriever) is a :meth:`fit`.  Later
        calls append the descriptors (and labels and ids) to the database:
        the brute-force search then gives exactly the results of a
        :meth:`fit` on all the items; a FAISS index gets the new vectors
        without being retrained; the NN-descent graph is rebuilt (over all
        the items) on the next query.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Descriptors of the new items.

        y : array-like of shape (n_samples,), default=None
            Their labels: required if (and only if) the retriever was fitted
            with labels.

        ids : array-like of shape (n_samples,), default=None
            Their ids, unique and not already in ``ids_``, of the same kind
            (int or str) as ``ids_``.  ``None`` continues the integer
            numbering (after the largest integer id seen so far).

        fingerprints : array-like of str of shape (n_samples,), default=None
            Their content fingerprints (see :meth:`fit`); the items of a
            database with fingerprints that are added without get ``""``
            (unknown), and so do the earlier items when fingerprints are
            first given here.

        Returns
        -------
        self : object
            The retriever.
        """
        if not hasattr(self, "n_samples_fit_"):
            return self.fit(X, y, ids=ids, fingerprints=fingerprints)
        self._check_algorithm_params()
        if (y is None) != (self.y_ is None):
            raise ValueError(
                "partial_fit(X, y): the retriever was fitted "
                + ("with labels: pass the labels y of the new items."
                   if y is None else "without labels: y must be None.")
            )
        if y is None:
            X = validate_data(self, X, dtype=np.float32, reset=False)
        else:
            X, y = validate_data(self, X, y, dtype=np.float32, reset=False)
        n_new = X.shape[0]
        ids = self._new_ids(ids, n_new, reset=False)
        fingerprints = self._check_fingerprints(fingerprints, n_new)
        old_prints = getattr(self, "fingerprints_", None)
        if fingerprints is not None or old_prints is not None:
            fingerprints = np.concatenate([
                np.full(self.n_samples_fit_, "") if old_prints is None else old_prints,
                np.full(n_new, "") if fingerprints is None else fingerprints,
            ])
        if y is not None:
            y_all = self._concatenate_labels(y)
        X = self._prepare_rows(X, self.X_fit_.dtype)
        keys = np.arange(self._n_keys, self._n_keys + n_new, dtype=np.int64)
        index = None
        if self.algorithm == "faiss" and self._index_kind == "faiss":
            index = self._get_index()  # deserialised before the arrays change

        if y is not None:
            self._set_labels(y_all)
        if self._store_path is not None:
            self.X_fit_ = self._append_store(X)
        else:
            self.X_fit_ = np.concatenate([self.X_fit_, X])
        self.ids_ = np.concatenate([self.ids_, ids])
        self.fingerprints_ = fingerprints
        if ids.dtype.kind in "iu":
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._keys = np.concatenate([self._keys, keys])
        self._n_keys += n_new
        self.n_samples_fit_ += n_new
        if index is not None:
            self._faiss_add(index, X, keys)
        else:
            self._index = None  # NN-descent: rebuilt on the next query
        return self

    def remove(self, ids):
        """Remove items from the database, by id.

        Parameters
        ----------
        ids : array-like of shape (n_ids,) or scalar
            Ids of the items to remove (values of ``ids_``).

        Returns
        -------
        self : object
            The retriever, without these items: they are never returned
            again; the row numbers of the items after them shift down.

        Raises
        ------
        ValueError
            If some ids are not in the database, or if all the items would
            be removed (fit a new retriever instead).
        """
        check_is_fitted(self)
        rows = self.rows_of(ids)
        keep = np.ones(self.n_samples_fit_, dtype=bool)
        keep[rows] = False
        n_kept = int(np.count_nonzero(keep))
        if n_kept == 0:
            raise ValueError(
                "remove() would leave the database empty; fit a new retriever "
                "instead."
            )
        if n_kept == self.n_samples_fit_:
            return self
        if self.algorithm == "faiss" and self._index_kind == "faiss":
            faiss = _import_faiss()
            index = self._get_index()
            removed = np.ascontiguousarray(self._keys[~keep], dtype=np.int64)
            with _faiss_threads(faiss, self.n_jobs):
                index.remove_ids(faiss.IDSelectorBatch(removed))
        else:
            self._index = None
        if self._store_path is not None:
            self.X_fit_ = self._compact_store(keep)
        else:
            self.X_fit_ = self.X_fit_[keep]
        if self.y_ is not None:
            self._set_labels(self.y_[keep])
        self.ids_ = self.ids_[keep]
        if getattr(self, "fingerprints_", None) is not None:
            self.fingerprints_ = self.fingerprints_[keep]
        self._keys = self._keys[keep]
        self.n_samples_fit_ = n_kept
        return self

    def rows_of(self, ids):
        """Row numbers of database items given by id.

        Parameters
        ----------
        ids : array-like of shape (n_ids,) or scalar
            Values of ``ids_``.

        Returns
        -------
        rows : ndarray of shape (n_ids,), dtype intp
            Their rows in ``X_fit_`` (the indices :meth:`kneighbors`
            returns).

        Raises
        ------
        ValueError
            If an id is not in the database.
        """
        check_is_fitted(self)
        ids = np.asarray(ids)
        scalar = ids.ndim == 0
        ids = ids.reshape(-1)
        order = np.argsort(self.ids_, kind="stable")
        sorted_ids = self.ids_[order]
        found = np.zeros(ids.shape[0], dtype=bool)
        pos = np.zeros(ids.shape[0], dtype=np.intp)
        if ids.shape[0] and _id_kind(ids) == _id_kind(self.ids_):
            pos = np.clip(np.searchsorted(sorted_ids, ids), 0, sorted_ids.shape[0] - 1)
            found = np.asarray(sorted_ids[pos] == ids, dtype=bool)
        if not np.all(found):
            missing = ids[~found]
            raise ValueError(
                f"{missing.shape[0]} id(s) not in the database: "
                f"{', '.join(repr(v) for v in missing[:5].tolist())}"
                + (", ..." if missing.shape[0] > 5 else "")
            )
        rows = order[pos].astype(np.intp, copy=False)
        return rows[0] if scalar else rows

    # -- helpers of fit / partial_fit / remove -----------------------------
    def _set_labels(self, y):
        """Store the labels ``y`` (or None) and their codes."""
        if y is None:
            self.y_ = None
            return
        try:
            classes, codes, counts = np.unique(
                y, return_inverse=True, return_counts=True
            )
        except TypeError as exc:
            raise ValueError(
                "The labels y must be of one sortable type (e.g. all ints "
                f"or all strings): {exc}"
            ) from exc
        self.y_ = y
        self._classes = classes
        self._y_codes = codes.reshape(-1).astype(np.intp, copy=False)
        self._class_counts = counts

    def _concatenate_labels(self, y):
        old = self.y_
        if old.shape[0] and y.shape[0] and (
            (old.dtype.kind in "US") != (y.dtype.kind in "US")
            or (old.dtype.kind in "iub") != (y.dtype.kind in "iub")
        ):
            raise ValueError(
                "The labels y must be of one sortable type (e.g. all ints or all "
                f"strings): the database has {old.dtype} labels, got {y.dtype}."
            )
        return np.concatenate([old, y])

    def _new_ids(self, ids, n_samples, reset):
        """Validated ids of ``n_samples`` new items."""
        if ids is None:
            if not reset and _id_kind(self.ids_) != "int":
                raise ValueError(
                    "This database has non-integer ids: pass the ids of the new "
                    "items."
                )
            start = 0 if reset else self._next_id
            return np.arange(start, start + n_samples, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.shape[0] != n_samples:
            raise ValueError(
                f"ids must be a 1-d array of {n_samples} values (one per item), "
                f"got shape {ids.shape}."
            )
        kind = _id_kind(ids)
        if kind == "other" or ids.dtype.kind == "O" and kind != "str":
            if not all(isinstance(v, Integral) for v in ids.tolist()):
                raise ValueError(
                    "ids must be ints or strings, got an array of dtype "
                    f"{ids.dtype}."
                )
            ids = ids.astype(np.int64)
            kind = "int"
        if kind == "str" and ids.dtype.kind == "S":
            ids = ids.astype(str)
        unique, counts = np.unique(ids, return_counts=True)
        if unique.shape[0] != n_samples:
            dup = unique[counts > 1][:5].tolist()
            raise ValueError(f"ids must be unique; repeated: {dup}")
        if not reset:
            if kind != _id_kind(self.ids_):
                raise ValueError(
                    f"ids of the new items must be of the kind of ids_ ({_id_kind(self.ids_)}"
                    f" ids), got {kind} ids."
                )
            taken = ids[np.isin(ids, self.ids_)]
            if taken.shape[0]:
                raise ValueError(
                    f"{taken.shape[0]} id(s) already in the database: "
                    f"{taken[:5].tolist()}; remove() them first to replace them."
                )
        return ids

    @staticmethod
    def _check_fingerprints(fingerprints, n_samples):
        """Validated fingerprints (a str array) of ``n_samples`` items, or None."""
        if fingerprints is None:
            return None
        values = np.asarray(fingerprints)
        if values.ndim != 1 or values.shape[0] != n_samples:
            raise ValueError(
                f"fingerprints must be a 1-d array of {n_samples} strings (one per "
                f"item), got shape {values.shape}."
            )
        if values.shape[0] and not all(isinstance(v, str) for v in values.tolist()):
            raise ValueError("fingerprints must be strings (e.g. content hashes).")
        return values.astype(str)

    def _prepare_rows(self, X, dtype):
        """Normalised (cosine) rows of ``X`` in the storage dtype."""
        if self.metric == "cosine":
            X = normalize(X)
        return X if X.dtype == dtype else X.astype(dtype)

    # -- memory-mapped store ------------------------------------------------
    def _open_store(self, n_samples):
        path, dtype = self._store_path, np.dtype(self._store_dtype)
        shape = (n_samples, self.n_features_in_)
        need = n_samples * self.n_features_in_ * dtype.itemsize
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size is None or size < need:
            raise FileNotFoundError(
                f"the descriptor store {path!r} of this retriever is "
                + ("missing" if size is None else f"too short ({size} bytes, "
                   f"{need} expected)")
                + ": it was moved, deleted or replaced since the retriever was "
                "saved."
            )
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def _write_store(self, X):
        path = os.path.abspath(os.fspath(self.store))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with file_lock(path):
            remove_stale_temps(path)
            with atomic_write(path) as fh:
                np.ascontiguousarray(X).tofile(fh)
        self._store_path = path
        self._store_dtype = X.dtype.name
        return self._open_store(X.shape[0])

    def _append_store(self, X):
        row_bytes = self.n_features_in_ * np.dtype(self._store_dtype).itemsize
        with file_lock(self._store_path):
            self._open_store(self.n_samples_fit_)  # checks the file first
            with open(self._store_path, "r+b") as fh:
                fh.seek(self.n_samples_fit_ * row_bytes)
                np.ascontiguousarray(X, dtype=self._store_dtype).tofile(fh)
                fh.truncate()
        return self._open_store(self.n_samples_fit_ + X.shape[0])

    def _compact_store(self, keep):
        path = self._store_path
        step = self._store_block_rows()
        with file_lock(path):
            remove_stale_temps(path)
            with atomic_write(path) as fh:
                for start in range(0, self.n_samples_fit_, step):
                    block = self.X_fit_[start : start + step]
                    np.ascontiguousarray(block[keep[start : start + step]]).tofile(fh)
        return self._open_store(int(np.count_nonzero(keep)))

    def _store_block_rows(self):
        return max(1, _STORE_BLOCK_BYTES // (4 * max(self.n_features_in_, 1)))

    def _streamed(self):
        """Whether the brute-force search reads the database in blocks."""
        return self._store_path is not None or self.X_fit_.dtype != np.float32

    def _check_algorithm_params(self):
        params = self.algorithm_params or {}
        if self.algorithm == "nndescent":
            reserved = {"metric", "random_state", "n_jobs"} & set(params)
            if reserved:
                raise ValueError(
                    f"algorithm_params must not contain {sorted(reserved)}: they are "
                    "set from the parameters of NearestNeighborRetriever of the same "
                    "names."
                )
        elif self.algorithm == "faiss":
            unknown = set(params) - _FAISS_PARAMS
            if unknown:
                raise ValueError(
                    f"algorithm_params with algorithm='faiss' takes the keys "
                    f"{sorted(_FAISS_PARAMS)}, got {sorted(unknown)}."
                )
            for key in ("nlist", "m", "nprobe", "train_size"):
                value = params.get(key)
                if value is not None and (
                    not isinstance(value, Integral) or isinstance(value, bool) or value < 1
                ):
                    raise ValueError(
                        f"algorithm_params[{key!r}] must be a positive int, got {value!r}."
                    )
            k_factor = params.get("k_factor", 1)
            if not isinstance(k_factor, (int, float)) or not k_factor >= 1:
                raise ValueError(
                    f"algorithm_params['k_factor'] must be a number >= 1, got {k_factor!r}."
                )
            if not isinstance(params.get("factory", ""), str):
                raise ValueError("algorithm_params['factory'] must be a string.")

    def _float32_rows(self, start, stop, buffer=None):
        return _as_float32(self.X_fit_[start:stop], buffer)

    def _block_buffer(self):
        """A float32 buffer for :meth:`_float32_rows` of a streamed database
        (None when its blocks need no conversion)."""
        if self.X_fit_.dtype == np.float32:
            return None
        rows = min(self._store_block_rows(), self.n_samples_fit_)
        return np.empty((rows, self.n_features_in_), dtype=np.float32)

    def _build_index(self):
        """Build and prepare the pynndescent index of ``X_fit_``."""
        try:
            from pynndescent import NNDescent
        except ImportError as exc:  # pragma: no cover - a hard dependency
            raise ImportError(
                "algorithm='nndescent' needs the pynndescent package: "
                "pip install pynndescent"
            ) from exc
        n_samples = self.n_samples_fit_
        if n_samples < 3:
            raise ValueError(
                "algorithm='nndescent' needs at least 3 database items, got "
                f"n_samples = {n_samples}; use algorithm='brute'."
            )
        params = dict(self.algorithm_params or {})
        params.pop("epsilon", None)  # a parameter of the queries
        params.setdefault("n_neighbors", max(30, self.n_neighbors + 1))
        params["n_neighbors"] = min(params["n_neighbors"], n_samples - 1)
        index = NNDescent(
            self._float32_rows(0, n_samples),
            metric=_NNDESCENT_METRICS[self.metric],
            random_state=self._index_seed,
            n_jobs=self.n_jobs,
            **params,
        )
        index.prepare()
        return index

    def _faiss_settings(self):
        """Resolved FAISS parameters for the current database size."""
        params = self.algorithm_params or {}
        n, d = self.n_samples_fit_, self.n_features_in_
        nlist = params.get("nlist") or _default_nlist(n)
        m = params.get("m") or _default_pq_m(d)
        factory = params.get("factory", _FAISS_DEFAULT_FACTORY)
        factory = factory.replace("{nlist}", str(nlist)).replace("{m}", str(m))
        train_size = params.get("train_size") or max(40 * nlist, 10000)
        return factory, min(train_size, n)

    def _build_faiss_index(self):
        """Train a FAISS index on ``X_fit_`` and add all of it, with its keys."""
        faiss = _import_faiss()
        factory, train_size = self._faiss_settings()
        metric = (faiss.METRIC_L2 if self.metric == "euclidean"
                  else faiss.METRIC_INNER_PRODUCT)
        index = faiss.index_factory(self.n_features_in_, factory, metric)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = self._index_seed
            ivf = faiss.downcast_index(ivf)
            pq = getattr(ivf, "pq", None)
            if pq is not None:
                pq.cp.seed = self._index_seed
            if getattr(ivf, "do_polysemous_training", False):
                # slow (tens of seconds for a few thousand vectors), and only
                # useful for polysemous search, which the exact re-ranking
                # replaces
                ivf.do_polysemous_training = False
        else:  # Flat, HNSW, ...: ids through a map
            index = faiss.IndexIDMap2(index)
        with _faiss_threads(faiss, self.n_jobs):
            if not index.is_trained:
                n = self.n_samples_fit_
                if train_size < n:
                    rng = np.random.RandomState(self._index_seed)
                    rows = np.sort(rng.choice(n, train_size, replace=False))
                    sample = _as_float32(self.X_fit_[rows])
                else:
                    sample = self._float32_rows(0, n)
                index.train(sample)
                del sample
        self._faiss_add(index, None, self._keys)
        return index

    def _faiss_add(self, index, X, keys):
        """Add rows ``X`` (None: all of ``X_fit_``) to the index with ``keys``."""
        faiss = _import_faiss()
        n = keys.shape[0]
        with _faiss_threads(faiss, self.n_jobs):
            for start in range(0, n, _FAISS_ADD_ROWS):
                stop = min(start + _FAISS_ADD_ROWS, n)
                if X is None:
                    block = self._float32_rows(start, stop)
                else:
                    block = _as_float32(X[start:stop])
                index.add_with_ids(block, np.ascontiguousarray(keys[start:stop]))

    def _get_index(self):
        """The index of ``algorithm``: built, deserialised or rebuilt if needed."""
        index = getattr(self, "_index", None)
        kind = getattr(self, "_index_kind", None)
        if index is not None and kind == self.algorithm:
            return index
        if getattr(self, "_index_seed", None) is None:  # fitted as "brute"
            self._index_seed = int(
                check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
            )
        blob = self.__dict__.pop("_faiss_index", None)
        if self.algorithm == "faiss":
            if blob is not None and kind == "faiss":
                faiss = _import_faiss()
                index = faiss.deserialize_index(np.asarray(blob, dtype=np.uint8))
            else:
                index = self._build_faiss_index()
        else:
            # NN-descent: (re)built over the current database, whose rows are
            # then the positions in the index.
            index = self._build_index()
            self._keys = np.arange(self.n_samples_fit_, dtype=np.int64)
            self._n_keys = self.n_samples_fit_
        self._index, self._index_kind = index, self.algorithm
        return index

    def _serialised_state(self, state):
        """``state`` with the index serialised (FAISS) or dropped (NN-descent)."""
        index = state.get("_index")
        if index is not None:
            if state.get("_index_kind") == "faiss":
                faiss = _import_faiss()
                state["_faiss_index"] = faiss.serialize_index(index)
            else:
                # The pynndescent index is not pickled: its pickles break
                # across numba versions. It is rebuilt, with the same seed, on
                # the first query.
                state["_index_kind"] = None
            state["_index"] = None
        return state

    def __getstate__(self):
        state = self._serialised_state(dict(super().__getstate__()))
        if state.get("_store_path") is not None:
            state["X_fit_"] = None  # the memory-mapped file, reopened on loading
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._after_load()

    def _persistent_state(self):
        """Fitted state for :func:`skretrieval.persistence.save_pipeline`.

        The FAISS index is serialised; descriptors of a store are copied
        into the model (loaded back in memory).
        """
        state = self._serialised_state(dict(vars(self)))
        if state.get("_store_path") is not None:
            state["_store_path"] = None
            state["_store_dtype"] = None
        return state

    def _after_load(self):
        """Complete the state of an unpickled or loaded retriever.

        Reopens the memory-mapped store, and gives retrievers saved before
        ids existed their default ids.
        """
        state = self.__dict__
        if "n_samples_fit_" not in state:
            return
        n = self.n_samples_fit_
        if "ids_" not in state:
            self.ids_ = np.arange(n, dtype=np.int64)
            self._next_id = n
            self._keys = np.arange(n, dtype=np.int64)
            self._n_keys = n
            self._store_path = None
            self._store_dtype = None
            self._index_kind = None if state.get("_index") is None else "nndescent"
        if state.get("_store_path") is not None and state.get("X_fit_") is None:
            self.X_fit_ = self._open_store(n)

    # ------------------------------------------------------------------
    # search
    # ------------------------------------------------------------------
    def _validate_queries(self, X):
        X = validate_data(self, X, reset=False, dtype=np.float32)
        if self.metric == "cosine":
            X = normalize(X)
        return X

    def _resolve_n_neighbors(self, n_neighbors, n_queries, exclude_self):
        """Check ``n_neighbors`` and return it as an int."""
        n_available = self.n_samples_fit_ - int(exclude_self)
        if n_neighbors is None:
            n_neighbors = self.n_neighbors
        elif isinstance(n_neighbors, str):
            if n_neighbors != "all":
                raise ValueError(
                    "n_neighbors must be a positive int, 'all' or None, got "
                    f"{n_neighbors!r}."
                )
            if self.algorithm != "brute":
                raise ValueError(
                    "n_neighbors='all' (a full ranking of the database) needs "
                    f"algorithm='brute'; {self.algorithm!r} only finds approximate "
                    "nearest neighbours. Pass an int n_neighbors instead."
                )
            return n_available
        if not isinstance(n_neighbors, Integral) or isinstance(n_neighbors, bool):
            raise TypeError(
                "n_neighbors does not take "
                f"{type(n_neighbors).__name__} value, enter integer value"
            )
        n_neighbors = int(n_neighbors)
        if n_neighbors <= 0:
            raise ValueError(f"Expected n_neighbors > 0. Got {n_neighbors}")
        if n_neighbors > n_available:
            if exclude_self:
                raise ValueError(
                    "Expected n_neighbors < n_samples_fit when X is None (each "
                    "database item is excluded from its own ranking), but "
                    f"n_neighbors = {n_neighbors}, n_samples_fit = "
                    f"{self.n_samples_fit_}"
                )
            raise ValueError(
                "Expected n_neighbors <= n_samples_fit, but n_neighbors = "
                f"{n_neighbors}, n_samples_fit = {self.n_samples_fit_}, "
                f"n_samples = {n_queries}"
            )
        return n_neighbors

    def _chunk_rows(self):
        if self.chunk_size is not None:
            return self.chunk_size
        bytes_per_row = 4 * max(self.n_samples_fit_, 1)
        return max(1, _BLOCK_BYTES // bytes_per_row)

    def _queries(self, Q, rows):
        """The query descriptors: ``Q``, or the database items ``rows``."""
        if Q is not None:
            return Q
        return _as_float32(self.X_fit_[rows])

    def _brute_keys(self, Q, x_sq_norms, out=None):
        """Ranking keys (smaller is closer) of queries against the database.

        ``-similarity`` for the cosine and inner product, the squared
        Euclidean distance for the Euclidean metric; float32, written into
        ``out`` if given.  A memory-mapped or float16 database is read in
        blocks of rows, converted to float32.
        """
        # Scaling the (small) query block by -1 or -2 is exact and saves a
        # pass over the (large) block of keys.
        scaled = Q * np.float32(-2.0 if self.metric == "euclidean" else -1.0)
        if self._streamed():
            if out is None:
                out = np.empty((Q.shape[0], self.n_samples_fit_), dtype=np.float32)
            step, buffer = self._store_block_rows(), self._block_buffer()
            for start in range(0, self.n_samples_fit_, step):
                stop = min(start + step, self.n_samples_fit_)
                block = self._float32_rows(start, stop, buffer)
                _products(scaled, block, out[:, start:stop])
            keys = out
        else:
            if out is None:
                out = np.empty((Q.shape[0], self.n_samples_fit_), dtype=np.float32)
            keys = _products(scaled, self.X_fit_, out)
        if self.metric == "euclidean":
            keys += np.einsum("ij,ij->i", Q, Q)[:, np.newaxis]
            keys += x_sq_norms
        return keys

    def _x_sq_norms(self):
        if self.metric != "euclidean":
            return None
        if not self._streamed():
            return np.einsum("ij,ij->i", self.X_fit_, self.X_fit_)
        out = np.empty(self.n_samples_fit_, dtype=np.float32)
        step, buffer = self._store_block_rows(), self._block_buffer()
        for start in range(0, self.n_samples_fit_, step):
            block = self._float32_rows(start, start + step, buffer)
            out[start : start + step] = np.einsum("ij,ij->i", block, block)
        return out

    def _keys_to_distances(self, keys):
        if self.metric == "cosine":
            return np.maximum(keys + np.float32(1.0), np.float32(0.0))
        if self.metric == "euclidean":
            return np.sqrt(np.maximum(keys, np.float32(0.0)))
        return keys

    def _iter_brute_blocks(self, Q, rows, with_scratch=False):
        """Yield ``(start, stop, keys, scratch)`` blocks of brute-force keys.

        The queries are ``Q``, or the database items ``rows`` (each then
        excluded from its own ranking: its key is NaN, which ranks last).
        ``keys`` (and ``scratch``, a work array of the same shape, or None) are
        views of buffers reused from one block to the next.
        """
        n_queries = Q.shape[0] if Q is not None else rows.shape[0]
        chunk = min(self._chunk_rows(), n_queries)
        x_sq_norms = self._x_sq_norms()
        shape = (chunk, self.n_samples_fit_)
        keys_buffer = np.empty(shape, dtype=np.float32)
        scratch_buffer = np.empty(shape, dtype=np.float32) if with_scratch else None
        for start in range(0, n_queries, chunk):
            stop = min(start + chunk, n_queries)
            keys = keys_buffer[: stop - start]
            if Q is None:
                block_rows = rows[start:stop]
                self._brute_keys(self._queries(None, block_rows), x_sq_norms, out=keys)
                keys[np.arange(stop - start), block_rows] = np.nan
            else:
                self._brute_keys(Q[start:stop], x_sq_norms, out=keys)
            scratch = None if scratch_buffer is None else scratch_buffer[: stop - start]
            yield start, stop, keys, scratch

    def _streamed_kneighbors(self, k, Q=None, rows=None):
        """Brute-force top-``k`` reading a streamed database once.

        The database (memory-mapped or float16) is read block by block and
        each block, converted to float32 once, is searched by all the
        queries; the top-``k`` of every block is merged into the running
        one (ties still go to the lower index: earlier blocks come first).
        """
        if rows is not None and rows.shape[0] > _STREAMED_QUERY_ROWS:
            # database items as queries: a group of them in memory at a time
            parts = [self._streamed_kneighbors(k, rows=rows[i : i + _STREAMED_QUERY_ROWS])
                     for i in range(0, rows.shape[0], _STREAMED_QUERY_ROWS)]
            return (np.concatenate([p[0] for p in parts]),
                    np.concatenate([p[1] for p in parts]))
        queries = self._queries(Q, rows)
        n_queries, n_samples = queries.shape[0], self.n_samples_fit_
        step = self._store_block_rows()
        q_chunk = max(1, min(n_queries, _BLOCK_BYTES // (4 * min(step, n_samples))))
        scale = np.float32(-2.0 if self.metric == "euclidean" else -1.0)
        q_sq = None
        if self.metric == "euclidean":
            q_sq = np.einsum("ij,ij->i", queries, queries)[:, np.newaxis]
        keys_out = ind_out = None
        buffer = self._block_buffer()
        keys_buffer = np.empty((q_chunk, min(step, n_samples)), dtype=np.float32)
        for start in range(0, n_samples, step):
            stop = min(start + step, n_samples)
            block = self._float32_rows(start, stop, buffer)
            x_sq = np.einsum("ij,ij->i", block, block) if q_sq is not None else None
            block_keys = np.empty((n_queries, min(k, stop - start)), dtype=np.float32)
            block_ind = np.empty(block_keys.shape, dtype=np.intp)
            for q0 in range(0, n_queries, q_chunk):
                q1 = min(q0 + q_chunk, n_queries)
                keys = keys_buffer.reshape(-1)[: (q1 - q0) * (stop - start)]
                keys = _products(queries[q0:q1] * scale, block,
                                 keys.reshape(q1 - q0, stop - start))
                if q_sq is not None:
                    keys += q_sq[q0:q1]
                    keys += x_sq
                if rows is not None:  # each item is excluded from its own ranking
                    own = rows[q0:q1] - start
                    inside = np.flatnonzero((own >= 0) & (own < stop - start))
                    keys[inside, own[inside]] = np.nan
                block_keys[q0:q1], block_ind[q0:q1] = _top_k(keys, block_keys.shape[1])
            block_ind += start
            if keys_out is None:
                keys_out, ind_out = block_keys, block_ind
            else:
                merged = np.concatenate([keys_out, block_keys], axis=1)
                merged_ind = np.concatenate([ind_out, block_ind], axis=1)
                keys_out, pos = _top_k(merged, min(k, merged.shape[1]))
                ind_out = np.take_along_axis(merged_ind, pos, axis=1)
        return keys_out, ind_out

    def _brute_kneighbors(self, k, Q=None, rows=None):
        if self._streamed():
            return self._streamed_kneighbors(k, Q=Q, rows=rows)
        n_queries = Q.shape[0] if Q is not None else rows.shape[0]
        keys_out = np.empty((n_queries, k), dtype=np.float32)
        ind_out = np.empty((n_queries, k), dtype=np.intp)
        blocks = self._iter_brute_blocks(Q, rows, with_scratch=True)
        for start, stop, keys, scratch in blocks:
            keys_out[start:stop], ind_out[start:stop] = _top_k(keys, k, scratch)
        return keys_out, ind_out

    def _brute_full_ap(self, codes, n_positives, Q=None, rows=None):
        """Exact AP of full rankings, block by block.

        Only the ranks of the relevant items are needed: each is the number of
        items with a smaller key, plus the tied items with a lower index, found
        by binary search in the sorted keys of the query.
        """
        n_ranked = self.n_samples_fit_ - int(Q is None)
        ap = np.empty(codes.shape[0])
        blocks = self._iter_brute_blocks(Q, rows, with_scratch=True)
        for start, stop, keys, sorted_keys in blocks:
            np.copyto(sorted_keys, keys)
            sorted_keys.sort(axis=1)  # NaN (the query itself) last
            relevant = self._y_codes == codes[start:stop, np.newaxis]
            if Q is None:
                relevant[np.arange(stop - start), rows[start:stop]] = False
            relevance = np.zeros((stop - start, n_ranked), dtype=bool)
            for i in range(stop - start):
                cols = np.flatnonzero(relevant[i])
                values = keys[i, cols]
                ranks = np.searchsorted(sorted_keys[i], values, side="left")
                n_equal = np.searchsorted(sorted_keys[i], values, side="right") - ranks
                for j in np.flatnonzero(n_equal > 1):
                    ranks[j] += np.count_nonzero(keys[i, : cols[j]] == values[j])
                relevance[i, ranks] = True
            ap[start:stop] = average_precision_from_relevance(
                relevance, n_positives[start:stop]
            )
        return ap

    def _exact_keys(self, Q, ind):
        """Ranking keys of the queries ``Q`` and their neighbours ``ind``."""
        n_queries, k = ind.shape
        keys = np.empty((n_queries, k), dtype=np.float32)
        n_features = self.X_fit_.shape[1]
        chunk = max(1, _GATHER_BYTES // (4 * max(k * n_features, 1)))
        for start in range(0, n_queries, chunk):
            q = Q[start : start + chunk, np.newaxis, :]
            x = _as_float32(self.X_fit_[ind[start : start + chunk]])
            if self.metric == "euclidean":
                diff = x - q
                keys[start : start + chunk] = np.einsum("ijk,ijk->ij", diff, diff)
            else:
                keys[start : start + chunk] = -np.einsum("ijk,ijk->ij", x, q)
        return keys

    def _candidates(self, queries, n_candidates, rows):
        """Rows of the approximate neighbours of ``queries`` (-1: none).

        ``rows`` are the database rows of the queries when they are database
        items (their own row may be among the candidates), else None.
        """
        n_candidates = min(n_candidates, self.n_samples_fit_)
        index = self._get_index()
        if self.algorithm == "nndescent":
            graph = index.neighbor_graph if rows is not None else None
            if graph is not None and graph[0].shape[1] >= n_candidates:
                cand = graph[0][rows, :n_candidates]
            else:
                epsilon = (self.algorithm_params or {}).get("epsilon", 0.1)
                cand = index.query(queries, k=n_candidates, epsilon=epsilon)[0]
            cand = np.asarray(cand, dtype=np.intp)
            cand[cand >= self.n_samples_fit_] = -1
            return cand
        faiss = _import_faiss()
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = int((self.algorithm_params or {}).get(
                "nprobe", _FAISS_DEFAULT_NPROBE))
        with _faiss_threads(faiss, self.n_jobs):
            _, keys = index.search(np.ascontiguousarray(queries, dtype=np.float32),
                                   n_candidates)
        # keys -> rows (the keys of the rows are increasing)
        cand = np.searchsorted(self._keys, keys)
        np.minimum(cand, self.n_samples_fit_ - 1, out=cand)
        valid = (keys >= 0) & (self._keys[cand] == keys)
        return np.where(valid, cand, -1).astype(np.intp, copy=False)

    def _approx_kneighbors(self, k, Q=None, rows=None):
        """Top-``k`` of the approximate index, re-ranked with exact distances."""
        queries = self._queries(Q, rows)
        n_queries = queries.shape[0]
        n_cand = k
        if self.algorithm == "faiss":
            n_cand = math.ceil(k * (self.algorithm_params or {}).get("k_factor", 1))
        cand = self._candidates(queries, n_cand + int(Q is None), rows)
        if Q is None:
            cand[cand == rows[:, np.newaxis]] = -1  # an item is not its own result
        # Rows with fewer than k distinct candidates (-1 padded, repeated) are
        # searched exactly.
        invalid = cand < 0
        sorted_cand = np.sort(cand, axis=1)
        repeated = np.any((sorted_cand[:, 1:] == sorted_cand[:, :-1])
                          & (sorted_cand[:, 1:] >= 0), axis=1)
        bad = (np.count_nonzero(~invalid, axis=1) < k) | repeated
        good = np.flatnonzero(~bad)

        keys_out = np.empty((n_queries, k), dtype=np.float32)
        ind_out = np.empty((n_queries, k), dtype=np.intp)
        if good.shape[0]:
            cg, ig = cand[good], invalid[good]
            keys = self._exact_keys(queries[good], np.where(ig, 0, cg))
            keys[ig] = np.inf
            cg = np.where(ig, self.n_samples_fit_, cg)
            keys, cg = _sort_by_key_then_index(keys, cg)
            keys_out[good], ind_out[good] = keys[:, :k], cg[:, :k]
        if np.any(bad):
            if Q is None:
                keys_out[bad], ind_out[bad] = self._brute_kneighbors(k, rows=rows[bad])
            else:
                keys_out[bad], ind_out[bad] = self._brute_kneighbors(k, Q=Q[bad])
        return keys_out, ind_out

    def _search(self, k, Q=None, rows=None):
        """Top-``k`` ``(keys, indices)`` of queries ``Q`` or database ``rows``."""
        if self.algorithm == "brute":
            return self._brute_kneighbors(k, Q=Q, rows=rows)
        return self._approx_kneighbors(k, Q=Q, rows=rows)

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True, return_ids=False):
        """Find the nearest database items of query descriptors.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features_in_), default=None
            Query descriptors.  ``None`` queries every database item against
            the database, each item being excluded from its own ranking.

        n_neighbors : int or "all", default=None
            Number of neighbours of each query; ``None`` uses
            ``self.n_neighbors`` and ``"all"`` ranks the whole database (all
            ``n_samples_fit_`` items, or ``n_samples_fit_ - 1`` when ``X`` is
            None; needs ``algorithm="brute"``).

        return_distance : bool, default=True
            Whether to return the distances.

        return_ids : bool, default=False
            Whether to return the ids of the neighbours (values of ``ids_``,
            e.g. image paths) instead of their row numbers.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors), dtype float32
            Distances to the neighbours, in increasing order: ``1 - cosine
            similarity``, ``-inner product`` or the Euclidean distance,
            according to ``metric``.  Only present if
            ``return_distance=True``.

        neigh_ind : ndarray of shape (n_queries, n_neighbors)
            Database indices (rows of ``X_fit_``) of the neighbours, or their
            ids with ``return_ids=True``; ties are broken by the lower index.
        """
        check_is_fitted(self)
        if X is None:
            Q, rows = None, np.arange(self.n_samples_fit_)
            n_queries = self.n_samples_fit_
        else:
            Q, rows = self._validate_queries(X), None
            n_queries = Q.shape[0]
        k = self._resolve_n_neighbors(n_neighbors, n_queries, exclude_self=Q is None)
        keys, ind = self._search(k, Q=Q, rows=rows)
        if return_ids:
            ind = self.ids_[ind]
        if return_distance:
            return self._keys_to_distances(keys), ind
        return ind

    # ------------------------------------------------------------------
    # labels
    # ------------------------------------------------------------------
    def _check_labels_fitted(self, method):
        if self.y_ is None:
            raise ValueError(
                f"{type(self).__name__}.{method}() needs the database labels, but "
                "the retriever was fitted without them: call fit(X, y)."
            )

    def predict(self, X=None):
        """Labels of the nearest database items of query descriptors.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features_in_), default=None
            Query descriptors.  ``None`` queries every database item against
            the others.

        Returns
        -------
        y_neighbors : ndarray of shape (n_queries, n_neighbors)
            Labels of the ``n_neighbors`` nearest database items, closest
            first.
        """
        check_is_fitted(self)
        self._check_labels_fitted("predict")
        ind = self.kneighbors(X, return_distance=False)
        return self.y_[ind]

    def _encode_query_labels(self, y):
        """Codes of query labels among the database labels (-1: absent)."""
        classes = self._classes
        pos = np.clip(np.searchsorted(classes, y), 0, classes.shape[0] - 1)
        found = np.asarray(classes[pos] == y, dtype=bool)
        return np.where(found, pos, -1)

    def score(self, X=None, y=None, n_neighbors=None):
        """Label-based mean average precision of queries.

        A database item is relevant to a query when it has the same label.  The
        average precision (AP) of each query uses the trapezoid rule of the
        Oxford Buildings benchmark (see
        :func:`skretrieval.metrics.average_precision_from_relevance`) and the
        score is the mean AP over the queries.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features_in_), default=None
            Query descriptors.  ``None`` scores leave-one-out: every database
            item queries all the others, with the stored labels.

        y : array-like of shape (n_queries,), default=None
            Labels of the queries; must be None when ``X`` is None.

        n_neighbors : int or "all", default=None
            Depth of the rankings.  ``None`` ranks the whole database with
            ``algorithm="brute"`` (the exact mAP, computed block by block)
            and the top ``self.n_neighbors`` items with the approximate
            algorithms.  An int ``k`` scores the top ``k``
            items only (mAP@k: relevant items beyond rank ``k`` count as not
            retrieved).

        Returns
        -------
        score : float
            Mean average precision, in [0, 1]; ``nan`` if no query has a
            relevant item in the database.

        Warns
        -----
        UndefinedMetricWarning
            If some queries have no relevant item in the database; they are
            skipped.
        """
        check_is_fitted(self)
        self._check_labels_fitted("score")
        if X is None:
            if y is not None:
                raise ValueError(
                    "score(None, y): y must be None when X is None; the "
                    "leave-one-out score uses the labels stored by fit."
                )
            Q, rows = None, np.arange(self.n_samples_fit_)
            codes = self._y_codes
            n_positives = self._class_counts[codes] - 1
        else:
            if y is None:
                raise ValueError(
                    "score(X, y) needs the labels y of the queries X (or call "
                    "score(None, None) for the leave-one-out score of the "
                    "database)."
                )
            Q, rows = self._validate_queries(X), None
            y = column_or_1d(y, warn=True)
            check_consistent_length(Q, y)
            codes = self._encode_query_labels(y)
            n_positives = np.where(codes >= 0, self._class_counts[codes], 0)
        n_queries = codes.shape[0]

        if n_neighbors is None:
            n_neighbors = "all" if self.algorithm == "brute" else self.n_neighbors
        k = self._resolve_n_neighbors(n_neighbors, n_queries, exclude_self=Q is None)
        full = k == self.n_samples_fit_ - int(Q is None)

        defined = np.flatnonzero(n_positives > 0)
        n_skipped = n_queries - defined.shape[0]
        if n_skipped:
            warnings.warn(
                f"{n_skipped} of {n_queries} queries have no relevant item (no "
                "database item with the same label); their average precision "
                "is undefined and they were skipped"
                + (": the score is nan." if n_skipped == n_queries else "."),
                UndefinedMetricWarning,
                stacklevel=2,
            )
        if defined.shape[0] == 0:
            return float("nan")
        if Q is None:
            Q_def, rows_def = None, rows[defined]
        else:
            Q_def, rows_def = Q[defined], None
        codes, n_positives = codes[defined], n_positives[defined]

        if full:
            ap = self._brute_full_ap(codes, n_positives, Q=Q_def, rows=rows_def)
        else:
            _, ind = self._search(k, Q=Q_def, rows=rows_def)
            relevance = self._y_codes[ind] == codes[:, np.newaxis]
            ap = average_precision_from_relevance(relevance, n_positives)
        return float(np.mean(ap))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags
