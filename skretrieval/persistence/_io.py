"""Where models are written and read: folders and zip archives, bounded ``.npz`` reads.

Writers (:class:`DirTarget`, :class:`ZipTarget`) write a model under a
temporary name and rename it into place when complete; :class:`ModelSource`
reads one, checking sizes against a :class:`Budget` before anything is
decompressed and every file against its checksum.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile

import numpy as np

from ..utils._files import fsync_file, give_default_mode, remove_stale_temps
from ._checks import is_int
from ._registry import (
    MANIFEST,
    MANIFEST_CHECKSUM,
    MAX_COMPRESSION_RATIO,
    MAX_MANIFEST_BYTES,
    ModelFormatError,
    short,
)

__all__ = ["Budget", "DirTarget", "ModelSource", "ZipTarget", "is_zip_path", "write_npz"]

_RATIO_SLACK = 2**20
_ZIP_OVERHEAD = 64 * 2**20  # zip headers of an .npz file, beyond its arrays
_BLOCK = 1 << 22
_FILE_NAME = re.compile(r"^state/[A-Za-z0-9_.-]+\.npz$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# what reading a damaged zip archive raises besides BadZipFile (a header naming
# an unknown compression or version, a seek before the start, a short read)
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError,
               struct.error, OverflowError)


def _unsafe_member(info):
    """Why the zip member ``info`` cannot be in a model (None if it can): a
    name that would leave the archive's folder, a link, a device..."""
    name = info.filename
    parts = name.rstrip("/").split("/")
    if (not name or name.startswith("/") or "\\" in name or "\x00" in name
            or re.match(r"^[A-Za-z]:", name) or any(p in ("", ".", "..") for p in parts)):
        return f"a member with an unsafe name ({name!r}: absolute, or with '..')"
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return f"a symbolic link ({name!r})"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return f"a member that is not a plain file ({name!r}, mode {oct(mode)})"
    return None


class _HashingWriter(io.RawIOBase):
    """Write-only stream that computes the SHA-256 and size of what passes."""

    def __init__(self, raw):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self):
        return True

    def write(self, data):
        self.raw.write(data)
        self.sha256.update(data)
        n = memoryview(data).nbytes
        self.size += n
        return n


def is_zip_path(path):
    return os.fspath(path).lower().endswith(".zip")


class DirTarget:
    """Writes into a temporary directory, renamed to ``path`` on commit.

    :func:`~skretrieval.utils._files.atomic_write` replaces one file; a
    folder cannot be renamed over a non-empty one, so the old model is moved
    aside first and removed once the new one is in place.
    """

    def __init__(self, path, overwrite):
        self.path = os.path.abspath(path)
        if os.path.exists(self.path):
            if not os.path.isdir(self.path):
                raise FileExistsError(f"{path!r} exists and is not a directory")
            entries = os.listdir(self.path)
            if entries:
                if not overwrite:
                    raise FileExistsError(
                        f"{path!r} exists and is not empty; pass overwrite=True to "
                        "replace a model saved there"
                    )
                if MANIFEST not in entries:
                    raise FileExistsError(
                        f"{path!r} is a non-empty directory without a {MANIFEST}: "
                        "refusing to replace it (it is not a saved model)"
                    )
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=".skretrieval-save-", dir=parent)

    def open(self, name):
        full = os.path.join(self.tmp, *name.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return open(full, "wb")

    def commit(self):
        for folder, _, files in os.walk(self.tmp):
            for name in files:
                fsync_file(os.path.join(folder, name))
        give_default_mode(self.tmp, directory=True)
        old = None
        if os.path.exists(self.path):
            old = tempfile.mkdtemp(prefix=".skretrieval-old-", dir=os.path.dirname(self.path))
            os.rmdir(old)
            os.replace(self.path, old)
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            if old is not None:
                os.replace(old, self.path)  # the previous model back in place
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


class ZipTarget:
    """Writes a zip archive into a temporary file, renamed on commit.

    Not :func:`~skretrieval.utils._files.atomic_write`: saving a model takes
    no lock, so its temporary files keep their own prefix, which
    :func:`~skretrieval.utils._files.remove_stale_temps` only removes an hour
    after their last write (``atomic_write``'s temporary names are removed at
    once, which is safe only under the target's lock, and would break two
    saves of one path running together).
    """

    def __init__(self, path, overwrite):
        self.path = os.path.abspath(path)
        if os.path.exists(self.path):
            if os.path.isdir(self.path):
                raise FileExistsError(f"{path!r} is a directory, not a .zip file")
            if not overwrite:
                raise FileExistsError(f"{path!r} exists; pass overwrite=True to replace it")
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        # what a killed save left beside it, an hour after its last write
        remove_stale_temps(self.path, legacy_prefixes=(".skretrieval-save-",))
        fd, self.tmp = tempfile.mkstemp(prefix=".skretrieval-save-", suffix=".zip", dir=parent)
        os.close(fd)
        self.zf = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED,
                                  allowZip64=True)

    def open(self, name):
        return self.zf.open(name, "w", force_zip64=True)

    def commit(self):
        self.zf.close()
        fsync_file(self.tmp)
        give_default_mode(self.tmp)
        os.replace(self.tmp, self.path)

    def abort(self):
        try:
            self.zf.close()  # may fail again (a full disk): the file goes anyway
        except Exception:  # noqa: BLE001
            pass
        try:
            os.remove(self.tmp)
        except OSError:
            pass


def _check_member(info, limit, what):
    """Refuse a zip member before decompressing it: too large, or compressed
    so much that it is likely a zip bomb."""
    if info.flag_bits & 0x1:
        raise ModelFormatError(f"{what} is encrypted: not a file written by save_pipeline")
    if info.file_size > limit:
        raise ModelFormatError(
            f"{what} holds {info.file_size} bytes (uncompressed), over the limit of "
            f"{max(limit, 0)} bytes left; if you trust this model, pass a larger "
            "max_bytes to load_pipeline"
        )
    if (info.compress_type != zipfile.ZIP_STORED
            and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + _RATIO_SLACK):
        raise ModelFormatError(
            f"{what} is compressed {info.file_size / max(info.compress_size, 1):.0f} times "
            f"({info.compress_size} bytes expanding to {info.file_size}): refused as a "
            f"likely zip bomb (the limit is {MAX_COMPRESSION_RATIO} times; save_pipeline "
            "writes uncompressed files)"
        )


def _read_exactly(fh, size, what):
    """``size`` bytes of ``fh``, read in bounded blocks into one buffer."""
    buf = bytearray(size)
    view = memoryview(buf)
    pos = 0
    try:
        while pos < size:
            n = fh.readinto(view[pos:pos + _BLOCK])
            if not n:
                raise ModelFormatError(f"{what} is truncated ({pos} of {size} bytes)")
            pos += n
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, ModelFormatError):
            raise
        raise ModelFormatError(f"cannot read {what}: {exc}") from exc
    return buf


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of a file from ``start``
    (an uncompressed member of a zip archive, read without copying it)."""

    def __init__(self, path, start, size):
        self._fh = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, b):
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(memoryview(b)[:n])
        self._pos += got
        return got

    def close(self):
        self._fh.close()
        super().close()


class _Counting:
    """Counts the bytes read through it (the header of an ``.npy`` member)."""

    def __init__(self, fh):
        self.fh, self.n = fh, 0

    def read(self, n=-1):
        data = self.fh.read(n)
        self.n += len(data)
        return data

    def readinto(self, b):
        got = self.fh.readinto(b)
        self.n += got
        return got


class Budget:
    """The bytes of arrays a load may still read (``max_bytes``)."""

    def __init__(self, max_bytes):
        self.limit = max_bytes
        self.used = 0

    @property
    def remaining(self):
        return self.limit - self.used

    def take(self, n, what):
        if n > self.remaining:
            raise ModelFormatError(
                f"{what}: the arrays of this model exceed max_bytes={self.limit} "
                f"({self.used + n} bytes or more); if you trust this model, pass a "
                "larger max_bytes to load_pipeline"
            )
        self.used += n


def _read_npy(fh, size, what):
    """The array of an ``.npy`` member of ``size`` bytes, checked and bounded."""
    counting = _Counting(fh)
    try:
        version = np.lib.format.read_magic(counting)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(counting)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(counting)
        else:
            raise ModelFormatError(f"{what}: unsupported .npy version {version}")
    except ModelFormatError:
        raise
    except Exception as exc:  # ValueError (malformed header), BadZipFile, EOFError...
        raise ModelFormatError(f"{what}: malformed .npy header: {exc}") from exc
    if dtype.hasobject:
        raise ModelFormatError(
            f"{what} is an object array, which cannot be read without pickle "
            "(save_pipeline never writes one)"
        )
    if any(n < 0 for n in shape):
        raise ModelFormatError(f"{what}: its header declares a negative shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if counting.n + nbytes != size:
        raise ModelFormatError(
            f"{what}: its header declares shape {shape} of {dtype} ({nbytes} bytes) "
            f"but the member holds {size - counting.n} bytes of data"
        )
    if dtype.itemsize == 0:
        arr = np.zeros(shape, dtype)
    else:
        buf = _read_exactly(counting, nbytes, what)
        arr = np.frombuffer(buf, dtype=dtype)
        arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _read_npz(fh, name, budget):
    """The arrays of the ``.npz`` file open as ``fh``: every member's size is
    checked (against ``budget``) before anything is decompressed."""
    try:
        zf = zipfile.ZipFile(fh)
    except _ZIP_ERRORS as exc:
        raise ModelFormatError(f"cannot read {name}: {exc}") from exc
    with zf:
        infos = zf.infolist()
        keys = [info.filename[:-4] for info in infos]
        if not all(info.filename.endswith(".npy") for info in infos) \
                or len(set(keys)) != len(keys):
            raise ModelFormatError(f"{name} is not an .npz file of distinct .npy members")
        total = sum(info.file_size for info in infos)
        if total > budget.remaining:
            budget.take(total, name)  # raises, naming max_bytes
        for info in infos:
            _check_member(info, budget.remaining, f"{info.filename} in {name}")
        budget.take(total, name)
        arrays = {}
        for key, info in zip(keys, infos):
            what = f"{info.filename} in {name}"
            try:
                with zf.open(info) as member:
                    arrays[key] = _read_npy(member, info.file_size, what)
            except ModelFormatError:
                raise
            except _ZIP_ERRORS as exc:
                raise ModelFormatError(f"cannot read {what}: {exc}") from exc
        return arrays


class ModelSource:
    """Reads the files of a saved model (a directory or a zip archive)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.zf = None
        if os.path.isdir(self.path):
            if not os.path.isfile(os.path.join(self.path, MANIFEST)):
                raise ModelFormatError(
                    f"{self.path!r} has no {MANIFEST}: it is not a model saved by "
                    "skretrieval.persistence.save_pipeline"
                )
        elif os.path.isfile(self.path):
            with open(self.path, "rb") as fh:
                head = fh.read(4)
            if not zipfile.is_zipfile(self.path):
                hint = ""
                if head[:1] == b"\x80":
                    hint = (" It looks like a pickle (e.g. written by joblib.dump): "
                            "such files run code when loaded; open it with "
                            "joblib.load only if you trust its source.")
                raise ModelFormatError(
                    f"{self.path!r} is neither a directory nor a zip archive written "
                    f"by skretrieval.persistence.save_pipeline.{hint}"
                )
            try:
                self.zf = zipfile.ZipFile(self.path, "r")
            except _ZIP_ERRORS as exc:
                raise ModelFormatError(
                    f"cannot read the zip archive {self.path!r} (damaged or truncated): "
                    f"{exc}") from exc
            names = self.zf.namelist()
            problem = None
            unsafe = next(filter(None, map(_unsafe_member, self.zf.infolist())), None)
            if unsafe is not None:
                problem = (f"{self.path!r} holds {unsafe}, which no model saved by "
                           "skretrieval.persistence.save_pipeline has: refused")
            elif MANIFEST not in names:
                problem = (f"{self.path!r} has no {MANIFEST}: it is not a model saved by "
                           "skretrieval.persistence.save_pipeline, or it is truncated "
                           "or damaged")
            elif len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                problem = (f"{self.path!r} holds several files of the same name "
                           f"({dup!r}): refused (the archive was altered)")
            if problem is not None:
                self.zf.close()
                raise ModelFormatError(problem)
        else:
            raise FileNotFoundError(f"no model at {self.path!r}")

    def close(self):
        if self.zf is not None:
            self.zf.close()

    def _refuse_link(self, name):
        """Refuse a file ``name`` of a model folder reached through a link."""
        part = self.path
        for piece in name.split("/"):
            part = os.path.join(part, piece)
            if os.path.islink(part):
                raise ModelFormatError(
                    f"{name} of {self.path!r} is a symbolic link: a model folder holds "
                    "plain files only (refused, nothing read through it)")

    def read_small(self, name, limit):
        """The bytes of the file ``name`` (at most ``limit``), None if absent."""
        what = f"{name} of {self.path!r}"
        if self.zf is not None:
            try:
                info = self.zf.getinfo(name)
            except KeyError:
                return None
            _check_member(info, limit, what)
            try:
                with self.zf.open(info) as fh:
                    return bytes(_read_exactly(fh, info.file_size, what))
            except ModelFormatError:
                raise
            except _ZIP_ERRORS as exc:
                raise ModelFormatError(
                    f"cannot read {what} (the archive is damaged): {exc}") from exc
        full = os.path.join(self.path, name)
        self._refuse_link(name)
        if not os.path.isfile(full):
            return None
        with open(full, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise ModelFormatError(f"{what} is larger than {limit} bytes")
            data = bytes(_read_exactly(fh, size, what))
            if fh.read(1):
                raise ModelFormatError(f"{what} changed while it was read")
        return data

    def _open(self, name, size):
        """A seekable binary file of the model file ``name``, which must be of
        ``size`` bytes."""
        if self.zf is not None:
            try:
                info = self.zf.getinfo(name)
            except KeyError:
                raise ModelFormatError(
                    f"{name} is missing from {self.path!r}: the archive is incomplete"
                ) from None
            if info.file_size != size:
                return None
            _check_member(info, size, f"{name} in {self.path!r}")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(self.path, "rb") as fh:  # the member's data: after its header
                    total = os.fstat(fh.fileno()).st_size
                    if not 0 <= info.header_offset <= total - 30:
                        raise ModelFormatError(
                            f"{name} in {self.path!r}: malformed zip entry (its header "
                            "is outside the archive)")
                    fh.seek(info.header_offset)
                    header = fh.read(30)
                if len(header) != 30 or header[:4] != b"PK\x03\x04":
                    raise ModelFormatError(f"{name} in {self.path!r}: malformed zip entry")
                n_name, n_extra = struct.unpack("<HH", header[26:30])
                start = info.header_offset + 30 + n_name + n_extra
                if start + size > total:
                    raise ModelFormatError(f"{name} in {self.path!r}: truncated zip entry")
                return io.BufferedReader(_Window(self.path, start, size), 1 << 16)
            try:
                with self.zf.open(info) as fh:
                    return io.BytesIO(_read_exactly(fh, size, f"{name} in {self.path!r}"))
            except ModelFormatError:
                raise
            except _ZIP_ERRORS as exc:
                raise ModelFormatError(
                    f"cannot read {name} in {self.path!r} (the archive is damaged): "
                    f"{exc}") from exc
        self._refuse_link(name)
        full = os.path.join(self.path, *name.split("/"))
        if not os.path.isfile(full):
            raise ModelFormatError(
                f"{name} is missing from {self.path!r}: the directory is incomplete"
            )
        fh = open(full, "rb")
        if os.fstat(fh.fileno()).st_size != size:
            fh.close()
            return None
        return fh

    def load_npz(self, name, checksums, budget):
        """The arrays of the ``.npz`` file ``name``, after checking its SHA-256."""
        if not isinstance(name, str) or not _FILE_NAME.match(name) or ".." in name:
            raise ModelFormatError(f"invalid file name in {MANIFEST}: {short(name)}")
        expected = checksums.get(name)
        if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str) \
                or not is_int(expected.get("bytes")) or expected["bytes"] < 0:
            raise ModelFormatError(f"{name} is not listed with a checksum in {MANIFEST}")
        size = expected["bytes"]
        if size > budget.remaining + _ZIP_OVERHEAD:
            budget.take(size, name)  # raises
        fh = self._open(name, size)
        if fh is None:
            raise ModelFormatError(
                f"{name} in {self.path!r} is not of the size listed in {MANIFEST}: the "
                "file is corrupted or was modified"
            )
        with fh:
            sha = hashlib.sha256()
            left = size
            while left:
                block = fh.read(min(_BLOCK, left))
                if not block:
                    break
                sha.update(block)
                left -= len(block)
            if left or sha.hexdigest() != expected["sha256"]:
                raise ModelFormatError(
                    f"{name} in {self.path!r} does not match its checksum in {MANIFEST}: "
                    "the file is corrupted or was modified"
                )
            fh.seek(0)
            return _read_npz(fh, f"{name} in {self.path!r}", budget)

    def read_manifest(self):
        """The parsed manifest, after checking it against its checksum, and
        whether there was one."""
        data = self.read_small(MANIFEST, MAX_MANIFEST_BYTES)
        digest = self.read_small(MANIFEST_CHECKSUM, 4096)
        if digest is not None:
            words = digest.decode("ascii", "replace").split()
            if not words or not _SHA256.match(words[0]):
                raise ModelFormatError(f"{MANIFEST_CHECKSUM} of {self.path!r} is malformed")
            if hashlib.sha256(data).hexdigest() != words[0]:
                raise ModelFormatError(
                    f"{MANIFEST} of {self.path!r} does not match its checksum in "
                    f"{MANIFEST_CHECKSUM}: the file is corrupted or was edited. Save the "
                    "model again from its source (checksums detect accidental changes; "
                    "they do not authenticate the file)"
                )
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelFormatError(f"{MANIFEST} of {self.path!r} is not valid JSON: {exc}") \
                from None
        if not isinstance(manifest, dict):
            raise ModelFormatError(f"{MANIFEST} of {self.path!r} is not a JSON object")
        return manifest, digest is not None


def write_npz(target, name, arrays, checksums):
    """Write ``arrays`` as a standard ``.npz`` (no pickle) and record its hash."""
    with target.open(name) as raw:
        out = _HashingWriter(raw)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as zf:
            for key, arr in arrays.items():
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arr),
                                              allow_pickle=False)
    checksums[name] = {"sha256": out.sha256.hexdigest(), "bytes": out.size}
