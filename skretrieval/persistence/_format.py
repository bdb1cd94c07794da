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
:class:`skretrieval._persist.StateSpec`, see that module for the protocol),
the scikit-learn classes in this module (:data:`SKLEARN_STATE`).  A
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
compressed.  ``manifest.json`` is at most :data:`MAX_MANIFEST_BYTES`.

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
  (attribute ``_faiss_index``), deserialised on the first query by FAISS's
  own binary reader (it runs no code from the file, but it is C++ parsing
  the bytes: refit the retriever rather than query a FAISS index from a file
  you do not trust; the ids it returns are checked against the stored ones).

Loading also checks the format name and version (a file of a newer format
version raises :class:`ModelFormatError`), refuses classes outside the
whitelist, missing or altered files and malformed entries with
:class:`ModelFormatError`, validates every estimator's parameters, and warns
(:class:`VersionMismatchWarning`) when the file was written with other
versions of skretrieval, scikit-learn or torchvision.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import pathlib
import platform
import re
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
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

from .. import __version__
from ..pooling._cam import CAMWeighter, OnlineCAMRetriever
from ..reranking._expansion import QueryExpansionRetriever
from ..extraction._extractor import ConvFeatureExtractor
from ..extraction._network import resolve_device
from ..utils._files import give_default_mode, remove_stale_temps
from ..utils._state import DIMENSION, Attr, PathParam, StateSpec
from ..pooling._global import GeMPooler, MACPooler, SPoCPooler
from ..pooling._regional import CroWPooler, RMACPooler
from ..reranking._rerank import RegionReranker
from ..neighbors._retriever import NearestNeighborRetriever
from ..nn._trainer import RetrievalNetTrainer
from ..pooling._vlad import VLADEncoder
from ..pooling._whitening import PCAWhitener

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

FORMAT_NAME = "skretrieval-model"
#: The format version :func:`save_pipeline` writes.
FORMAT_VERSION = 2
#: The format versions :func:`load_pipeline` reads (1: no ``manifest.sha256``).
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
MANIFEST_CHECKSUM = "manifest.sha256"
#: Default bound of ``load_pipeline(max_bytes=...)``: total uncompressed bytes
#: of the arrays of a model (16 GiB).
MAX_ARRAY_BYTES = 16 * 2**30
#: Largest ``manifest.json`` read (64 MiB; arrays are not in it).
MAX_MANIFEST_BYTES = 64 * 2**20
#: Compressed zip members may expand at most this many times (plus 1 MiB).
MAX_COMPRESSION_RATIO = 100
_RATIO_SLACK = 2**20
_ZIP_OVERHEAD = 64 * 2**20  # zip headers of an .npz file, beyond its arrays
_BLOCK = 1 << 22

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

_FEATURE_NAMES = Attr("array", dtype="UO", shape=("n_features_in_",), optional=True)
_PCA_VECTOR = Attr("array", dtype="f", shape=("n_components_",))
_SCALER_VECTOR = Attr("array", dtype="f", shape=("n_features_in_",), none=True)

#: The persisted state of the scikit-learn classes of the whitelist (the
#: skretrieval estimators declare theirs in ``_state_spec``).
SKLEARN_STATE = {
    Pipeline: StateSpec(paths={"memory": PathParam(None)}),
    FrozenEstimator: StateSpec(),
    Normalizer: StateSpec({
        "n_features_in_": Attr("int", optional=True),
        "feature_names_in_": _FEATURE_NAMES,
    }),
    StandardScaler: StateSpec({
        "n_features_in_": Attr("int"),
        "feature_names_in_": _FEATURE_NAMES,
        "n_samples_seen_": Attr(("float", "array"), dtype="iuf", shape=("n_features_in_",)),
        "mean_": _SCALER_VECTOR,
        "var_": _SCALER_VECTOR,
        "scale_": _SCALER_VECTOR,
    }),
    PCA: StateSpec({
        "n_features_in_": Attr("int"),
        "feature_names_in_": _FEATURE_NAMES,
        "_fit_svd_solver": Attr("str", optional=True),
        "mean_": Attr("array", dtype="f", shape=("n_features_in_",)),
        "n_samples_": Attr("int"),
        "n_components_": Attr("int"),
        "components_": Attr("array", dtype="f", shape=("n_components_", "n_features_in_")),
        "explained_variance_": _PCA_VECTOR,
        "explained_variance_ratio_": _PCA_VECTOR,
        "singular_values_": _PCA_VECTOR,
        "noise_variance_": Attr("float"),
    }),
}

_FILE_NAME = re.compile(r"^state/[A-Za-z0-9_.-]+\.npz$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TAGS = ("__tuple__", "__dict__", "__float__", "__path__", "__array__", "__estimator__")
_NODE_KEYS = {"class", "params", "attributes", "arrays", "steps"}


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


def _short(value, n=80):
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _state_spec(cls):
    """The :class:`~skretrieval._persist.StateSpec` of a supported class."""
    spec = SKLEARN_STATE.get(cls)
    if spec is None:
        spec = getattr(cls, "_state_spec", None)
    if not isinstance(spec, StateSpec):  # pragma: no cover - a declaration is missing
        raise TypeError(f"{cls.__qualname__} declares no persisted state (_state_spec)")
    return spec


def _spec_home(cls):
    if cls in SKLEARN_STATE:
        return f"skretrieval.persistence.SKLEARN_STATE[{cls.__name__}]"
    return f"{cls.__name__}._state_spec"


def _hook(est, name):
    """A persistence hook of ``est``'s class (never a delegated attribute:
    FrozenEstimator forwards unknown attributes to its estimator)."""
    return getattr(type(est), name, None)


def _declaration_problems():
    """Inconsistencies of the declared states of :data:`SUPPORTED_CLASSES`."""
    problems = []
    for cls in SUPPORTED_CLASSES.values():
        spec = _state_spec(cls)
        params = set(cls._get_param_names())
        names = set(spec.attributes) | set(spec.transient)
        for attr in sorted(names):
            if not (_IDENTIFIER.match(attr) and not attr.startswith("__")
                    and (attr.startswith("_") or attr.endswith("_"))):
                problems.append(f"{cls.__name__}.{attr}: not a fitted attribute name")
            if attr in params or hasattr(cls, attr):
                problems.append(f"{cls.__name__}.{attr}: shadows a parameter or class member")
        for attr, decl in spec.attributes.items():
            for ref in sorted(decl.references() - set(spec.attributes) - params):
                problems.append(f"{cls.__name__}.{attr}: refers to unknown {ref!r}")
            if decl.file is not None and (decl.kind != ("arrays",) or decl.file in _NODE_KEYS):
                problems.append(f"{cls.__name__}.{attr}: file= needs kind 'arrays'")
        for param in list(spec.paths) + ([spec.device] if spec.device else []):
            if param not in params:
                problems.append(f"{cls.__name__}: {param!r} is not a parameter")
    return problems


# ---------------------------------------------------------------------------
# checking a state against its declaration
# ---------------------------------------------------------------------------
class _Invalid(Exception):
    """A value that does not fit its declaration."""

    def __init__(self, attr, expected, got):
        super().__init__(f"attribute {attr!r}: expected {expected}, got {got}")


_KIND_NAMES = {"b": "bool", "i": "int", "u": "unsigned int", "f": "float", "c": "complex",
               "U": "str", "S": "bytes", "O": "object (str or int items)"}


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_))


