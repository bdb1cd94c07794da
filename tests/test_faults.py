"""Fault injection: killed writers, concurrent writers, full disks, tampered files.

Each test runs real ``skretrieval index`` processes (random-weight ResNet-18
on 48-pixel images) or the real save functions, injects the fault, and checks
what a user finds afterwards.  Bounded in time (every subprocess has a
timeout), no network.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import joblib
import numpy as np
import pytest

from skretrieval import IndexFile

from _helpers import write_images

FAST = ["--backbone", "resnet18", "--weights", "none", "--max-size", "48", "--device", "cpu"]
TIMEOUT = 240

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# Runs the CLI with a fault armed: SKRETRIEVAL_FAULT="dump:N" kills the process
# with SIGKILL half-way through writing its N-th save; "add:N" kills it when
# its N-th batch of images is being added (after N - 1 batches were saved).
DRIVER = textwrap.dedent("""
    import io, os, signal, sys
    kind, _, n = os.environ.get("SKRETRIEVAL_FAULT", ":0").partition(":")
    n, calls = int(n or 0), [0]

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == "dump":
        import joblib
        real = joblib.dump
        def dump(obj, fh, *args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                buf = io.BytesIO()
                real(obj, buf)
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
                kill()
            return real(obj, fh, *args, **kwargs)
        joblib.dump = dump
    elif kind == "add":
        import skretrieval.cli._index as indexing  # the name the command calls
        real_add = indexing.add_to_index
        def add(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                kill()
            return real_add(*args, **kwargs)
        indexing.add_to_index = add
    from skretrieval.cli import main
    sys.exit(main(sys.argv[1:]))
""")




def cli(tmp_path, args, fault=None, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SKRETRIEVAL_FAULT", None)
    if fault:
        env["SKRETRIEVAL_FAULT"] = fault
    driver = tmp_path / "driver.py"
    if not driver.exists():
        driver.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(driver), *map(str, args)], env=env,
                            **popen)


def run(tmp_path, args, fault=None):
    proc = cli(tmp_path, args, fault, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
               text=True)
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def ids_in(index):
    return sorted(str(v) for v in joblib.load(index)[-1].ids_)


def temps_beside(index):
    return [n for n in os.listdir(index.parent) if "skretrieval-tmp" in n]


def test_sigkill_during_save_keeps_committed_images_and_next_run_cleans_up(tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "index.joblib"
    names = [f"a{i}.png" for i in range(5)]
    write_images(folder, names, seed=0)
    # killed half-way through its second save (images 3-4 of 5)
    rc, _, _ = run(tmp_path, ["index", folder, "-o", index, "--save-every", "2", *FAST],
                   fault="dump:2")
    assert rc == -signal.SIGKILL
    assert ids_in(index) == names[:2]  # exactly the committed batch
    assert len(temps_beside(index)) == 1  # the half-written file, never renamed
    rc, out, err = run(tmp_path, ["index", folder, "-o", index, "--append", *FAST])
    assert rc == 0, err
    assert ids_in(index) == names
    assert temps_beside(index) == []


def test_sigkill_during_append_keeps_committed_batches(tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "index.joblib"
    write_images(folder, ["a0.png", "a1.png"], seed=0)
    assert run(tmp_path, ["index", folder, "-o", index, *FAST])[0] == 0
    write_images(folder, [f"b{i}.png" for i in range(4)], seed=1)
    rc, _, _ = run(tmp_path, ["index", folder, "-o", index, "--append", "--save-every",
                              "1", *FAST], fault="add:3")
    assert rc == -signal.SIGKILL
    assert ids_in(index) == ["a0.png", "a1.png", "b0.png", "b1.png"]
    pipe = joblib.load(index)
    assert pipe[-1].X_fit_.shape[0] == 4 and pipe[-1].fingerprints_.shape == (4,)
    rc, out, _ = run(tmp_path, ["index", folder, "-o", index, "--append", *FAST])
    assert rc == 0 and "added 2 image(s)" in out


def test_concurrent_appends_keep_both_sets(tmp_path):
    index = tmp_path / "index.joblib"
    write_images(tmp_path / "A", [f"a{i}.png" for i in range(3)], seed=0)
    write_images(tmp_path / "B", [f"b{i}.png" for i in range(3)], seed=1)
    logs = [tmp_path / "A.err", tmp_path / "B.err"]
    procs = []
    # Hold the lock while both start, so that they really overlap: each must
    # wait, then they race for it when it is released.
    with IndexFile(index):
        for folder, log in zip(("A", "B"), logs):
            with open(log, "w") as fh:
                procs.append(cli(tmp_path, ["index", tmp_path / folder, "-o", index,
                                            "--append", "--save-every", "1", *FAST],
                                 stdout=subprocess.DEVNULL, stderr=fh))
        deadline = time.monotonic() + TIMEOUT
        while not all("waiting for" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            time.sleep(0.2)
    codes = [p.wait(timeout=TIMEOUT) for p in procs]
    assert codes == [0, 0], [log.read_text() for log in logs]
    assert ids_in(index) == [f"a{i}.png" for i in range(3)] + [f"b{i}.png" for i in range(3)]


def test_lock_timeout_fails_clearly(tmp_path):
    index = tmp_path / "index.joblib"
    write_images(tmp_path / "A", ["a0.png"], seed=0)
    with IndexFile(index):
        rc, out, err = run(tmp_path, ["index", tmp_path / "A", "-o", index, "--append",
                                      "--lock-timeout", "0.5", *FAST])
    assert rc == 2
    assert "error:" in err and "another process" in err and not index.exists()


def test_full_disk_during_cli_save_leaves_previous_index(tmp_path, monkeypatch, capsys):
    from skretrieval.cli import main

    folder, index = tmp_path / "photos", tmp_path / "index.joblib"
    write_images(folder, ["a0.png", "a1.png"], seed=0)
    assert main(["index", str(folder), "-o", str(index), *FAST]) == 0
    before = index.read_bytes()
    write_images(folder, ["b0.png"], seed=1)

    def full_disk(obj, fh, *args, **kwargs):
        fh.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(joblib, "dump", full_disk)
    capsys.readouterr()
    assert main(["index", str(folder), "-o", str(index), "--append", *FAST]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert index.read_bytes() == before
    assert temps_beside(index) == []


def test_tampered_manifest_is_refused_and_touches_no_file(tmp_path):
    from sklearn.pipeline import make_pipeline

    from skretrieval import NearestNeighborRetriever, PCAWhitener
    from skretrieval.persistence import ModelFormatError, load_pipeline, save_pipeline

    rng = np.random.default_rng(0)
    pipe = make_pipeline(PCAWhitener(n_components=4), NearestNeighborRetriever())
    pipe.fit(rng.normal(size=(20, 6)))
    model = tmp_path / "model"
    save_pipeline(pipe, model)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(bytes(range(256)) * 40)
    manifest = json.loads((model / "manifest.json").read_text())

    def retriever_node(node):
        if node.get("class") == "skretrieval.NearestNeighborRetriever":
            return node
        for value in node.values():
            if isinstance(value, dict):
                found = retriever_node(value)
                if found is not None:
                    return found
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        found = retriever_node(item)
                        if found is not None:
                            return found
        return None

    node = retriever_node(manifest)
    assert node is not None
    attrs = next(v for k, v in node.items() if k in ("attributes", "fitted", "attrs"))
    attrs["_store_path"] = str(victim)
    attrs["_store_dtype"] = "float32"
    attrs["X_fit_"] = None
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError):
        load_pipeline(model)
    assert victim.read_bytes() == bytes(range(256)) * 40


def test_cache_pointed_at_a_user_folder_is_refused(tmp_path):
    from skretrieval import ConvFeatureExtractor

    user = tmp_path / "experiments"
    (user / "exp").mkdir(parents=True)
    results = user / "exp" / "results.npy"
    np.save(results, np.arange(10))
    os.utime(results, (0, 0))  # from 1970: the first to go under an LRU rule
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=48, cache=str(user))
    with pytest.raises(ValueError, match="not a skretrieval cache"):
        ext.fit().transform([np.zeros((40, 40, 3), dtype=np.uint8)])
    assert np.array_equal(np.load(results), np.arange(10))


# ---------------------------------------------------------------------------
# a real full disk: a small tmpfs mounted for the test (root only)
# ---------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs under ``tmp_path`` (skips when mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def _fill(disk):
    """Fill ``disk`` to the last byte with files of its own."""
    for name, block in (("filler", 1 << 16), ("filler2", 1)):
        with open(disk / name, "wb", buffering=0) as fh:
            try:
                while fh.write(b"\0" * block):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def _vector_pipeline(n):
    from sklearn.pipeline import make_pipeline

    from skretrieval import NearestNeighborRetriever, PCAWhitener

    X = np.random.default_rng(0).normal(size=(n, 8))
    return make_pipeline(PCAWhitener(n_components=4), NearestNeighborRetriever()).fit(X), X


@pytest.mark.parametrize("name, save", [
    ("index.joblib", "save_index"), ("index.zip", "save_index"),
    ("model.zip", "save_pipeline"), ("model", "save_pipeline"),
])
def test_a_real_full_disk_fails_clearly_and_keeps_the_previous_file(small_disk, name, save):
    from skretrieval import load_index, save_index
    from skretrieval.persistence import load_pipeline, save_pipeline

    pipe, X = _vector_pipeline(50)
    path = small_disk / name

    def write(p):
        if save == "save_index":
            save_index(p, path)
        else:
            save_pipeline(p, path, overwrite=True)

    write(pipe)
    load = load_index if save == "save_index" else load_pipeline
    expected = load(path)[-1].kneighbors(X[:5] @ np.eye(8, 4))[1]
    snapshot = {p.relative_to(small_disk): p.read_bytes()
                for p in sorted(small_disk.rglob("*")) if p.is_file()}
    _fill(small_disk)
    bigger, _ = _vector_pipeline(400)
    with pytest.raises(OSError) as info:
        write(bigger)
    assert info.value.errno == errno.ENOSPC
    assert "disk is full" in str(info.value) and name in str(info.value)
    os.remove(small_disk / "filler")
    os.remove(small_disk / "filler2")
    after = {p.relative_to(small_disk): p.read_bytes()
             for p in sorted(small_disk.rglob("*")) if p.is_file()}
    assert after == snapshot  # the previous file intact, no partial file beside it
    assert [p.name for p in small_disk.iterdir() if p.name.startswith(".")] == []
    np.testing.assert_array_equal(load(path)[-1].kneighbors(X[:5] @ np.eye(8, 4))[1], expected)
    write(bigger)  # with room again, the save completes
    assert load(path)[-1].n_samples_fit_ == 400


def test_a_real_full_disk_during_cli_index_fails_clearly(small_disk, tmp_path, capsys):
    from skretrieval.cli import main

    folder, index = tmp_path / "photos", small_disk / "index.joblib"
    write_images(folder, ["a0.png", "a1.png"], seed=0)
    # the network's weights (45 MB) do not fit: a new index cannot be written
    assert main(["index", str(folder), "-o", str(index), *FAST]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "index.joblib" in err
    assert sorted(p.name for p in small_disk.iterdir()) == ["index.joblib.lock"]
