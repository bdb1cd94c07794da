"""``skretrieval evaluate --model FILE`` on a small benchmark in revisitop's layout."""

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _reference as R  # noqa: E402

from skretrieval.cli import main  # noqa: E402


def write_roxford(root, n_db=8, seed=0):
    """``ROOT/gnd_roxford5k.pkl`` and ``ROOT/jpg/``: each query is a copy of a
    database image (box = the whole image, its easy positive) with a noisy
    copy of it as its hard positive."""
    rng = np.random.default_rng(seed)
    (root / "jpg").mkdir(parents=True)
    imlist = [f"img_{i:03d}" for i in range(n_db)]
    base = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n_db // 2)]
    for i, name in enumerate(imlist):
        arr = base[i // 2]
        if i % 2:  # the noisy twin
            arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "jpg" / f"{name}.jpg", quality=95)
    qimlist, gnd = [], []
    for q in range(2):
        name = f"query_{q}"
        shutil.copy(root / "jpg" / f"{imlist[2 * q]}.jpg", root / "jpg" / f"{name}.jpg")
        qimlist.append(name)
        gnd.append({"bbx": np.array([0.0, 0.0, 64.0, 48.0]), "easy": np.array([2 * q]),
                    "hard": np.array([2 * q + 1]), "junk": []})
    with open(root / "gnd_roxford5k.pkl", "wb") as fh:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, fh, protocol=2)


def test_evaluate_model_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SKRETRIEVAL_CHECKPOINT_DIR", str(tmp_path / "converted"))
    write_roxford(tmp_path / "roxford5k")
    net = R.cirtorch_net("resnet18", pooling="gem", p=2.8, seed=7)
    model = tmp_path / "retrievalSfM120k-resnet18-gem.pth"
    R.save_cirtorch(net, model, Lw={"retrieval-SfM-120k": {"ss": R.random_lw(512, 3),
                                                           "ms": R.random_lw(512, 4)}})
    argv = ["evaluate", "--dataset", "roxford5k", "--root", tmp_path / "roxford5k",
            "--model", model, "--preset", "ss", "--max-size", 64, "--cache", "none", "-q"]
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "cirtorch resnet18-gem p=2.8000" in out and "whitening retrieval-SfM-120k" in out
    assert "scales 1," in out and "512 dims" in out
    assert all(f"roxford5k      {p}" in out for p in ("easy", "medium", "hard"))
    assert main([str(a) for a in argv + ["--json"]]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["preset"] == "ss" and report["config"]["scales"] == [1.0]
    # every query's copy comes first, its noisy twin second: easy (and hard) mAP 1
    assert report["results"]["easy"]["mAP"] == 1.0
    assert report["n_queries"] == 2 and report["n_dims"] == 512


def test_evaluate_model_errors(tmp_path, capsys):
    write_roxford(tmp_path / "roxford5k")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    base = ["evaluate", "--dataset", "roxford5k", "--root", str(tmp_path / "roxford5k"), "-q"]
    assert main(base + ["--model", str(bad)]) == 2
    assert "is not a torch checkpoint" in capsys.readouterr().err
    assert main(base + ["--model", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert main(base + ["--model", str(bad), "--whiten-root", str(tmp_path)]) == 2
    assert "--model-whitening" in capsys.readouterr().err
