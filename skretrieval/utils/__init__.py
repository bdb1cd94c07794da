"""Small shared pieces: atomic files and locks, persisted-state declarations, array helpers.

Nothing here depends on another subpackage of skretrieval; every other
subpackage may import from here.
"""

from ._files import IndexLockedError, atomic_write, file_lock

__all__ = ["IndexLockedError", "atomic_write", "file_lock"]
