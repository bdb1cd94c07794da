"""The disk feature cache owns its folder: tagged, and never deletes a file it did not write."""

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from skretrieval.extraction._cache import (
    CACHE_FORMAT,
    CACHE_TAG,
    STALE_TMP_SECONDS,
    DiskCache,
    get_cache,
    make_key,
)

SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
ENTRY = 4096 + 128  # a (32, 32) float32 map in a .npy file


def _map(i):
    return np.full((32, 32), i, dtype=np.float32)


def _user_file(path, mtime=1577836800):  # 2020-01-01: older than any cached map
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # (np.save(path) would add ".npy" to other names)
        np.save(fh, np.arange(10))
    os.utime(path, (mtime, mtime))
    return path


def _tag_is_ours(folder):
    data = (folder / CACHE_TAG).read_bytes()
    return data.startswith(SIGNATURE + b"\n") and (
        f"skretrieval feature cache, format {CACHE_FORMAT}".encode() in data)


def _old_style_entry(folder, key, value=0):
    path = folder / key[:2] / f"{key}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, _map(value))
    return path


def test_user_files_in_a_cache_folder_are_never_evicted(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    cache = get_cache(str(folder))
    assert _tag_is_ours(folder)
    # files a user put in the (tagged) cache folder afterwards, all older than
    # every map: the first to go under a plain least-recently-used rule
    key = make_key("not written by the cache")
    user = [
        _user_file(folder / "exp" / "results.npy"),
        _user_file(folder / "results.npy"),
        _user_file(folder / key[:2] / "notes.npy"),          # a cache subfolder, not a key
        _user_file(folder / key[:2] / f"{key[:39]}.npy"),    # 39 hex characters
        _user_file(folder / "ab" / f"cd{key[2:]}.npy"),      # in another key's subfolder
        _user_file(folder / key[:2] / f"{key}.npy.bak"),
        _user_file(folder / "ab" / "results.tmp"),           # not the cache's temporary file
    ]
    outside = tmp_path / "elsewhere"
    _user_file(outside / f"ef{key[2:]}.npy")
    (folder / "ef").symlink_to(outside)                      # a linked folder: not followed
    user.append(outside / f"ef{key[2:]}.npy")
    monkeypatch.setenv("SKRETRIEVAL_DISK_CACHE_BYTES", str(4 * ENTRY))
    for i in range(12):
        cache.put(make_key(i), _map(i))
    assert cache.nbytes <= 4 * ENTRY
    assert cache.get(make_key(0)) is None and cache.get(make_key(11)) is not None
    for path in user:
        assert path.exists(), path
        np.testing.assert_array_equal(np.load(path), np.arange(10))
    assert _tag_is_ours(folder)


def test_non_empty_untagged_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "experiments"
    results = _user_file(folder / "exp" / "results.npy")
    monkeypatch.setenv("SKRETRIEVAL_DISK_CACHE_BYTES", "1")
    with pytest.raises(ValueError, match="not a skretrieval cache") as info:
        get_cache(str(folder))
    message = str(info.value)
    assert "'exp'" in message and "empty or new folder" in message
    assert "\n" not in message  # the CLI prints it on one line
    assert not (folder / CACHE_TAG).exists()
    assert results.exists()
    # the same through an extractor, also with a file directly in the folder
    from skretrieval import ConvFeatureExtractor

    _user_file(folder / "notes.npy")
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu",
                               cache=str(folder)).fit()
    with pytest.raises(ValueError, match="not a skretrieval cache"):
        ext.transform([np.zeros((32, 32, 3), dtype=np.uint8)])
    assert results.exists() and (folder / "notes.npy").exists()
    # a file is not a folder
    with pytest.raises(ValueError, match="is a file, not a folder"):
        get_cache(str(results))


def test_foreign_or_newer_tag_is_refused(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / CACHE_TAG).write_bytes(SIGNATURE + b"\n# created by another program\n")
    with pytest.raises(ValueError, match="written by another program"):
        DiskCache(foreign)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / CACHE_TAG).write_bytes(
        SIGNATURE + f"\n# skretrieval feature cache, format {CACHE_FORMAT + 1}\n".encode())
    with pytest.raises(ValueError, match="newer skretrieval"):
        DiskCache(newer)
    # a CACHEDIR.TAG without the signature tags nothing: a non-empty folder
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / CACHE_TAG).write_text("hello")
    with pytest.raises(ValueError, match="not a skretrieval cache"):
        DiskCache(fake)


