"""Nearest-neighbour search over a database of global image descriptors."""

import os
import warnings
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ..metrics._ranking import average_precision_from_relevance
from ..utils._arrays import distances_from_similarities, l2_normalize
from ._approx import approx_kneighbors
from ._backends import BACKENDS, params_algorithm
from ._base import RetrieverMixin, check_labels_fitted, resolve_n_neighbors
from ._exact import block_query_rows
from ._index_state import (INDEX_BLOB, INDEX_CHECKSUM, INDEX_LIBRARY, RETRIEVER_STATE,
                           IndexStateMixin)
from ._items import (ItemIds, LabelCodes, check_fingerprints, concatenate_fingerprints,
                     concatenate_labels)
from ._store import DescriptorStore

__all__ = ["NearestNeighborRetriever"]

class NearestNeighborRetriever(RetrieverMixin, IndexStateMixin, BaseEstimator):
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

    algorithm : {"brute", "hnsw", "auto", "nndescent", "faiss", "pgvector"}, default="brute"
        ``"brute"`` computes exact rankings; ``"hnsw"`` builds a HNSW graph
        (the usearch library: ``pip install skretrieval[hnsw]``), the
        approximate search of choice for 128 to 2048 dimensions, which grows
        and shrinks in place; ``"auto"`` is ``"brute"`` below ``2**25``
        stored values (``n_samples x n_features``, e.g. 65,536 x 512: the
        exact search then answers a query in a few ms) and a HNSW graph
        above: FAISS's (``HNSW32``, float32 vectors, whose distances are the
        exact ones) when faiss is installed, else usearch's (``"hnsw"``),
        else ``"brute"``; a fitted or loaded retriever keeps the graph it
        built (docs/scale.md); ``"nndescent"`` builds a
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
          ``set_params``;
        * ``"k_factor"`` (number >= 1, default 1): ``ceil(k_factor * k)``
          candidates are taken from the index and ranked by their exact
          distances (raise it with PQ);
        * ``"rerank"`` (bool, default None): True computes the candidates'
          distances from the stored descriptors (the exact re-rank), False
          takes the index's own; None re-ranks only when the index keeps
          compressed vectors (PQ, SQ): the distances of ``Flat``,
          ``IVF...,Flat`` and ``HNSW32`` are the exact ones;
        * ``"train_size"`` (int): descriptors used to train the quantizers,
          default ``max(40 * nlist, 10000)`` (all of them if fewer; FAISS
          warns below 39 points per list);
        * ``"ef_construction"``, ``"ef_search"`` (int): the search depths of an
          ``"HNSW..."`` factory's insertions and queries (FAISS's 40 and 16).

        With ``algorithm="hnsw"`` (or ``"auto"``), any of ``"M"`` (links per
        node, int >= 2), ``"ef_construction"`` (search depth of the
        insertions), ``"ef_search"`` (search depth of the queries: more is
        slower and recalls more; changed without rebuilding), ``"k_factor"``
        (number >= 1, default 1: candidates ranked by their exact distances,
        as for FAISS), ``"index_dtype"`` (``"float16"``, the default, or
        ``"float32"``: the vectors kept in the graph) and ``"rerank"`` (as
        for FAISS: by default, a float16 graph's candidates are re-ranked).
        The defaults follow the database size: ``M`` 16 up to 128
        dimensions, 32 above; ``ef_construction`` 128; ``ef_search`` 32 up to
        100,000 items, 64 above (measured to give recall@10 >= 0.95; see
        docs/scale.md).  With ``"auto"`` and FAISS, the same keys make the
        FAISS graph (``index_dtype`` float32 by default, ``"float16"``: FAISS's
        ``SQfp16``, re-ranked), with its own measured defaults: ``M`` 32,
        ``ef_construction`` 80, ``ef_search`` 28 up to 300,000 items, 96
        above.

        With ``algorithm="pgvector"`` (a PostgreSQL server with pgvector,
        ``pip install skretrieval[engine]``; docs/scale.md): ``"uri"`` (no
        password: libpq reads ``PGPASSWORD``), ``"table"``, ``"index"``
        (``"hnsw"``, ``"ivfflat"``, ``"exact"``), ``"index_dtype"``, ``"m"``,
        ``"ef_construction"``, ``"ef_search"``, ``"lists"``, ``"probes"``,
        ``"k_factor"``, ``"n_connections"``, ``"store"`` (``"engine"``, the
        default: only the server holds the descriptors, ``X_fit_`` reads
        them back; ``"local"``: the retriever keeps a copy too).

    n_jobs : int, default=None
        Number of threads used to build the NN-descent index, or used by
        FAISS (``None`` or ``-1``: all).  The brute-force search runs on the
        multithreaded BLAS.

    random_state : int, RandomState instance or None, default=None
        Seeds the construction of the NN-descent index and the training of
        the FAISS quantizers.  Pass an int for reproducible results across
        multiple function calls.  See ``random_state`` in the scikit-learn glossary.

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
    X_fit_ : ndarray of shape (n_samples_fit, n_features_in)
        Database descriptors (float32, or float16 with ``dtype="float16"``;
        a :class:`numpy.memmap` with ``store``), L2-normalised when
        ``metric="cosine"``.

    y_ : ndarray of shape (n_samples_fit,) or None
        Database labels, or ``None`` when fitted without labels.

    ids_ : ndarray of shape (n_samples_fit,)
        Database ids, unique: those given to :meth:`fit` and
        :meth:`partial_fit` (e.g. image paths), by default consecutive ints
        (the row numbers of the items added by the first :meth:`fit`).
        ``kneighbors(..., return_ids=True)`` returns them instead of row
        numbers, and :meth:`remove` takes them.

    fingerprints_ : ndarray of str of shape (n_samples_fit,) or None
        Content fingerprints of the items, given to :meth:`fit` or
        :meth:`partial_fit` (:func:`skretrieval.add_to_index` gives the
        hashes of the images), ``""`` where unknown; ``None`` when none was
        ever given.

    n_samples_fit_ : int
        Number of database items.

    n_features_in_ : int
        Number of features seen during ``fit``.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``. Defined only when `X`
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
    touching the other vectors (a graph, ``"HNSW..."``, keeps removed
    vectors in place, never returned, until a refit).  An index that keeps
    the vectors uncompressed (``Flat``, ``IVF...,Flat``, ``HNSW32``) gives
    the exact distances itself (within float32 rounding); the candidates of
    a compressed one (PQ, SQ) are re-ranked with the exact distances of the
    stored descriptors (``k_factor``, ``rerank``), and queries for
    which the index returns fewer than ``k`` items (e.g. with a small
    ``nprobe``) are searched exactly.  Pickling serialises the index
    (:func:`faiss.serialize_index`), so a joblib round trip gives identical
    results; so does :func:`skretrieval.persistence.save_pipeline`.

    **HNSW.**  The graph (usearch) holds its own float16 copy of the
    vectors (float32 with ``index_dtype``: its distances are then the exact
    ones, within float32 rounding, and taken as they are); the candidates of
    a float16 graph are re-ranked with the exact distances of the
    stored descriptors.  :meth:`partial_fit` inserts the new vectors,
    :meth:`remove` deletes vectors natively (never returned again).
    Pickling and ``save_pipeline`` store the library's own serialisation
    (``Index.save()`` bytes) with its SHA-256 and the library version: altered
    bytes raise a ``ValueError``; bytes of another usearch version are not
    read, the graph is rebuilt from the stored descriptors on the first
    query.  ``M`` and ``ef_construction`` apply to a new graph (refit after
    changing them); ``ef_search`` and ``k_factor`` apply at once.

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
        "algorithm": [StrOptions(set(BACKENDS) | {"auto"})],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
        "algorithm_params": [dict, None],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "dtype": [StrOptions({"float32", "float16"})],
        "store": [None, str, os.PathLike],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = RETRIEVER_STATE

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
        # "auto" takes the parameters of "hnsw", checked whatever the size
        self._backend(params_algorithm(self.algorithm)).check_params()
        if y is None:
            X = validate_data(self, X, dtype=np.float32)
        else:
            X, y = validate_data(self, X, y, dtype=np.float32)
        n_samples = X.shape[0]
        backend = self._backend(self._algorithm(*X.shape))
        # checks before any state changes
        ids = ItemIds().new_ids(ids, n_samples)
        fingerprints = check_fingerprints(fingerprints, n_samples)
        self._set_labels(y)
        X = self._prepare_rows(X, np.dtype(self.dtype))
        backend.check_data(X)
        self.ids_ = ids
        self.fingerprints_ = fingerprints
        if ids.dtype.kind in "iu":
            self._next_id = int(ids.max()) + 1
        else:
            self._next_id = 0
        self._keys = np.arange(n_samples, dtype=np.int64)
        self._n_keys = n_samples
        self._set_store(DescriptorStore.create(X, self.store))
        self.n_samples_fit_ = n_samples

        self._index = None
        self._index_kind = None
        for name in (INDEX_BLOB, INDEX_CHECKSUM, INDEX_LIBRARY):
            self.__dict__.pop(name, None)
        if not backend.exact:
            self._new_index_seed()
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
        X : array-like of shape (n_samples, n_features_in)
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
        self._backend().check_params()
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
        ids = ItemIds(self.ids_, self._next_id).new_ids(ids, n_new)
        fingerprints = check_fingerprints(fingerprints, n_new)
        fingerprints = concatenate_fingerprints(getattr(self, "fingerprints_", None),
                                                self.n_samples_fit_, fingerprints, n_new)
        if y is not None:
            y_all = concatenate_labels(self.y_, y)
        X = self._prepare_rows(X, self.X_fit_.dtype)
        keys = np.arange(self._n_keys, self._n_keys + n_new, dtype=np.int64)
        index = self._updatable_index()

        if y is not None:
            self._set_labels(y_all)
        self._set_store(self._store.append(X, keys))
        self.ids_ = np.concatenate([self.ids_, ids])
        self.fingerprints_ = fingerprints
        if ids.dtype.kind in "iu":
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._keys = np.concatenate([self._keys, keys])
        self._n_keys += n_new
        self.n_samples_fit_ += n_new
        # None (e.g. NN-descent): rebuilt on the next query
        self._index = None if index is None else self._backend().add(index, X, keys)
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
        return ItemIds(self.ids_).rows_of(ids)

    def _set_labels(self, y):
        """Store the labels ``y`` (or None) and their codes."""
        if y is None:
            self.y_ = None
            return
        codes = LabelCodes.of(y)
        self.y_ = y
        self._classes, self._y_codes, self._class_counts = codes

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
        index = self._updatable_index()
        self._index = None if index is None else self._backend().remove(
            index, self._keys[~keep])
        self._set_store(self._store.compact(keep))
        if self.y_ is not None:
            self._set_labels(self.y_[keep])
        self.ids_ = self.ids_[keep]
        if getattr(self, "fingerprints_", None) is not None:
            self.fingerprints_ = self.fingerprints_[keep]
        self._keys = self._keys[keep]
        self.n_samples_fit_ = n_kept
        return self

    def _prepare_rows(self, X, dtype):
        """Normalised (cosine) rows of ``X`` in the storage dtype."""
        if self.metric == "cosine":
            X = l2_normalize(X, tiny_as_zero=True)
        return X if X.dtype == dtype else X.astype(dtype)

    # ------------------------------------------------------------------
    # search
    # ------------------------------------------------------------------
    def _validate_queries(self, X):
        if not (type(X) is np.ndarray and X.dtype == np.float32 and X.ndim == 2
                and X.shape[0] and X.shape[1] == self.n_features_in_
                and not hasattr(self, "feature_names_in_") and np.isfinite(X).all()):
            # (a float32 array that passes these checks needs none of
            # validate_data's, which cost about a millisecond per call)
            X = validate_data(self, X, reset=False, dtype=np.float32)
        return l2_normalize(X, tiny_as_zero=True) if self.metric == "cosine" else X

    def _resolve_n_neighbors(self, n_neighbors, n_queries, exclude_self):
        """Check ``n_neighbors`` and return it as an int."""
        refusal = None
        if isinstance(n_neighbors, str) and not self._backend().exact:
            refusal = ("n_neighbors='all' (a full ranking of the database) needs "
                       f"algorithm='brute'; {self._algorithm()!r} only finds approximate "
                       "nearest neighbours. Pass an int n_neighbors instead.")
        return resolve_n_neighbors(n_neighbors, self.n_samples_fit_ - int(exclude_self),
                                   default=self.n_neighbors, exclude_self=exclude_self,
                                   n_queries=n_queries, full_refusal=refusal)

    def _chunk_rows(self):
        if self.chunk_size is not None:
            return self.chunk_size
        return block_query_rows(self.n_samples_fit_)

    def _keys_to_distances(self, keys):
        """Distances of the ranking keys: squared Euclidean distances, or minus
        the similarities (cosine distances clipped at 0)."""
        if self.metric == "euclidean":
            return np.sqrt(np.maximum(keys, np.float32(0.0)))
        dist = distances_from_similarities(-keys, self.metric)
        return np.maximum(dist, np.float32(0.0)) if self.metric == "cosine" else dist

    def _exact_keys(self, Q, ind):
        """Ranking keys of the queries ``Q`` and their neighbours ``ind``."""
        return self._exact().exact_keys(Q, ind)

    def _search(self, k, Q=None, rows=None):
        """Top-``k`` ``(keys, indices)`` of queries ``Q`` or database ``rows``."""
        backend = self._backend()
        if backend.exact:
            return self._exact().kneighbors(k, Q=Q, rows=rows)
        return approx_kneighbors(backend, self._get_index(), self._exact(), self._keys, k,
                                 Q=Q, rows=rows)

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True, return_ids=False):
        """Find the nearest database items of query descriptors.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features_in), default=None
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
    def predict(self, X=None):
        """Labels of the nearest database items of query descriptors.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features_in), default=None
            Query descriptors.  ``None`` queries every database item against
            the others.

        Returns
        -------
        y_neighbors : ndarray of shape (n_queries, n_neighbors)
            Labels of the ``n_neighbors`` nearest database items, closest
            first.
        """
        return super().predict(X)

    def score(self, X=None, y=None, n_neighbors=None):
        """Label-based mean average precision of queries.

        A database item is relevant to a query when it has the same label.  The
        average precision (AP) of each query uses the trapezoid rule of the
        Oxford Buildings benchmark (see
        :func:`skretrieval.metrics.average_precision_from_relevance`) and the
        score is the mean AP over the queries.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features_in), default=None
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
        check_labels_fitted(self, "score")
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
            codes = LabelCodes(self._classes, self._y_codes, self._class_counts).encode(y)
            n_positives = np.where(codes >= 0, self._class_counts[codes], 0)
        n_queries = codes.shape[0]

        if n_neighbors is None:
            n_neighbors = "all" if self._backend().exact else self.n_neighbors
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
            ap = self._exact().full_ap(self._y_codes, codes, n_positives, Q=Q_def,
                                       rows=rows_def)
        else:
            _, ind = self._search(k, Q=Q_def, rows=rows_def)
            relevance = self._y_codes[ind] == codes[:, np.newaxis]
            ap = average_precision_from_relevance(relevance, n_positives)
        return float(np.mean(ap))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags
