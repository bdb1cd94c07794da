"""Saving: :func:`save_pipeline` (see :mod:`skretrieval.persistence` for the format)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from ..utils._files import disk_full_error
from ._checks import InvalidState, check_state
from ._io import DirTarget, ZipTarget, is_zip_path, write_npz
from ._registry import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_CHECKSUM,
    NAME_OF_CLASS,
    SUPPORTED_CLASSES,
    class_hook,
    short,
    spec_home,
    state_spec,
    versions,
)

__all__ = ["save_pipeline"]


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
            f"({short(value)}), which save_pipeline cannot store without pickle "
            f"(supported: {allowed}). Set it to such a value (e.g. an int "
            "random_state) before saving, or use joblib for files you only load "
            "yourself."
        )

    # -- estimators ------------------------------------------------------
    def node(self, est, where, check_fitted):
        """The manifest entry of ``est``, its arrays written to the target."""
        cls = type(est)
        name = NAME_OF_CLASS.get(cls)
        if name is None:
            raise TypeError(
                f"cannot save {where}: {cls.__module__}.{cls.__qualname__} is not "
                "supported by save_pipeline (supported classes: "
                f"{', '.join(sorted(SUPPORTED_CLASSES))})"
            )
        spec = state_spec(cls)
        if check_fitted and spec.steps is None:
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
        all_params = est.get_params(deep=False)
        params = all_params
        if spec.steps is not None:
            root = where == f"the {cls.__name__}"
            node["steps"] = self.steps(params[spec.steps], None if root else where)
            params = {k: v for k, v in params.items() if k != spec.steps}
        node["params"] = {
            k: self.encode(v, where, repr(k), None, k) for k, v in sorted(params.items())
        }
        stored = self.stored_state(est, spec, all_params, where)
        self.write_state(node, stored, spec, f"state/{nid:03d}-{cls.__name__}", where)
        return node

    def steps(self, steps, where):
        """The entries of a list of ``(name, estimator)`` steps (``where``: the
        estimator holding them, None for the model itself)."""
        entries = []
        for step_name, step in steps:
            sub = f"step {step_name!r} ({type(step).__name__})"
            if where is not None:
                sub = f"{where} > {sub}"
            if step is None or (isinstance(step, str) and step == "passthrough"):
                entries.append({"name": step_name, "estimator": step})
            else:
                entries.append({"name": str(step_name),
                                "estimator": self.node(step, sub, check_fitted=True)})
        return entries

    @staticmethod
    def stored_state(est, spec, params, where):
        """The attributes of ``est`` to store, checked against ``spec``."""
        cls = type(est)
        hook = class_hook(est, "_persistent_state")
        state = hook(est) if hook is not None else vars(est)
        stored = {}
        for attr, value in state.items():
            if attr in params or attr in spec.transient:
                continue
            if attr not in spec.attributes:
                raise TypeError(
                    f"cannot save {where}: its attribute {attr!r} is not declared in "
                    f"{spec_home(cls)}, the state save_pipeline stores (and "
                    "load_pipeline accepts) for it. Declare it there (or as transient "
                    "if it is rebuilt after loading)"
                )
            stored[attr] = value
        try:
            check_state(cls, spec, stored, params)
        except InvalidState as exc:
            raise ValueError(
                f"cannot save {where}: its {exc} (the declaration is {spec_home(cls)})"
            ) from None
        return stored

    def write_state(self, node, stored, spec, stem, where):
        """Add the attributes ``stored`` to ``node``, their arrays written to
        ``<stem>.npz`` and ``<stem>-<file>.npz``."""
        arrays = {}
        attributes = {}
        for attr, value in stored.items():
            file = spec.attributes[attr].file
            if file is not None:
                fname = f"{stem}-{file}.npz"
                write_npz(self.target, fname, {k: np.asarray(v) for k, v in value.items()},
                          self.checksums)
                node[file] = fname
            else:
                attributes[attr] = self.encode(value, where, repr(attr), arrays, attr)
        node["attributes"] = attributes
        if arrays:
            fname = f"{stem}.npz"
            write_npz(self.target, fname, arrays, self.checksums)
            node["arrays"] = fname


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
    target = (ZipTarget if is_zip_path(path) else DirTarget)(path, overwrite)
    try:
        saver = _Saver(target)
        where = f"the {type(pipeline).__name__}"
        root = saver.node(pipeline, where, check_fitted=True)
        step_names = [s["name"] for s in root["steps"]] if "steps" in root else None
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "versions": versions(),
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
        target.commit()
    except BaseException as exc:
        target.abort()
        full = disk_full_error(exc, path)
        if full is not None:
            raise full from exc
        raise
    return target.path
