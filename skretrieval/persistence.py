"""Save and load fitted retrieval pipelines without pickle.

``joblib.dump`` / ``pickle`` files are *programs*: loading one with
``joblib.load`` or ``pickle.load`` may run arbitrary code chosen by whoever
wrote the file.  Only load them from sources you trust.  For model files
received from others (downloaded, shared, uploaded to a server), use
:func:`save_pipeline` and :func:`load_pipeline`: their format holds only JSON
and numeric / string arrays, and loading it never unpickles anything, never
imports a module named in the file, and only instantiates the classes of an
explicit whitelist (:data:`SUPPORTED_CLASSES`)::

    from skretrieval.persistence import save_pipeline, load_pipeline

    save_pipeline(pipe, "model.zip")         # one file
    save_pipeline(pipe, "model_dir")         # or a directory
    pipe = load_pipeline("model.zip", device="cpu")

Format
------
A *directory*, or the same files in a single uncompressed *zip archive* when
the path ends with ``.zip`` (``load_pipeline`` recognises both)::

    manifest.json
    state/000-Pipeline.npz                     (only when it has arrays)
    state/001-ConvFeatureExtractor-trunk.npz   the network's state_dict
    state/003-PCAWhitener.npz                  fitted arrays of a step
    ...

``manifest.json`` holds the format name and version (:data:`FORMAT_VERSION`),
the versions of skretrieval, scikit-learn, torch, torchvision, numpy and
Python that wrote the file, the pipeline's step names, the SHA-256 of every
other file, and the tree of estimators: for each one its class (a whitelist
name such as ``"skretrieval.PCAWhitener"``), its ``get_params(deep=False)``
(steps and nested estimators as sub-trees) and its fitted attributes (every
instance attribute that is not a parameter, private ones such as the
extractor's ``_weights_id`` or the retriever's ``_index_seed`` included).
Scalars, strings, tuples, lists and dicts are stored in the JSON, with tags
for what JSON lacks (``{"__tuple__": [...]}``, ``{"__float__": "inf"}``,
``{"__path__": "..."}``, ``{"__dict__": {...}}``); arrays and numpy scalars
are stored in the step's ``.npz`` (read back with ``allow_pickle=False``) and
referenced as ``{"__array__": {"key": ...}}``; fitted sub-estimators, such as
the :class:`~sklearn.decomposition.PCA` in ``PCAWhitener.pca_``, are stored
as sub-trees with their own parameters and fitted arrays.  The
:class:`~skretrieval.ConvFeatureExtractor`'s network is stored as a ``.npz``
of its ``state_dict`` (one array per tensor, under its state-dict name); it
is rebuilt from torchvision's architecture on first use, as after
unpickling.  The ``.npz`` files are standard numpy archives: ``np.load(f,
allow_pickle=False)`` reads them.

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
  (attribute ``_faiss_index``), deserialised on the first query by FAISS's
  own binary reader (it runs no code from the file, but it is C++ parsing
  the bytes: refit the retriever rather than query a FAISS index from a file
  you do not trust; the ids it returns are checked against the stored ones);
  the descriptors of a retriever with a memory-mapped ``store`` are copied
  into the model and loaded back in memory.

Loading checks the format name and version (a file of another format version
raises :class:`ModelFormatError`), refuses classes outside the whitelist,
missing or altered files (checksums) and malformed entries with
:class:`ModelFormatError`, validates every estimator's parameters, and warns
(:class:`VersionMismatchWarning`) when the file was written with other
versions of skretrieval, scikit-learn or torchvision.  The checksums detect
corruption, not tampering: the point of the format is that even a tampered
file runs no code on loading.  Parameters that are paths (the extractor's
``weights``, ``store`` and ``cache``, a pipeline's ``memory``) are restored
as written; they are only used when the model is refitted or writes
features, so review them before refitting a model from an untrusted source
(a joblib ``memory`` cache directory holds pickles).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pathlib
import platform
import re
import shutil
import tempfile
import warnings
import zipfile
from numbers import Integral

import numpy as np
import sklearn
import torch
import torchvision
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils.validation import check_is_fitted

from . import __version__
from ._cam import CAMWeighter, OnlineCAMRetriever
from ._expansion import QueryExpansionRetriever
from ._extractor import ConvFeatureExtractor, _resolve_device
from ._pooling import CroWPooler, GeMPooler, MACPooler, RMACPooler, SPoCPooler
from ._rerank import RegionReranker
from ._retriever import NearestNeighborRetriever
from ._trainer import RetrievalNetTrainer
from ._vlad import VLADEncoder
from ._whitening import PCAWhitener

__all__ = [
    "FORMAT_VERSION",
    "ModelFormatError",
    "SUPPORTED_CLASSES",
    "VersionMismatchWarning",
    "load_pipeline",
    "save_pipeline",
]

FORMAT_NAME = "skretrieval-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

#: The only classes :func:`load_pipeline` instantiates, by manifest name.
SUPPORTED_CLASSES = {
    "skretrieval.ConvFeatureExtractor": ConvFeatureExtractor,
    "skretrieval.CroWPooler": CroWPooler,
    "skretrieval.GeMPooler": GeMPooler,
    "skretrieval.MACPooler": MACPooler,
    "skretrieval.RMACPooler": RMACPooler,
    "skretrieval.SPoCPooler": SPoCPooler,
    "skretrieval.VLADEncoder": VLADEncoder,
    "skretrieval.CAMWeighter": CAMWeighter,
    "skretrieval.PCAWhitener": PCAWhitener,
    "skretrieval.NearestNeighborRetriever": NearestNeighborRetriever,
    "skretrieval.QueryExpansionRetriever": QueryExpansionRetriever,
    "skretrieval.OnlineCAMRetriever": OnlineCAMRetriever,
    "skretrieval.RegionReranker": RegionReranker,
    "skretrieval.RetrievalNetTrainer": RetrievalNetTrainer,
    "sklearn.pipeline.Pipeline": Pipeline,
    "sklearn.frozen.FrozenEstimator": FrozenEstimator,
    "sklearn.preprocessing.Normalizer": Normalizer,
    "sklearn.preprocessing.StandardScaler": StandardScaler,
    "sklearn.decomposition.PCA": PCA,
}
_NAME_OF_CLASS = {cls: name for name, cls in SUPPORTED_CLASSES.items()}

# Attributes not stored, and their value after loading (rebuilt lazily).
_TRANSIENT = {
    NearestNeighborRetriever: {"_index": None},
    # the network of ``cache_layers``: a loaded extractor computes its layer only
    ConvFeatureExtractor: {"_multi_trunk": None, "_multi_min_size": None},
}
# The extractor's network: stored in its own file, not as attributes.
_TRUNK_ATTRS = ("trunk_", "_trunk_state")

_FILE_NAME = re.compile(r"^state/[A-Za-z0-9_.-]+\.npz$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TAGS = ("__tuple__", "__dict__", "__float__", "__path__", "__array__", "__estimator__")


class ModelFormatError(ValueError):
    """A model file is not a valid, supported skretrieval model."""


class VersionMismatchWarning(UserWarning):
    """A model file was written with other versions of the libraries."""


def _versions():
    return {
        "skretrieval": __version__,
        "sklearn": sklearn.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _storable_attribute(cls, name):
    """Whether ``name`` may be saved and restored as a fitted attribute.

    Fitted attributes are private (``_x``) or end with ``_`` (``x_``), and never
    shadow what the class defines (methods, properties, constraints...).
    """
    return (
        isinstance(name, str)
        and bool(_IDENTIFIER.match(name))
        and not name.startswith("__")
        and (name.startswith("_") or name.endswith("_"))
        and not hasattr(cls, name)
        and name not in _TRUNK_ATTRS
        and name not in _TRANSIENT.get(cls, ())
    )


def _short(value, n=80):
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


# ---------------------------------------------------------------------------
# storage: a directory or a zip archive
# ---------------------------------------------------------------------------
class _HashingWriter(io.RawIOBase):
    """Write-only stream that computes the SHA-256 and size of what passes."""

    def __init__(self, raw):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self):
        return True

    def write(self, data):
        self.raw.write(data)
        self.sha256.update(data)
        n = memoryview(data).nbytes
        self.size += n
        return n


def _is_zip_path(path):
    return os.fspath(path).lower().endswith(".zip")


class _DirTarget:
    """Writes into a temporary directory, renamed to ``path`` on commit."""

    def __init__(self, path, overwrite):
        self.path = os.path.abspath(path)
        if os.path.exists(self.path):
            if not os.path.isdir(self.path):
                raise FileExistsError(f"{path!r} exists and is not a directory")
            entries = os.listdir(self.path)
            if entries:
                if not overwrite:
                    raise FileExistsError(
                        f"{path!r} exists and is not empty; pass overwrite=True to "
                        "replace a model saved there"
                    )
                if MANIFEST not in entries:
                    raise FileExistsError(
                        f"{path!r} is a non-empty directory without a {MANIFEST}: "
                        "refusing to replace it (it is not a saved model)"
                    )
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=".skretrieval-save-", dir=parent)

    def open(self, name):
        full = os.path.join(self.tmp, *name.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return open(full, "wb")

    def commit(self):
        old = None
        if os.path.exists(self.path):
            old = tempfile.mkdtemp(prefix=".skretrieval-old-", dir=os.path.dirname(self.path))
            os.rmdir(old)
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


class _ZipTarget:
    """Writes a zip archive into a temporary file, renamed on commit."""

    def __init__(self, path, overwrite):
        self.path = os.path.abspath(path)
        if os.path.exists(self.path):
            if os.path.isdir(self.path):
                raise FileExistsError(f"{path!r} is a directory, not a .zip file")
            if not overwrite:
                raise FileExistsError(f"{path!r} exists; pass overwrite=True to replace it")
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=".skretrieval-save-", suffix=".zip", dir=parent)
        os.close(fd)
        self.zf = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED,
                                  allowZip64=True)

    def open(self, name):
        return self.zf.open(name, "w", force_zip64=True)

    def commit(self):
        self.zf.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        self.zf.close()
        try:
            os.remove(self.tmp)
        except OSError:
            pass


class _Source:
    """Reads the files of a saved model (a directory or a zip archive)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.zf = None
        if os.path.isdir(self.path):
            if not os.path.isfile(os.path.join(self.path, MANIFEST)):
                raise ModelFormatError(
                    f"{self.path!r} has no {MANIFEST}: it is not a model saved by "
                    "skretrieval.persistence.save_pipeline"
                )
        elif os.path.isfile(self.path):
            with open(self.path, "rb") as fh:
                head = fh.read(4)
            if not zipfile.is_zipfile(self.path):
                hint = ""
                if head[:1] == b"\x80":
                    hint = (" It looks like a pickle (e.g. written by joblib.dump): "
                            "such files run code when loaded; open it with "
                            "joblib.load only if you trust its source.")
                raise ModelFormatError(
                    f"{self.path!r} is neither a directory nor a zip archive written "
                    f"by skretrieval.persistence.save_pipeline.{hint}"
                )
            self.zf = zipfile.ZipFile(self.path, "r")
            if MANIFEST not in self.zf.namelist():
                self.zf.close()
                raise ModelFormatError(
                    f"{self.path!r} has no {MANIFEST}: it is not a model saved by "
                    "skretrieval.persistence.save_pipeline"
                )
        else:
            raise FileNotFoundError(f"no model at {self.path!r}")

    def close(self):
        if self.zf is not None:
            self.zf.close()

    def read_manifest(self):
        if self.zf is not None:
            data = self.zf.read(MANIFEST)
        else:
            with open(os.path.join(self.path, MANIFEST), "rb") as fh:
                data = fh.read()
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ModelFormatError(f"{MANIFEST} of {self.path!r} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise ModelFormatError(f"{MANIFEST} of {self.path!r} is not a JSON object")
        return manifest

    def load_npz(self, name, checksums):
        """The arrays of the ``.npz`` file ``name``, after checking its SHA-256."""
        if not isinstance(name, str) or not _FILE_NAME.match(name) or ".." in name:
            raise ModelFormatError(f"invalid file name in {MANIFEST}: {_short(name)}")
        expected = checksums.get(name)
        if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str):
            raise ModelFormatError(f"{name} is not listed with a checksum in {MANIFEST}")
        sha = hashlib.sha256()
        if self.zf is not None:
            try:
                data = self.zf.read(name)
            except KeyError:
                raise ModelFormatError(
                    f"{name} is missing from {self.path!r}: the archive is incomplete"
                ) from None
            sha.update(data)
            source = io.BytesIO(data)
        else:
            source = os.path.join(self.path, *name.split("/"))
            if not os.path.isfile(source):
                raise ModelFormatError(
                    f"{name} is missing from {self.path!r}: the directory is incomplete"
                )
            with open(source, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    sha.update(block)
        if sha.hexdigest() != expected["sha256"]:
            raise ModelFormatError(
                f"{name} in {self.path!r} does not match its checksum in {MANIFEST}: "
                "the file is corrupted or was modified"
            )
        try:
            with np.load(source, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except Exception as exc:  # ValueError (object arrays), BadZipFile, ...
            raise ModelFormatError(f"cannot read {name} in {self.path!r}: {exc}") from exc


def _write_npz(target, name, arrays, checksums):
    """Write ``arrays`` as a standard ``.npz`` (no pickle) and record its hash."""
    with target.open(name) as raw:
        out = _HashingWriter(raw)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as zf:
            for key, arr in arrays.items():
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arr),
                                              allow_pickle=False)
    checksums[name] = {"sha256": out.sha256.hexdigest(), "bytes": out.size}


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------
def _object_array(arr, where, what):
    """Store an object array as 'U' or int64, or refuse it."""
    items = arr.ravel().tolist()
    if all(isinstance(x, str) for x in items):
        if any(x.endswith("\x00") for x in items):
            raise ValueError(
                f"cannot save {where}: {what} holds strings ending with NUL "
                "characters, which numpy unicode arrays cannot keep"
            )
        return np.array(items, dtype=str).reshape(arr.shape)
    if all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
           for x in items):
        try:
            return np.array(items, dtype=np.int64).reshape(arr.shape)
        except OverflowError:
            pass
    types = sorted({type(x).__name__ for x in items})
    raise ValueError(
        f"cannot save {where}: {what} is an object array holding {', '.join(types)} "
        "values, which cannot be stored without pickle. Only arrays of numbers, "
        "booleans or strings (object arrays of all-str or all-int items are "
        "converted) can be saved: fit with labels of a single type, e.g. "
        "y.astype(str)"
    )