def _is_json(v, depth=0):
    if depth > 64:
        return False
    if v is None or isinstance(v, (bool, int, float, str, np.bool_, np.integer, np.floating)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_json(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_json(x, depth + 1) for k, x in v.items())
    return False


_KIND_TESTS = {
    "int": _is_int,
    "float": _is_real,
    "bool": lambda v: isinstance(v, (bool, np.bool_)),
    "str": lambda v: isinstance(v, str),
    "tuple": lambda v: isinstance(v, tuple),
    "array": lambda v: isinstance(v, np.ndarray),
    "arrays": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "estimator": lambda v: isinstance(v, BaseEstimator),
    "json": _is_json,
}


class _Lookup:
    """Resolves the dimensions of declarations against a state and parameters."""

    def __init__(self, state, params):
        self.state = state
        self.params = params

    def dim(self, dim):
        if dim is None or isinstance(dim, Integral):
            return dim
        name, axis, sign, offset = DIMENSION.match(dim).groups()
        value = self.state[name] if name in self.state else self.params.get(name)
        if isinstance(value, np.ndarray):
            axis = int(axis or 0)
            if value.ndim <= axis:
                return None
            n = value.shape[axis]
        elif isinstance(value, (tuple, list)) and axis is None:
            n = len(value)
        elif _is_int(value) and axis is None:
            n = int(value)
        else:
            return None  # missing, None or malformed (checked as its own attribute)
        if offset:
            n = n + int(offset) if sign == "+" else n - int(offset)
        return n

    def text(self, dim):
        if dim is None:
            return "*"
        if isinstance(dim, Integral):
            return str(dim)
        value = self.dim(dim)
        return dim if value is None else f"{dim}={value}"


def _expected(decl, lookup):
    parts = []
    for kind in decl.kind:
        if kind == "array":
            dtype = decl.dtype if decl.dtype is not None else "biuf"
            if isinstance(dtype, str):
                dtype = "/".join(dict.fromkeys(_KIND_NAMES.get(k, k) for k in dtype))
            else:
                dtype = " or ".join(dtype)
            text = f"an array of dtype {dtype}"
            if decl.shape is not None:
                dims = ", ".join(lookup.text(d) for d in decl.shape)
                text += f" and shape ({dims}{',' if len(decl.shape) == 1 else ''})"
            parts.append(text)
        elif kind == "tuple":
            text = "a tuple" + (f" of {decl.items}" if decl.items else "")
            if decl.shape:
                text += f" of length {lookup.text(decl.shape[0])}"
            parts.append(text)
        elif kind == "estimator":
            names = " or ".join(c.__name__ for c in decl.classes) if decl.classes else None
            parts.append(f"a fitted {names}" if names else "a fitted estimator")
        elif kind == "arrays":
            parts.append("a dict of numeric arrays")
        elif kind == "json":
            parts.append("a JSON-like value")
        elif kind == "str" and decl.choices:
            parts.append("one of " + ", ".join(repr(c) for c in decl.choices))
        else:
            parts.append({"int": "an int", "float": "a number", "bool": "a bool",
                          "str": "a str"}[kind])
    if decl.none:
        parts.append("None")
    return " or ".join(parts)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    if isinstance(value, BaseEstimator):
        return f"a {type(value).__name__}"
    return f"{type(value).__name__} {_short(value, 60)}"


def _check_value(attr, decl, value, lookup):
    """Raise :class:`_Invalid` unless ``value`` fits ``decl``."""
    if value is None:
        if decl.none:
            return
        raise _Invalid(attr, _expected(decl, lookup), "None")
    kind = next((k for k in decl.kind if _KIND_TESTS[k](value)), None)
    if kind is None:
        raise _Invalid(attr, _expected(decl, lookup), _describe(value))
    bounds = decl.values
    if kind == "array":
        dtype = decl.dtype if decl.dtype is not None else "biuf"
        ok = (value.dtype.name in dtype if isinstance(dtype, tuple)
              else value.dtype.kind in dtype and value.dtype.kind != "V")
        if not ok or (value.dtype.hasobject and value.dtype != object):
            raise _Invalid(attr, _expected(decl, lookup), _describe(value))
        if decl.shape is not None:
            want = tuple(lookup.dim(d) for d in decl.shape)
            if value.ndim != len(want) or any(
                    w is not None and w != n for w, n in zip(want, value.shape)):
                raise _Invalid(attr, _expected(decl, lookup), f"shape {value.shape}")
        if bounds is not None and value.size and value.dtype.kind in "iu":
            _check_bounds(attr, bounds, int(value.min()), int(value.max()), lookup)
    elif kind == "tuple":
        if decl.items is not None and not all(_KIND_TESTS[decl.items](x) for x in value):
            raise _Invalid(attr, _expected(decl, lookup), _describe(value))
        if decl.shape:
            n = lookup.dim(decl.shape[0])
            if n is not None and len(value) != n:
                raise _Invalid(attr, _expected(decl, lookup), f"{len(value)} items")
    elif kind == "estimator":
        if decl.classes and type(value) not in decl.classes:
            raise _Invalid(attr, _expected(decl, lookup), _describe(value))
    elif kind == "arrays":
        bad = [k for k, v in value.items()
               if not isinstance(v, np.ndarray) or v.dtype.kind not in "biuf"]
        if bad:
            raise _Invalid(attr, "a dict of numeric arrays",
                           f"non-numeric entries {', '.join(map(repr, bad[:3]))}")
    elif kind == "str":
        if decl.choices and value not in decl.choices:
            raise _Invalid(attr, _expected(decl, lookup), repr(value))
    elif kind == "int" and bounds is not None:
        _check_bounds(attr, bounds, int(value), int(value), lookup)


def _check_bounds(attr, bounds, vmin, vmax, lookup):
    low, high = (lookup.dim(b) for b in bounds)
    if (low is not None and vmin < low) or (high is not None and vmax > high):
        text = f"[{lookup.text(bounds[0])}, {lookup.text(bounds[1])}]"
        got = f"{vmin}" if vmin == vmax else f"values in [{vmin}, {vmax}]"
        raise _Invalid(attr, f"values in {text}", got)


def _check_state(cls, spec, state, params):
    """Raise :class:`_Invalid` unless ``state`` fits ``spec`` (all of it when
    it is a fitted state, i.e. not empty)."""
    lookup = _Lookup(state, params)
    if state:
        groups = {}
        for attr, decl in spec.attributes.items():
            if isinstance(decl.optional, str):
                groups.setdefault(decl.optional, []).append(attr)
            elif not decl.optional and attr not in state:
                raise _Invalid(attr, f"the attribute (a fitted {cls.__name__} has it)",
                               "nothing")
        for members in groups.values():
            missing = [a for a in members if a not in state]
            if missing and len(missing) < len(members):
                raise _Invalid(missing[0], "the attribute (stored together with "
                               f"{', '.join(a for a in members if a in state)})", "nothing")
    for attr, value in state.items():
        _check_value(attr, spec.attributes[attr], value, lookup)


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
        give_default_mode(self.tmp, directory=True)
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
        # what a killed save left beside it, an hour after its last write
        remove_stale_temps(self.path, legacy_prefixes=(".skretrieval-save-",))
        fd, self.tmp = tempfile.mkstemp(prefix=".skretrieval-save-", suffix=".zip", dir=parent)
        os.close(fd)
        self.zf = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED,
                                  allowZip64=True)

    def open(self, name):
        return self.zf.open(name, "w", force_zip64=True)

    def commit(self):
        self.zf.close()
        give_default_mode(self.tmp)
        os.replace(self.tmp, self.path)

    def abort(self):
        self.zf.close()
        try:
            os.remove(self.tmp)
        except OSError:
            pass


