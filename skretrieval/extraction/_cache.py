"""Content-addressed caches of extracted feature maps.

A key names the image (its content or file identity), the backbone, its
weights, the layer and the exact input size, so a map is computed once and
reused by every estimator that asks for the same thing: the candidates of a
grid search that differ only downstream of the extractor, or a second
``transform`` of the same images.

``"memory"`` is a per-process least-recently-used store bounded in bytes;
a directory path is a store of ``.npy`` files shared by processes (joblib
workers of ``GridSearchCV(n_jobs=...)``), written atomically so that two
processes filling it at once never see a partial file.

A disk cache owns its directory: it tags it with a ``CACHEDIR.TAG`` file
(the Cache Directory Tagging Specification, https://bford.info/cachedir/,
which backup tools honour) naming skretrieval and the format, refuses a
non-empty directory it did not tag, and only ever deletes files of its own
naming scheme in it (``<2 hex>/<40 hex>.npy`` and its own temporary files).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict

import numpy as np

from ..utils._files import give_default_mode
from ._images import ImageLoadError, image_key

__all__ = ["FORWARD_PASSES", "PassCounter", "cache_setting", "clear_memory_cache",
           "forward_pass_count", "get_cache"]

#: Bytes the in-process memory cache holds at most, unless
#: ``$SKRETRIEVAL_MEMORY_CACHE_BYTES`` (or its older name
#: ``$SKRETRIEVAL_CACHE_BYTES``) says otherwise.
DEFAULT_MEMORY_BYTES = 2 * 1024**3


def _memory_budget():
    value = (os.environ.get("SKRETRIEVAL_MEMORY_CACHE_BYTES")
             or os.environ.get("SKRETRIEVAL_CACHE_BYTES"))
    return int(float(value)) if value else DEFAULT_MEMORY_BYTES


def cache_setting(cache, store="memory"):
    """The cache an extractor's ``cache`` parameter means with its ``store``.

    ``"auto"`` (the default): the in-process memory cache, unless the maps
    go to disk (``store`` other than ``"memory"``: a large collection stays
    out of RAM); ``None``, ``False`` and ``"none"``: no cache; ``"memory"``
    and a directory path as they are.
    """
    if cache is None or cache is False or (isinstance(cache, str) and cache == "none"):
        return None
    if isinstance(cache, str) and cache == "auto":
        return "memory" if isinstance(store, str) and store == "memory" else None
    if cache is True:
        return "memory"
    return cache


class MemoryCache:
    """Per-process LRU of arrays, at most ``max_bytes`` in total."""

    def __init__(self):
        self._data = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            arr = self._data.get(key)
            if arr is not None:
                self._data.move_to_end(key)
            return arr

    def put(self, key, arr):
        budget = _memory_budget()
        if arr.nbytes > budget:
            return
        arr = np.array(arr, copy=True)
        arr.setflags(write=False)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._data[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > budget and self._data:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self):
        with self._lock:
            self._data.clear()
            self._bytes = 0

    @property
    def nbytes(self):
        return self._bytes


_DEFAULT_DISK_BYTES = 50 * 1024**3


def _disk_budget():
    value = os.environ.get("SKRETRIEVAL_DISK_CACHE_BYTES")
    return int(float(value)) if value else _DEFAULT_DISK_BYTES


#: The tag file of a cache directory and its first line (the Cache Directory
#: Tagging Specification, https://bford.info/cachedir/).
CACHE_TAG = "CACHEDIR.TAG"
_TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
#: Version of the layout of a disk cache, written in its tag.
CACHE_FORMAT = 1
_TAG_TEXT = (
    f"{_TAG_SIGNATURE}\n"
    "# This file is a cache directory tag created by skretrieval.\n"
    f"# skretrieval feature cache, format {CACHE_FORMAT}\n"
    "# Its feature maps (<2 hex>/<40 hex>.npy) are deleted, least recently used\n"
    "# first, to stay within $SKRETRIEVAL_DISK_CACHE_BYTES, and recomputed when\n"
    "# needed; the folder may be deleted as a whole.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
_TAG_FORMAT = re.compile(r"^# skretrieval feature cache, format (\d+)$", re.MULTILINE)
# The naming scheme of the files a disk cache writes, and so may delete:
# <2 hex>/<40 hex>.npy, the temporary files of a write (<40 hex>.<random>.tmp,
# tmp<random>.tmp before format 1) and those of the tag (.CACHEDIR.TAG.<random>.tmp).
_SUBDIR = re.compile(r"[0-9a-f]{2}")
_ENTRY = re.compile(r"([0-9a-f]{40})\.npy")
_ENTRY_TMP = re.compile(r"(?:[0-9a-f]{40}\.|tmp)[a-z0-9_]+\.tmp")
_TAG_TMP = re.compile(r"\.CACHEDIR\.TAG\.[a-z0-9_]+\.tmp")
#: A temporary file of the cache older than this (seconds) is a leftover of
#: an interrupted write, deleted by the next scan.
STALE_TMP_SECONDS = 3600


def _file_key(key):
    """The file name of ``key``: itself if 40 hex characters, else its hash."""
    if re.fullmatch(r"[0-9a-f]{40}", key):
        return key
    return make_key(key)


def _read_tag(directory):
    """The format of the skretrieval tag of ``directory``; None: no tag file;
    -1: a tag file that is not skretrieval's (another program's cache)."""
    try:
        with open(os.path.join(directory, CACHE_TAG), encoding="utf-8",
                  errors="replace") as fh:
            text = fh.read(4096)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return -1
    match = _TAG_FORMAT.search(text)
    if not text.startswith(_TAG_SIGNATURE) or match is None:
        return -1
    return int(match.group(1))


def _write_tag(directory):
    """Write the tag atomically: concurrent creators each rename a complete
    file of the same content over it, so a reader never sees a partial tag."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + CACHE_TAG + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(_TAG_TEXT)
        give_default_mode(tmp)
        os.replace(tmp, os.path.join(directory, CACHE_TAG))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _old_style_entries_only(directory, names):
    """Whether ``names`` (the entries of ``directory``) are a cache of the
    previous, untagged layout: only ``<2 hex>/`` folders holding only
    ``<2 hex><38 hex>.npy`` files (and temporary files of the cache)."""
    for name in names:
        if _TAG_TMP.fullmatch(name):
            continue
        path = os.path.join(directory, name)
        if not _SUBDIR.fullmatch(name) or os.path.islink(path) or not os.path.isdir(path):
            return False
        with os.scandir(path) as it:
            for f in it:
                if not f.is_file(follow_symlinks=False):
                    return False
                m = _ENTRY.fullmatch(f.name)
                if m is None and not _ENTRY_TMP.fullmatch(f.name):
                    return False
                if m is not None and not m.group(1).startswith(name):
                    return False
    return True