class _Saver:
    def __init__(self, target):
        self.target = target
        self.checksums = {}
        self.n_nodes = 0

    # -- values ----------------------------------------------------------
    def encode(self, value, where, what, arrays, key):
        """JSON form of a parameter (``arrays is None``) or attribute value."""
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic) and not isinstance(value, np.void):
            if arrays is None or isinstance(value, np.str_):
                return self.encode(value.item(), where, what, arrays, key)
            arrays[key] = np.asarray(value)
            return {"__array__": {"key": key, "restore": "scalar"}}
        if isinstance(value, Integral):
            return int(value)
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            return {"__float__": repr(value)}  # 'inf', '-inf', 'nan'
        if isinstance(value, os.PathLike):
            path = os.fspath(value)
            if isinstance(path, str):
                return {"__path__": path}
        elif isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, where, f"{what}[{i}]", arrays, f"{key}[{i}]")
                                  for i, v in enumerate(value)]}
        elif isinstance(value, list):
            return [self.encode(v, where, f"{what}[{i}]", arrays, f"{key}[{i}]")
                    for i, v in enumerate(value)]
        elif isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {"__dict__": {
                    k: self.encode(v, where, f"{what}[{k!r}]", arrays, f"{key}[{k}]")
                    for k, v in value.items()
                }}
        elif isinstance(value, BaseEstimator):
            sub = f"{where} > {what} ({type(value).__name__})"
            # Not checked: estimators in fitted attributes (pca_, whitener_) are
            # fitted by definition, and those given as parameters are either
            # templates that fit clones (CAMWeighter(whitener=...),
            # RegionReranker(retriever=...): stored with their parameters, and
            # their fitted state if any) or a FrozenEstimator's estimator,
            # checked with the FrozenEstimator itself.
            return {"__estimator__": self.node(value, sub, check_fitted=False)}
        elif isinstance(value, np.ndarray) and arrays is not None:
            restore = None
            if value.dtype.hasobject:
                if value.dtype != object:
                    raise ValueError(
                        f"cannot save {where}: {what} is a structured array with "
                        "object fields, which cannot be stored without pickle"
                    )
                value = _object_array(value, where, what)
                restore = "object"
            arrays[key] = value
            return {"__array__": {"key": key, "restore": restore}}
        kind = "parameter" if arrays is None else "fitted attribute"
        allowed = ("None, bool, int, float, str, paths, and lists, tuples and dicts "
                   "of them" + ("" if arrays is None else ", numpy arrays and scalars"))
        raise TypeError(
            f"cannot save {where}: {kind} {what} is a {type(value).__name__} "
            f"({_short(value)}), which save_pipeline cannot store without pickle "
            f"(supported: {allowed}). Set it to such a value (e.g. an int "
            "random_state) before saving, or use joblib for files you only load "
            "yourself."
        )

    # -- estimators ------------------------------------------------------
    def node(self, est, where, check_fitted):
        cls = type(est)
        name = _NAME_OF_CLASS.get(cls)
        if name is None:
            raise TypeError(
                f"cannot save {where}: {cls.__module__}.{cls.__qualname__} is not "
                "supported by save_pipeline (supported classes: "
                f"{', '.join(sorted(SUPPORTED_CLASSES))})"
            )
        if check_fitted and cls is not Pipeline:
            try:
                check_is_fitted(est)
            except NotFittedError:
                raise NotFittedError(
                    f"cannot save {where}: it is not fitted. Fit the pipeline before "
                    "saving it (save_pipeline stores fitted models)"
                ) from None
        nid = self.n_nodes
        self.n_nodes += 1
        node = {"class": name}
        params = est.get_params(deep=False)
        if cls is Pipeline:
            steps = []
            for step_name, step in params["steps"]:
                sub = f"step {step_name!r} ({type(step).__name__})"
                if where != "the Pipeline":
                    sub = f"{where} > {sub}"
                if step is None or (isinstance(step, str) and step == "passthrough"):
                    steps.append({"name": step_name, "estimator": step})
                else:
                    steps.append({"name": str(step_name),
                                  "estimator": self.node(step, sub, check_fitted=True)})
            node["steps"] = steps
            params = {k: v for k, v in params.items() if k != "steps"}
        node["params"] = {
            k: self.encode(v, where, repr(k), None, k) for k, v in sorted(params.items())
        }

        arrays = {}
        attributes = {}
        skip = set(params) | {"steps"} if cls is Pipeline else set(params)
        skip |= set(_TRANSIENT.get(cls, ()))
        if cls is ConvFeatureExtractor:
            skip |= set(_TRUNK_ATTRS)
            state = self._trunk_state(est)
            if state is not None:
                fname = f"state/{nid:03d}-{cls.__name__}-trunk.npz"
                _write_npz(self.target, fname, state, self.checksums)
                node["trunk"] = fname
        state = est._persistent_state() if hasattr(est, "_persistent_state") else vars(est)
        for attr, value in state.items():
            if attr in skip:
                continue
            if not _storable_attribute(cls, attr):
                raise TypeError(
                    f"cannot save {where}: its attribute {attr!r} is neither a "
                    "parameter nor a fitted attribute (private '_x' or 'x_')"
                )
            attributes[attr] = self.encode(value, where, repr(attr), arrays, attr)
        node["attributes"] = attributes
        if arrays:
            fname = f"state/{nid:03d}-{cls.__name__}.npz"
            _write_npz(self.target, fname, arrays, self.checksums)
            node["arrays"] = fname
        return node

    @staticmethod
    def _trunk_state(est):
        trunk = vars(est).get("trunk_")
        if trunk is not None:
            return {k: v.detach().cpu().numpy() for k, v in trunk.state_dict().items()}
        state = vars(est).get("_trunk_state")  # loaded, not yet rebuilt
        if state is not None:
            return {k: np.asarray(v) for k, v in state.items()}
        return None


