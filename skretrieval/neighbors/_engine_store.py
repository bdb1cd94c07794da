"""Descriptors held by a search server: a store that reads them back by key.

With ``algorithm="pgvector"`` (``algorithm_params["store"]="engine"``, the
default) the table of the server holds the exact descriptors and the
retriever none: :class:`EngineStore` has the interface of
:class:`~skretrieval.neighbors._store.DescriptorStore` (``n_samples``,
``rows``, ``take``, ``iter_blocks``, ``append``, ``compact``...) over the
rows of a table, which it reads by their index keys, in blocks, and
:class:`EngineRows` is the array-like ``X_fit_`` of such a retriever (what
the re-rankers index).  The table object (``PgVectorTable``) does the
reading and the writing; nothing here knows SQL.
"""

import numpy as np

__all__ = ["EngineRows", "EngineStore", "copy_rows_dtype", "read_copy_rows"]

# Budget of one block of rows read from the server (float32), in bytes.
_BLOCK_BYTES = 8 * 2**20
# Keys looked up at once by ``take``.
_TAKE_KEYS = 32768
# The header of PostgreSQL's binary COPY format: signature, flags, extension length.
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def copy_rows_dtype(n_features, half):
    """The numpy record of one ``(id bigint, embedding vector | halfvec)`` row of
    PostgreSQL's binary COPY format."""
    return np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("vec_len", ">i4"),
                     ("dim", ">i2"), ("unused", ">i2"),
                     ("vec", ">f2" if half else ">f4", (n_features,))])


def read_copy_rows(data, n_features, half):
    """``(ids, rows)`` of the bytes of a ``COPY (SELECT id, embedding ...) TO STDOUT
    (FORMAT BINARY)``: int64 ids and float32 rows (from ``vector`` or ``halfvec``)."""
    data = memoryview(data)
    if bytes(data[:11]) != _SIGNATURE:
        raise ValueError("the server's COPY output is not PostgreSQL's binary format")
    start = 19 + int.from_bytes(data[15:19], "big")  # after the header extension
    body = data[start : len(data) - 2]  # the trailer is a field count of -1
    record = copy_rows_dtype(n_features, half)
    if len(body) % record.itemsize:
        raise ValueError("the server's COPY output has rows of another size than "
                         f"{n_features}-dimensional vectors (a NULL or another column?)")
    rows = np.frombuffer(body, dtype=record)
    if rows.shape[0] and (np.any(rows["fields"] != 2) or np.any(rows["dim"] != n_features)):
        raise ValueError(f"the server's table rows are not {n_features}-dimensional vectors")
    return rows["id"].astype(np.int64), rows["vec"].astype(np.float32)


