"""The search methods of :class:`NearestNeighborRetriever`, one class each.

``BACKENDS`` maps the ``algorithm`` parameter to its backend class.  A
backend is made from the retriever's parameters and holds no state of its
own: the index it builds lives in the retriever (``_index``, serialised by
:meth:`SearchBackend.state`), which re-ranks the candidates exactly
unless the index's distances are the exact ones
(:meth:`SearchBackend.scored_candidates`: uncompressed FAISS indexes,
float32 graphs; ``algorithm_params["rerank"]``).  A new
search method is one subclass of :class:`SearchBackend` and one entry in
``BACKENDS`` (the retriever's ``algorithm`` constraint and the index kinds
of its persisted state are read from the table).
"""

import contextlib
import importlib
import math
import warnings
from numbers import Integral, Real

import numpy as np

from ._engine import PgVectorBackend
from ._search_backend import SearchBackend, keys_to_rows, n_threads
from ._store import as_float32

__all__ = ["AUTO_MIN_VALUES", "BACKENDS", "INDEX_KINDS", "AutoFaissBackend", "BruteBackend",
           "FaissBackend", "HNSWBackend", "NNDescentBackend", "SearchBackend", "backend_class",
           "faiss_graph_defaults", "params_algorithm", "resolve_algorithm"]

# Metric names of pynndescent.
_NNDESCENT_METRICS = {
    "cosine": "cosine",
    "inner_product": "dot",
    "euclidean": "euclidean",
}
# Rows added to a FAISS index per call (bounds the float32 copy of a store).
_FAISS_ADD_ROWS = 65536
# Keys of ``algorithm_params`` with algorithm="faiss".
_FAISS_PARAMS = {"factory", "nlist", "m", "nprobe", "k_factor", "train_size",
                 "ef_construction", "ef_search", "rerank"}
_FAISS_DEFAULT_FACTORY = "IVF{nlist},Flat"
_FAISS_DEFAULT_NPROBE = 16


class BruteBackend(SearchBackend):
    """Exact search: blocks of float32 matrix products, no index."""

    exact = True


class NNDescentBackend(SearchBackend):
    """Approximate search in a :class:`pynndescent.NNDescent` graph.

    The graph is rebuilt over the whole database after any change
    (pynndescent's own incremental ``update`` was slower than a rebuild), and
    never serialised (its pickles break across numba versions): it is rebuilt,
    with the same seed, on the first query.
    """

    keyed = False

    def check_params(self):
        reserved = {"metric", "random_state", "n_jobs"} & set(self.params)
        if reserved:
            raise ValueError(
                f"algorithm_params must not contain {sorted(reserved)}: they are "
                "set from the parameters of NearestNeighborRetriever of the same "
                "names."
            )

    def check_data(self, X):
        if self.metric != "inner_product":
            return
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
                stacklevel=3,
            )

    def build(self, store, keys, seed):
        """Build and prepare the pynndescent index of the store's rows."""
        try:
            from pynndescent import NNDescent
        except ImportError as exc:  # pragma: no cover - a hard dependency
            raise ImportError(
                "algorithm='nndescent' needs the pynndescent package: "
                "pip install pynndescent"
            ) from exc
        n_samples = store.n_samples
        if n_samples < 3:
            raise ValueError(
                "algorithm='nndescent' needs at least 3 database items, got "
                f"n_samples = {n_samples}; use algorithm='brute'."
            )
        params = dict(self.params)
        params.pop("epsilon", None)  # a parameter of the queries
        params.setdefault("n_neighbors", max(30, self.n_neighbors + 1))
        params["n_neighbors"] = min(params["n_neighbors"], n_samples - 1)
        index = NNDescent(
            store.rows(0, n_samples),
            metric=_NNDESCENT_METRICS[self.metric],
            random_state=seed,
            n_jobs=self.n_jobs,
            **params,
        )
        index.prepare()
        return index

    def candidates(self, index, queries, n_candidates, rows, keys):
        graph = index.neighbor_graph if rows is not None else None
        if graph is not None and graph[0].shape[1] >= n_candidates:
            cand = graph[0][rows, :n_candidates]
        else:
            epsilon = self.params.get("epsilon", 0.1)
            cand = index.query(queries, k=n_candidates, epsilon=epsilon)[0]
        cand = np.asarray(cand, dtype=np.intp)
        cand[cand >= keys.shape[0]] = -1
        return cand


