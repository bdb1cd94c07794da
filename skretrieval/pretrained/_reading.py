"""Reading checkpoint files without running their code, and telling their format apart.

Every file goes through ``torch.load(weights_only=True)``: tensors, containers
and numbers only.  Two families store more than that, and only these extras
are let through, each rebuilt as plain data:

* cirtorch's learned whitening ``meta['Lw']`` holds numpy arrays: numpy's
  array and scalar rebuilders and its dtypes are allowed (the list torch's
  documentation gives for numpy arrays);
* naver's ``checkpoint['pca']`` holds pickled scikit-learn ``PCA`` objects:
  the class names ``sklearn.decomposition.pca.PCA`` (scikit-learn < 0.22,
  when the files were written) and ``sklearn.decomposition._pca.PCA`` are
  mapped to :class:`PickledState`, which keeps the attribute dictionary and
  runs nothing of scikit-learn.

Any other object in a file is refused with a :class:`CheckpointFormatError`
naming the globals the file asks for.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import torch

__all__ = ["CheckpointFormatError", "PickledState", "read_checkpoint", "sniff_format",
           "tensor_dict"]


class CheckpointFormatError(ValueError):
    """A checkpoint file skretrieval cannot read or does not recognise.

    The message names the file and what was found in it (its top-level keys,
    the globals a refused pickle asks for, ...).
    """


class PickledState:
    """The attributes of a pickled object, kept as a dictionary (nothing is run).

    Stands in for the scikit-learn ``PCA`` objects of naver's checkpoints.
    """

    def __init__(self):
        self.state = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"state": state}

    def __repr__(self):
        return f"PickledState({sorted(self.state)})"


_PCA_NAMES = ("sklearn.decomposition.pca.PCA", "sklearn.decomposition._pca.PCA")


def _numpy_globals():
    """numpy's array/scalar rebuilders and dtypes, under their old and new module names."""
    core = getattr(np, "_core", None) or np.core
    allowed = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((core.multiarray._reconstruct, f"{module}._reconstruct"))
        allowed.append((core.multiarray.scalar, f"{module}.scalar"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _safe_globals():
    return _numpy_globals() + [(PickledState, name) for name in _PCA_NAMES]


def _refused_globals(path):
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only for the message
        return []


def read_checkpoint(path):
    """The object stored in the checkpoint ``path`` (a torch file or ``.safetensors``).

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file.
    CheckpointFormatError
        When the file is not a torch checkpoint, or pickles objects other than
        tensors, containers, numbers, numpy arrays and scikit-learn PCAs.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise CheckpointFormatError(
                f"{path!r}: not a readable safetensors file ({exc})") from exc
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = [g for g in _refused_globals(path) if g not in _PCA_NAMES]
        if not found and not zipfile.is_zipfile(path):
            raise CheckpointFormatError(
                f"{path!r} is not a torch checkpoint (neither torch's zip format nor a "
                f"legacy torch pickle: {str(exc).splitlines()[-1][:200]})") from exc
        what = (f"it pickles objects skretrieval does not unpickle: {', '.join(found[:8])}"
                if found else f"it cannot be read as data only ({str(exc)[:300]})")
        raise CheckpointFormatError(
            f"{path!r}: {what}. Checkpoints are read with torch.load(weights_only=True); "
            "re-save the state dict alone (torch.save(model.state_dict(), FILE)) "
            "if you trust the file") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointFormatError(
            f"{path!r} is not a torch checkpoint ({type(exc).__name__}: "
            f"{str(exc)[:300]})") from exc


def tensor_dict(obj):
    """``obj`` as a state dict (str -> tensor), or None when it is not one.

    ``{'state_dict': ...}`` and ``{'model': ...}`` wrappers are opened, and a
    ``module.`` prefix on every key (DataParallel) is dropped.
    """
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and len(obj) <= 8:
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _describe_keys(obj):
    if isinstance(obj, dict):
        keys = sorted(map(str, obj))
        shown = ", ".join(repr(k) for k in keys[:12]) + (", ..." if len(keys) > 12 else "")
        return f"a dict with keys [{shown}]"
    return f"a {type(obj).__name__}"


def sniff_format(obj, path="checkpoint"):
    """``"cirtorch"``, ``"naver"`` or ``"state_dict"``: the layout of ``obj``.

    cirtorch: ``{'meta': {'architecture', 'pooling', ...}, 'state_dict'}``;
    naver (deep-image-retrieval): ``{'model_options': {'arch', ...},
    'state_dict', ...}``; a plain state dict: tensors by name.

    Raises
    ------
    CheckpointFormatError
        For anything else, naming what was found.
    """
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = obj.get("meta")
        if isinstance(meta, dict):
            missing = [k for k in ("architecture", "pooling") if k not in meta]
            if missing:
                raise CheckpointFormatError(
                    f"{path!r} looks like a cirtorch checkpoint ('meta' and 'state_dict') "
                    f"but its meta lacks {missing}; found meta keys {sorted(meta)}")
            return "cirtorch"
        options = obj.get("model_options")
        if isinstance(options, dict):
            if "arch" not in options:
                raise CheckpointFormatError(
                    f"{path!r} looks like a deep-image-retrieval checkpoint "
                    "('model_options' and 'state_dict') but its model_options lack "
                    f"'arch'; found {sorted(options)}")
            return "naver"
    if tensor_dict(obj) is not None:
        return "state_dict"
    raise CheckpointFormatError(
        f"{path!r} is in no checkpoint format skretrieval knows: it holds "
        f"{_describe_keys(obj)}. Expected a cirtorch checkpoint ({{'meta', "
        "'state_dict'}}), a deep-image-retrieval one ({'model_options', "
        "'state_dict'}) or a state dict of tensors")
