"""Save and load fitted retrieval pipelines without pickle.

``joblib.dump`` / ``pickle`` files are *programs*: loading one with
``joblib.load`` or ``pickle.load`` may run arbitrary code chosen by whoever
wrote the file.  Only load them from sources you trust.  For model files
received from others (downloaded, shared, uploaded to a server), use
:func:`save_pipeline` and :func:`load_pipeline`: their format holds only JSON
and numeric / string arrays, and loading it never unpickles anything, never
imports a module named in the file, only instantiates the classes of an
explicit whitelist (:data:`SUPPORTED_CLASSES`), only restores the fitted
attributes those classes declare, and never takes a file or directory
location from the file::

    from skretrieval.persistence import save_pipeline, load_pipeline

    save_pipeline(pipe, "model.zip")         # one file
    save_pipeline(pipe, "model_dir")         # or a directory
    pipe = load_pipeline("model.zip", device="cpu")
    # locations are given at load time, never read from the file
    pipe = load_pipeline("model.zip", params={"convfeatureextractor__cache": "cache"})

Format
------
A *directory*, or the same files in a single uncompressed *zip archive* when
the path ends with ``.zip`` (``load_pipeline`` recognises both)::

    manifest.json
    manifest.sha256                            the SHA-256 of manifest.json
    state/000-Pipeline.npz                     (only when it has arrays)
    state/001-ConvFeatureExtractor-trunk.npz   the network's state_dict
    state/003-PCAWhitener.npz                  fitted arrays of a step
    ...

``manifest.json`` holds the format name and version (:data:`FORMAT_VERSION`),
the versions of skretrieval, scikit-learn, torch, torchvision, numpy and
Python that wrote the file, the pipeline's step names, the SHA-256 and size
of every ``.npz`` file, and the tree of estimators: for each one its class (a
whitelist name such as ``"skretrieval.PCAWhitener"``), its
``get_params(deep=False)`` (steps and nested estimators as sub-trees) and its
fitted attributes (those its class declares, see *Declared state*, private
ones such as the extractor's ``_weights_id`` or the retriever's
``_index_seed`` included).  Scalars, strings, tuples, lists and dicts are
stored in the JSON, with tags for what JSON lacks (``{"__tuple__": [...]}``,
``{"__float__": "inf"}``, ``{"__path__": "..."}``, ``{"__dict__": {...}}``);
arrays and numpy scalars are stored in the step's ``.npz`` and referenced as
``{"__array__": {"key": ...}}``; fitted sub-estimators, such as the
:class:`~sklearn.decomposition.PCA` in ``PCAWhitener.pca_``, are stored as
sub-trees with their own parameters and fitted arrays.  The
:class:`~skretrieval.ConvFeatureExtractor`'s network is stored as a ``.npz``
of its ``state_dict`` (one array per tensor, under its state-dict name); it
is rebuilt from torchvision's architecture on first use, as after
unpickling.  The ``.npz`` files are standard numpy archives: ``np.load(f,
allow_pickle=False)`` reads them.  ``manifest.sha256`` is a line in the
format of ``sha256sum`` (``sha256sum -c manifest.sha256`` checks a model
directory).

Format version 2 (this one) added ``manifest.sha256`` and stores only the
declared attributes; files of version 1 (earlier skretrieval versions, which
have no ``manifest.sha256``) are still read, with every other check below.

Declared state
--------------
Every supported class declares the fitted state it persists: the skretrieval
estimators in a class attribute ``_state_spec`` (a
``skretrieval.utils._state.StateSpec``, see that module for the protocol),
the scikit-learn classes, which cannot carry one, in a table
(``skretrieval.persistence._registry.SKLEARN_STATE``).  A
declaration names each stored attribute with its kind (int, str, tuple,
array, sub-estimator...), for arrays their dtypes and the relations of their
shapes ("``X_fit_`` has ``n_samples_fit_`` rows and ``n_features_in_``
columns", "``_y_codes`` are in ``[0, len(_classes) - 1]``"), and the
*transient* attributes that are never stored (the retriever's index and
memory-mapped store, the torch modules), set after loading.
:func:`load_pipeline` refuses, with a :class:`ModelFormatError` naming the
step, the attribute, what was expected and what was found: an attribute that
is not declared, a missing one, one of another kind, an array of another
dtype or shape, object arrays.  :func:`save_pipeline` refuses to write a
state that would be refused (a :class:`TypeError` or :class:`ValueError`).

Locations are never taken from a model file
-------------------------------------------
A parameter that may name a file, a directory or a cache is not restored
from the file: whatever the file says, the loaded value is the safe one
below, and ``load_pipeline(path, params={"step__param": value})`` (names as
for ``set_params`` of the loaded model) gives it back, like any other
parameter:

* :class:`~skretrieval.ConvFeatureExtractor`: ``cache`` becomes None (no
  cache; ``"memory"`` is kept), ``store`` becomes ``"memory"`` (``"disk"``,
  a temporary directory, is kept), ``weights`` becomes None unless it is a
  torchvision weights name (``"IMAGENET1K_V1"``): the loaded network keeps
  the weights stored in the model, but refitting it would start from random
  weights, so this one warns.  A ``cache`` you give is shared with your
  other models: its keys include the extractor's weights id, which comes
  from the file.
* :class:`~skretrieval.NearestNeighborRetriever`: ``store`` becomes None.
  The descriptors of a retriever with a memory-mapped store are copied into
  the model and loaded back in memory; the file they were in is never
  opened, appended to or rewritten by the loaded retriever.
* :class:`~skretrieval.RetrievalNetTrainer`: ``checkpoint`` becomes None;
  ``weights`` as the extractor's.
* :class:`~sklearn.pipeline.Pipeline`: ``memory`` becomes None.

``params`` reaches what ``set_params`` reaches: fitted sub-estimators (the
``retriever_`` of a :class:`~skretrieval.QueryExpansionRetriever`...) keep
the safe values.

Limits
------
``load_pipeline(..., max_bytes=MAX_ARRAY_BYTES)`` bounds the total size of
the arrays read (the uncompressed sizes of the members of all the ``.npz``
files, 16 GiB by default), and so the size of each; every size is checked
from the zip headers *before* anything is decompressed, and every read is
bounded by the checked size, so a lying header cannot exceed it.  Members
of a zip archive (the ``.npz`` files, or the outer ``.zip`` model) that are
compressed more than :data:`MAX_COMPRESSION_RATIO` times (beyond their first
MiB) are refused as likely zip bombs: :func:`save_pipeline` writes nothing
compressed.  ``manifest.json`` is at most :data:`MAX_MANIFEST_BYTES`.  A zip archive
holding a member with an absolute name or a ``..`` component, a symbolic
link or another special file, or two members of one name, is refused before
anything is read (nothing is ever extracted to disk); so is a model folder
whose files are reached through a symbolic link.  A damaged or truncated
archive is a :class:`ModelFormatError` naming the file, as is every other
refusal of :func:`load_pipeline`.

Checksums
---------
The SHA-256 of ``manifest.json`` (in ``manifest.sha256``, checked before the
manifest is parsed) and those of the ``.npz`` files (in the manifest) detect
corruption and inconsistent edits (a file changed without the others), *not*
a determined attacker, who can recompute them.  The safety of the format
does not rest on them: a file edited at will still runs no code, builds
only whitelisted classes with declared, checked state, reads bounded sizes
and names no location that is used.

What is supported
-----------------
* A :class:`~sklearn.pipeline.Pipeline` (also nested, with ``"passthrough"``
  steps) or a single estimator of :data:`SUPPORTED_CLASSES`: the skretrieval
  estimators (extractor, poolers, ``VLADEncoder``, ``CAMWeighter``,
  ``PCAWhitener``, the retrievers, ``RegionReranker``,
  ``RetrievalNetTrainer``),
  :class:`~sklearn.frozen.FrozenEstimator` (e.g. a whitener
  learned on another collection),
  :class:`~sklearn.preprocessing.Normalizer`,
  :class:`~sklearn.preprocessing.StandardScaler` and
  :class:`~sklearn.decomposition.PCA`.  Exact classes only: subclasses are
  refused.
* Parameters must be JSON-like: None, bool, int, float, str, paths, and
  lists / tuples / dicts (with str keys) of them.  Numpy scalars are
  converted to Python scalars.  Anything else (a ``RandomState``, a
  ``joblib.Memory``, a callable, an array) raises a :class:`TypeError` naming
  the step and the parameter.
* Fitted attributes may also be numpy arrays of numbers, booleans or strings
  and numpy scalars.  Object arrays cannot be stored without pickle: an
  object array whose items are all ``str`` (e.g. labels ``y_`` from a pandas
  column) is stored as a unicode ``dtype='U'`` array, one whose items are all
  ints as int64, and both are turned back into object arrays on loading (so
  the loaded attribute equals the saved one).  Mixed or other objects raise a
  :class:`ValueError` naming the step and attribute: fit with labels of one
  type.  Strings ending with NUL characters are refused (``'U'`` arrays
  would drop them).
* Not stored: the retriever's pynndescent index (rebuilt with the saved seed
  on the first query, as after unpickling) and the torch modules: the
  extractor's is stored as its state dict (see above), a
  ``RetrievalNetTrainer``'s too (attribute ``_network_state``, one array per
  tensor), rebuilt from its architecture when loaded.  A retriever's FAISS
  index is stored as the uint8 array of :func:`faiss.serialize_index`
  (attribute ``_index_blob``; ``_faiss_index`` in files of 0.2 and before),
  deserialised on the first query by FAISS's own binary reader (it runs no code from the file, but it is C++ parsing
  the bytes: refit the retriever rather than query a FAISS index from a file
  you do not trust; the ids it returns are checked against the stored ones).
  A HNSW graph (``algorithm="hnsw"``) is stored the same way, as the bytes
  of usearch's ``Index.save()``; both come with their SHA-256
  (``_index_checksum``, checked before reading) and the library version
  (``_index_library``: bytes of another version are not read, the index is
  rebuilt from the stored descriptors).  The checksum is checked when the
  model is loaded.  Like FAISS's, usearch's reader is C++ parsing the
  bytes: a graph edited on purpose, its checksums recomputed, can crash the
  process (a segmentation fault was observed) or answer other neighbours;
  refit the retriever rather than query a HNSW index from a file you do not
  trust.

Loading also checks the format name and version (a file of a newer format
version raises :class:`ModelFormatError`), refuses classes outside the
whitelist, missing or altered files and malformed entries with
:class:`ModelFormatError`, validates every estimator's parameters, and warns
(:class:`VersionMismatchWarning`) when the file was written with other
versions of skretrieval, scikit-learn or torchvision.
"""

from ._load import load_pipeline
from ._registry import (
    FORMAT_VERSION,
    MAX_ARRAY_BYTES,
    MAX_COMPRESSION_RATIO,
    MAX_MANIFEST_BYTES,
    SUPPORTED_CLASSES,
    ModelFormatError,
    VersionMismatchWarning,
)
from ._save import save_pipeline

__all__ = [
    "FORMAT_VERSION",
    "MAX_ARRAY_BYTES",
    "MAX_COMPRESSION_RATIO",
    "MAX_MANIFEST_BYTES",
    "ModelFormatError",
    "SUPPORTED_CLASSES",
    "VersionMismatchWarning",
    "load_pipeline",
    "save_pipeline",
]