class EngineStore:
    """The rows of a server table, in the order of their keys (``keys[row]``).

    ``table`` reads and writes the rows (``fetch_range(first, last)``,
    ``fetch_keys(keys)``: ``(ids, float32 rows)``; ``add(keys, X)``,
    ``remove(keys)``; ``n_features``; ``store_record()``: what reopens it).
    Like a :class:`DescriptorStore` the store is a view: :meth:`append` and
    :meth:`compact` write to the table and return the new store.
    """

    path = None
    streamed = True  # read block by block, never whole

    def __init__(self, table, keys, dtype=np.float32):
        self.table = table
        self.keys = np.asarray(keys, dtype=np.int64)
        self.dtype = np.dtype(dtype)

    @property
    def X(self):
        """The array-like view of the rows (``X_fit_``)."""
        return EngineRows(self)

    @property
    def record(self):
        """What reopens the store (saved with the retriever): a JSON-able dict."""
        return self.table.store_record()

    @property
    def n_samples(self):
        return self.keys.shape[0]

    @property
    def n_features(self):
        return self.table.n_features

    def append(self, X, keys):
        """The store with the rows ``X`` of the new ``keys`` written to the table."""
        keys = np.asarray(keys, dtype=np.int64)
        self.table.add(keys, X)
        return EngineStore(self.table, np.concatenate([self.keys, keys]), self.dtype)

    def compact(self, keep):
        """The store of the rows where ``keep`` is True (the others deleted)."""
        self.table.remove(self.keys[~keep])
        return EngineStore(self.table, self.keys[keep], self.dtype)

    def block_rows(self):
        """Rows per block read from the server (about 8 MB of float32)."""
        return max(1, _BLOCK_BYTES // (4 * max(self.n_features, 1)))

    def block_buffer(self):
        """None: the rows come converted from the server."""
        return None

    def rows(self, start, stop, buffer=None):
        """Rows ``start:stop`` as float32 (one range scan of the keys)."""
        start, stop = max(0, start), min(stop, self.n_samples)
        if stop <= start:
            return np.empty((0, self.n_features), dtype=np.float32)
        want = self.keys[start:stop]
        ids, X = self.table.fetch_range(int(want[0]), int(want[-1]))
        if ids.shape != want.shape or not np.array_equal(ids, want):
            self._out_of_sync(np.setdiff1d(want, ids))
        return X

    def take(self, rows):
        """The rows ``rows`` (an index array of any shape) as float32."""
        rows = np.asarray(rows, dtype=np.intp)
        wanted = self.keys[rows.ravel()]
        unique = np.unique(wanted)
        found = np.empty((unique.shape[0], self.n_features), dtype=np.float32)
        for start in range(0, unique.shape[0], _TAKE_KEYS):
            part = unique[start : start + _TAKE_KEYS]
            ids, X = self.table.fetch_keys(part)
            order = np.argsort(ids)
            ids, X = ids[order], X[order]
            if ids.shape != part.shape or not np.array_equal(ids, part):
                self._out_of_sync(np.setdiff1d(part, ids))
            found[start : start + part.shape[0]] = X
        out = found[np.searchsorted(unique, wanted)]
        return out.reshape(rows.shape + (self.n_features,))

    def iter_blocks(self):
        """Yield ``(start, stop, float32 rows)``, block by block, in order."""
        step = self.block_rows()
        for start in range(0, self.n_samples, step):
            stop = min(start + step, self.n_samples)
            yield start, stop, self.rows(start, stop)

    def _out_of_sync(self, missing):
        raise LookupError(
            f"the server table {getattr(self.table, 'table', '')!r} lacks rows of this "
            f"retriever (keys {missing[:5].tolist()}...): it was edited or replaced since; "
            "fit the retriever again."
        )


class EngineRows:
    """``X_fit_`` of a retriever whose descriptors a server holds.

    An array-like view of shape ``(n_samples, n_features)``: indexing by an
    int, a slice, an int or boolean array (of any shape) reads those rows
    from the server (float32); ``np.asarray`` reads them all.
    """

    ndim = 2

    def __init__(self, store):
        self.store = store

    @property
    def shape(self):
        return (self.store.n_samples, self.store.n_features)

    @property
    def dtype(self):
        """The dtype the rows are stored in (they are read as float32)."""
        return self.store.dtype

    @property
    def size(self):
        return self.shape[0] * self.shape[1]

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, item):
        if isinstance(item, tuple):
            if not item:
                return self[:]
            head = self[item[0]]
            rest = item[1:]
            if head.ndim == 1:  # one row
                return head[rest]
            return head[(slice(None),) * (head.ndim - 1) + rest]
        n = self.shape[0]
        if isinstance(item, slice):
            start, stop, step = item.indices(n)
            if step == 1:
                return self.store.rows(start, max(start, stop))
            return self.store.take(np.arange(start, stop, step))
        if isinstance(item, (int, np.integer)):
            if not -n <= item < n:
                raise IndexError(f"row {item} is out of bounds for {n} rows")
            return self.store.take(np.array([item % n]))[0]
        rows = np.asarray(item)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"a boolean index of the rows must have shape ({n},)")
            rows = np.flatnonzero(rows)
        if rows.dtype.kind not in "iu":
            raise IndexError("rows are indexed by ints, slices or boolean arrays")
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row indices out of bounds for {n} rows")
        return self.store.take(np.where(rows < 0, rows + n, rows))

    def __array__(self, dtype=None, copy=None):
        blocks = [block for _, _, block in self.store.iter_blocks()]
        X = (np.concatenate(blocks) if blocks
             else np.empty((0, self.shape[1]), dtype=np.float32))
        return X if dtype is None else X.astype(dtype, copy=False)

    def __repr__(self):
        return (f"EngineRows({self.shape[0]} x {self.shape[1]} rows of the server table "
                f"{getattr(self.store.table, 'table', '')!r})")
