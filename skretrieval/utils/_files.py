"""Safe writes of the library's files: atomic replacement and exclusive locks.

Every file the library writes in place of an older one (an index, a model,
a memory-mapped descriptor store) is written to a temporary file in the same
folder, flushed to disk and renamed over the target (:func:`os.replace` is
atomic on POSIX and Windows): a reader sees the old file or the new one,
never a mix, and an interrupted or failed write (Ctrl-C, a full disk) leaves
the old file untouched.  The temporary file is named after its target
(``.<name>.skretrieval-tmp-<random>``), so that a later writer holding the
target's lock recognises, and deletes, what a killed writer left behind.

Read-modify-write cycles on one file (``skretrieval index --append``,
:func:`skretrieval.edit_index`, a retriever's store growing or shrinking)
hold an exclusive lock on it: a ``<file>.lock`` beside it, locked with the
operating system's advisory file locks through :mod:`filelock` (released by
the kernel when the holder dies, so a crash leaves no stale lock).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import tempfile
import time

__all__ = [
    "IndexLockedError",
    "atomic_write",
    "disk_full_error",
    "file_lock",
    "fsync_file",
    "give_default_mode",
    "temp_prefix",
    "remove_stale_temps",
]

_TMP_TAG = ".skretrieval-tmp-"


class IndexLockedError(TimeoutError):
    """Another process holds the lock of a file and did not release it in time."""


def _umask():
    """The process's umask (read from /proc where it can be, without changing it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere it can only be read by setting it
    os.umask(mask)
    return mask


def give_default_mode(path, *, directory=False):
    """Give ``path`` the permissions a new file (or folder) gets under the umask.

    :func:`tempfile.mkstemp` and :func:`tempfile.mkdtemp` create private
    files (``0o600``) and folders (``0o700``); a file renamed from one into
    place should have the usual ``0o666 & ~umask`` (``0o777 & ~umask``).
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def temp_prefix(path):
    """The prefix of the temporary files (and folders) of the writers of
    ``path``, which :func:`remove_stale_temps` removes."""
    return "." + os.path.basename(os.fspath(path)) + _TMP_TAG


def fsync_file(path):
    """Flush ``path`` (a file already written and closed) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_full_error(exc, path):
    """An :class:`OSError` saying that the disk is full and naming ``path``,
    for an ``ENOSPC`` / ``EDQUOT`` error ``exc`` writing it (None otherwise)."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return OSError(exc.errno, f"cannot write {os.fspath(path)!r}: the disk is full "
                   f"({exc.strerror or os.strerror(exc.errno)}); the previous file, if "
                   "any, is left as it was")


def _remove(full, folders):
    """Remove a file, a link (not what it points to) or, with ``folders``, a
    folder tree."""
    if stat.S_ISDIR(os.lstat(full).st_mode):
        if not folders:
            return False
        shutil.rmtree(full)  # refuses a link; never follows one inside
    else:
        os.remove(full)
    return True


def remove_stale_temps(path, *, legacy_prefixes=(), legacy_age=3600.0):
    """Delete the temporary files that killed writers of ``path`` left.

    Only call it while holding the lock of ``path`` (:func:`file_lock`): the
    files and folders named ``.<name of path>.skretrieval-tmp-*`` beside
    ``path`` then belong to no live writer (links are removed, never
    followed).

    Parameters
    ----------
    path : str or path-like
        The file whose writers' leftovers are removed.
    legacy_prefixes : tuple of str, default=()
        Prefixes of the temporary files of older versions (which did not name
        them after their target, e.g. ``".skretrieval-index-"``): those older
        than ``legacy_age`` seconds are removed too.
    legacy_age : float, default=3600
        Seconds since the last change of a legacy temporary file before it
        counts as abandoned.

    Returns
    -------
    removed : list of str
        The files (and temporary folders, with what they hold) deleted.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    prefix = temp_prefix(path)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        full = os.path.join(folder, name)
        ours = stale = name.startswith(prefix)
        if not stale and name.startswith(tuple(legacy_prefixes)):
            with contextlib.suppress(OSError):
                stale = now - os.stat(full).st_mtime > legacy_age
        if stale:
            with contextlib.suppress(OSError):
                if _remove(full, folders=ours):
                    removed.append(full)
    return removed


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Write ``path`` atomically: yield a file object on a temporary file.

    On normal exit the temporary file is flushed, synced, given the
    permissions a new file gets under the process's umask (``0o666 &
    ~umask``, not :func:`tempfile.mkstemp`'s ``0o600``) and renamed over
    ``path``.  On any exception it is deleted and ``path`` is left as it
    was.

    Parameters
    ----------
    path : str or path-like
        The file to write (its folder must exist).
    mode : {"wb", "w"}, default="wb"
        Binary or text.

    Yields
    ------
    fh : file object
        Open on the temporary file; its name is ``fh.name``.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=folder)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        give_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        full = disk_full_error(exc, path)
        if full is not None:
            raise full from exc
        raise


def _holder_message(path):
    return (f"skretrieval: waiting for {path!r}: another process is writing it "
            "(its lock file is held)")


@contextlib.contextmanager
def file_lock(path, *, timeout=None, message=True):
    """Hold the exclusive lock of ``path`` (the file ``<path>.lock``).

    Parameters
    ----------
    path : str or path-like
        The file to protect (it need not exist yet).
    timeout : float or None, default=None
        Seconds to wait for another holder: ``None`` waits as long as it
        takes, ``0`` fails at once.
    message : bool, default=True
        Print one line to stderr when the lock is held by another process
        and this one has to wait.

    Raises
    ------
    IndexLockedError
        When the lock was not obtained within ``timeout`` seconds.
    """
    from filelock import FileLock, Timeout

    path = os.path.abspath(os.fspath(path))
    lock = FileLock(path + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout is not None and timeout <= 0:
            raise IndexLockedError(
                f"{path!r} is being written by another process (lock file "
                f"{path + '.lock'!r} held); try again when it has finished"
            ) from None
        if message:
            print(_holder_message(path), file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise IndexLockedError(
                f"{path!r} is still being written by another process after "
                f"{timeout:g} s (lock file {path + '.lock'!r} held); try again "
                "when it has finished, or raise the timeout"
            ) from None
    try:
        yield
    finally:
        lock.release()
