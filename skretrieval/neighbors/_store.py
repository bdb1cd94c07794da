"""The database descriptors of a retriever: in memory or in a memory-mapped file."""

import os
import warnings

import numpy as np

from ..utils._files import atomic_write, file_lock, remove_stale_temps

__all__ = ["DescriptorStore", "as_float32"]

# Budget of one block of database rows read from a memory-mapped or float16
# store (converted to float32) by the brute-force search, in bytes.
_STORE_BLOCK_BYTES = 8 * 2**20


def as_float32(block, buffer=None):
    """A C-contiguous float32 copy of ``block`` (or ``block`` itself).

    float16 is converted by torch (a hard dependency), several times faster
    than numpy's conversion, into the first rows of ``buffer`` if given (a
    float32 array of at least as many rows, reused from one block to the
    next: a fresh array of tens of MB costs its page faults at every block).
    """
    if block.dtype != np.float16:
        return np.ascontiguousarray(block, dtype=np.float32)
    import torch

    if buffer is None:
        out = np.empty(block.shape, dtype=np.float32)
    else:
        out = buffer[: block.shape[0]]
    with warnings.catch_warnings():  # a read-only memory map: torch warns
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(np.ascontiguousarray(block))
    torch.from_numpy(out).copy_(source)
    return out


class DescriptorStore:
    """Rows of descriptors: a float32 or float16 array, or a memory-mapped file.

    ``X`` is the array (a read-only :class:`numpy.memmap` of the file
    ``path`` when there is one: raw rows of ``X.dtype``, C order).  A store
    is a view: :meth:`append` and :meth:`compact` return the new store (the
    file is rewritten under its lock), the retriever keeps ``X`` as
    ``X_fit_``.  The exact search reads a streamed store (a file, or
    float16) in blocks of about 8 MB converted to float32 into one buffer.
    (A search server that holds the rows gives a store of the same interface,
    ``neighbors/_engine_store.py``, whose ``record`` reopens it.)
    """

    #: What reopens a store held elsewhere (None: the rows are ``X``).
    record = None

    def __init__(self, X, path=None):
        self.X = X
        self.path = path

    @classmethod
    def create(cls, X, path=None):
        """The store of ``X``: in memory, or written to ``path`` and mapped."""
        if path is None:
            return cls(X)
        path = os.path.abspath(os.fspath(path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with file_lock(path):
            remove_stale_temps(path)
            with atomic_write(path) as fh:
                np.ascontiguousarray(X).tofile(fh)
        return cls.open(path, X.dtype, X.shape)

    @classmethod
    def open(cls, path, dtype, shape):
        """Map the file ``path`` of ``shape`` rows, after checking its size."""
        dtype = np.dtype(dtype)
        need = shape[0] * shape[1] * dtype.itemsize
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size is None or size < need:
            raise FileNotFoundError(
                f"the descriptor store {path!r} of this retriever is "
                + ("missing" if size is None else f"too short ({size} bytes, "
                   f"{need} expected)")
                + ": it was moved, deleted or replaced since the retriever was "
                "saved."
            )
        return cls(np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape)), path)

    @property
    def n_samples(self):
        return self.X.shape[0]

    @property
    def n_features(self):
        return self.X.shape[1]

    @property
    def streamed(self):
        """Whether the exact search reads the rows in blocks (file or float16)."""
        return self.path is not None or self.X.dtype != np.float32

    def append(self, X, keys=None):
        """The store with the rows ``X`` (of the store's dtype) appended (their
        index ``keys`` are the retriever's business)."""
        if self.path is None:
            return DescriptorStore(np.concatenate([self.X, X]))
        n, dtype = self.n_samples, self.X.dtype
        row_bytes = self.n_features * dtype.itemsize
        with file_lock(self.path):
            self.open(self.path, dtype, self.X.shape)  # checks the file first
            with open(self.path, "r+b") as fh:
                fh.seek(n * row_bytes)
                np.ascontiguousarray(X, dtype=dtype).tofile(fh)
                fh.truncate()
        return self.open(self.path, dtype, (n + X.shape[0], self.n_features))

    def compact(self, keep):
        """The store of the rows where the boolean mask ``keep`` is True."""
        if self.path is None:
            return DescriptorStore(self.X[keep])
        step = self.block_rows()
        with file_lock(self.path):
            remove_stale_temps(self.path)
            with atomic_write(self.path) as fh:
                for start in range(0, self.n_samples, step):
                    block = self.X[start : start + step]
                    np.ascontiguousarray(block[keep[start : start + step]]).tofile(fh)
        n_kept = int(np.count_nonzero(keep))
        return self.open(self.path, self.X.dtype, (n_kept, self.n_features))

    def block_rows(self):
        """Rows per block of a streamed read (about 8 MB of float32)."""
        return max(1, _STORE_BLOCK_BYTES // (4 * max(self.n_features, 1)))

    def block_buffer(self):
        """A float32 buffer for :meth:`rows` of a streamed database (None
        when its blocks need no conversion)."""
        if self.X.dtype == np.float32:
            return None
        rows = min(self.block_rows(), self.n_samples)
        return np.empty((rows, self.n_features), dtype=np.float32)

    def rows(self, start, stop, buffer=None):
        """Rows ``start:stop`` as float32 (into ``buffer`` if float16)."""
        return as_float32(self.X[start:stop], buffer)

    def take(self, rows):
        """The rows ``rows`` (an index array) as float32."""
        return as_float32(self.X[rows])

    def iter_blocks(self):
        """Yield ``(start, stop, float32 rows)``, block by block, in order."""
        step, buffer = self.block_rows(), self.block_buffer()
        for start in range(0, self.n_samples, step):
            stop = min(start + step, self.n_samples)
            yield start, stop, self.rows(start, stop, buffer)
