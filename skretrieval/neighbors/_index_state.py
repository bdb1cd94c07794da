"""The search state of a retriever: its descriptor store, its index, and their persistence."""

import hashlib

import numpy as np
from sklearn.utils import check_random_state

from ..utils._state import LABELS, Attr, PathParam, StateSpec
from ._backends import BACKENDS, INDEX_KINDS, backend_class, resolve_algorithm
from ._exact import ExactSearch
from ._store import DescriptorStore

__all__ = ["INDEX_BLOB", "INDEX_CHECKSUM", "INDEX_LIBRARY", "OLD_INDEX_BLOB",
           "RETRIEVER_STATE", "IndexStateMixin"]

# The attribute holding the serialised index (FAISS or usearch bytes) of an
# unpickled or loaded retriever.
INDEX_BLOB = "_index_blob"
# Its name in files written by skretrieval 0.2 and before (named after the
# first backend that had one); renamed to INDEX_BLOB when such a file loads.
OLD_INDEX_BLOB = "_faiss_index"
# Its SHA-256 and the library (name and version) that wrote it.
INDEX_CHECKSUM = "_index_checksum"
INDEX_LIBRARY = "_index_library"


# The state of NearestNeighborRetriever that skretrieval.persistence stores and
# accepts (see skretrieval/utils/_state.py), beside its hooks below.
RETRIEVER_STATE = StateSpec(
    {
        "n_features_in_": Attr("int", values=(1, None)),
        "feature_names_in_": Attr("array", dtype="UO", shape=("n_features_in_",),
                                  optional=True),
        # absent: held by a search server, reopened from _store_record
        "X_fit_": Attr("array", dtype=("float32", "float16"),
                       shape=("n_samples_fit_", "n_features_in_"), optional=True),
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
        "_index_kind": Attr("str", choices=INDEX_KINDS, none=True, optional=True),
        "_index_seed": Attr("int", optional=True),
        # the serialised index (FAISS or usearch), under its old name in
        # files of skretrieval 0.2 and before
        "_index_blob": Attr("array", dtype=("uint8",), shape=(None,), optional=True),
        "_faiss_index": Attr("array", dtype=("uint8",), shape=(None,), optional=True),
        # SHA-256 of the serialised index and the library that wrote it
        "_index_checksum": Attr("str", optional=True),
        "_index_library": Attr("str", optional=True),
        # what reopens the store of the descriptors that a search server holds
        # (X_fit_ then None); absent for a retriever of its own descriptors
        "_store_record": Attr("json", optional=True),
    },
    # the index is rebuilt; a store's descriptors are loaded in memory
    transient={"_index": None, "_store_path": None, "_store_dtype": None},
    paths={"store": PathParam(None)},
)


