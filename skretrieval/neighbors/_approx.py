"""Approximate search: candidates of an index, ranked by exact keys (the store's or the index's)."""

import numpy as np

from ._topk import sort_by_key_then_index

__all__ = ["approx_kneighbors"]

# Database items searched at once as queries of an index (their float32
# copy), so that a float16 or memory-mapped store is never converted whole.
_QUERY_ROWS = 65536


def approx_kneighbors(backend, index, exact, keys, k, Q=None, rows=None):
    """Top-``k`` ``(keys, rows)`` of queries ``Q`` or database ``rows``.

    ``backend`` (a :class:`SearchBackend`) gives candidates from ``index``,
    whose exact ranking keys are computed from the store of ``exact`` (an
    :class:`ExactSearch`), unless the backend gives them itself
    (:meth:`SearchBackend.scored_candidates`); ``keys`` are the index keys of
    the database rows.
    Queries with fewer than ``k`` distinct candidates are searched exactly.
    """
    if rows is not None and rows.shape[0] > _QUERY_ROWS:
        parts = [approx_kneighbors(backend, index, exact, keys, k, rows=rows[i : i + _QUERY_ROWS])
                 for i in range(0, rows.shape[0], _QUERY_ROWS)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    n_samples = exact.store.n_samples
    queries = exact.queries(Q, rows)
    n_queries = queries.shape[0]
    n_cand = min(backend.n_candidates(k) + int(Q is None), n_samples)
    cand, cand_keys = backend.scored_candidates(index, queries, n_cand, rows, keys)
    if Q is None:
        cand[cand == rows[:, np.newaxis]] = -1  # an item is not its own result
    # Rows with fewer than k distinct candidates (-1 padded, repeated) are
    # searched exactly.
    invalid = cand < 0
    sorted_cand = np.sort(cand, axis=1)
    repeated = np.any((sorted_cand[:, 1:] == sorted_cand[:, :-1])
                      & (sorted_cand[:, 1:] >= 0), axis=1)
    bad = (np.count_nonzero(~invalid, axis=1) < k) | repeated
    good = np.flatnonzero(~bad)

    keys_out = np.empty((n_queries, k), dtype=np.float32)
    ind_out = np.empty((n_queries, k), dtype=np.intp)
    if good.shape[0]:
        cg, ig = cand[good], invalid[good]
        if cand_keys is None:  # re-ranked with the exact keys of the store
            found = exact.exact_keys(queries[good], np.where(ig, 0, cg))
        else:  # the index's keys are those of the exact vectors
            found = np.array(cand_keys[good], dtype=np.float32)
        found[ig] = np.inf
        cg = np.where(ig, n_samples, cg)
        found, cg = sort_by_key_then_index(found, cg)
        keys_out[good], ind_out[good] = found[:, :k], cg[:, :k]
    if np.any(bad):
        if Q is None:
            keys_out[bad], ind_out[bad] = exact.kneighbors(k, rows=rows[bad])
        else:
            keys_out[bad], ind_out[bad] = exact.kneighbors(k, Q=Q[bad])
    return keys_out, ind_out