def _check_member(info, limit, what):
    """Refuse a zip member before decompressing it: too large, or compressed
    so much that it is likely a zip bomb."""
    if info.flag_bits & 0x1:
        raise ModelFormatError(f"{what} is encrypted: not a file written by save_pipeline")
    if info.file_size > limit:
        raise ModelFormatError(
            f"{what} holds {info.file_size} bytes (uncompressed), over the limit of "
            f"{max(limit, 0)} bytes left; if you trust this model, pass a larger "
            "max_bytes to load_pipeline"
        )
    if (info.compress_type != zipfile.ZIP_STORED
            and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + _RATIO_SLACK):
        raise ModelFormatError(
            f"{what} is compressed {info.file_size / max(info.compress_size, 1):.0f} times "
            f"({info.compress_size} bytes expanding to {info.file_size}): refused as a "
            f"likely zip bomb (the limit is {MAX_COMPRESSION_RATIO} times; save_pipeline "
            "writes uncompressed files)"
        )


def _read_exactly(fh, size, what):
    """``size`` bytes of ``fh``, read in bounded blocks into one buffer."""
    buf = bytearray(size)
    view = memoryview(buf)
    pos = 0
    try:
        while pos < size:
            n = fh.readinto(view[pos:pos + _BLOCK])
            if not n:
                raise ModelFormatError(f"{what} is truncated ({pos} of {size} bytes)")
            pos += n
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, ModelFormatError):
            raise
        raise ModelFormatError(f"cannot read {what}: {exc}") from exc
    return buf


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of a file from ``start``
    (an uncompressed member of a zip archive, read without copying it)."""

    def __init__(self, path, start, size):
        self._fh = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, b):
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(memoryview(b)[:n])
        self._pos += got
        return got

    def close(self):
        self._fh.close()
        super().close()


class _Counting:
    """Counts the bytes read through it (the header of an ``.npy`` member)."""

    def __init__(self, fh):
        self.fh, self.n = fh, 0

    def read(self, n=-1):
        data = self.fh.read(n)
        self.n += len(data)
        return data

    def readinto(self, b):
        got = self.fh.readinto(b)
        self.n += got
        return got


class _Budget:
    """The bytes of arrays a load may still read (``max_bytes``)."""

    def __init__(self, max_bytes):
        self.limit = max_bytes
        self.used = 0

    @property
    def remaining(self):
        return self.limit - self.used

    def take(self, n, what):
        if n > self.remaining:
            raise ModelFormatError(
                f"{what}: the arrays of this model exceed max_bytes={self.limit} "
                f"({self.used + n} bytes or more); if you trust this model, pass a "
                "larger max_bytes to load_pipeline"
            )
        self.used += n


def _read_npy(fh, size, what):
    """The array of an ``.npy`` member of ``size`` bytes, checked and bounded."""
    counting = _Counting(fh)
    try:
        version = np.lib.format.read_magic(counting)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(counting)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(counting)
        else:
            raise ModelFormatError(f"{what}: unsupported .npy version {version}")
    except ModelFormatError:
        raise
    except Exception as exc:  # ValueError (malformed header), BadZipFile, EOFError...
        raise ModelFormatError(f"{what}: malformed .npy header: {exc}") from exc
    if dtype.hasobject:
        raise ModelFormatError(
            f"{what} is an object array, which cannot be read without pickle "
            "(save_pipeline never writes one)"
        )
    if any(n < 0 for n in shape):
        raise ModelFormatError(f"{what}: its header declares a negative shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if counting.n + nbytes != size:
        raise ModelFormatError(
            f"{what}: its header declares shape {shape} of {dtype} ({nbytes} bytes) "
            f"but the member holds {size - counting.n} bytes of data"
        )
    if dtype.itemsize == 0:
        arr = np.zeros(shape, dtype)
    else:
        buf = _read_exactly(counting, nbytes, what)
        arr = np.frombuffer(buf, dtype=dtype)
        arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _read_npz(fh, name, budget):
    """The arrays of the ``.npz`` file open as ``fh``: every member's size is
    checked (against ``budget``) before anything is decompressed."""
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelFormatError(f"cannot read {name}: {exc}") from exc
    with zf:
        infos = zf.infolist()
        keys = [info.filename[:-4] for info in infos]
        if not all(info.filename.endswith(".npy") for info in infos) \
                or len(set(keys)) != len(keys):
            raise ModelFormatError(f"{name} is not an .npz file of distinct .npy members")
        total = sum(info.file_size for info in infos)
        if total > budget.remaining:
            budget.take(total, name)  # raises, naming max_bytes
        for info in infos:
            _check_member(info, budget.remaining, f"{info.filename} in {name}")
        budget.take(total, name)
        arrays = {}
        for key, info in zip(keys, infos):
            what = f"{info.filename} in {name}"
            try:
                with zf.open(info) as member:
                    arrays[key] = _read_npy(member, info.file_size, what)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise ModelFormatError(f"cannot read {what}: {exc}") from exc
        return arrays


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
            try:
                self.zf = zipfile.ZipFile(self.path, "r")
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise ModelFormatError(f"cannot read the zip archive {self.path!r}: {exc}") \
                    from exc
            names = self.zf.namelist()
            problem = None
            if MANIFEST not in names:
                problem = (f"{self.path!r} has no {MANIFEST}: it is not a model saved by "
                           "skretrieval.persistence.save_pipeline")
            elif len(set(names)) != len(names):
                problem = f"{self.path!r} holds several files of the same name"
            if problem is not None:
                self.zf.close()
                raise ModelFormatError(problem)
        else:
            raise FileNotFoundError(f"no model at {self.path!r}")

    def close(self):
        if self.zf is not None:
            self.zf.close()

    def read_small(self, name, limit):
        """The bytes of the file ``name`` (at most ``limit``), None if absent."""
        what = f"{name} of {self.path!r}"
        if self.zf is not None:
            try:
                info = self.zf.getinfo(name)
            except KeyError:
                return None
            _check_member(info, limit, what)
            with self.zf.open(info) as fh:
                return bytes(_read_exactly(fh, info.file_size, what))
        full = os.path.join(self.path, name)
        if not os.path.isfile(full):
            return None
        with open(full, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise ModelFormatError(f"{what} is larger than {limit} bytes")
            data = bytes(_read_exactly(fh, size, what))
            if fh.read(1):
                raise ModelFormatError(f"{what} changed while it was read")
        return data

    def _open(self, name, size):
        """A seekable binary file of the model file ``name``, which must be of
        ``size`` bytes."""
        if self.zf is not None:
            try:
                info = self.zf.getinfo(name)
            except KeyError:
                raise ModelFormatError(
                    f"{name} is missing from {self.path!r}: the archive is incomplete"
                ) from None
            if info.file_size != size:
                return None
            _check_member(info, size, f"{name} in {self.path!r}")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(self.path, "rb") as fh:  # the member's data: after its header
                    fh.seek(info.header_offset)
                    header = fh.read(30)
                    total = os.fstat(fh.fileno()).st_size
                if len(header) != 30 or header[:4] != b"PK\x03\x04":
                    raise ModelFormatError(f"{name} in {self.path!r}: malformed zip entry")
                n_name, n_extra = struct.unpack("<HH", header[26:30])
                start = info.header_offset + 30 + n_name + n_extra
                if start + size > total:
                    raise ModelFormatError(f"{name} in {self.path!r}: truncated zip entry")
                return io.BufferedReader(_Window(self.path, start, size), 1 << 16)
            with self.zf.open(info) as fh:
                return io.BytesIO(_read_exactly(fh, size, f"{name} in {self.path!r}"))
        full = os.path.join(self.path, *name.split("/"))
        if not os.path.isfile(full):
            raise ModelFormatError(
                f"{name} is missing from {self.path!r}: the directory is incomplete"
            )
        fh = open(full, "rb")
        if os.fstat(fh.fileno()).st_size != size:
            fh.close()
            return None
        return fh

    def load_npz(self, name, checksums, budget):
        """The arrays of the ``.npz`` file ``name``, after checking its SHA-256."""
        if not isinstance(name, str) or not _FILE_NAME.match(name) or ".." in name:
            raise ModelFormatError(f"invalid file name in {MANIFEST}: {_short(name)}")
        expected = checksums.get(name)
        if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str) \
                or not _is_int(expected.get("bytes")) or expected["bytes"] < 0:
            raise ModelFormatError(f"{name} is not listed with a checksum in {MANIFEST}")
        size = expected["bytes"]
        if size > budget.remaining + _ZIP_OVERHEAD:
            budget.take(size, name)  # raises
        fh = self._open(name, size)
        if fh is None:
            raise ModelFormatError(
                f"{name} in {self.path!r} is not of the size listed in {MANIFEST}: the "
                "file is corrupted or was modified"
            )
        with fh:
            sha = hashlib.sha256()
            left = size
            while left:
                block = fh.read(min(_BLOCK, left))
                if not block:
                    break
                sha.update(block)
                left -= len(block)
            if left or sha.hexdigest() != expected["sha256"]:
                raise ModelFormatError(
                    f"{name} in {self.path!r} does not match its checksum in {MANIFEST}: "
                    "the file is corrupted or was modified"
                )
            fh.seek(0)
            return _read_npz(fh, f"{name} in {self.path!r}", budget)

    def read_manifest(self):
        """The parsed manifest, after checking it against its checksum, and
        whether there was one."""
        data = self.read_small(MANIFEST, MAX_MANIFEST_BYTES)
        digest = self.read_small(MANIFEST_CHECKSUM, 4096)
        if digest is not None:
            words = digest.decode("ascii", "replace").split()
            if not words or not _SHA256.match(words[0]):
                raise ModelFormatError(f"{MANIFEST_CHECKSUM} of {self.path!r} is malformed")
            if hashlib.sha256(data).hexdigest() != words[0]:
                raise ModelFormatError(
                    f"{MANIFEST} of {self.path!r} does not match its checksum in "
                    f"{MANIFEST_CHECKSUM}: the file is corrupted or was edited. Save the "
                    "model again from its source (checksums detect accidental changes; "
                    "they do not authenticate the file)"
                )
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelFormatError(f"{MANIFEST} of {self.path!r} is not valid JSON: {exc}") \
                from None
        if not isinstance(manifest, dict):
            raise ModelFormatError(f"{MANIFEST} of {self.path!r} is not a JSON object")
        return manifest, digest is not None


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
        spec = _state_spec(cls)
        nid = self.n_nodes
        self.n_nodes += 1
        node = {"class": name}
        all_params = est.get_params(deep=False)
        params = all_params
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

        hook = _hook(est, "_persistent_state")
        state = hook(est) if hook is not None else vars(est)
        stored = {}
        for attr, value in state.items():
            if attr in all_params or attr in spec.transient:
                continue
            if attr not in spec.attributes:
                raise TypeError(
                    f"cannot save {where}: its attribute {attr!r} is not declared in "
                    f"{_spec_home(cls)}, the state save_pipeline stores (and "
                    "load_pipeline accepts) for it. Declare it there (or as transient "
                    "if it is rebuilt after loading)"
                )
            stored[attr] = value
        try:
            _check_state(cls, spec, stored, all_params)
        except _Invalid as exc:
            raise ValueError(
                f"cannot save {where}: its {exc} (the declaration is {_spec_home(cls)})"
            ) from None

        arrays = {}
        attributes = {}
        for attr, value in stored.items():
            file = spec.attributes[attr].file
            if file is not None:
                fname = f"state/{nid:03d}-{cls.__name__}-{file}.npz"
                _write_npz(self.target, fname, {k: np.asarray(v) for k, v in value.items()},
                           self.checksums)
                node[file] = fname
            else:
                attributes[attr] = self.encode(value, where, repr(attr), arrays, attr)
        node["attributes"] = attributes
        if arrays:
            fname = f"state/{nid:03d}-{cls.__name__}.npz"
            _write_npz(self.target, fname, arrays, self.checksums)
            node["arrays"] = fname
        return node


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
        stored without pickle or is not declared in the class's persisted
        state (the message names the step and the value).
    ValueError
        If an object array (e.g. labels) mixes types, or a fitted attribute
        does not fit its declaration (e.g. an array of another shape than
        its class declares), which load_pipeline would refuse.
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
        data = json.dumps(manifest, indent=1, allow_nan=False, ensure_ascii=False)
        data = data.encode("utf-8")
        with target.open(MANIFEST) as fh:
            fh.write(data)
        with target.open(MANIFEST_CHECKSUM) as fh:
            fh.write(f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n".encode("ascii"))
    except BaseException:
        target.abort()
        raise
    target.commit()
    return target.path


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
class _Loader:
    def __init__(self, source, checksums, device, budget):
        self.source = source
        self.checksums = checksums
        self.device = device
        self.resolved_device = None if device is None else resolve_device(device)
        self.budget = budget
        self.reset = []  # (set_params key or None, where, parameter, value, PathParam)
        self.used = set()  # ids of the arrays given to attributes

    def decode(self, value, where, arrays, prefix=None):
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
            return self.node(body, where, prefix)
        if tag == "__array__" and isinstance(body, dict) and arrays is not None:
            key, restore = body.get("key"), body.get("restore")
            if not isinstance(key, str) or key not in arrays:
                raise ModelFormatError(f"{where}: array {_short(key)} is missing from its .npz file")
            arr = arrays[key]
            if id(arr) in self.used:
                arr = arr.copy()  # one array per attribute, even if keys repeat
            self.used.add(id(arr))
            if restore is None:
                return arr
            if restore == "object":
                if arr.dtype.kind not in "iuU":
                    raise ModelFormatError(f"{where}: an object array must be stored as "
                                           f"str or int, got {arr.dtype}")
                return arr.astype(object)
            if restore == "scalar" and arr.ndim == 0:
                return arr[()]
        raise ModelFormatError(f"{where}: malformed value {_short(value)} in {MANIFEST}")

    def node(self, node, where, prefix=""):
        """The estimator of a manifest entry; ``prefix``: its ``set_params``
        path (``"step__"``), None for a fitted attribute's."""
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
        spec = _state_spec(cls)
        files = {decl.file: attr for attr, decl in spec.attributes.items() if decl.file}
        unknown = sorted(str(k) for k in set(node) - _NODE_KEYS - set(files))
        if unknown:
            raise ModelFormatError(f"{where}: unexpected entries {unknown} in {MANIFEST}")
        raw_params = node.get("params", {})
        if not isinstance(raw_params, dict):
            raise ModelFormatError(f"{where}: malformed parameters in {MANIFEST}")
        params = {}
        for k, v in raw_params.items():
            sub = None if prefix is None else f"{prefix}{k}__"
            params[k] = self.decode(v, f"{where}, parameter {k!r}", None, sub)
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
                    sub = None if prefix is None else f"{prefix}{step['name']}__"
                    est = self.node(est, f"{where} > step {step['name']!r}", sub)
                built.append((step["name"], est))
            params["steps"] = built
        # locations are never taken from the file
        for param, decl in spec.paths.items():
            if param in params and not decl.restores(params[param]):
                key = None if prefix is None else f"{prefix}{param}"
                self.reset.append((key, where, param, params[param], decl))
                params[param] = decl.safe
        if spec.device is not None and self.device is not None:
            params[spec.device] = self.device
        try:
            est = cls(**params)
            if hasattr(cls, "_parameter_constraints"):
                est._validate_params()
        except Exception as exc:
            raise ModelFormatError(f"{where}: invalid parameters: {exc}") from exc

        arrays = None
        if "arrays" in node:
            arrays = self.source.load_npz(node["arrays"], self.checksums, self.budget)
        attributes = node.get("attributes", {})
        if not isinstance(attributes, dict):
            raise ModelFormatError(f"{where}: malformed attributes in {MANIFEST}")
        state = {}
        for attr, value in attributes.items():
            if attr in spec.transient:
                # files of format 1 hold some, as null or as their value after loading
                if value is not None and not (
                        isinstance(value, (list, str, bool, int, float))
                        and value == spec.transient[attr]):
                    raise ModelFormatError(
                        f"{where}: attribute {attr!r} is never stored in a model file "
                        f"(it is rebuilt after loading), got {_short(value)}"
                    )
                continue
            decl = spec.attributes.get(attr)
            if decl is None or decl.file is not None:
                raise ModelFormatError(
                    f"{where}: invalid attribute name {_short(attr)}: "
                    + ("it is stored in its own file" if decl is not None else
                       f"{cls.__name__} stores no such attribute (it stores "
                       f"{', '.join(sorted(spec.attributes)) or 'none'})")
                    + "; the file was modified or written by an incompatible version"
                )
            state[attr] = self.decode(value, f"{where}, attribute {attr!r}", arrays)
        for file, attr in files.items():
            if file in node:
                state[attr] = self.source.load_npz(node[file], self.checksums, self.budget)
        try:
            _check_state(cls, spec, state, params)
        except _Invalid as exc:
            raise ModelFormatError(f"{where}: {exc}") from None
        vars(est).update(state)
        if state:  # fitted
            vars(est).update({k: copy.copy(v) for k, v in spec.transient.items()})
            hook = _hook(est, "_after_load")
            if hook is not None:
                try:
                    if spec.device is not None:
                        hook(est, self.resolved_device)
                    else:
                        hook(est)
                except Exception as exc:
                    raise ModelFormatError(f"{where}: inconsistent fitted state: {exc}") \
                        from exc
        return est