def blob_checksum(blob):
    """SHA-256 (hex) of a serialised index."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(blob))).hexdigest()


class IndexStateMixin:
    """Store, index and pickling of :class:`NearestNeighborRetriever`.

    The fitted state is plain attributes (``X_fit_``, ``_store_path``,
    ``_store_dtype``, ``_index``, ``_index_kind``, ``_index_seed``,
    ``_keys``, ``_n_keys``): the :class:`DescriptorStore`, the
    :class:`ExactSearch` and the backend of ``algorithm`` (``BACKENDS``) are
    views made from them when needed, so pickles and the pickle-free format
    see the same attributes as before the backends existed.
    """

    def _algorithm(self, n_samples=None, n_features=None):
        """The search method in use: ``algorithm``, with ``"auto"`` resolved
        for the database size (by default the fitted one)."""
        built = None
        if n_samples is None:
            n_samples = getattr(self, "n_samples_fit_", 0)
            n_features = getattr(self, "n_features_in_", 0)
            built = getattr(self, "_index_kind", None)  # "auto" keeps its graph
        return resolve_algorithm(self.algorithm, n_samples, n_features, built)

    def _backend(self, algorithm=None):
        """The backend of ``algorithm`` (default: :meth:`_algorithm`)."""
        return backend_class(self.algorithm, algorithm or self._algorithm())(
            self.algorithm_params, self.metric, self.n_neighbors, self.n_jobs
        )

    @property
    def _store(self):
        """The :class:`DescriptorStore` of ``X_fit_``, or the store of the rows
        that a search server holds (``X_fit_`` is then its array-like view)."""
        held = getattr(self.X_fit_, "store", None)
        return held if held is not None else DescriptorStore(self.X_fit_, self._store_path)

    def _set_store(self, store):
        self.X_fit_ = store.X
        self._store_path = store.path
        self._store_dtype = None if store.path is None else store.X.dtype.name
        if store.record is None:
            self.__dict__.pop("_store_record", None)
        else:  # saved instead of the descriptors (_serialised_state)
            self._store_record = store.record

    def _exact(self):
        """The exact search of the database."""
        return ExactSearch(self._store, self.metric, self._chunk_rows())

    def _new_index_seed(self):
        self._index_seed = int(
            check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        )

    def _get_index(self):
        """The index of ``algorithm``: built, deserialised or rebuilt if needed."""
        index = getattr(self, "_index", None)
        kind = getattr(self, "_index_kind", None)
        algorithm = self._algorithm()
        if index is not None and kind == algorithm:
            return index
        if getattr(self, "_index_seed", None) is None:  # fitted as "brute"
            self._new_index_seed()
        backend = self._backend(algorithm)
        blob = self._pop_blob(backend if kind == algorithm else None)
        if blob is not None:
            index = backend.from_state(blob)
        else:
            index = backend.build(self._store, self._keys, self._index_seed)
            held = backend.held_store(index, self._keys)
            if held is not None:  # the index is the only copy of the descriptors
                self._set_store(held)
            if not backend.keyed:
                # built over the current database, whose rows are then the
                # positions in the index
                self._keys = np.arange(self.n_samples_fit_, dtype=np.int64)
                self._n_keys = self.n_samples_fit_
        self._index, self._index_kind = index, algorithm
        return index

    def _pop_blob(self, backend):
        """The serialised index of ``backend``, checked (None: dropped); None if
        absent or written by another version of its library (rebuilt)."""
        state = self.__dict__
        blob = state.pop(INDEX_BLOB, None)
        checksum = state.pop(INDEX_CHECKSUM, None)
        library = state.pop(INDEX_LIBRARY, None)
        if blob is None or backend is None:
            return None
        if checksum is not None and checksum != blob_checksum(blob):
            raise ValueError(
                "the serialised search index of this retriever is corrupted (its "
                "SHA-256 differs from the one saved with it); refit the retriever."
            )
        if library is not None and library != backend.library_version():
            return None  # another version of the library: rebuilt from the store
        return blob

    def _updatable_index(self):
        """The index, if the backend updates it in place, else None."""
        if self._backend().incremental and self._index_kind == self._algorithm():
            return self._get_index()  # deserialised before the arrays change
        return None

    def _serialised_state(self, state):
        """``state`` with the index serialised (FAISS) or dropped (NN-descent),
        and without the descriptors that a server holds (``_store_record``)."""
        if state.get("_store_record") is not None:
            state["X_fit_"] = None  # reopened from the record on loading
        index = state.get("_index")
        if index is not None:
            backend = self._backend(state.get("_index_kind"))
            blob = backend.state(index)
            if blob is not None:
                state[INDEX_BLOB] = blob
                state[INDEX_CHECKSUM] = blob_checksum(blob)
                state[INDEX_LIBRARY] = backend.library_version()
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
        into the model (loaded back in memory), those a server holds are not.
        """
        state = self._serialised_state(dict(vars(self)))
        if state.get("_store_record") is not None:
            del state["X_fit_"]
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
        if OLD_INDEX_BLOB in state:
            blob = state.pop(OLD_INDEX_BLOB)
            if blob is not None:
                state.setdefault(INDEX_BLOB, blob)
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
            self.X_fit_ = DescriptorStore.open(
                self._store_path, self._store_dtype, (n, self.n_features_in_)).X
        _check_items(self)
        record = state.get("_store_record")
        if record is not None and state.get("X_fit_") is None:  # held by a server
            self._set_store(self._backend(record["algorithm"]).open_store(record, self._keys))