def import_faiss():
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
    faiss.omp_set_num_threads(n_threads(n_jobs))
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


class FaissBackend(SearchBackend):
    """Approximate search in a FAISS index (by default an inverted file).

    The index is trained once, on (a sample of) the rows given to ``fit``;
    rows are then added and removed by key without retraining, and the index
    is serialised with :func:`faiss.serialize_index`.
    """

    incremental = True

    def check_params(self):
        params = self.params
        _check_keys(params, _FAISS_PARAMS, "faiss")
        _check_positive_ints(params, ("nlist", "m", "nprobe", "train_size",
                                      "ef_construction", "ef_search"))
        _check_k_factor(params)
        _check_rerank(params)
        if not isinstance(params.get("factory", ""), str):
            raise ValueError("algorithm_params['factory'] must be a string.")
        graph = ({"ef_construction", "ef_search"} & set(params))
        if graph and not self.settings(1, 1)[0].startswith("HNSW"):
            raise ValueError(f"algorithm_params {sorted(graph)} apply to an HNSW factory "
                             "(e.g. 'HNSW32'), not to "
                             f"{params.get('factory', _FAISS_DEFAULT_FACTORY)!r}")

    def settings(self, n_samples, n_features):
        """Resolved ``(factory, train_size)`` for the database size."""
        params = self.params
        nlist = params.get("nlist") or _default_nlist(n_samples)
        m = params.get("m") or _default_pq_m(n_features)
        factory = params.get("factory", _FAISS_DEFAULT_FACTORY)
        factory = factory.replace("{nlist}", str(nlist)).replace("{m}", str(m))
        train_size = params.get("train_size") or max(40 * nlist, 10000)
        return factory, min(train_size, n_samples)

    def build(self, store, keys, seed):
        """Train a FAISS index on the store's rows and add all of them, with ``keys``."""
        faiss = import_faiss()
        factory, train_size = self.settings(store.n_samples, store.n_features)
        metric = (faiss.METRIC_L2 if self.metric == "euclidean"
                  else faiss.METRIC_INNER_PRODUCT)
        index = faiss.index_factory(store.n_features, factory, metric)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
            ivf = faiss.downcast_index(ivf)
            pq = getattr(ivf, "pq", None)
            if pq is not None:
                pq.cp.seed = seed
            if getattr(ivf, "do_polysemous_training", False):
                # slow (tens of seconds for a few thousand vectors), and only
                # useful for polysemous search, which the exact re-ranking
                # replaces
                ivf.do_polysemous_training = False
        else:  # Flat, HNSW, ...: ids through a map
            self._set_hnsw(index, "efConstruction", "ef_construction", store.n_samples)
            index = faiss.IndexIDMap2(index)
        with _faiss_threads(faiss, self.n_jobs):
            if not index.is_trained:
                n = store.n_samples
                if train_size < n:
                    rng = np.random.RandomState(seed)
                    rows = np.sort(rng.choice(n, train_size, replace=False))
                    sample = store.take(rows)
                else:
                    sample = store.rows(0, n)
                index.train(sample)
                del sample
        self._add_rows(index, store.rows, keys)
        return index

    def _add_rows(self, index, rows, keys):
        """Add ``rows(start, stop)`` (float32) to the index with ``keys``."""
        faiss = import_faiss()
        n = keys.shape[0]
        with _faiss_threads(faiss, self.n_jobs):
            for start in range(0, n, _FAISS_ADD_ROWS):
                stop = min(start + _FAISS_ADD_ROWS, n)
                index.add_with_ids(rows(start, stop), np.ascontiguousarray(keys[start:stop]))

    def add(self, index, X, keys):
        self._set_hnsw(getattr(import_faiss().downcast_index(index), "index", index),
                       "efConstruction", "ef_construction", keys.shape[0])
        self._add_rows(index, lambda start, stop: as_float32(X[start:stop]), keys)
        return index

    def remove(self, index, keys):
        faiss = import_faiss()
        inner = getattr(faiss.downcast_index(index), "index", None)
        if inner is not None and isinstance(faiss.downcast_index(inner), faiss.IndexHNSW):
            # FAISS's graphs cannot remove vectors: they stay in the graph (and
            # guide its searches) but their keys are no longer the retriever's
            # (never returned: see _search); a refit drops them
            return index
        removed = np.ascontiguousarray(keys, dtype=np.int64)
        with _faiss_threads(faiss, self.n_jobs):
            index.remove_ids(faiss.IDSelectorBatch(removed))
        return index

    def n_candidates(self, k):
        return math.ceil(k * self.params.get("k_factor", 1))

    def candidates(self, index, queries, n_candidates, rows, keys):
        return self._search(index, queries, n_candidates, keys)[0]

    def scored_candidates(self, index, queries, n_candidates, rows, keys):
        """The candidates and, when the index holds the exact vectors (a flat
        storage: ``Flat``, ``IVF...,Flat``, ``HNSW32``; or ``rerank=False``),
        its distances as ranking keys (minus the inner products, or the
        squared Euclidean distances); else None (re-ranked from the store)."""
        cand, distances = self._search(index, queries, n_candidates, keys)
        if not _takes_index_keys(self.params, lambda: _faiss_exact_storage(index)):
            return cand, None
        if self.metric != "euclidean":  # FAISS gives the similarities
            np.negative(distances, out=distances)
        return cand, distances

    def _search(self, index, queries, n_candidates, keys):
        """``(rows, distances)`` of the index's ``n_candidates`` for ``queries``."""
        faiss = import_faiss()
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = int(self.params.get("nprobe", _FAISS_DEFAULT_NPROBE))
        else:
            self._set_hnsw(getattr(faiss.downcast_index(index), "index", index),
                           "efSearch", "ef_search", keys.shape[0])
        # the removed vectors left in a graph take places among the results:
        # as many more are asked for (up to twice as many)
        extra = min(max(0, index.ntotal - keys.shape[0]), n_candidates)
        with _faiss_threads(faiss, self.n_jobs):
            distances, found = index.search(
                np.ascontiguousarray(queries, dtype=np.float32), n_candidates + extra)
        # the keys of the rows are increasing
        cand = keys_to_rows(found, keys)
        distances = np.asarray(distances, dtype=np.float32)
        if extra:  # the first n_candidates found that are still in the database
            order = np.argsort(cand < 0, axis=1, kind="stable")[:, :n_candidates]
            cand = np.take_along_axis(cand, order, axis=1)
            distances = np.take_along_axis(distances, order, axis=1)
        return cand, distances

    def _set_hnsw(self, index, attribute, param, n_samples):
        """Set the HNSW graph's ``attribute`` from ``param`` when given (a graph index)."""
        hnsw = getattr(import_faiss().downcast_index(index), "hnsw", None)
        value = self._graph_param(param, n_samples)
        if hnsw is not None and value is not None:
            setattr(hnsw, attribute, int(value))

    def _graph_param(self, param, n_samples):
        """``ef_construction`` or ``ef_search`` of a graph of ``n_samples``
        (None: FAISS's own)."""
        return self.params.get(param)

    def state(self, index):
        return import_faiss().serialize_index(index)

    def from_state(self, blob):
        return import_faiss().deserialize_index(np.asarray(blob, dtype=np.uint8))

    def library_version(self):
        return "faiss " + import_faiss().__version__

