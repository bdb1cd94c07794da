"""Index files: fitted retrieval pipelines grown, saved, loaded and edited on disk.

:func:`add_to_index` adds images to a fitted pipeline without refitting it;
:func:`save_index`, :func:`load_index`, :func:`edit_index` and
:class:`IndexFile` keep a fitted pipeline on disk safely (atomic writes, an
exclusive lock for read-modify-write, the pickle-free format of
:mod:`skretrieval.persistence` for ``.zip`` names).  These work on whole
pipelines, so they sit above :mod:`skretrieval.persistence`; the names are
also importable from :mod:`skretrieval` and :mod:`skretrieval.neighbors`
(their home before this subpackage).
"""

from ._indexing import (
    IndexFile,
    IndexUpdate,
    add_to_index,
    edit_index,
    item_fingerprint,
    load_index,
    save_index,
    set_feature_params,
)

__all__ = [
    "IndexFile",
    "IndexUpdate",
    "add_to_index",
    "edit_index",
    "item_fingerprint",
    "load_index",
    "save_index",
    "set_feature_params",
]
