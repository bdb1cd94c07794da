"""Small shared pieces: atomic files and locks, progress bars, persisted-state declarations,
array helpers.

Nothing here depends on another subpackage of skretrieval; every other
subpackage may import from here.
"""

from ._files import IndexLockedError, atomic_write, file_lock
from ._progress import progress

__all__ = ["IndexLockedError", "atomic_write", "file_lock", "progress"]