# Keys of ``algorithm_params`` with algorithm="hnsw".
_HNSW_PARAMS = {"M", "ef_construction", "ef_search", "k_factor", "index_dtype", "rerank"}
_HNSW_INDEX_DTYPES = {"float16": "f16", "float32": "f32"}
_HNSW_METRICS = {"cosine": "ip", "inner_product": "ip", "euclidean": "l2sq"}
#: ``algorithm="auto"`` uses the graph index from this many stored values
#: (``n_samples * n_features``: 2**25, 128 MB of float32, e.g. 65,536 x 512).
AUTO_MIN_VALUES = 2**25


def import_usearch():
    """The ``usearch.index`` module, or an ImportError naming the extra."""
    try:
        return importlib.import_module("usearch.index")
    except ImportError as exc:
        raise ImportError(
            "algorithm='hnsw' needs the usearch package, an optional dependency "
            "of skretrieval: pip install skretrieval[hnsw] (or pip install usearch)"
        ) from exc


def hnsw_defaults(n_samples, n_features):
    """Default ``(M, ef_construction, ef_search)`` of a database's size.

    Measured (``benchmarks/bench_search.py``, docs/scale.md) to reach
    recall@10 >= 0.95 on clustered, PCA-like descriptors: 16 links per node
    up to 128 dimensions, 32 above; construction depth 128; search depth 32
    up to 100,000 items, 64 above (for the top-10; the search depth is at
    least the number of candidates asked for).
    """
    m = 16 if n_features <= 128 else 32
    ef_search = 32 if n_samples <= 100_000 else 64
    return m, 128, ef_search


