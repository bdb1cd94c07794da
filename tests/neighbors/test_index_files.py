"""Index files: append by content, prune, locks, atomic saves, permissions."""

import errno
import json
import os
import threading
import time

import joblib
import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from skretrieval import (
    IndexFile,
    IndexLockedError,
    NearestNeighborRetriever,
    PCAWhitener,
    add_to_index,
    edit_index,
    item_fingerprint,
    load_index,
    save_index,
)
from skretrieval.cli import main

from _helpers import write_images

FAST = ["--backbone", "resnet18", "--weights", "none", "--max-size", "48", "--device", "cpu"]




def vector_pipeline(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    pipe = make_pipeline(PCAWhitener(n_components=4), NearestNeighborRetriever())
    return pipe.fit(X, np.arange(n) % 3, nearestneighborretriever__ids=np.arange(n)), X


# ---------------------------------------------------------------------------
# fingerprints and add_to_index by content
# ---------------------------------------------------------------------------
def test_item_fingerprint_reads_content_not_name(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"], seed=0)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    fa = item_fingerprint(a)
    assert fa == item_fingerprint(str(a)) and fa != item_fingerprint(b)
    stat = os.stat(a)
    write_images(tmp_path, ["a.png"], seed=5)  # same name, same size, new pixels
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    assert item_fingerprint(a) != fa


def test_add_to_index_replaces_changed_skips_unchanged():
    pipe, X = vector_pipeline()
    retriever = pipe[-1]
    X2 = X[:3].copy()
    X2[1] += 1.0  # item 1 changed
    _, report = add_to_index(pipe, X2, [0, 1, 2], ids=[0, 1, 2], return_report=True)
    # fitted without fingerprints: every existing item counts as changed
    assert report.replaced == [0, 1, 2] and report.added == [] and report.unchanged == []
    assert retriever.n_samples_fit_ == 30
    assert set(retriever.fingerprints_[-3:]) != {""}
    # now they have fingerprints: the same content is left, a change replaces
    X3 = X2.copy()
    X3[2] -= 1.0
    extra = np.ones((1, 6))
    _, report = add_to_index(pipe, np.vstack([X3, extra]), [0, 1, 2, 0], ids=[0, 1, 2, 77],
                             return_report=True)
    assert report.unchanged == [0, 1] and report.replaced == [2] and report.added == [77]
    assert retriever.n_samples_fit_ == 31
    # the replaced entry answers with its new descriptor
    row = retriever.rows_of(2)
    want = pipe[:-1].transform(X3[2:3])
    got = retriever.X_fit_[row]
    np.testing.assert_allclose(got, want[0] / np.linalg.norm(want[0]), rtol=1e-5, atol=1e-6)
    # the fingerprints follow remove()
    retriever.remove([77])
    assert retriever.fingerprints_.shape == (30,)


def test_add_to_index_on_existing_modes():
    pipe, X = vector_pipeline()
    with pytest.raises(ValueError, match="already in the database.*on_existing"):
        add_to_index(pipe, X[:2], [0, 1], ids=[0, 1], on_existing="raise")
    _, report = add_to_index(pipe, X[:2] + 1, [0, 1], ids=[0, 1], on_existing="skip",
                             return_report=True)
    assert report.unchanged == [0, 1] and pipe[-1].n_samples_fit_ == 30
    with pytest.raises(ValueError, match="on_existing"):
        add_to_index(pipe, X[:2], ids=[0, 1], on_existing="replace")


def test_fingerprints_are_validated():
    with pytest.raises(ValueError, match="fingerprints must be a 1-d array of 3"):
        NearestNeighborRetriever().fit(np.eye(3), fingerprints=["a", "b"])
    with pytest.raises(ValueError, match="strings"):
        NearestNeighborRetriever().fit(np.eye(3), fingerprints=[1, 2, 3])


# ---------------------------------------------------------------------------
# index files: atomic, locked, permissions, stale temporary files
# ---------------------------------------------------------------------------
def test_save_index_mode_follows_umask_and_stale_temps_removed(tmp_path):
    pipe, _ = vector_pipeline()
    path = tmp_path / "index.joblib"
    stale = tmp_path / ".index.joblib.skretrieval-tmp-abc123"
    stale.write_bytes(b"x" * 1000)
    legacy_old = tmp_path / ".skretrieval-index-old"
    legacy_new = tmp_path / ".skretrieval-index-new"
    for f in (legacy_old, legacy_new):
        f.write_bytes(b"y")
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    other = tmp_path / ".other.joblib.skretrieval-tmp-zzz"  # another file's writer
    other.write_bytes(b"z")
    old = os.umask(0o027)
    try:
        save_index(pipe, path)
    finally:
        os.umask(old)
    assert (os.stat(path).st_mode & 0o777) == 0o640
    assert not stale.exists() and not legacy_old.exists()
    assert legacy_new.exists() and other.exists()
    assert load_index(path)[-1].n_samples_fit_ == 30


def test_failed_write_leaves_previous_index(tmp_path, monkeypatch):
    pipe, X = vector_pipeline()
    path = tmp_path / "index.joblib"
    save_index(pipe, path)
    before = path.read_bytes()
    add_to_index(pipe, X[:2] + 3, [0, 1], ids=[100, 101])
    real_dump = joblib.dump

    def full_disk(obj, fh, *args, **kwargs):
        fh.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(joblib, "dump", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_index(pipe, path)
    monkeypatch.setattr(joblib, "dump", real_dump)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["index.joblib", "index.joblib.lock"]


def test_edit_index_saves_only_on_success(tmp_path):
    pipe, X = vector_pipeline()
    path = tmp_path / "index.joblib"
    with pytest.raises(FileNotFoundError):
        with edit_index(path):
            pass
    with edit_index(path, create=lambda: pipe) as p:
        add_to_index(p, X[:1] + 2, [0], ids=[200])
    assert load_index(path)[-1].n_samples_fit_ == 31
    with pytest.raises(RuntimeError, match="boom"):
        with edit_index(path) as p:
            p[-1].remove([200])
            raise RuntimeError("boom")
    assert 200 in load_index(path)[-1].ids_


def test_second_writer_waits_or_times_out(tmp_path, capsys):
    pipe, _ = vector_pipeline()
    path = tmp_path / "index.joblib"
    holding, release = threading.Event(), threading.Event()

    def holder():
        with IndexFile(path):
            holding.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert holding.wait(10)
        start = time.perf_counter()
        with pytest.raises(IndexLockedError, match="another process"):
            save_index(pipe, path, timeout=0.3)
        assert time.perf_counter() - start >= 0.25
        assert "waiting for" in capsys.readouterr().err
        with pytest.raises(IndexLockedError):
            save_index(pipe, path, timeout=0)
    finally:
        release.set()
        t.join()
    save_index(pipe, path, timeout=5)  # free again
    with pytest.raises(RuntimeError, match="with"):
        IndexFile(path).save(pipe)


def test_load_index_reads_both_formats_and_names_what_it_expected(tmp_path):
    from skretrieval.persistence import save_pipeline

    pipe, X = vector_pipeline()
    save_pipeline(pipe, tmp_path / "model.zip")  # a pickle-free index file
    save_index(pipe, tmp_path / "saved.zip")
    for path in (tmp_path / "model.zip", tmp_path / "saved.zip"):
        loaded = load_index(path)
        np.testing.assert_array_equal(loaded.predict(X[:5]), pipe.predict(X[:5]))
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot load"):
        load_index(tmp_path / "junk.joblib")
    joblib.dump({"a": 1}, tmp_path / "dict.joblib")
    with pytest.raises(ValueError, match="does not hold a fitted retrieval pipeline"):
        load_index(tmp_path / "dict.joblib")


def test_cli_index_to_a_zip_is_pickle_free_and_searchable(tmp_path, capsys):
    import zipfile

    names = [f"im{i}.png" for i in range(6)]
    write_images(tmp_path / "photos", names, seed=0)
    out = tmp_path / "photos.zip"
    assert main(["index", str(tmp_path / "photos"), "-o", str(out), *FAST]) == 0
    with zipfile.ZipFile(out) as zf:
        assert "manifest.json" in zf.namelist()
        assert not any(n.endswith((".pkl", ".pickle", ".joblib")) for n in zf.namelist())
    capsys.readouterr()
    query = tmp_path / "photos" / "im3.png"
    assert main(["search", str(out), str(query), "-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["results"][0]["name"].endswith("im3.png")


# ---------------------------------------------------------------------------
# skretrieval index --append by content, --prune, error positions
# ---------------------------------------------------------------------------
def test_cli_append_reextracts_changed_images_and_prunes(tmp_path, capsys):
    folder, index = tmp_path / "photos", tmp_path / "index.joblib"
    write_images(folder, [f"a{i}.png" for i in range(4)], seed=0)
    assert main(["index", str(folder), "-o", str(index), *FAST]) == 0
    capsys.readouterr()
    first = joblib.load(index)[-1]
    assert all(f.startswith("file:") for f in first.fingerprints_)

    # a0 edited in place, a3 deleted, b0 new
    write_images(folder, ["a0.png"], seed=9)
    os.remove(folder / "a3.png")
    write_images(folder, ["b0.png"], seed=3)
    assert main(["index", str(folder), "-o", str(index), "--append", *FAST]) == 0
    out, err = capsys.readouterr()
    assert "1 image(s) changed" in err and "'a0.png'" in err
    assert "no longer under" in err and "--prune" in err
    assert "added 1 image(s)" in out and "replaced 1 changed" in out
    grown = joblib.load(index)
    r = grown[-1]
    assert sorted(r.ids_) == ["a0.png", "a1.png", "a2.png", "a3.png", "b0.png"]
    assert r.fingerprints_[r.rows_of("a0.png")] == item_fingerprint(folder / "a0.png")
    # the index answers with the new a0, not the stale descriptor
    Xq = grown[:-1].transform([str(folder / "a0.png")])
    assert r.kneighbors(Xq, n_neighbors=1, return_ids=True)[1][0, 0] == "a0.png"
    np.testing.assert_allclose(r.X_fit_[r.rows_of("a0.png")], Xq[0], rtol=1e-4, atol=1e-5)

    assert main(["index", str(folder), "-o", str(index), "--append", "--prune", *FAST]) == 0
    out = capsys.readouterr().out
    assert "removed 1 image(s) whose files are gone" in out
    assert sorted(joblib.load(index)[-1].ids_) == ["a0.png", "a1.png", "a2.png", "b0.png"]
    assert main(["index", str(folder), "-o", str(index), "--append", *FAST]) == 0
    assert "nothing to add" in capsys.readouterr().out


def test_cli_prune_needs_append(tmp_path, capsys):
    write_images(tmp_path / "p", ["a.png"], seed=0)
    assert main(["index", str(tmp_path / "p"), "-o", str(tmp_path / "i.joblib"),
                 "--prune", *FAST]) == 2
    assert "--prune applies to --append" in capsys.readouterr().err


def test_cli_bad_image_position_counts_in_the_folder(tmp_path, capsys):
    folder = tmp_path / "photos"
    write_images(folder, [f"a{i}.png" for i in range(5)], seed=0)
    (folder / "a3.png").write_bytes(b"not an image at all")
    index = tmp_path / "index.joblib"
    assert main(["index", str(folder), "-o", str(index), "--save-every", "2", *FAST]) == 2
    err = capsys.readouterr().err
    assert "image 3 of 5" in err and "a3.png" in err and "--skip-bad" in err
    # the batches before the bad image were saved
    assert list(joblib.load(index)[-1].ids_) == ["a0.png", "a1.png"]


def test_saved_models_and_cache_files_follow_umask(tmp_path):
    from skretrieval.extraction._cache import DiskCache
    from skretrieval.persistence import save_pipeline

    pipe, _ = vector_pipeline()
    old = os.umask(0o022)
    try:
        save_pipeline(pipe, tmp_path / "model.zip")
        save_pipeline(pipe, tmp_path / "model_dir")
        cache = DiskCache(tmp_path / "cache")
        cache.put("ab" + "0" * 38, np.zeros(3))
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "model.zip").st_mode & 0o777) == 0o644
    assert (os.stat(tmp_path / "model_dir").st_mode & 0o777) == 0o755
    assert (os.stat(tmp_path / "model_dir" / "manifest.json").st_mode & 0o777) == 0o644
    npy = next((tmp_path / "cache").rglob("*.npy"))
    assert (os.stat(npy).st_mode & 0o777) == 0o644
