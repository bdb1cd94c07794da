"""Top-k selection and float32 products of the blocked exact search.

The keys are ranking keys (smaller is closer); ties go to the lower column,
so every ranking is deterministic.
"""

import math

import numpy as np

__all__ = ["block_size", "products", "sort_by_key_then_index", "top_k", "top_k_blocked"]


def block_size(k, n_cols):
    """Columns per block of :func:`top_k_blocked`, or 0 to select directly.

    About ``sqrt(n_cols / k)`` (a power of two), when that leaves at least
    ``8 k`` blocks.
    """
    size = 1 << max(0, int(math.log2(max(1.0, math.sqrt(n_cols / max(k, 1))))))
    size = min(size, 1024)
    return size if size >= 16 and n_cols >= 8 * k * size else 0


def top_k_blocked(keys, k, size):
    """:func:`top_k` of long rows, by way of the minima of column blocks.

    The columns are split into blocks of ``size`` columns (block ``j`` holds
    the columns ``j, j + n_blocks, j + 2 n_blocks...``: its minimum is then
    an element-wise minimum of contiguous slices, one fast pass over the
    keys; the last ``n_columns % size`` columns form one more block).  Every
    key among the ``k`` smallest of a row (ties included) lies in a block
    whose minimum is at most the ``k``-th smallest block minimum, so only
    those blocks, about ``k x size`` keys per row, are then looked at, in
    column order: the result (ties by lower column) is that of the direct
    selection.
    """
    n_rows, n_cols = keys.shape
    n_blocks = n_cols // size
    stop = n_blocks * size
    has_tail = stop < n_cols
    mins = np.empty((n_rows, n_blocks + int(has_tail)), dtype=keys.dtype)
    # fmin ignores NaN (excluded items) unless a whole block is NaN
    np.fmin.reduce(keys[:, :stop].reshape(n_rows, size, n_blocks), axis=1,
                   out=mins[:, :n_blocks])
    if has_tail:
        np.fmin.reduce(keys[:, stop:], axis=1, out=mins[:, n_blocks])
    threshold = np.partition(mins, k - 1, axis=1)[:, k - 1 : k]
    selected = mins <= threshold
    n_selected = int(np.count_nonzero(selected, axis=1).max())
    # the selected blocks of every row (padded with unselected ones)
    blocks = np.argsort(~selected, axis=1, kind="stable")[:, :n_selected]
    valid = np.take_along_axis(selected, blocks, axis=1)[:, :, np.newaxis]
    offsets = np.arange(size)
    cols = np.where(blocks[:, :, np.newaxis] < n_blocks,
                    blocks[:, :, np.newaxis] + offsets * n_blocks,
                    stop + offsets)
    cols[~valid | (cols >= n_cols)] = n_cols  # nothing: sorted last
    cols = np.sort(cols.reshape(n_rows, n_selected * size), axis=1)
    missing = cols == n_cols
    cols[missing] = n_cols - 1
    values = np.take_along_axis(keys, cols, axis=1)
    values[missing] = np.nan
    values, pos = top_k(values, k, blocked=False)
    return values, np.take_along_axis(cols, pos, axis=1)


def top_k(keys, k, scratch=None, blocked=True):
    """The ``k`` smallest keys of every row, ties broken by the lower column.

    ``keys`` is a float array of shape (n_rows, n_columns); NaN entries are
    never selected (they rank after everything) as long as every row has at
    least ``k`` non-NaN entries.  ``scratch``, an optional array of the same
    shape and dtype, is overwritten (it saves an allocation per call).
    Returns ``(values, columns)`` of shape (n_rows, k) sorted by increasing
    value, then increasing column.  Rows much longer than ``k`` go through
    :func:`top_k_blocked` (unless ``blocked=False``), with the same result.
    """
    n_rows, n_cols = keys.shape
    if k == 0:
        return (
            np.empty((n_rows, 0), dtype=keys.dtype),
            np.empty((n_rows, 0), dtype=np.intp),
        )
    if k >= n_cols - 1:
        # (Almost) the full ranking: a stable sort keeps ties in column order
        # and puts NaN last.
        cols = np.argsort(keys, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(keys, cols, axis=1), cols
    size = block_size(k, n_cols) if blocked else 0
    if size:
        return top_k_blocked(keys, k, size)

    if scratch is None:
        scratch = np.empty_like(keys)
    np.copyto(scratch, keys)
    scratch.partition(k - 1, axis=1)
    kth = scratch[:, k - 1 : k].copy()
    selected = keys <= kth  # NaN compares False
    over = np.flatnonzero(np.count_nonzero(selected, axis=1) > k)
    if over.size:
        # Rows with ties at the k-th value: keep all the keys smaller than it
        # and the first tied keys, by column, up to k in all.
        sub, value = keys[over], kth[over]
        less = sub < value
        tied = sub == value
        needed = k - np.count_nonzero(less, axis=1)
        tied &= np.cumsum(tied, axis=1, dtype=np.int32) <= needed[:, np.newaxis]
        selected[over] = less | tied
    # np.nonzero lists the selected columns row by row, in increasing order.
    cols = np.nonzero(selected)[1].reshape(n_rows, k)
    values = np.take_along_axis(keys, cols, axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    return (
        np.take_along_axis(values, order, axis=1),
        np.take_along_axis(cols, order, axis=1),
    )


def products(Q, X, out=None):
    """``Q @ X.T`` (float32), into ``out`` if given.

    A single query is a matrix-vector product ``X @ q``, which reads the
    rows of ``X`` in order (the memory-bound case).
    """
    if out is None:
        out = np.empty((Q.shape[0], X.shape[0]), dtype=np.float32)
    if Q.shape[0] == 1 and out[0].flags.c_contiguous:
        np.matmul(X, Q[0], out=out[0])
    else:
        np.matmul(Q, X.T, out=out)
    return out


def sort_by_key_then_index(keys, ind):
    """Sort every row by increasing key, ties by increasing index."""
    order = np.argsort(ind, axis=1, kind="stable")
    ind = np.take_along_axis(ind, order, axis=1)
    keys = np.take_along_axis(keys, order, axis=1)
    order = np.argsort(keys, axis=1, kind="stable")
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(
        ind, order, axis=1
    )
