"""Loading: :func:`load_pipeline` (see :mod:`skretrieval.persistence` for the format)."""

from __future__ import annotations

import copy
import os
import pathlib
import warnings
from collections.abc import Mapping

from sklearn.base import BaseEstimator

from ..utils._version import __version__
from ..extraction._network import resolve_device
from ._checks import InvalidState, check_state, is_int
from ._io import Budget, ModelSource
from ._registry import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_CHECKSUM,
    MAX_ARRAY_BYTES,
    NODE_KEYS,
    READABLE_VERSIONS,
    SUPPORTED_CLASSES,
    ModelFormatError,
    VersionMismatchWarning,
    class_hook,
    short,
    state_spec,
    versions,
)

__all__ = ["load_pipeline"]

_TAGS = ("__tuple__", "__dict__", "__float__", "__path__", "__array__", "__estimator__")


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
            raise ModelFormatError(f"{where}: malformed value {short(value)} in {MANIFEST}")
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
                raise ModelFormatError(f"{where}: array {short(key)} is missing from its .npz file")
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
        raise ModelFormatError(f"{where}: malformed value {short(value)} in {MANIFEST}")

    def node(self, node, where, prefix=""):
        """The estimator of a manifest entry; ``prefix``: its ``set_params``
        path (``"step__"``), None for a fitted attribute's."""
        if not isinstance(node, dict):
            raise ModelFormatError(f"{where}: malformed estimator entry in {MANIFEST}")
        name = node.get("class")
        cls = SUPPORTED_CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ModelFormatError(
                f"{where}: class {short(name)} is not one that load_pipeline "
                "instantiates (refused without importing anything). Supported: "
                f"{', '.join(sorted(SUPPORTED_CLASSES))}"
            )
        where = f"{where} ({name})"
        spec = state_spec(cls)
        files = {decl.file: attr for attr, decl in spec.attributes.items() if decl.file}
        unknown = sorted(str(k) for k in set(node) - NODE_KEYS - set(files))
        if unknown:
            raise ModelFormatError(f"{where}: unexpected entries {unknown} in {MANIFEST}")
        params = self.params(node, spec, where, prefix)
        try:
            est = cls(**params)
            if hasattr(cls, "_parameter_constraints"):
                est._validate_params()
        except Exception as exc:
            raise ModelFormatError(f"{where}: invalid parameters: {exc}") from exc
        state = self.state(node, cls, spec, where)
        for file, attr in files.items():
            if file in node:
                state[attr] = self.source.load_npz(node[file], self.checksums, self.budget)
        try:
            check_state(cls, spec, state, params)
        except InvalidState as exc:
            raise ModelFormatError(f"{where}: {exc}") from None
        self.restore(est, spec, state, where)
        return est

    def params(self, node, spec, where, prefix):
        """The constructor parameters of a manifest entry, locations replaced
        by their safe values (recorded in ``reset``)."""
        raw_params = node.get("params", {})
        if not isinstance(raw_params, dict):
            raise ModelFormatError(f"{where}: malformed parameters in {MANIFEST}")
        params = {}
        for k, v in raw_params.items():
            sub = None if prefix is None else f"{prefix}{k}__"
            params[k] = self.decode(v, f"{where}, parameter {k!r}", None, sub)
        if spec.steps is not None:
            params[spec.steps] = self.steps(node.get("steps"), where, prefix)
        # locations are never taken from the file
        for param, decl in spec.paths.items():
            if param in params and not decl.restores(params[param]):
                key = None if prefix is None else f"{prefix}{param}"
                self.reset.append((key, where, param, params[param], decl))
                params[param] = decl.safe
        if spec.device is not None and self.device is not None:
            params[spec.device] = self.device
        return params

    def steps(self, steps, where, prefix):
        """The ``(name, estimator)`` steps of a manifest entry's ``"steps"``."""
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
        return built

    def state(self, node, cls, spec, where):
        """The fitted attributes of a manifest entry (those in their own
        files aside), refusing undeclared ones."""
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
                        f"(it is rebuilt after loading), got {short(value)}"
                    )
                continue
            decl = spec.attributes.get(attr)
            if decl is None or decl.file is not None:
                raise ModelFormatError(
                    f"{where}: invalid attribute name {short(attr)}: "
                    + ("it is stored in its own file" if decl is not None else
                       f"{cls.__name__} stores no such attribute (it stores "
                       f"{', '.join(sorted(spec.attributes)) or 'none'})")
                    + "; the file was modified or written by an incompatible version"
                )
            state[attr] = self.decode(value, f"{where}, attribute {attr!r}", arrays)
        return state

    def restore(self, est, spec, state, where):
        """Give ``est`` its checked ``state``; a fitted one also gets its
        transient attributes, then its ``_after_load`` hook runs."""
        vars(est).update(state)
        if not state:  # not fitted
            return
        vars(est).update({k: copy.copy(v) for k, v in spec.transient.items()})
        hook = class_hook(est, "_after_load")
        if hook is None:
            return
        try:
            if spec.device is not None:
                hook(est, self.resolved_device)
            else:
                hook(est)
        except Exception as exc:
            raise ModelFormatError(f"{where}: inconsistent fitted state: {exc}") from exc


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


def _check_header(manifest, has_checksum, path):
    """Refuse a manifest of another format or version (or of version 2 without
    its checksum); warn when it was written with other library versions."""
    if manifest.get("format") != FORMAT_NAME:
        raise ModelFormatError(
            f"{os.fspath(path)!r} is not a skretrieval model (format "
            f"{short(manifest.get('format'))}, expected {FORMAT_NAME!r})"
        )
    version = manifest.get("format_version")
    if not is_int(version) or version not in READABLE_VERSIONS:
        newer = is_int(version) and version > FORMAT_VERSION
        raise ModelFormatError(
            f"{os.fspath(path)!r} uses format version {short(version)}, but this "
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
        current = versions()
        differ = [f"{lib} {saved.get(lib)} (here {current[lib]})"
                  for lib in ("skretrieval", "sklearn", "torchvision")
                  if saved.get(lib) != current[lib]]
        if differ:
            warnings.warn(
                f"{os.fspath(path)!r} was saved with " + ", ".join(differ)
                + "; results may differ",
                VersionMismatchWarning,
                stacklevel=3,
            )


def _warn_locations(reset, params):
    """Warn of the locations that were not restored (those that warn), unless
    ``params`` gives them."""
    given = set(params or ())
    for key, where, param, value, decl in reset:
        if decl.warn and key not in given:
            how = (f"pass load_pipeline(..., params={{{key!r}: ...}}) to give it"
                   if key is not None else "refit the model to set it")
            warnings.warn(
                f"{where}: the model file sets {param!r} to a location "
                f"({short(value)}), which load_pipeline does not restore: it is "
                f"{decl.safe!r}; {decl.warn}. If you trust this location, {how}",
                UserWarning,
                stacklevel=3,
            )


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
    if not is_int(max_bytes) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of parameters, got {type(params).__name__}")
    try:
        model, loader = _load(path, device, max_bytes)
    except ModelFormatError as exc:
        where = os.fspath(path)
        if where in str(exc):
            raise
        # every refusal names the file (the checks below name the step)
        raise ModelFormatError(f"{where!r}: {exc}") from exc
    _warn_locations(loader.reset, params)
    if params:
        _apply_params(model, params)
    return model


def _load(path, device, max_bytes):
    """The model in ``path`` and its loader (what it reset)."""
    source = ModelSource(path)
    try:
        manifest, has_checksum = source.read_manifest()
        _check_header(manifest, has_checksum, path)
        checksums = manifest.get("files")
        if not isinstance(checksums, dict):
            raise ModelFormatError(f"{MANIFEST}: missing 'files'")
        loader = _Loader(source, checksums, device, Budget(max_bytes))
        root = manifest.get("estimator")
        try:
            model = loader.node(root, "the model")
        except RecursionError:
            raise ModelFormatError(f"{MANIFEST} of {os.fspath(path)!r} is nested too deeply") \
                from None
    finally:
        source.close()
    return model, loader