def _apply_params(model, params):
    """``model.set_params(**params)``, validated."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of parameters, got {type(params).__name__}")
    model.set_params(**params)
    estimators = [model] + [v for v in model.get_params(deep=True).values()
                            if isinstance(v, BaseEstimator)]
    for est in estimators:
        if hasattr(type(est), "_parameter_constraints"):
            est._validate_params()


def load_pipeline(path, *, device=None, params=None, max_bytes=MAX_ARRAY_BYTES):
    """Load a model saved by :func:`save_pipeline`, without pickle.

    Safe for files from untrusted sources: only JSON and numpy arrays are
    read (no pickle), only :data:`SUPPORTED_CLASSES` are instantiated, with
    only the fitted attributes their classes declare (checked: kinds, dtypes,
    shapes), sizes are bounded, and no file, directory or cache location is
    taken from the file (see the module documentation).

    Parameters
    ----------
    path : str or path-like
        The directory or ``.zip`` file written by :func:`save_pipeline`.
    device : str, default=None
        Torch device for the :class:`~skretrieval.ConvFeatureExtractor` and
        :class:`~skretrieval.RetrievalNetTrainer` steps (``"cpu"``,
        ``"cuda"``, ``"cuda:1"``, ``"auto"``...); it replaces both their
        ``device`` parameter and fitted ``device_``.  ``None`` keeps the
        saved device, falling back to the CPU with a warning when it is not
        available here.
    params : dict, default=None
        Parameters to set on the loaded model, as for its ``set_params``
        (``{"convfeatureextractor__cache": "cache_dir",
        "nearestneighborretriever__store": "db.f32"}``; plain names for a
        single estimator).  This is how locations are given: the extractor's
        ``cache``, ``store`` and ``weights`` files, the retriever's
        ``store``, a trainer's ``checkpoint`` and a pipeline's ``memory`` are
        never taken from the file (they are None, ``"memory"`` or the
        weights' torchvision name after loading).
    max_bytes : int, default=MAX_ARRAY_BYTES
        The most bytes of arrays to read (uncompressed, all files together;
        16 GiB by default).  Sizes are checked before anything is read.

    Returns
    -------
    pipeline : Pipeline or estimator
        The fitted model, as saved (locations aside).

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path``.
    ModelFormatError
        If the files are not a model of a format version this skretrieval
        reads, name a class outside the whitelist or an attribute its class
        does not declare, hold values that do not fit the declarations
        (kinds, dtypes, shapes: the message names the step, the attribute,
        what was expected and found), are missing, corrupted (checksums),
        malformed, or larger than ``max_bytes``.
    ValueError
        If ``params`` names an unknown parameter or an invalid value.

    Warns
    -----
    VersionMismatchWarning
        If the model was saved with other versions of skretrieval,
        scikit-learn or torchvision.
    UserWarning
        If a ``weights`` parameter naming a file was not restored (the
        loaded network keeps its weights; refitting would not).
    """
    if not _is_int(max_bytes) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of parameters, got {type(params).__name__}")
    source = _Source(path)
    try:
        manifest, has_checksum = source.read_manifest()
        if manifest.get("format") != FORMAT_NAME:
            raise ModelFormatError(
                f"{os.fspath(path)!r} is not a skretrieval model (format "
                f"{_short(manifest.get('format'))}, expected {FORMAT_NAME!r})"
            )
        version = manifest.get("format_version")
        if not _is_int(version) or version not in READABLE_VERSIONS:
            newer = _is_int(version) and version > FORMAT_VERSION
            raise ModelFormatError(
                f"{os.fspath(path)!r} uses format version {_short(version)}, but this "
                f"skretrieval ({__version__}) reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
                + ("; upgrade skretrieval to load it" if newer else "")
            )
        if version >= 2 and not has_checksum:
            raise ModelFormatError(
                f"{os.fspath(path)!r} has no {MANIFEST_CHECKSUM}: the model is "
                "incomplete or was modified"
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
        loader = _Loader(source, checksums, device, _Budget(max_bytes))
        root = manifest.get("estimator")
        try:
            model = loader.node(root, "the model")
        except RecursionError:
            raise ModelFormatError(f"{MANIFEST} of {os.fspath(path)!r} is nested too deeply") \
                from None
    finally:
        source.close()
    given = set(params or ())
    for key, where, param, value, decl in loader.reset:
        if decl.warn and key not in given:
            how = (f"pass load_pipeline(..., params={{{key!r}: ...}}) to give it"
                   if key is not None else "refit the model to set it")
            warnings.warn(
                f"{where}: the model file sets {param!r} to a location "
                f"({_short(value)}), which load_pipeline does not restore: it is "
                f"{decl.safe!r}; {decl.warn}. If you trust this location, {how}",
                UserWarning,
                stacklevel=2,
            )
    if params:
        _apply_params(model, params)
    return model
