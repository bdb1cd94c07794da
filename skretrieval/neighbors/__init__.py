"""Search: the nearest-neighbour retriever, its backends and store, and index files.

:class:`NearestNeighborRetriever` ranks a database of descriptors for each
query (exact blocked search, NN-descent or FAISS), grows with ``partial_fit``,
shrinks with ``remove`` and answers with image ids; the index-file helpers
(:func:`add_to_index`, :func:`load_index`, :func:`save_index`,
:func:`edit_index`, :class:`IndexFile`) keep a fitted pipeline on disk safely.
"""

from ._indexing import (
    IndexFile,
    IndexUpdate,
    add_to_index,
    edit_index,
    item_fingerprint,
    load_index,
    save_index,
)
from ._retriever import NearestNeighborRetriever

__all__ = [
    "IndexFile",
    "IndexUpdate",
    "NearestNeighborRetriever",
    "add_to_index",
    "edit_index",
    "item_fingerprint",
    "load_index",
    "save_index",
]
