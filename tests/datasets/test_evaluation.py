"""evaluate_benchmark and the ``skretrieval evaluate`` command."""

import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.pipeline import make_pipeline

from skretrieval import ConvFeatureExtractor, GeMPooler, PCAWhitener
from skretrieval.cli import main
from skretrieval.datasets import load_coil, load_revisited
from skretrieval.datasets import evaluate_benchmark
from skretrieval.metrics import revisitop_map

from _helpers import assert_rankings_equivalent

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--backbone", "resnet18", "--weights", "none", "--max-size", "64", "--device", "cpu",
        "--cache", "none", "-q"]


def _coil_like(folder, n_objects=4, n_views=5, seed=0):
    """Views of smooth random 'objects' named as COIL files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for obj in range(1, n_objects + 1):
        coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((64, 64), Image.BICUBIC)).astype(int)
        for v in range(n_views):
            noisy = np.clip(base + rng.integers(-10, 11, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"obj{obj}__{v * 5}.png")
    return folder


def _features():
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu")
    return make_pipeline(ext.fit(), GeMPooler())


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_benchmark_on_query_crops_matches_a_manual_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "rparis6k"
    (root / "jpg").mkdir(parents=True)
    imlist = [f"im{i}" for i in range(8)]
    for n in imlist + ["q0", "q1"]:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            root / "jpg" / f"{n}.jpg")
    gnd = [{"bbx": [4, 4, 40, 30], "easy": [0, 1], "hard": [2], "junk": [3]},
           {"bbx": [0, 0, 64, 48], "easy": [4], "hard": [5, 6], "junk": []}]
    with open(root / "gnd_rparis6k.pkl", "wb") as fh:
        pickle.dump({"imlist": imlist, "qimlist": ["q0", "q1"], "gnd": gnd}, fh)
    bench = load_revisited("rparis6k", root)
    features = _features()
    report = evaluate_benchmark(bench, features)
    # by hand: the query crop, not the whole query image, is described
    X_db = features.transform(bench.images)
    X_q = features.transform(bench.queries)
    X_full = features.transform([str(root / "jpg" / "q0.jpg")])
    assert not np.allclose(X_q[0], X_full[0], atol=1e-4)
    sims = (X_q / np.linalg.norm(X_q, axis=1, keepdims=True)) @ (
        X_db / np.linalg.norm(X_db, axis=1, keepdims=True)).T
    ranks = np.argsort(-sims, axis=1, kind="stable")
    # the retriever's search against numpy's product: near-tied images may swap
    assert_rankings_equivalent(report.similarities, report.rankings,
                               np.take_along_axis(sims, ranks, axis=1), ranks)
    for protocol in ("easy", "medium", "hard"):
        gt = bench.ground_truth[protocol]
        # (the scores of the rankings checked above, ties in the report's order)
        m, _, mpr, _ = revisitop_map(report.rankings, gt.positives, gt.junk)
        assert report.results[protocol]["mAP"] == pytest.approx(m, abs=1e-12)
        assert report.results[protocol]["mP@5"] == pytest.approx(mpr[1], abs=1e-12)
    assert report.n_queries == 2 and report.n_images == 8
    assert "rparis6k" in report.table() and "medium" in report.table()


def test_whitening_is_learned_on_another_benchmark_only(tmp_path):
    with pytest.warns(UserWarning):
        a = load_coil(_coil_like(tmp_path / "a"), name="coil100")
    with pytest.warns(UserWarning):
        b = load_coil(_coil_like(tmp_path / "b", seed=1), name="coil20")
    features = _features()
    with pytest.raises(ValueError, match="its pair 'coil20'"):
        evaluate_benchmark(a, features, whitener=PCAWhitener(n_components=8))
    with pytest.raises(ValueError, match="another benchmark"):
        evaluate_benchmark(a, features, whitener=PCAWhitener(n_components=8),
                           whitening_benchmark=a)
    report = evaluate_benchmark(a, features, whitener=PCAWhitener(n_components=8),
                                whitening_benchmark=b)
    assert report.n_dims == 8 and report.whitening == "coil20"
    # the query is excluded from its own ranking: mAP computed without it
    assert 0.0 < report.results["default"]["mAP"] <= 1.0


def test_evaluate_command_prints_the_table(tmp_path, capsys):
    root = _coil_like(tmp_path / "coil")
    code, out, err = _run(capsys, "evaluate", "--dataset", "coil100", "--root", root, *FAST)
    assert code == 0, err
    assert re.search(r"coil100\s+default\s+\d+\.\d\d\s+\d+\.\d\d", out)
    assert "20 queries, 20 database images; wall time" in out
    assert "warning: coil100: found 20 images" in err  # not comparable: said so
    code, out, err = _run(capsys, "evaluate", "--dataset", "coil100", "--root", root,
                          "--whiten-root", _coil_like(tmp_path / "c20", seed=2),
                          "--pca", "8", "--json", "--figure", tmp_path / "fig.png", *FAST)
    assert code == 0, err
    res = json.loads(out)
    assert res["whitening"] == "coil20" and res["n_dims"] == 8
    assert 0 < res["results"]["default"]["mAP"] <= 1
    assert (tmp_path / "fig.png").read_bytes()[:8] == PNG_SIGNATURE


def test_evaluate_command_errors(tmp_path, capsys):
    code, _, err = _run(capsys, "evaluate", "--dataset", "oxford5k", "--root", tmp_path, *FAST)
    assert code == 2 and "no ground-truth files" in err and "gt_files_170407" in err
    code, _, err = _run(capsys, "evaluate", "--dataset", "coil100", "--root", tmp_path,
                        "--pca", "8", *FAST)
    assert code == 2 and "--pca needs --whiten-root" in err
    code, _, err = _run(capsys, "evaluate", "--dataset", "coil100", "--root", tmp_path,
                        "--distractors", tmp_path, *FAST)
    assert code == 2 and "--distractors applies to roxford5k and rparis6k" in err


@pytest.mark.slow
def test_evaluate_command_on_coil100_with_real_weights(shared_data, mobilenet_weights, capsys,
                                                       tmp_path):
    """The acceptance run of issue 3, on a subset of COIL-100 to stay fast."""
    if not (shared_data / "coil100").is_dir():
        pytest.skip("COIL-100 not in shared data")
    sub = tmp_path / "coil100"
    sub.mkdir()
    for obj in range(2, 12):
        for deg in range(0, 360, 30):
            src = shared_data / "coil100" / f"obj{obj}__{deg}.png"
            if src.exists():
                (sub / src.name).symlink_to(src)
    code, out, err = _run(capsys, "evaluate", "--dataset", "coil100", "--root", sub,
                          "--max-size", "128", "--device", "cpu", "--cache", "none", "-q")
    assert code == 0, err
    m = re.search(r"coil100\s+default\s+(\d+\.\d\d)", out)
    assert m and float(m.group(1)) > 60.0  # real features group the views of an object
