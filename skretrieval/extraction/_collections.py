"""Collections of images: screening them (:func:`check_images`), listing a folder
(:func:`list_images`)."""

from __future__ import annotations

import numbers
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ._images import load_image

__all__ = ["check_images", "list_images"]

DEFAULT_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)


def _resolve_n_jobs(n_jobs):
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, (bool, np.bool_)) or not isinstance(n_jobs, numbers.Integral):
        raise TypeError(f"n_jobs must be an int or None, got {n_jobs!r}")
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 has no meaning; use 1, -1 or another int")
    if n_jobs < 0:
        n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    return n_jobs


def _check_one(args):
    index, item, strict = args
    try:
        load_image(item, index=index, strict=strict)
    except Exception as exc:  # noqa: BLE001 - report every problem
        return (index, item, str(exc))
    return None


def check_images(items, *, n_jobs=1, strict=True):
    """Try to load every item and report those that fail.

    Use it to filter a large collection before fitting::

        problems = check_images(paths, n_jobs=8)
        bad = {i for i, _, _ in problems}
        paths = [p for i, p in enumerate(paths) if i not in bad]

    Parameters
    ----------
    items : iterable
        Images as accepted by :func:`load_image` (paths, PIL images, arrays,
        :class:`Crop`).
    n_jobs : int or None, default=1
        Number of threads (:class:`concurrent.futures.ThreadPoolExecutor`;
        Pillow decodes without holding the GIL). ``None`` means 1, ``-1``
        all CPUs, ``-2`` all but one, etc.
    strict : bool, default=True
        Whether JPEG files with corrupt compressed data are reported (they
        decode to wrong pixels without an error; see :func:`load_image`).

    Returns
    -------
    problems : list of tuple (index, item, message)
        One entry per item that failed, in input order; ``message`` is the
        error message (it names the item and the reason). Empty if every item
        loads. Unsupported types (e.g. ``None``) are reported too.
    """
    if isinstance(items, (str, os.PathLike, Image.Image)):
        raise TypeError(
            "check_images expects a list of images, got a single "
            f"{type(items).__name__}; use list_images(folder) to list a folder"
        )
    items = list(items)
    n_jobs = min(_resolve_n_jobs(n_jobs), max(1, len(items)))
    tasks = ((i, item, bool(strict)) for i, item in enumerate(items))
    if n_jobs == 1:
        results = map(_check_one, tasks)
        return [r for r in results if r is not None]
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        results = list(pool.map(_check_one, tasks))
    return [r for r in results if r is not None]


def list_images(folder, *, recursive=True, extensions=DEFAULT_EXTENSIONS):
    """List the image files under a folder.

    Parameters
    ----------
    folder : str or os.PathLike
        Folder to scan.
    recursive : bool, default=True
        Whether to descend into sub-folders (symbolic links to folders are
        not followed).
    extensions : str or sequence of str, default=(".jpg", ".jpeg", ".png", \
".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
        File extensions to keep, compared case-insensitively (``".JPG"``
        matches ``".jpg"``); the leading dot is optional.

    Returns
    -------
    paths : list of str
        Sorted paths (``os.path.join(folder, ...)``, so relative when
        ``folder`` is relative). Hidden files and folders (name starting with
        ``"."``, e.g. macOS ``._x.jpg`` resource forks) are skipped. The files
        are not opened: use :func:`check_images` to validate them.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist.
    NotADirectoryError
        If ``folder`` is not a directory.
    ValueError
        If no image file is found, or ``extensions`` is empty.
    """
    root = os.fsdecode(os.fspath(folder))
    if isinstance(extensions, (str, bytes)):
        extensions = (extensions,)
    exts = tuple(
        (e if e.startswith(".") else "." + e).lower() for e in (os.fsdecode(x) for x in extensions)
    )
    if not exts:
        raise ValueError("extensions must not be empty")
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder not found: {root!r}")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"not a folder: {root!r}")

    paths = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            paths.extend(
                os.path.join(dirpath, f)
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(exts)
            )
    else:
        with os.scandir(root) as entries:
            paths.extend(
                os.path.join(root, e.name)
                for e in entries
                if not e.name.startswith(".")
                and e.name.lower().endswith(exts)
                and e.is_file()
            )
    if recursive:
        paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        where = "under" if recursive else "in"
        raise ValueError(f"no image files {where} {root!r} (extensions {', '.join(exts)})")
    return sorted(paths)