def test_empty_or_new_folder_is_accepted_and_tagged(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    DiskCache(empty)
    assert _tag_is_ours(empty)
    assert (empty / CACHE_TAG).read_bytes()[:43] == SIGNATURE  # as the specification says
    new = tmp_path / "a" / "b" / "new"
    cache = DiskCache(new)
    assert _tag_is_ours(new)
    cache.put(make_key("x"), _map(1))
    # the files of the cache: the tag and <2 hex>/<40 hex>.npy, nothing else
    files = {p.relative_to(new).as_posix() for p in new.rglob("*") if p.is_file()}
    key = make_key("x")
    assert files == {CACHE_TAG, f"{key[:2]}/{key}.npy"}
    # any key is stored under a name of the scheme
    cache.put("00key", _map(2))
    assert os.path.basename(cache._path("00key")) == make_key("00key") + ".npy"
    np.testing.assert_array_equal(cache.get("00key"), _map(2))


def test_tagged_cache_is_reused(tmp_path):
    folder = tmp_path / "cache"
    DiskCache(folder).put(make_key("a"), _map(3))
    tag = (folder / CACHE_TAG).stat()
    _user_file(folder / "README.npy")  # a tagged cache with extra files is still the cache
    again = DiskCache(folder)          # another process, say
    np.testing.assert_array_equal(again.get(make_key("a")), _map(3))
    assert (folder / CACHE_TAG).stat().st_mtime_ns == tag.st_mtime_ns  # not rewritten


def test_old_untagged_cache_is_adopted_only_if_every_file_is_its_own(tmp_path):
    old = tmp_path / "old"
    keys = [make_key(i) for i in range(3)]
    for i, k in enumerate(keys):
        _old_style_entry(old, k, i)
    (old / keys[0][:2] / "tmpab_c9x1z.tmp").write_bytes(b"")  # left by an old writer
    cache = DiskCache(old)
    assert _tag_is_ours(old)
    np.testing.assert_array_equal(cache.get(keys[2]), _map(2))

    for name, extra in [
        ("stray", lambda d: _user_file(d / "exp" / "results.npy")),
        ("top-level", lambda d: _user_file(d / "results.npy")),
        ("in a subfolder", lambda d: _user_file(d / keys[0][:2] / "results.npy")),
        ("wrong subfolder", lambda d: _user_file(d / "00" / f"{keys[1]}.npy")),
    ]:
        folder = tmp_path / name
        for k in keys:
            _old_style_entry(folder, k)
        extra(folder)
        with pytest.raises(ValueError, match="not a skretrieval cache"):
            DiskCache(folder)
        assert not (folder / CACHE_TAG).exists()


def test_stale_temporary_files_of_the_cache_are_deleted(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    cache = DiskCache(folder)
    key = make_key("k")
    sub = folder / key[:2]
    sub.mkdir()
    old = time.time() - STALE_TMP_SECONDS - 60
    stale = [sub / f"{key}.a1b2c3d4.tmp", sub / "tmpa1b2c3d4.tmp",
             folder / f".{CACHE_TAG}.a1b2c3d4.tmp"]
    fresh = sub / f"{key}.zzzzzzzz.tmp"        # a write in progress elsewhere
    users = [folder / "old.tmp", sub / "old.tmp.keep"]
    for p in stale + users:
        p.write_bytes(b"x")
        os.utime(p, (old, old))
    fresh.write_bytes(b"x")
    cache.put(key, _map(1))  # the first write scans the folder
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and all(p.exists() for p in users)
    # eviction scans too
    os.utime(fresh, (old, old))
    monkeypatch.setenv("SKRETRIEVAL_DISK_CACHE_BYTES", str(ENTRY))
    for i in range(3):
        cache.put(make_key(i), _map(i))
    assert not fresh.exists() and all(p.exists() for p in users)


def test_concurrent_creators_of_one_cache(tmp_path):
    # processes (here threads, each with its own DiskCache) opening the same new
    # folder at once, each writing as soon as it has it: none is refused
    folder = tmp_path / "shared"
    n = 8
    barrier, errors = threading.Barrier(n), []

    def worker(i):
        try:
            barrier.wait()
            cache = DiskCache(folder)
            cache.put(make_key(i), _map(i))
            assert cache.get(make_key(i)) is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _tag_is_ours(folder)
    assert not list(folder.glob(f".{CACHE_TAG}.*"))  # no temporary tag left behind
    assert len(list(folder.rglob("*.npy"))) == n


def _coil_images(folder):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for obj in (1, 2):
        for v in range(3):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"obj{obj}__{v * 5}.png")
    return folder


def test_cli_evaluate_default_cache_and_refused_folder(tmp_path, monkeypatch, capsys):
    from skretrieval.cli import main

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = tmp_path / "home" / ".cache" / "skretrieval" / "features"
    # an untagged cache of the previous version there is adopted
    old_key = make_key("from the previous version")
    old_entry = _old_style_entry(default, old_key)
    root = _coil_images(tmp_path / "coil")
    args = ["evaluate", "--dataset", "coil100", "--root", str(root), "--backbone",
            "resnet18", "--weights", "none", "--max-size", "32", "--device", "cpu", "-q"]
    assert main(args) == 0, capsys.readouterr().err
    assert _tag_is_ours(default) and old_entry.exists()
    n_maps = len(list(default.rglob("*.npy")))
    assert n_maps == 1 + 6  # the old map and one per image
    assert main(args) == 0  # a second run reads the cache
    assert len(list(default.rglob("*.npy"))) == n_maps
    capsys.readouterr()
    # a user folder is refused on one line, exit status 2
    user = tmp_path / "mine"
    results = _user_file(user / "exp" / "results.npy")
    assert main([*args, "--cache", str(user)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if not line.startswith("skretrieval: warning:")]
    assert len(errors) == 1 and errors[0].startswith("skretrieval: error: cache=")
    assert "not a skretrieval cache" in errors[0] and "empty or new folder" in errors[0]
    assert results.exists()
