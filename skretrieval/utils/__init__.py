"""Small shared pieces: atomic files and locks, progress bars, persisted-state declarations,
array helpers.

Nothing here depends on another subpackage of skretrieval; every other
subpackage may import from here.
"""

from ._arrays import distances_from_similarities, similarities_from_distances
from ._files import IndexLockedError, atomic_write, file_lock
from ._progress import progress
from ._tables import TableNames

__all__ = ["IndexLockedError", "TableNames", "atomic_write", "distances_from_similarities",
           "file_lock", "progress", "similarities_from_distances"]