def faiss_graph_defaults(n_samples, n_features):
    """Default ``(M, ef_construction, ef_search)`` of ``algorithm="auto"``'s
    FAISS graph (float32 vectors, no re-rank) for a database's size.

    Measured (``benchmarks/bench_search.py``, docs/scale.md) on clustered,
    PCA-like descriptors to reach recall@10 >= 0.95 at 20 times or more the
    exact search's queries per second, one query in under a millisecond: 32
    links per node; construction depth 80 (twice FAISS's 40: a better graph
    for 1.1 to 1.2 times the build time); search depth 28 up to
    300,000 items (0.956 at 300,000 x 512: 22.8x; 32 gave 0.963 at 19 to
    22x), 96 above (0.960 at 1,000,000 x 512; 64 gave 0.939).  The search
    depth is at least the number of candidates asked for.
    """
    return 32, 80, 28 if n_samples <= 300_000 else 96


def params_algorithm(algorithm):
    """The search method whose ``algorithm_params`` ``algorithm`` takes."""
    return "hnsw" if algorithm == "auto" else algorithm


# The graphs "auto" builds, the first whose library is installed.
_AUTO_GRAPHS = (("faiss", import_faiss), ("hnsw", import_usearch))


def resolve_algorithm(algorithm, n_samples, n_features, built=None):
    """The search method of ``algorithm`` for a database of this size.

    ``"auto"`` is the exact search below :data:`AUTO_MIN_VALUES` stored
    values, a graph above: the one already ``built`` (the ``_index_kind`` of
    a fitted or loaded retriever: a file saved with a usearch graph keeps
    it), else FAISS's (:class:`AutoFaissBackend`) when faiss is installed,
    else usearch's; the exact search without either library.
    """
    if algorithm != "auto":
        return algorithm
    if n_samples * n_features < AUTO_MIN_VALUES:
        return "brute"
    if built in dict(_AUTO_GRAPHS):
        return built
    for name, module in _AUTO_GRAPHS:
        try:
            module()
        except ImportError:
            continue
        return name
    return "brute"


def backend_class(algorithm, resolved):
    """The backend class of the search method ``resolved`` for ``algorithm``."""
    if (algorithm, resolved) == ("auto", "faiss"):
        return AutoFaissBackend
    return BACKENDS[resolved]


def _check_keys(params, allowed, algorithm):
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(
            f"algorithm_params with algorithm={algorithm!r} takes the keys "
            f"{sorted(allowed)}, got {sorted(unknown)}."
        )


