"""The interface of a search method of :class:`NearestNeighborRetriever`.

:class:`SearchBackend` is what every entry of ``BACKENDS``
(``neighbors/_backends.py``, ``neighbors/_engine.py``) implements; the
helpers here are shared by the backends.
"""

import os

import numpy as np

__all__ = ["SearchBackend", "keys_to_rows", "n_threads"]


class SearchBackend:
    """One search method (``algorithm``) of the retriever.

    Parameters are those of the retriever: ``params`` its
    ``algorithm_params`` (a dict), ``metric``, ``n_neighbors`` and
    ``n_jobs``.  Class attributes say how the retriever uses it:

    * ``exact``: rankings come from the exact blocked search (no index; full
      rankings and the exact mAP are available);
    * ``incremental``: :meth:`add` and :meth:`remove` update a built index
      in place (otherwise the index is dropped and rebuilt on the next
      query);
    * ``keyed``: the index knows the rows by the retriever's keys
      (``_keys``); otherwise by position, and a build renumbers the keys.
    """

    exact = False
    incremental = False
    keyed = True

    def __init__(self, params, metric, n_neighbors, n_jobs):
        self.params = params or {}
        self.metric = metric
        self.n_neighbors = n_neighbors
        self.n_jobs = n_jobs

    def check_params(self):
        """Raise a ValueError if ``algorithm_params`` do not fit this method."""

    def check_data(self, X):
        """Warn about database rows ``X`` (prepared for storage) at ``fit``."""

    def build(self, store, keys, seed):
        """The index of the rows of ``store`` (a :class:`DescriptorStore`)."""
        raise NotImplementedError

    def add(self, index, X, keys):
        """Add rows ``X`` with ``keys``: the updated index, or None (rebuild)."""
        return None

    def remove(self, index, keys):
        """Remove the rows of ``keys``: the updated index, or None (rebuild)."""
        return None

    def n_candidates(self, k):
        """Candidates to take from the index for the top-``k``."""
        return k

    def candidates(self, index, queries, n_candidates, rows, keys):
        """Rows of the approximate neighbours of ``queries`` (-1: none).

        ``rows`` are the database rows of the queries when they are database
        items (their own row may be among the candidates), else None;
        ``keys`` the keys of the database rows.
        """
        raise NotImplementedError

    def scored_candidates(self, index, queries, n_candidates, rows, keys):
        """:meth:`candidates` and their ranking keys, or None for the keys.

        Returns ``(cand, cand_keys)``: ``cand`` as :meth:`candidates` gives
        them, and ``cand_keys`` (float32, same shape) the ranking keys of the
        exact search (squared Euclidean distances, or minus the similarities)
        when the index computes them from the exact vectors, so that the
        retriever takes them as they are; None (the default) when the
        candidates are to be re-ranked exactly from the retriever's store.
        """
        return self.candidates(index, queries, n_candidates, rows, keys), None

    def held_store(self, index, keys):
        """The store of the rows once the index ``index`` holds them, or None.

        None (the default): the retriever keeps its :class:`DescriptorStore`.
        A backend whose index is the only copy of the descriptors (a server's
        table) returns a store with the same interface that reads them from
        the index by ``keys``; its ``record`` (a JSON-able dict) is saved
        with the retriever and reopened by :meth:`open_store`.
        """
        return None

    def open_store(self, record, keys):
        """The store of a saved :meth:`held_store` ``record``."""
        raise ValueError(f"{type(self).__name__} holds no descriptors: the saved store "
                         f"record {record!r} is not one of its")

    def state(self, index):
        """The index serialised (a uint8 array), or None: not saved, rebuilt."""
        return None

    def from_state(self, blob):
        """The index of a :meth:`state`."""
        raise NotImplementedError

    def library_version(self):
        """Version of the library whose serialisation :meth:`state` writes."""
        return None


_N_CPUS = os.cpu_count() or 1


def n_threads(n_jobs):
    """Threads for ``n_jobs`` (None or -1: all the cores)."""
    n_cpus = _N_CPUS
    if n_jobs is None or n_jobs == -1:
        return n_cpus
    return int(n_jobs if n_jobs > 0 else max(1, n_cpus + 1 + n_jobs))


def keys_to_rows(found, keys):
    """Rows of the index keys ``found`` (-1 where none) among the increasing ``keys``."""
    found = np.asarray(found, dtype=np.int64)
    cand = np.searchsorted(keys, found)
    np.minimum(cand, keys.shape[0] - 1, out=cand)
    valid = (found >= 0) & (keys[cand] == found)
    return np.where(valid, cand, -1).astype(np.intp, copy=False)
