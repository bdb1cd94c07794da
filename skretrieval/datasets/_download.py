"""Downloading the benchmarks: official sources, checksums, :func:`download_dataset`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path


__all__ = ["CHECKSUMS", "DownloadError", "SOURCES", "download_dataset"]


# ---------------------------------------------------------------------------
# downloading
# ---------------------------------------------------------------------------
_OX = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
_PA = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"
_RV = "http://cmp.felk.cvut.cz/revisitop/data/datasets/"
_CAVE = "https://www.cs.columbia.edu/CAVE/databases/SLAM_coil-20_coil-100/"

#: Official addresses: (url, sub-directory to extract / save into).
SOURCES = {
    "oxford5k": [(_OX + "oxbuild_images-v1.tgz", "jpg"), (_OX + "gt_files_170407.tgz", "")],
    "paris6k": [(_PA + "paris_1-v1.tgz", "jpg"), (_PA + "paris_2-v1.tgz", "jpg"),
                (_PA + "paris_120310.tgz", "")],
    "roxford5k": [(_OX + "oxbuild_images-v1.tgz", "jpg"),
                  (_RV + "roxford5k/gnd_roxford5k.pkl", "")],
    "rparis6k": [(_PA + "paris_1-v1.tgz", "jpg"), (_PA + "paris_2-v1.tgz", "jpg"),
                 (_RV + "rparis6k/gnd_rparis6k.pkl", "")],
    "holidays": [("ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg1.tar.gz", ""),
                 ("ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg2.tar.gz", "")],
    "ukbench": [("https://archive.org/download/ukbench/ukbench.zip", "")],
    "coil100": [(_CAVE + "coil-100/coil-100.zip", "")],
    "coil20": [(_CAVE + "coil-20/coil-20-proc.zip", "")],
}

#: sha256 of the official files, pinned where known.  The others are
#: recorded in ``ROOT/SHA256SUMS.json`` when first downloaded and checked
#: on every later call (trust on first use).
CHECKSUMS = {}


class DownloadError(OSError):
    """A benchmark file could not be downloaded or failed its checksum."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url, dest, timeout):
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"could not download {url} ({reason}). Without internet, fetch it on another "
            f"machine and put it at {dest}; it is then used instead of downloading."
        ) from exc
    os.replace(tmp, dest)


def _extract(archive, into):
    into.mkdir(parents=True, exist_ok=True)
    target = into.resolve()
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (into / member).resolve().is_relative_to(target):
                    raise DownloadError(f"{archive}: member {member!r} escapes {into}")
            zf.extractall(into)
    elif re.search(r"\.(tgz|tar\.gz|tar)$", archive.name):
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                tf.extractall(into, filter="data")
            else:
                for member in tf.getmembers():
                    if (not (member.isfile() or member.isdir())
                            or not (into / member.name).resolve().is_relative_to(target)):
                        raise DownloadError(f"{archive}: unsafe member {member.name!r}")
                tf.extractall(into)
    else:
        return False
    return True


def download_dataset(name, root, *, timeout=30.0):
    """Fetch a benchmark's official files into ``root`` and extract them.

    Files already in ``ROOT/downloads`` are not fetched again (so a user
    without internet can copy the archives there).  Every file's sha256 is
    checked against :data:`CHECKSUMS` when pinned, otherwise against the one
    recorded in ``ROOT/SHA256SUMS.json`` at its first download.  Archives
    are extracted with tarfile's ``"data"`` filter (no member may escape
    ``root``).

    Parameters
    ----------
    name : str
        One of the benchmarks of :data:`SOURCES`.
    root : str or os.PathLike
        Directory to fill (created if needed).
    timeout : float, default=30.0
        Seconds before a stalled connection fails.

    Raises
    ------
    DownloadError
        If a file cannot be fetched (no internet: it fails within
        ``timeout``, with a message saying where to put the file by hand),
        or if its checksum does not match.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(SOURCES)}")
    root = Path(os.fspath(root)).expanduser()
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    sums_path = root / "SHA256SUMS.json"
    sums = json.loads(sums_path.read_text()) if sums_path.is_file() else {}
    for url, sub in SOURCES[name]:
        fname = url.rsplit("/", 1)[-1]
        dest = downloads / fname
        if not dest.is_file():
            _fetch(url, dest, timeout)
        digest = _sha256(dest)
        expected = CHECKSUMS.get(fname) or sums.get(fname)
        if expected and digest != expected:
            raise DownloadError(
                f"{dest}: sha256 {digest} does not match the expected {expected}; "
                "delete the file and download it again"
            )
        sums[fname] = digest
        into = root / sub if sub else root
        marker = downloads / (fname + ".extracted")
        if not marker.is_file():
            if _extract(dest, into):
                marker.write_text(digest)
            elif fname.endswith(".pkl") or fname.endswith(".txt"):
                into.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(dest, into / fname)
                marker.write_text(digest)
    sums_path.write_text(json.dumps(sums, indent=1, sort_keys=True))
    if name == "rparis6k":
        _flatten_jpgs(root / "jpg")  # the archives nest paris/<landmark>/; revisitop reads jpg/<name>.jpg


def _flatten_jpgs(folder):
    """Move every ``*.jpg`` below ``folder`` directly into it."""
    for path in sorted(folder.rglob("*.jpg")):
        if path.parent != folder:
            target = folder / path.name
            if not target.exists():
                os.replace(path, target)
