"""``skretrieval index`` killed with SIGKILL at real points of its work.

Each test starts the real command (``python -m skretrieval index``, a
random-weight ResNet-18 on 48-pixel images), watches it from outside (its
progress messages, the temporary files it creates beside the index) and
kills it there, with no hook inside the process.  Afterwards the previous
index must be byte-identical and answer the same rankings, and the next run
must complete and leave no temporary file.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from skretrieval import load_index

from _helpers import write_images

FAST = ["--backbone", "resnet18", "--weights", "none", "--max-size", "48", "--device", "cpu"]
TIMEOUT = 240

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _start(args, log):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "skretrieval", "index", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)


def _run(args, log):
    proc = _start(args, log)
    assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()


def _temps(index):
    return [n for n in os.listdir(index.parent) if "skretrieval-tmp" in n
            or n.startswith(".skretrieval-save-")]


def _kill_when(proc, ready):
    """SIGKILL ``proc`` as soon as ``ready()``; False if it exited first."""
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            return True
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    return False


def _rankings(index, queries):
    pipe = load_index(index)
    return pipe[-1].kneighbors(pipe[:-1].transform(queries), n_neighbors=3,
                               return_ids=True)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A folder of 4 images and its index in both formats, built once."""
    root = tmp_path_factory.mktemp("indexed")
    write_images(root / "photos", [f"a{i}.png" for i in range(4)], seed=0)
    for name in ("index.joblib", "index.zip"):
        _run(["--quiet", root / "photos", "-o", root / name, *FAST], root / "log")
    queries = [str(root / "photos" / "a1.png"), str(root / "photos" / "a3.png")]
    return root, {name: _rankings(root / name, queries)
                  for name in ("index.joblib", "index.zip")}, queries


def _setup(tmp_path, indexed, name, new_images=0):
    root, rankings, queries = indexed
    folder = tmp_path / "photos"
    shutil.copytree(root / "photos", folder)
    if new_images:
        write_images(folder, [f"b{i}.png" for i in range(new_images)], seed=1)
    index = tmp_path / name
    shutil.copy(root / name, index)
    return folder, index, index.read_bytes(), rankings[name], queries


def _assert_intact(index, before, expected, queries):
    assert index.read_bytes() == before
    dist, ids = _rankings(index, queries)
    np.testing.assert_array_equal(ids, expected[1])
    np.testing.assert_allclose(dist, expected[0], atol=1e-6)


def _rerun_cleans_up(index, args, log):
    _run(args, log)
    assert _temps(index) == [], _temps(index)
    load_index(index)


def test_sigkill_during_extraction_keeps_the_previous_index(tmp_path, indexed):
    folder, index, before, expected, queries = _setup(tmp_path, indexed, "index.zip", 12)
    log = tmp_path / "log"
    args = [folder, "-o", index, *FAST]  # a new index of the folder, over the old one
    proc = _start(args, log)
    assert _kill_when(proc, lambda: "indexing 16 image(s)" in log.read_text())
    _assert_intact(index, before, expected, queries)
    _rerun_cleans_up(index, args, log)
    assert load_index(index)[-1].n_samples_fit_ == 16


@pytest.mark.parametrize("name", ["index.joblib", "index.zip"])
def test_sigkill_while_writing_the_index_keeps_the_previous_one(tmp_path, indexed, name):
    folder, index, before, expected, queries = _setup(tmp_path, indexed, name, 1)
    log = tmp_path / "log"
    args = [folder, "-o", index, "--append", *FAST]
    for attempt in range(3):  # the write takes ~0.1 s: caught on the first try here
        proc = _start(args, log)
        if _kill_when(proc, lambda: bool(_temps(index))):
            break
        shutil.copy(indexed[0] / name, index)  # it finished first: try again
    else:
        pytest.fail("the temporary file never appeared")
    assert _temps(index)  # what the killed writer left
    _assert_intact(index, before, expected, queries)
    _rerun_cleans_up(index, args, log)
    assert load_index(index)[-1].n_samples_fit_ == 5


def test_sigkill_during_an_append_keeps_the_previous_index(tmp_path, indexed):
    folder, index, before, expected, queries = _setup(tmp_path, indexed, "index.zip", 6)
    log = tmp_path / "log"
    args = [folder, "-o", index, "--append", *FAST]
    proc = _start(args, log)
    assert _kill_when(proc, lambda: "adding 6 new" in log.read_text())
    _assert_intact(index, before, expected, queries)
    _rerun_cleans_up(index, args, log)
    ids = sorted(load_index(index)[-1].ids_)
    assert ids == sorted([f"a{i}.png" for i in range(4)] + [f"b{i}.png" for i in range(6)])
