"""Nearest-neighbour search over a database of global image descriptors."""

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

from .metrics import average_precision_from_relevance

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


def _top_k(keys, k, scratch=None):
    """The ``k`` smallest keys of every row, ties broken by the lower column.

    ``keys`` is a float array of shape (n_rows, n_columns); NaN entries are
    never selected (they rank after everything) as long as every row has at
    least ``k`` non-NaN entries.  ``scratch``, an optional array of the same
    shape and dtype, is overwritten (it saves an allocation per call).
    Returns ``(values, columns)`` of shape (n_rows, k) sorted by increasing
    value, then increasing column.
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
    if given, and ranks the database for query descriptors, either exactly by
    brute force (blocks of float32 matrix products) or approximately with a
    :class:`pynndescent.NNDescent` graph.  The API mirrors the
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

    algorithm : {"brute", "nndescent"}, default="brute"
        ``"brute"`` computes exact rankings; ``"nndescent"`` builds a
        :class:`pynndescent.NNDescent` index in :meth:`fit` and gives
        approximate nearest neighbours, much faster on large databases.

    chunk_size : int, default=None
        Number of queries per block of the brute-force search.  ``None``
        chooses it so that the block of similarities (float32, ``chunk_size x
        n_samples_fit_``) takes at most about 256 MB.

    algorithm_params : dict, default=None
        Extra keyword arguments of :class:`pynndescent.NNDescent` (e.g.
        ``{"n_neighbors": 60}`` for the degree of its graph, which defaults to
        ``max(30, n_neighbors + 1)``).  Only used with
        ``algorithm="nndescent"``; ``metric``, ``random_state`` and ``n_jobs``
        are set by the parameters of the same names.

    n_jobs : int, default=None
        Number of threads used to build the NN-descent index (``None`` or
        ``-1``: all).  Only used with ``algorithm="nndescent"``; the brute-force
        search runs on the multithreaded BLAS.

    random_state : int, RandomState instance or None, default=None
        Seeds the construction of the NN-descent index.  Only used with
        ``algorithm="nndescent"``.  Pass an int for reproducible results across
        multiple function calls.  See :term:`Glossary <random_state>`.

    Attributes
    ----------
    X_fit_ : ndarray of shape (n_samples_fit_, n_features_in_), dtype float32
        Database descriptors, L2-normalised when ``metric="cosine"``.

    y_ : ndarray of shape (n_samples_fit_,) or None
        Database labels, or ``None`` when fitted without labels.

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
    relevant items beyond rank ``k`` count as not retrieved.

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
        "algorithm": [StrOptions({"brute", "nndescent"})],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
        "algorithm_params": [dict, None],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    }

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
    ):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.algorithm = algorithm
        self.chunk_size = chunk_size
        self.algorithm_params = algorithm_params
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ------------------------------------------------------------------
    # fitting
    # ------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Store the database descriptors (and labels) and build the index.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Database descriptors.

        y : array-like of shape (n_samples,), default=None
            Database labels (any sortable type), needed by :meth:`predict`
            and :meth:`score`.

        Returns
        -------
        self : object
            The fitted retriever.
        """
        if self.algorithm == "nndescent":
            self._check_algorithm_params()
        if y is None:
            X = validate_data(self, X, dtype=np.float32)
            self.y_ = None
        else:
            X, y = validate_data(self, X, y, dtype=np.float32)
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
        if self.metric == "cosine":
            X = normalize(X)
        self.X_fit_ = X
        self.n_samples_fit_ = X.shape[0]

        self._index = None
        if self.algorithm == "nndescent":
            if self.metric == "inner_product":
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
            self._index_seed = int(
                check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
            )
            self._index = self._build_index()
        return self

    def _check_algorithm_params(self):
        reserved = {"metric", "random_state", "n_jobs"} & set(
            self.algorithm_params or {}
        )
        if reserved:
            raise ValueError(
                f"algorithm_params must not contain {sorted(reserved)}: they are "
                "set from the parameters of NearestNeighborRetriever of the same "
                "names."
            )

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
        params.setdefault("n_neighbors", max(30, self.n_neighbors + 1))
        params["n_neighbors"] = min(params["n_neighbors"], n_samples - 1)
        index = NNDescent(
            np.ascontiguousarray(self.X_fit_),
            metric=_NNDESCENT_METRICS[self.metric],
            random_state=self._index_seed,
            n_jobs=self.n_jobs,
            **params,
        )
        index.prepare()
        return index

    def _get_index(self):
        """The NN-descent index, rebuilt if dropped by pickling."""
        if getattr(self, "_index", None) is None:
            self._index = self._build_index()
        return self._index

    def __getstate__(self):
        # The pynndescent index is not pickled: its pickles break across numba
        # versions. It is rebuilt, with the same seed, on the first query.
        state = dict(super().__getstate__())
        if state.get("_index") is not None:
            state["_index"] = None
        return state

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
                    "algorithm='brute'; NN-descent only finds approximate "
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
        return self.X_fit_[rows] if Q is None else Q

    def _brute_keys(self, Q, x_sq_norms, out=None):
        """Ranking keys (smaller is closer) of queries against the database.

        ``-similarity`` for the cosine and inner product, the squared
        Euclidean distance for the Euclidean metric; float32, written into
        ``out`` if given.
        """
        keys = np.matmul(Q, self.X_fit_.T, out=out)
        if self.metric == "euclidean":
            keys *= -2.0
            keys += np.einsum("ij,ij->i", Q, Q)[:, np.newaxis]
            keys += x_sq_norms
        else:
            np.negative(keys, out=keys)
        return keys

    def _x_sq_norms(self):
        if self.metric != "euclidean":
            return None
        return np.einsum("ij,ij->i", self.X_fit_, self.X_fit_)

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
                self._brute_keys(self.X_fit_[block_rows], x_sq_norms, out=keys)
                keys[np.arange(stop - start), block_rows] = np.nan
            else:
                self._brute_keys(Q[start:stop], x_sq_norms, out=keys)
            scratch = None if scratch_buffer is None else scratch_buffer[: stop - start]
            yield start, stop, keys, scratch

    def _brute_kneighbors(self, k, Q=None, rows=None):
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
            x = self.X_fit_[ind[start : start + chunk]]
            if self.metric == "euclidean":
                diff = x - q
                keys[start : start + chunk] = np.einsum("ijk,ijk->ij", diff, diff)
            else:
                keys[start : start + chunk] = -np.einsum("ijk,ijk->ij", x, q)
        return keys

    def _nndescent_kneighbors(self, k, Q=None, rows=None):
        index = self._get_index()
        if Q is None:
            graph = index.neighbor_graph
            if graph is not None and graph[0].shape[1] >= k + 1:
                ind = graph[0][rows, : k + 1]
            else:
                ind = index.query(self.X_fit_[rows], k=k + 1)[0]
            ind = np.asarray(ind, dtype=np.intp)
            # drop each item from its own list (or the last one if a duplicate
            # of it took its place)
            drop = ind == rows[:, np.newaxis]
            drop[~drop.any(axis=1), -1] = True
            drop &= np.cumsum(drop, axis=1) == 1
            ind = ind[~drop].reshape(rows.shape[0], k)
        else:
            ind = np.asarray(index.query(Q, k=k)[0], dtype=np.intp)
        queries = self._queries(Q, rows)

        keys = np.empty(ind.shape, dtype=np.float32)
        # Rows where NN-descent found fewer than k neighbours (-1 padded), or
        # repeated one, are searched exactly.
        sorted_ind = np.sort(ind, axis=1)
        bad = (sorted_ind[:, 0] < 0) | np.any(
            sorted_ind[:, 1:] == sorted_ind[:, :-1], axis=1
        )
        good = ~bad
        if np.any(good):
            keys[good] = self._exact_keys(queries[good], ind[good])
        if np.any(bad):
            if Q is None:
                keys[bad], ind[bad] = self._brute_kneighbors(k, rows=rows[bad])
            else:
                keys[bad], ind[bad] = self._brute_kneighbors(k, Q=Q[bad])
        return _sort_by_key_then_index(keys, ind)

    def _search(self, k, Q=None, rows=None):
        """Top-``k`` ``(keys, indices)`` of queries ``Q`` or database ``rows``."""
        if self.algorithm == "brute":
            return self._brute_kneighbors(k, Q=Q, rows=rows)
        return self._nndescent_kneighbors(k, Q=Q, rows=rows)

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
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

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors), dtype float32
            Distances to the neighbours, in increasing order: ``1 - cosine
            similarity``, ``-inner product`` or the Euclidean distance,
            according to ``metric``.  Only present if
            ``return_distance=True``.

        neigh_ind : ndarray of shape (n_queries, n_neighbors)
            Database indices of the neighbours; ties are broken by the lower
            index.
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
            and the top ``self.n_neighbors`` items with
            ``algorithm="nndescent"``.  An int ``k`` scores the top ``k``
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