def save_pipeline(pipeline, path, *, overwrite=False):
    """Save a fitted pipeline (or estimator) without pickle.

    Parameters
    ----------
    pipeline : Pipeline or estimator
        A fitted :class:`~sklearn.pipeline.Pipeline` of supported steps, or a
        single fitted estimator of :data:`SUPPORTED_CLASSES` (see the module
        documentation).
    path : str or path-like
        A ``.zip`` path writes one uncompressed zip archive; any other path
        a directory (created; an existing one must be empty or hold a model
        saved before).  The model is written to a temporary name beside
        ``path`` and renamed when complete.
    overwrite : bool, default=False
        Whether to replace an existing model at ``path``.

    Returns
    -------
    path : str
        The absolute path written.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If a step is not fitted (stateless poolers and ``Normalizer`` need no
        fit).
    TypeError
        If a class is not supported, or a parameter or attribute cannot be
        stored without pickle (the message names the step and the value).
    ValueError
        If an object array (e.g. labels) mixes types.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    if not isinstance(pipeline, BaseEstimator):
        raise TypeError(f"expected a fitted Pipeline or estimator, got {type(pipeline).__name__}")
    target = (_ZipTarget if _is_zip_path(path) else _DirTarget)(path, overwrite)
    try:
        saver = _Saver(target)
        where = f"the {type(pipeline).__name__}"
        root = saver.node(pipeline, where, check_fitted=True)
        step_names = [s["name"] for s in root["steps"]] if "steps" in root else None
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "versions": _versions(),
            "step_names": step_names,
            "estimator": root,
            "files": saver.checksums,
        }
        text = json.dumps(manifest, indent=1, allow_nan=False, ensure_ascii=False)
        with target.open(MANIFEST) as fh:
            fh.write(text.encode("utf-8"))
    except BaseException:
        target.abort()
        raise
    target.commit()
    return target.path


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
class _Loader:
    def __init__(self, source, checksums, device):
        self.source = source
        self.checksums = checksums
        self.device = device
        self.resolved_device = None if device is None else _resolve_device(device)

    def decode(self, value, where, arrays):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.decode(v, where, arrays) for v in value]
        if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in _TAGS:
            raise ModelFormatError(f"{where}: malformed value {_short(value)} in {MANIFEST}")
        tag, body = next(iter(value.items()))
        if tag == "__tuple__" and isinstance(body, list):
            return tuple(self.decode(v, where, arrays) for v in body)
        if tag == "__dict__" and isinstance(body, dict):
            return {k: self.decode(v, where, arrays) for k, v in body.items()}
        if tag == "__float__" and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag == "__path__" and isinstance(body, str):
            return pathlib.Path(body)
        if tag == "__estimator__":
            return self.node(body, where)
        if tag == "__array__" and isinstance(body, dict) and arrays is not None:
            key, restore = body.get("key"), body.get("restore")
            if key not in arrays:
                raise ModelFormatError(f"{where}: array {_short(key)} is missing from its .npz file")
            arr = arrays[key]
            if restore is None:
                return arr
            if restore == "object":
                return arr.astype(object)
            if restore == "scalar" and arr.ndim == 0:
                return arr[()]
        raise ModelFormatError(f"{where}: malformed value {_short(value)} in {MANIFEST}")

    def node(self, node, where):
        if not isinstance(node, dict):
            raise ModelFormatError(f"{where}: malformed estimator entry in {MANIFEST}")
        name = node.get("class")
        cls = SUPPORTED_CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ModelFormatError(
                f"{where}: class {_short(name)} is not one that load_pipeline "
                "instantiates (refused without importing anything). Supported: "
                f"{', '.join(sorted(SUPPORTED_CLASSES))}"
            )
        where = f"{where} ({name})"
        raw_params = node.get("params", {})
        if not isinstance(raw_params, dict):
            raise ModelFormatError(f"{where}: malformed parameters in {MANIFEST}")
        params = {k: self.decode(v, f"{where}, parameter {k!r}", None)
                  for k, v in raw_params.items()}
        if cls is Pipeline:
            steps = node.get("steps")
            if not isinstance(steps, list) or not steps:
                raise ModelFormatError(f"{where}: missing or empty 'steps' in {MANIFEST}")
            built = []
            for step in steps:
                if not isinstance(step, dict) or not isinstance(step.get("name"), str):
                    raise ModelFormatError(f"{where}: malformed step in {MANIFEST}")
                est = step.get("estimator")
                if est is not None and est != "passthrough":
                    est = self.node(est, f"{where} > step {step['name']!r}")
                built.append((step["name"], est))
            params["steps"] = built
        if cls in (ConvFeatureExtractor, RetrievalNetTrainer) and self.device is not None:
            params["device"] = self.device
        try:
            est = cls(**params)
            if hasattr(cls, "_parameter_constraints"):
                est._validate_params()
        except Exception as exc:
            raise ModelFormatError(f"{where}: invalid parameters: {exc}") from exc

        arrays = None
        if "arrays" in node:
            arrays = self.source.load_npz(node["arrays"], self.checksums)
        attributes = node.get("attributes", {})
        if not isinstance(attributes, dict):
            raise ModelFormatError(f"{where}: malformed attributes in {MANIFEST}")
        state = vars(est)
        for attr, value in attributes.items():
            if not _storable_attribute(cls, attr) or attr in state:
                raise ModelFormatError(f"{where}: invalid attribute name {_short(attr)}")
            state[attr] = self.decode(value, f"{where}, attribute {attr!r}", arrays)
        state.update(_TRANSIENT.get(cls, {}))
        if cls is ConvFeatureExtractor:
            self._restore_trunk(est, node, where)
        if hasattr(est, "_after_load"):
            try:
                if cls is RetrievalNetTrainer:
                    est._after_load(self.resolved_device)
                else:
                    est._after_load()
            except Exception as exc:
                raise ModelFormatError(f"{where}: inconsistent fitted state: {exc}") from exc
        return est

    def _restore_trunk(self, est, node, where):
        if "trunk" not in node:
            if "layer_node_" in vars(est):
                raise ModelFormatError(f"{where}: the network's weights are not in {MANIFEST}")
            return  # not fitted (cannot happen for saved models)
        for attr in ("layer_node_", "device_"):
            if not isinstance(vars(est).get(attr), str):
                raise ModelFormatError(f"{where}: attribute {attr!r} is missing")
        state = self.source.load_npz(node["trunk"], self.checksums)
        bad = [k for k, v in state.items() if v.dtype.kind not in "biuf"]
        if bad:
            raise ModelFormatError(f"{where}: non-numeric weights {bad[:3]}")
        est.trunk_ = None
        est._trunk_state = state  # ConvFeatureExtractor._ensure_trunk rebuilds it
        if self.resolved_device is not None:
            est.device_ = self.resolved_device
        elif est.device_.startswith("mps") and not (
            getattr(torch.backends, "mps", None) is not None
            and torch.backends.mps.is_available()
        ):
            warnings.warn(
                f"this extractor was fitted on {est.device_!r}, which is not available "
                "here; running on CPU",
                RuntimeWarning,
                stacklevel=4,
            )
            est.device_ = "cpu"


def load_pipeline(path, *, device=None):
    """Load a model saved by :func:`save_pipeline`, without pickle.

    Safe for files from untrusted sources: only JSON and ``allow_pickle=False``
    numpy arrays are read, and only :data:`SUPPORTED_CLASSES` are
    instantiated.

    Parameters
    ----------
    path : str or path-like
        The directory or ``.zip`` file written by :func:`save_pipeline`.
    device : str, default=None
        Torch device for the :class:`~skretrieval.ConvFeatureExtractor` steps
        (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``...); it replaces both
        their ``device`` parameter and fitted ``device_``.  ``None`` keeps the
        saved device, falling back to the CPU with a warning when it is not
        available here.

    Returns
    -------
    pipeline : Pipeline or estimator
        The fitted model, as saved.

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path``.
    ModelFormatError
        If the files are not a model of this format version, name a class
        outside the whitelist, are missing, corrupted or malformed.

    Warns
    -----
    VersionMismatchWarning
        If the model was saved with other versions of skretrieval,
        scikit-learn or torchvision.
    """
    source = _Source(path)
    try:
        manifest = source.read_manifest()
        if manifest.get("format") != FORMAT_NAME:
            raise ModelFormatError(
                f"{os.fspath(path)!r} is not a skretrieval model (format "
                f"{_short(manifest.get('format'))}, expected {FORMAT_NAME!r})"
            )
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and not isinstance(version, bool) \
                and version > FORMAT_VERSION
            raise ModelFormatError(
                f"{os.fspath(path)!r} uses format version {_short(version)}, but this "
                f"skretrieval ({__version__}) reads version {FORMAT_VERSION} only"
                + ("; upgrade skretrieval to load it" if newer else "")
            )
        saved = manifest.get("versions")
        if isinstance(saved, dict):
            current = _versions()
            differ = [f"{lib} {saved.get(lib)} (here {current[lib]})"
                      for lib in ("skretrieval", "sklearn", "torchvision")
                      if saved.get(lib) != current[lib]]
            if differ:
                warnings.warn(
                    f"{os.fspath(path)!r} was saved with " + ", ".join(differ)
                    + "; results may differ",
                    VersionMismatchWarning,
                    stacklevel=2,
                )
        checksums = manifest.get("files")
        if not isinstance(checksums, dict):
            raise ModelFormatError(f"{MANIFEST}: missing 'files'")
        loader = _Loader(source, checksums, device)
        root = manifest.get("estimator")
        return loader.node(root, "the model")
    finally:
        source.close()
