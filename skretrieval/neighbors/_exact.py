"""Exact (brute-force) search of a descriptor store, in blocks of float32 products."""

import numpy as np

from ..metrics._ranking import average_precision_from_relevance
from ._topk import products, top_k

__all__ = ["ExactSearch"]

# Budget of one block of the brute-force similarity matrix, in bytes.
_BLOCK_BYTES = 256 * 2**20
# Budget of the (queries, neighbours, features) gathers used to compute exact
# distances of approximate neighbours, in bytes.
_GATHER_BYTES = 64 * 2**20
# Database items searched at once as queries (kneighbors(None)) when the
# database is streamed.
_STREAMED_QUERY_ROWS = 65536


def block_query_rows(n_samples):
    """Queries per block: a block of float32 keys of about 256 MB."""
    return max(1, _BLOCK_BYTES // (4 * max(n_samples, 1)))


class ExactSearch:
    """Exact rankings of queries against a :class:`DescriptorStore`.

    The ranking keys (smaller is closer) are ``-similarity`` for the cosine
    and inner product, the squared Euclidean distance for the Euclidean
    metric, in float32.  Queries are ``Q`` (float32, normalised as the
    database), or the database items ``rows``, each then excluded from its
    own ranking (its key is NaN, which ranks last).  ``chunk`` queries are
    searched at a time.
    """

    def __init__(self, store, metric, chunk):
        self.store = store
        self.metric = metric
        self.chunk = chunk

    def queries(self, Q, rows):
        """The query descriptors: ``Q``, or the database items ``rows``."""
        if Q is not None:
            return Q
        return self.store.take(rows)

    def keys(self, Q, x_sq_norms, out=None):
        """Ranking keys of queries against the database (into ``out``).

        A memory-mapped or float16 database is read in blocks of rows,
        converted to float32.
        """
        # Scaling the (small) query block by -1 or -2 is exact and saves a
        # pass over the (large) block of keys.
        scaled = Q * np.float32(-2.0 if self.metric == "euclidean" else -1.0)
        if out is None:
            out = np.empty((Q.shape[0], self.store.n_samples), dtype=np.float32)
        if self.store.streamed:
            for start, stop, block in self.store.iter_blocks():
                products(scaled, block, out[:, start:stop])
            keys = out
        else:
            keys = products(scaled, self.store.X, out)
        if self.metric == "euclidean":
            keys += np.einsum("ij,ij->i", Q, Q)[:, np.newaxis]
            keys += x_sq_norms
        return keys

    def x_sq_norms(self):
        """Squared norms of the database rows (Euclidean metric), else None."""
        if self.metric != "euclidean":
            return None
        X = self.store.X
        if not self.store.streamed:
            return np.einsum("ij,ij->i", X, X)
        out = np.empty(self.store.n_samples, dtype=np.float32)
        for start, stop, block in self.store.iter_blocks():
            out[start:stop] = np.einsum("ij,ij->i", block, block)
        return out

    def iter_blocks(self, Q, rows, with_scratch=False):
        """Yield ``(start, stop, keys, scratch)`` blocks of brute-force keys.

        ``keys`` (and ``scratch``, a work array of the same shape, or None) are
        views of buffers reused from one block to the next.
        """
        n_queries = Q.shape[0] if Q is not None else rows.shape[0]
        chunk = min(self.chunk, n_queries)
        x_sq_norms = self.x_sq_norms()
        shape = (chunk, self.store.n_samples)
        keys_buffer = np.empty(shape, dtype=np.float32)
        scratch_buffer = np.empty(shape, dtype=np.float32) if with_scratch else None
        for start in range(0, n_queries, chunk):
            stop = min(start + chunk, n_queries)
            keys = keys_buffer[: stop - start]
            if Q is None:
                block_rows = rows[start:stop]
                self.keys(self.queries(None, block_rows), x_sq_norms, out=keys)
                keys[np.arange(stop - start), block_rows] = np.nan
            else:
                self.keys(Q[start:stop], x_sq_norms, out=keys)
            scratch = None if scratch_buffer is None else scratch_buffer[: stop - start]
            yield start, stop, keys, scratch

    def kneighbors(self, k, Q=None, rows=None):
        """Top-``k`` ``(keys, indices)`` of queries ``Q`` or database ``rows``."""
        if self.store.streamed:
            return self.streamed_kneighbors(k, Q=Q, rows=rows)
        n_queries = Q.shape[0] if Q is not None else rows.shape[0]
        keys_out = np.empty((n_queries, k), dtype=np.float32)
        ind_out = np.empty((n_queries, k), dtype=np.intp)
        for start, stop, keys, scratch in self.iter_blocks(Q, rows, with_scratch=True):
            keys_out[start:stop], ind_out[start:stop] = top_k(keys, k, scratch)
        return keys_out, ind_out

    def streamed_kneighbors(self, k, Q=None, rows=None):
        """Brute-force top-``k`` reading a streamed database once.

        The database (memory-mapped or float16) is read block by block and
        each block, converted to float32 once, is searched by all the
        queries; the top-``k`` of every block is merged into the running
        one (ties still go to the lower index: earlier blocks come first).
        """
        if rows is not None and rows.shape[0] > _STREAMED_QUERY_ROWS:
            # database items as queries: a group of them in memory at a time
            parts = [self.streamed_kneighbors(k, rows=rows[i : i + _STREAMED_QUERY_ROWS])
                     for i in range(0, rows.shape[0], _STREAMED_QUERY_ROWS)]
            return (np.concatenate([p[0] for p in parts]),
                    np.concatenate([p[1] for p in parts]))
        queries = self.queries(Q, rows)
        n_queries, n_samples = queries.shape[0], self.store.n_samples
        step = min(self.store.block_rows(), n_samples)
        q_chunk = max(1, min(n_queries, _BLOCK_BYTES // (4 * step)))
        scaled = queries * np.float32(-2.0 if self.metric == "euclidean" else -1.0)
        q_sq = None
        if self.metric == "euclidean":
            q_sq = np.einsum("ij,ij->i", queries, queries)[:, np.newaxis]
        keys_out = ind_out = None
        keys_buffer = np.empty((q_chunk, step), dtype=np.float32)
        for start, stop, block in self.store.iter_blocks():
            x_sq = np.einsum("ij,ij->i", block, block) if q_sq is not None else None
            block_keys = np.empty((n_queries, min(k, stop - start)), dtype=np.float32)
            block_ind = np.empty(block_keys.shape, dtype=np.intp)
            for q0 in range(0, n_queries, q_chunk):
                q1 = min(q0 + q_chunk, n_queries)
                keys = keys_buffer.reshape(-1)[: (q1 - q0) * (stop - start)]
                keys = products(scaled[q0:q1], block, keys.reshape(q1 - q0, stop - start))
                if q_sq is not None:
                    keys += q_sq[q0:q1]
                    keys += x_sq
                if rows is not None:  # each item is excluded from its own ranking
                    own = rows[q0:q1] - start
                    inside = np.flatnonzero((own >= 0) & (own < stop - start))
                    keys[inside, own[inside]] = np.nan
                block_keys[q0:q1], block_ind[q0:q1] = top_k(keys, block_keys.shape[1])
            block_ind += start
            if keys_out is None:
                keys_out, ind_out = block_keys, block_ind
            else:
                keys_out, ind_out = _merge(keys_out, ind_out, block_keys, block_ind, k)
        return keys_out, ind_out

    def full_ap(self, y_codes, codes, n_positives, Q=None, rows=None):
        """Exact AP of full rankings, block by block.

        ``y_codes`` are the label codes of the database items, ``codes``
        those of the queries.  Only the ranks of the relevant items are
        needed: each is the number of items with a smaller key, plus the tied
        items with a lower index, found by binary search in the sorted keys
        of the query.
        """
        n_ranked = self.store.n_samples - int(Q is None)
        ap = np.empty(codes.shape[0])
        for start, stop, keys, sorted_keys in self.iter_blocks(Q, rows, with_scratch=True):
            np.copyto(sorted_keys, keys)
            sorted_keys.sort(axis=1)  # NaN (the query itself) last
            relevant = y_codes == codes[start:stop, np.newaxis]
            if Q is None:
                relevant[np.arange(stop - start), rows[start:stop]] = False
            relevance = np.zeros((stop - start, n_ranked), dtype=bool)
            for i in range(stop - start):
                relevance[i, _relevant_ranks(keys[i], sorted_keys[i], relevant[i])] = True
            ap[start:stop] = average_precision_from_relevance(
                relevance, n_positives[start:stop]
            )
        return ap

    def exact_keys(self, Q, ind):
        """Ranking keys of the queries ``Q`` and their neighbours ``ind``."""
        n_queries, k = ind.shape
        keys = np.empty((n_queries, k), dtype=np.float32)
        chunk = max(1, _GATHER_BYTES // (4 * max(k * self.store.n_features, 1)))
        for start in range(0, n_queries, chunk):
            q = Q[start : start + chunk, np.newaxis, :]
            x = self.store.take(ind[start : start + chunk])
            if self.metric == "euclidean":
                diff = x - q
                keys[start : start + chunk] = np.einsum("ijk,ijk->ij", diff, diff)
            else:
                keys[start : start + chunk] = -np.einsum("ijk,ijk->ij", x, q)
        return keys


def _merge(keys, ind, block_keys, block_ind, k):
    """The top-``k`` of two top lists (the earlier one first: ties go to it)."""
    merged = np.concatenate([keys, block_keys], axis=1)
    merged_ind = np.concatenate([ind, block_ind], axis=1)
    keys, pos = top_k(merged, min(k, merged.shape[1]))
    return keys, np.take_along_axis(merged_ind, pos, axis=1)


def _relevant_ranks(keys, sorted_keys, relevant):
    """Ranks of the ``relevant`` items in the ranking of one query's keys."""
    cols = np.flatnonzero(relevant)
    values = keys[cols]
    ranks = np.searchsorted(sorted_keys, values, side="left")
    n_equal = np.searchsorted(sorted_keys, values, side="right") - ranks
    for j in np.flatnonzero(n_equal > 1):
        ranks[j] += np.count_nonzero(keys[: cols[j]] == values[j])
    return ranks
