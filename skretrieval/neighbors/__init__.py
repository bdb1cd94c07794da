"""Search: the nearest-neighbour retriever, its backends and store.

:class:`NearestNeighborRetriever` ranks a database of descriptors for each
query (exact blocked search, NN-descent or FAISS), grows with ``partial_fit``
and shrinks with ``remove`` and answers with image ids.  The index-file
helpers (:func:`add_to_index`, :func:`load_index`, :func:`save_index`,
:func:`edit_index`, :class:`IndexFile`...) moved to ``skretrieval.index``
(they work on whole pipelines, above :mod:`skretrieval.persistence`); they
are still importable from here (``utils/_legacy.py``: ``MOVED_NAMES``).
"""

from ..utils import _legacy
from ._engine import PgVectorConnectionError, PgVectorTableError
from ._retriever import NearestNeighborRetriever

__all__ = [
    "IndexFile",
    "IndexUpdate",
    "NearestNeighborRetriever",
    "PgVectorConnectionError",
    "PgVectorTableError",
    "add_to_index",
    "edit_index",
    "item_fingerprint",
    "load_index",
    "save_index",
]


def __getattr__(name):
    # the index-file names moved to skretrieval.index (utils/_legacy.py: MOVED_NAMES)
    return _legacy.moved_name(__name__, name)