def _check_positive_ints(params, names):
    for key in names:
        value = params.get(key)
        if value is not None and (
            not isinstance(value, Integral) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(
                f"algorithm_params[{key!r}] must be a positive int, got {value!r}."
            )


def _check_k_factor(params):
    k_factor = params.get("k_factor", 1)
    if (not isinstance(k_factor, Real) or isinstance(k_factor, bool)
            or not k_factor >= 1):
        raise ValueError(
            f"algorithm_params['k_factor'] must be a number >= 1, got {k_factor!r}."
        )


def _check_rerank(params):
    rerank = params.get("rerank")
    if rerank is not None and not isinstance(rerank, (bool, np.bool_)):
        raise ValueError(
            f"algorithm_params['rerank'] must be True, False or None, got {rerank!r}."
        )


def _takes_index_keys(params, exact_vectors):
    """Whether the index's distances are the ranking keys (no exact re-rank).

    ``params["rerank"]``: True re-ranks the candidates from the retriever's
    store, False takes the index's distances; None (the default) takes them
    when ``exact_vectors()`` says the index holds the stored vectors as they
    are (its distances are then the exact ones, within float32 rounding).
    """
    rerank = params.get("rerank")
    if rerank is not None:
        return not rerank
    return bool(exact_vectors())


def _usearch_float32(index):
    """Whether a usearch graph keeps its vectors in float32 (the stored ones)."""
    return str(index.dtype).lower().endswith("f32")


def _faiss_exact_storage(index):
    """Whether a FAISS index keeps its vectors uncompressed (float32)."""
    faiss = import_faiss()
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIDMap):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    return isinstance(inner, (faiss.IndexFlat, faiss.IndexIVFFlat))


class HNSWBackend(SearchBackend):
    """Approximate search in a HNSW graph of the usearch library.

    usearch was chosen by measurement against FAISS's ``IndexHNSWFlat`` and
    hnswlib (docs/scale.md): it builds the graph fastest, stores its vectors
    in float16 (half the memory, no loss after the exact re-ranking),
    removes vectors natively and serialises to bytes.  Rows are added and
    removed by key; the index is saved with its own ``save()`` bytes.
    """

    incremental = True

    def check_params(self):
        params = self.params
        _check_keys(params, _HNSW_PARAMS, "hnsw")
        _check_positive_ints(params, ("ef_construction", "ef_search"))
        m = params.get("M")
        if m is not None and (not isinstance(m, Integral) or isinstance(m, bool) or m < 2):
            raise ValueError(f"algorithm_params['M'] must be an int >= 2, got {m!r}.")
        _check_k_factor(params)
        _check_rerank(params)
        if params.get("index_dtype", "float16") not in _HNSW_INDEX_DTYPES:
            raise ValueError(
                "algorithm_params['index_dtype'] must be 'float16' or 'float32', got "
                f"{params['index_dtype']!r}."
            )

    def settings(self, n_samples, n_features):
        """Resolved ``(M, ef_construction, ef_search)``: the parameters or
        :func:`hnsw_defaults`."""
        defaults = hnsw_defaults(n_samples, n_features)
        return tuple(self.params.get(key) or default for key, default in
                     zip(("M", "ef_construction", "ef_search"), defaults))

    def build(self, store, keys, seed):
        """A graph of the store's rows, added block by block (float32 blocks)."""
        module = import_usearch()
        m, ef_construction, _ = self.settings(store.n_samples, store.n_features)
        index = module.Index(
            ndim=store.n_features, metric=_HNSW_METRICS[self.metric],
            dtype=_HNSW_INDEX_DTYPES[self.params.get("index_dtype", "float16")],
            connectivity=int(m), expansion_add=int(ef_construction),
        )
        buffer = store.block_buffer()
        step = max(store.block_rows(), 4096)
        if buffer is not None and buffer.shape[0] < step:
            buffer = np.empty((min(step, store.n_samples), store.n_features), np.float32)
        for start in range(0, store.n_samples, step):
            stop = min(start + step, store.n_samples)
            index.add(keys[start:stop].astype(np.uint64), store.rows(start, stop, buffer),
                      threads=n_threads(self.n_jobs))
        return index

    def add(self, index, X, keys):
        index.add(keys.astype(np.uint64), as_float32(X), threads=n_threads(self.n_jobs))
        return index

    def remove(self, index, keys):
        index.remove(keys.astype(np.uint64))
        return index

    def n_candidates(self, k):
        return math.ceil(k * self.params.get("k_factor", 1))

    def candidates(self, index, queries, n_candidates, rows, keys):
        return self._search(index, queries, n_candidates, keys)[0]

    def scored_candidates(self, index, queries, n_candidates, rows, keys):
        """The candidates and, when the graph holds float32 vectors (built
        with ``index_dtype="float32"``; or ``rerank=False``), its distances as
        ranking keys (``1 - inner product`` minus 1, or the squared Euclidean
        distance); else None (re-ranked from the store)."""
        cand, distances = self._search(index, queries, n_candidates, keys)
        if not _takes_index_keys(self.params, lambda: _usearch_float32(index)):
            return cand, None
        if _HNSW_METRICS[self.metric] == "ip":  # usearch's distance: 1 - inner product
            distances -= np.float32(1.0)
        return cand, distances

    def _search(self, index, queries, n_candidates, keys):
        """``(rows, distances)`` of the graph's ``n_candidates`` for ``queries``."""
        _, _, ef_search = self.settings(keys.shape[0], queries.shape[1])
        index.expansion_search = int(max(ef_search, n_candidates))
        # one query: no thread pool
        threads = 1 if queries.shape[0] == 1 else n_threads(self.n_jobs)
        found = index.search(np.ascontiguousarray(queries, dtype=np.float32), n_candidates,
                             threads=threads)
        keys_found = np.full((queries.shape[0], n_candidates), -1, dtype=np.int64)
        distances = np.full(keys_found.shape, np.inf, dtype=np.float32)
        if hasattr(found, "counts"):  # BatchMatches (padded beyond the counts)
            keys_found[:] = found.keys
            distances[:] = found.distances
            missing = np.arange(n_candidates) >= found.counts[:, np.newaxis]
            keys_found[missing] = -1
            distances[missing] = np.inf
        else:  # one query: Matches, as many keys as found
            keys_found[0, : len(found.keys)] = found.keys
            distances[0, : len(found.keys)] = found.distances
        return keys_to_rows(keys_found, keys), distances

    def state(self, index):
        return np.frombuffer(index.save(), dtype=np.uint8)

    def from_state(self, blob):
        index = import_usearch().Index.restore(np.asarray(blob, dtype=np.uint8).tobytes())
        if index is None:
            raise ValueError("the serialised HNSW index could not be read by usearch.")
        return index

    def library_version(self):
        import_usearch()
        return "usearch " + importlib.import_module("usearch").__version__