def _all_str(values):
    return all(isinstance(v, str) for v in values.tolist())


def _check_items(retriever):
    """Refuse a loaded state whose items contradict each other (raise a
    ValueError saying what): the shapes and dtypes are checked by the
    declarations, the relations between values here.

    Ids must be unique ints or strings, fingerprints strings, the index keys
    increasing (rows are found in them by bisection), ``_next_id`` above the
    integer ids, the label codes those of the labels, the descriptors of a
    database held in memory finite, a serialised index the one its checksum
    names: a file edited otherwise would answer other rankings, or none.
    """
    state = retriever.__dict__
    ids = np.asarray(state["ids_"])
    if ids.dtype.kind == "O" and not _all_str(ids):
        raise ValueError("ids_ is an object array of other values than strings "
                         "(ids are ints or strings)")
    if ids.dtype.kind not in "iuUO":
        raise ValueError(f"ids_ must be ints or strings, got dtype {ids.dtype}")
    unique, counts = np.unique(ids, return_counts=True)
    if unique.shape[0] != ids.shape[0]:
        raise ValueError(f"ids_ holds repeated ids: {unique[counts > 1][:5].tolist()} "
                         "(ids are unique)")
    if (ids.dtype.kind in "iu" and ids.shape[0] and "_next_id" in state
            and state["_next_id"] <= ids.max()):
        raise ValueError(f"_next_id={state.get('_next_id')} is not above the largest "
                         f"id {int(ids.max())}: new items would repeat an id")
    prints = state.get("fingerprints_")
    if prints is not None:
        prints = np.asarray(prints)
        if prints.dtype.kind not in "UO" or (prints.dtype.kind == "O" and not _all_str(prints)):
            raise ValueError("fingerprints_ must be strings (content hashes), got "
                             + (f"dtype {prints.dtype}" if prints.dtype.kind != "O"
                                else "an object array of other values"))
    keys = np.asarray(state.get("_keys", ()))
    if keys.shape[0] > 1 and not np.all(keys[1:] > keys[:-1]):
        raise ValueError("_keys (the index keys of the rows) are not increasing")
    _check_labels(state)
    X = state.get("X_fit_")
    record = state.get("_store_record")
    if record is not None and not (isinstance(record, dict)
                                   and record.get("algorithm") in BACKENDS):
        raise ValueError(f"_store_record (where the descriptors are) is invalid: {record!r}")
    if X is None and record is None and state.get("_store_path") is None:
        raise ValueError("X_fit_ is missing: the descriptors are neither in the model nor "
                         "in a store it names")
    if state.get("_store_path") is None and isinstance(X, np.ndarray):
        for start in range(0, X.shape[0], 1 << 14):
            if not np.isfinite(X[start:start + (1 << 14)]).all():
                raise ValueError("X_fit_ holds NaN or infinite descriptors")
    blob = state.get(INDEX_BLOB, state.get(OLD_INDEX_BLOB))
    checksum = state.get(INDEX_CHECKSUM)
    if blob is not None and checksum is not None and checksum != blob_checksum(blob):
        raise ValueError("the serialised search index is corrupted (its SHA-256 differs "
                         "from the one saved with it); refit the retriever")


def _check_labels(state):
    """The label codes, classes and counts must be those of ``y_``."""
    y = state.get("y_")
    if y is None or "_classes" not in state:
        return
    classes, codes = np.asarray(state["_classes"]), np.asarray(state["_y_codes"])
    counts = np.asarray(state["_class_counts"])
    try:
        ok = (classes.shape[0] > 0 and codes.shape == (len(y),)
              and np.array_equal(classes[codes], np.asarray(y))
              and np.array_equal(np.bincount(codes, minlength=classes.shape[0]), counts))
        if ok and classes.shape[0] > 1:
            ok = bool(np.all(classes[1:] > classes[:-1]))
    except (IndexError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError("the label codes (_classes, _y_codes, _class_counts) are not "
                         "those of the labels y_")
