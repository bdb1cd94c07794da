"""Progress bars (tqdm): drawn when ``verbose`` and by the command line in a
terminal; silent in library calls by default, with ``--quiet`` and when stderr
is not a terminal (logs, CI)."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import numpy as np
import pytest
from PIL import Image

from skretrieval import ConvFeatureExtractor, FeatureMaps, GeMPooler, RegionReranker
from skretrieval.cli import main
from skretrieval.nn import RetrievalNetTrainer
from skretrieval.utils import progress
from skretrieval.utils._progress import NoProgress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--backbone", "resnet18", "--weights", "none", "--max-size", "64", "--device", "cpu"]
BAR = "100%|"  # what tqdm draws when a bar completes


def _images(n, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_progress_is_silent_unless_verbose(capsys):
    bar = progress(range(5), desc="items", verbose=0)
    assert isinstance(bar, NoProgress)
    with bar:
        assert list(bar) == [0, 1, 2, 3, 4]
        bar.update(3)
        bar.set_postfix_str("x")
    assert capsys.readouterr() == ("", "")
    assert list(progress(range(3), verbose=1, desc="items")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "items: " in err and BAR in err and "3/3" in err


@pytest.mark.usefixtures("one_torch_thread")
def test_extractor_bar_counts_images_with_rate_and_time_left(capsys):
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu").fit()
    ext.transform(_images(3))
    assert capsys.readouterr().err == ""  # verbose=0: a library call prints nothing
    ext.set_params(verbose=1).transform(_images(3))
    err = capsys.readouterr().err
    assert "extracting: " in err and "3/3" in err and "img/s" in err and BAR in err


@pytest.mark.usefixtures("one_torch_thread")
def test_trainer_bars_for_epochs_and_batches(capsys):
    X = _images(16, size=32)
    y = np.repeat(np.arange(4), 4)
    params = dict(backbone="resnet18", weights=None, layer="layer2", image_size=32,
                  batch_size=8, images_per_label=2, n_epochs=2, random_state=0)
    RetrievalNetTrainer(**params).fit(X, y)
    assert capsys.readouterr().err == ""
    RetrievalNetTrainer(**params, verbose=1).fit(X, y)
    err = capsys.readouterr().err
    assert "training: " in err and "2/2" in err and ("epoch/s" in err or "s/epoch" in err)
    assert "epoch 1: " in err and "batch" in err  # the batches of an epoch
    assert "[RetrievalNetTrainer] epoch 2/2: loss" in err  # the epoch lines stay


def test_region_reranker_bars(capsys):
    rng = np.random.default_rng(0)
    maps = FeatureMaps([(rng.random((8, 6, 6)),) for _ in range(40)])
    rr = RegionReranker(GeMPooler(), proposals="rmac", n_rerank=3).fit(maps)
    rr.kneighbors(maps[:5], n_neighbors=4)
    assert capsys.readouterr().err == ""
    rr.set_params(verbose=1).fit(maps).kneighbors(maps[:5], n_neighbors=4)
    err = capsys.readouterr().err
    assert "regions: " in err and "40/40" in err and "re-ranking: " in err and "5/5" in err


# ---------------------------------------------------------------------------
# the command line: bars in a terminal only
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress") / "db"
    folder.mkdir()
    for i, img in enumerate(_images(6, size=48)):
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def _cli(args, tty):
    """Run ``skretrieval ARGS`` with stderr on a pseudo-terminal (``tty``) or
    a pipe; (exit status, stderr)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", COLUMNS="100")
    cmd = [sys.executable, "-m", "skretrieval", *map(str, args)]
    if not tty:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        return proc.returncode, proc.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=slave, env=env,
                              timeout=300)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_cli_index_draws_bars_in_a_terminal_only(folder, tmp_path):
    index = tmp_path / "a.joblib"
    code, err = _cli(["index", folder, "-o", index, *FAST, "--save-every", 4], tty=True)
    assert code == 0, err
    assert "extracting: " in err and "img/s" in err
    assert "indexed and saved: " in err and "6/6" in err


def test_cli_draws_no_bar_when_stderr_is_not_a_terminal_unless_asked(folder, tmp_path,
                                                                       capsys):
    # in process: pytest's captured stderr is not a terminal (like a log, CI)
    assert main(["index", str(folder), "-o", str(tmp_path / "b.joblib"), *FAST,
                 "--save-every", "4"]) == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "img/s" not in err
    assert "indexing 6 image(s)" in err  # the one-line messages stay
    assert main(["index", str(folder), "-o", str(tmp_path / "c.joblib"), *FAST,
                 "--progress"]) == 0
    err = capsys.readouterr().err
    assert "extracting: " in err and BAR in err
    assert main(["search", str(tmp_path / "c.joblib"), str(folder / "img0.png")]) == 0
    assert "%|" not in capsys.readouterr().err


def test_cli_quiet_silences_the_terminal(folder, tmp_path):
    code, err = _cli(["index", folder, "-o", tmp_path / "q.joblib", *FAST, "--quiet"],
                     tty=True)
    assert code == 0, err
    assert err.strip() == ""


def test_spatial_verification_bar(capsys):
    from skretrieval import SpatialVerificationReranker

    rng = np.random.default_rng(0)
    maps = FeatureMaps([(rng.random((8, 6, 6)),) for _ in range(6)])
    sv = SpatialVerificationReranker(GeMPooler(), n_rerank=3, max_features=20).fit(maps)
    sv.kneighbors(maps[:2], n_neighbors=4)
    assert capsys.readouterr().err == ""
    sv.set_params(verbose=1).kneighbors(maps[:2], n_neighbors=4)
    err = capsys.readouterr().err
    assert "verifying: " in err and "2/2" in err