def _not_a_cache_error(directory, reason):
    return ValueError(
        f"cache={directory!r} is not a skretrieval cache folder ({reason}). The disk "
        "cache deletes its least recently used files to stay within "
        "$SKRETRIEVAL_DISK_CACHE_BYTES, so it only uses a folder of its own: give "
        f"cache= an empty or new folder, e.g. {os.path.join(directory, 'skretrieval-cache')!r}."
    )


class DiskCache:
    """A directory of ``<key>.npy`` files, safe for concurrent writers.

    Bounded by ``$SKRETRIEVAL_DISK_CACHE_BYTES`` (default 50 GiB).  Eviction
    rule: every hit refreshes the file's modification time; when a write
    takes the directory over the budget, the least recently used files
    (oldest modification time) are deleted until it is under 90% of it.
    Another process reading a file being evicted either has it open (POSIX
    keeps it readable) or misses and recomputes the map.

    The directory is the cache's own.  A new or empty directory is tagged
    with a ``CACHEDIR.TAG`` file (naming skretrieval and the cache format);
    a tagged one is reused; an untagged one holding only the files of an
    untagged cache of skretrieval < format 1 (``<2 hex>/<40 hex>.npy``) is
    adopted (tagged); any other non-empty directory is refused with a
    ValueError, so that eviction never deletes a file the cache did not
    write.  Only files of the cache's naming scheme are ever deleted:
    ``<2 hex>/<40 hex>.npy`` maps, and the cache's own temporary files once
    older than :data:`STALE_TMP_SECONDS` (leftovers of interrupted writes).

    Raises
    ------
    ValueError
        When ``directory`` is a file, a non-empty folder without the tag of
        a skretrieval cache, another program's cache (a foreign
        ``CACHEDIR.TAG``), or the cache of a newer skretrieval format.
    """

    def __init__(self, directory):
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(f"cache={self.directory!r} is a file, not a folder: give "
                             "cache= an empty or new folder.")
        os.makedirs(self.directory, exist_ok=True)
        self._claim()
        self._bytes = None  # running estimate of the directory size
        self._lock = threading.Lock()

    def _claim(self):
        """Check that the directory is this cache's, tagging it if it is new."""
        fmt = _read_tag(self.directory)
        if fmt is None:
            names = [n for n in os.listdir(self.directory) if n != CACHE_TAG]
            if any(not _TAG_TMP.fullmatch(n) for n in names):
                # another process may have tagged it, then written, meanwhile
                fmt = _read_tag(self.directory)
                if fmt is None and not _old_style_entries_only(self.directory, names):
                    shown = sorted(n for n in names if not _TAG_TMP.fullmatch(n))
                    raise _not_a_cache_error(
                        self.directory,
                        f"it has no {CACHE_TAG} of skretrieval and holds other files: "
                        + ", ".join(repr(n) for n in shown[:3])
                        + (", ..." if len(shown) > 3 else ""))
            if fmt is None:  # empty, or an untagged cache of the previous layout
                _write_tag(self.directory)
                fmt = CACHE_FORMAT
        if fmt == -1:
            raise _not_a_cache_error(
                self.directory, f"its {CACHE_TAG} was written by another program")
        if fmt > CACHE_FORMAT:
            raise ValueError(
                f"cache={self.directory!r} is a skretrieval cache of format {fmt}, "
                f"written by a newer skretrieval (this one reads format {CACHE_FORMAT}): "
                "upgrade skretrieval or give cache= another folder.")

    def _path(self, key):
        key = _file_key(key)
        return os.path.join(self.directory, key[:2], key + ".npy")

    def _entries(self, clean=False):
        """(mtime, size, path) of every cached file (of the naming scheme only).

        With ``clean``, the cache's temporary files older than
        :data:`STALE_TMP_SECONDS` are deleted on the way.
        """
        out = []
        if not os.path.isdir(self.directory):
            return out
        stale = time.time() - STALE_TMP_SECONDS
        if clean:
            for f in os.scandir(self.directory):
                if _TAG_TMP.fullmatch(f.name):
                    self._remove_stale(f, stale)
        for sub in os.scandir(self.directory):
            if not _SUBDIR.fullmatch(sub.name) or not sub.is_dir(follow_symlinks=False):
                continue
            for f in os.scandir(sub.path):
                m = _ENTRY.fullmatch(f.name)
                if m is None or not m.group(1).startswith(sub.name):
                    if clean and _ENTRY_TMP.fullmatch(f.name):
                        self._remove_stale(f, stale)
                    continue
                try:
                    if not f.is_file(follow_symlinks=False):
                        continue
                    st = f.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime_ns, st.st_size, f.path))
        return out

    @staticmethod
    def _remove_stale(entry, before):
        """Delete the temporary file ``entry`` if last modified before ``before``."""
        try:
            if (entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < before):
                os.unlink(entry.path)
        except FileNotFoundError:
            pass

    @property
    def nbytes(self):
        """Bytes held by the cache directory (scanned)."""
        return sum(size for _, size, _ in self._entries())

    def get(self, key):
        path = self._path(key)
        try:
            arr = np.load(path, mmap_mode=None, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None
        try:
            os.utime(path)  # least-recently-used order for the eviction
        except OSError:
            pass
        return arr

    def _evict(self, budget):
        entries = sorted(self._entries(clean=True))
        total = sum(size for _, size, _ in entries)
        target = 0.9 * budget
        for _, size, path in entries:
            if total <= target:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            total -= size
        return total

    def put(self, key, arr):
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # <key>.<random>.tmp: a name of the cache's scheme (a leftover of an
        # interrupted write is deleted by a later scan)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path),
                                   prefix=os.path.basename(path)[:-4] + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
            give_default_mode(tmp)
            os.replace(tmp, path)  # atomic: readers see all or nothing
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        budget = _disk_budget()
        with self._lock:
            if self._bytes is None:
                # the first write of this process: a full scan (which also
                # deletes stale temporary files)
                self._bytes = sum(size for _, size, _ in self._entries(clean=True))
            else:
                try:
                    self._bytes += os.path.getsize(path)
                except FileNotFoundError:  # evicted by another process meanwhile
                    pass
            if self._bytes > budget:
                self._bytes = self._evict(budget)


_MEMORY = MemoryCache()
_DISKS = {}  # one per directory and process, to keep its running size


def get_cache(cache):
    """Return the cache object for an extractor's ``cache`` parameter."""
    if cache is None:
        return None
    if isinstance(cache, str) and cache == "memory":
        return _MEMORY
    if isinstance(cache, (str, os.PathLike)):
        directory = os.path.abspath(os.fspath(cache))
        disk = _DISKS.get(directory)
        if disk is None:
            disk = _DISKS[directory] = DiskCache(directory)
        return disk
    raise ValueError(f"cache must be None, 'memory' or a directory path, got {cache!r}")


class ResumeStore:
    """The maps of the last transform of this process that stopped on an error.

    A transform without a cache that raises (a bad image with
    ``on_error="raise"``, an error of the network...) leaves here the output
    it had built, with the key of every image in it; the next transform of
    any extractor takes the maps of the images it finds here instead of
    running the network again, and releases them once it has used them.  A
    later failure replaces them.  One output at most is held (the one the
    failed call would have returned, on disk for ``store="disk"``).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._maps = None
        self._index = {}

    def get(self):
        """``(maps, {key: position})``, ``(None, {})`` when empty."""
        with self._lock:
            return self._maps, self._index

    def put(self, maps, index):
        with self._lock:
            self._maps, self._index = (maps, index) if index else (None, {})

    def clear(self):
        with self._lock:
            self._maps, self._index = None, {}

    def release(self, maps):
        """Drop ``maps`` unless a later failure has replaced them already."""
        with self._lock:
            if self._maps is maps:
                self._maps, self._index = None, {}


#: The process's store of the maps of a failed transform.
RESUME_STORE = ResumeStore()


def clear_memory_cache():
    """Empty the process-wide in-memory feature cache.

    Also drops the maps kept from a transform that stopped on a bad image
    (see ``ConvFeatureExtractor(on_error=...)``).
    """
    _MEMORY.clear()
    RESUME_STORE.clear()


def make_key(*parts):
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


class PassCounter:
    """A thread-safe count of forward passes (one per image and scale).

    Attributes
    ----------
    value : int
        The passes counted so far.
    """

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n):
        """Count ``n`` more passes.

        Parameters
        ----------
        n : int
            The images (at one scale each) a network pass has run on.
        """
        with self._lock:
            self.value += n


#: The passes of every extractor of this process (:func:`forward_pass_count`).
FORWARD_PASSES = PassCounter()


def forward_pass_count():
    """Number of (image, scale) forward passes this process has run so far.

    Use the difference of two calls to measure what a piece of code costs,
    e.g. how many times a grid search ran the backbone.
    """
    return FORWARD_PASSES.value


def image_cache_keys(items, indices, recipe, nodes, dtype, max_size, scales):
    """Cache keys of the images ``items[indices]``: per image, ``{node: [one key
    per scale]}`` for the network ``recipe`` (backbone, weights id) cut at each
    of ``nodes``; None for an image without a key (e.g. a missing file: it
    fails to load)."""
    out = []
    for i in indices:
        try:
            ikey = image_key(items[i], index=i)
        except (ImageLoadError, TypeError):
            out.append(None)
            continue
        out.append({node: [make_key((*recipe, node, dtype), ikey, max_size, s) for s in scales]
                    for node in nodes})
    return out