class AutoFaissBackend(FaissBackend):
    """The graph of ``algorithm="auto"`` when FAISS is installed.

    A FAISS HNSW graph of float32 vectors (``"HNSW{M}"``: its distances are
    the exact ones, no re-rank; ``"HNSW{M}_SQfp16"`` with
    ``index_dtype="float16"``, re-ranked), from the ``algorithm_params`` of
    ``"hnsw"`` (``M``, ``ef_construction``, ``ef_search``, ``k_factor``,
    ``index_dtype``, ``rerank``), with the defaults of
    :func:`faiss_graph_defaults`.  Chosen by measurement over usearch's
    graph (docs/scale.md): at 300,000 x 512 and recall@10 >= 0.95 it
    answers several times more queries per second, and builds faster.
    """

    def __init__(self, params, metric, n_neighbors, n_jobs):
        super().__init__(params, metric, n_neighbors, n_jobs)
        self.graph_params = self.params
        m = self.params.get("M") or faiss_graph_defaults(1, 1)[0]
        quantizer = "_SQfp16" if self.params.get("index_dtype") == "float16" else ""
        self.params = {"factory": f"HNSW{int(m)}{quantizer}",
                       **{key: value for key, value in self.graph_params.items()
                          if key in ("ef_construction", "ef_search", "k_factor", "rerank")}}

    def check_params(self):
        HNSWBackend(self.graph_params, self.metric, self.n_neighbors,
                    self.n_jobs).check_params()

    def _graph_param(self, param, n_samples):
        value = self.params.get(param)
        if value is None:
            _, ef_construction, ef_search = faiss_graph_defaults(n_samples, 0)
            value = ef_construction if param == "ef_construction" else ef_search
        return value


#: ``algorithm`` -> its backend class.
BACKENDS = {
    "brute": BruteBackend,
    "nndescent": NNDescentBackend,
    "faiss": FaissBackend,
    "hnsw": HNSWBackend,
    "pgvector": PgVectorBackend,  # neighbors/_engine.py: a PostgreSQL server
}
#: The backends with an index (values of the retriever's ``_index_kind``).
INDEX_KINDS = tuple(sorted(name for name, cls in BACKENDS.items() if not cls.exact))
