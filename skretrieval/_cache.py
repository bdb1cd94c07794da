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
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["get_cache", "clear_memory_cache", "forward_pass_count"]

_DEFAULT_MEMORY_BYTES = 2 * 1024**3


def _memory_budget():
    value = os.environ.get("SKRETRIEVAL_CACHE_BYTES")
    return int(float(value)) if value else _DEFAULT_MEMORY_BYTES


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


class DiskCache:
    """A directory of ``<key>.npy`` files, safe for concurrent writers.

    Bounded by ``$SKRETRIEVAL_DISK_CACHE_BYTES`` (default 50 GiB).  Eviction
    rule: every hit refreshes the file's modification time; when a write
    takes the directory over the budget, the least recently used files
    (oldest modification time) are deleted until it is under 90% of it.
    Another process reading a file being evicted either has it open (POSIX
    keeps it readable) or misses and recomputes the map.
    """

    def __init__(self, directory):
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)
        self._bytes = None  # running estimate of the directory size
        self._lock = threading.Lock()

    def _path(self, key):
        return os.path.join(self.directory, key[:2], key + ".npy")

    def _entries(self):
        """(mtime, size, path) of every cached file."""
        out = []
        if not os.path.isdir(self.directory):
            return out
        for sub in os.scandir(self.directory):
            if not sub.is_dir():
                continue
            for f in os.scandir(sub.path):
                if f.name.endswith(".npy"):
                    try:
                        st = f.stat()
                    except FileNotFoundError:
                        continue
                    out.append((st.st_mtime_ns, st.st_size, f.path))
        return out

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
        entries = sorted(self._entries())
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
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
            os.replace(tmp, path)  # atomic: readers see all or nothing
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        budget = _disk_budget()
        with self._lock:
            if self._bytes is None:
                self._bytes = self.nbytes
            else:
                self._bytes += os.path.getsize(path)
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


def clear_memory_cache():
    """Empty the process-wide in-memory feature cache."""
    _MEMORY.clear()


def make_key(*parts):
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


class _Counter:
    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n):
        with self._lock:
            self.value += n


FORWARD_PASSES = _Counter()


def forward_pass_count():
    """Number of (image, scale) forward passes this process has run so far.

    Use the difference of two calls to measure what a piece of code costs,
    e.g. how many times a grid search ran the backbone.
    """
    return FORWARD_PASSES.value
