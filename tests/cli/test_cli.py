"""The command line (index / search / demo) and the demo data set and figure."""

import json
import os
import re
import subprocess
import sys

import joblib
import numpy as np
import pytest
from PIL import Image

from skretrieval.cli import main
from skretrieval.extraction._backbones import weights_search_dirs
from skretrieval.cli._demo import _evaluate, _median_queries
from skretrieval.datasets import load_demo_dataset
from skretrieval.datasets._demo import DISTRACTOR_LABEL, DISTRACTOR_VIEWS, VIEWS
from skretrieval.display import plot_rankings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# tiny random network: fast, no weight file needed
FAST = ["--backbone", "resnet18", "--weights", "none", "--max-size", "64", "--device", "cpu"]


def _write_collection(folder, n_groups=2, per_group=3, seed=0):
    """Groups of near-identical smooth colour images (one in a sub-folder)."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    names = []
    for g in range(n_groups):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((80, 60), Image.BICUBIC)).astype(int)
        for j in range(per_group):
            noisy = np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
            name = f"sub/g{g}_{j}.png" if j == per_group - 1 else f"g{g}_{j}.png"
            Image.fromarray(noisy).save(folder / name)
            names.append(name)
    return sorted(names)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A folder of 6 images and its index, built once for the module."""
    tmp = tmp_path_factory.mktemp("cli")
    folder = tmp / "db"
    names = _write_collection(folder)
    index = tmp / "retriever.joblib"
    code = main(["index", str(folder), "-o", str(index), *FAST])
    assert code == 0
    return folder, index, names


# ---------------------------------------------------------------------------
# help and usage
# ---------------------------------------------------------------------------
def test_python_m_help_exits_0():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "skretrieval", "--help"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("index", "search", "demo"):
        assert command in proc.stdout


def test_usage_errors_exit_2(capsys):
    assert main(["--help"]) == 0
    capsys.readouterr()
    assert main([]) == 2  # no command
    assert "usage:" in capsys.readouterr().err
    assert main(["index", "somewhere"]) == 2  # -o is required
    assert main(["index", "somewhere", "-o", "x", "--pooler", "avg"]) == 2
    assert main(["search", "x.joblib", "q.png", "-k", "0"]) == 2


# ---------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------
def test_index_writes_a_pipeline_labelled_by_relative_paths(indexed):
    folder, index, names = indexed
    assert index.is_file()
    pipe = joblib.load(index)
    retriever = pipe[-1]
    assert retriever.n_samples_fit_ == 6
    assert sorted(retriever.y_.tolist()) == names  # relative to the folder
    assert "sub/g0_2.png" in retriever.y_.tolist()
    assert pipe[0].verbose == 0  # the saved extractor is quiet


def test_index_prints_a_summary(tmp_path, capsys):
    folder = tmp_path / "db"
    _write_collection(folder)
    code, out, err = _run(capsys, "index", folder, "-o", tmp_path / "r.joblib", *FAST,
                          "--pca", 3, "--pooler", "spoc")
    assert code == 0, err
    assert "indexed 6 image(s)" in out
    assert "3 dimensions" in out and "PCA-whitened from 512" in out
    assert " s" in out.splitlines()[-1]  # the time
    pipe = joblib.load(tmp_path / "r.joblib")
    assert type(pipe[1]).__name__ == "SPoCPooler"
    assert pipe[-1].n_features_in_ == 3


def test_index_missing_folder_exits_2(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    code, out, err = _run(capsys, "index", missing, "-o", tmp_path / "r.joblib", *FAST)
    assert code == 2
    assert err.startswith("skretrieval: error:")
    assert "no-such-folder" in err and "Traceback" not in err
    assert not (tmp_path / "r.joblib").exists()


def test_index_empty_folder_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "index", tmp_path / "empty", "-o", tmp_path / "r.joblib", *FAST)
    assert code == 2 and "no image files" in err


def test_index_pca_larger_than_collection_exits_2(tmp_path, capsys):
    folder = tmp_path / "db"
    _write_collection(folder)
    code, _, err = _run(capsys, "index", folder, "-o", tmp_path / "r.joblib", *FAST,
                        "--pca", 50)
    assert code == 2
    assert "--pca 50" in err and "6 image(s)" in err
    assert "ConvFeatureExtractor" not in err  # nothing was extracted


def test_index_missing_weights_file_exits_2(tmp_path, capsys):
    folder = tmp_path / "db"
    _write_collection(folder)
    code, _, err = _run(capsys, "index", folder, "-o", tmp_path / "r.joblib",
                        "--backbone", "resnet18", "--weights", tmp_path / "nope.pth")
    assert code == 2
    assert "skretrieval: error:" in err and "nope.pth" in err and "Traceback" not in err


@pytest.fixture
def folder_with_corrupt_image(tmp_path):
    folder = tmp_path / "db"
    _write_collection(folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG at all")
    return folder


def test_index_corrupt_image_exits_2_naming_it(folder_with_corrupt_image, tmp_path, capsys):
    code, _, err = _run(capsys, "index", folder_with_corrupt_image,
                        "-o", tmp_path / "r.joblib", *FAST)
    assert code == 2
    assert err.count("skretrieval: error:") == 1
    assert "broken.jpg" in err and "Traceback" not in err
    assert not (tmp_path / "r.joblib").exists()


def test_index_skip_bad_leaves_out_the_corrupt_image(folder_with_corrupt_image, tmp_path,
                                                     capsys):
    index = tmp_path / "r.joblib"
    code, out, err = _run(capsys, "index", folder_with_corrupt_image, "-o", index, *FAST,
                          "--skip-bad")
    assert code == 0, err
    assert "warning" in err and "broken.jpg" in err
    assert "indexed 6 image(s)" in out and "1 left out" in out
    assert "broken.jpg" not in joblib.load(index)[-1].y_.tolist()


# ---------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------
def test_search_database_image_finds_itself_first(indexed, capsys):
    folder, index, _ = indexed
    code, out, err = _run(capsys, "search", index, folder / "g1_0.png",
                          folder / "sub" / "g0_2.png", "-k", 3)
    assert code == 0, err
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 2
    for block, own in zip(blocks, ["g1_0.png", "sub/g0_2.png"]):
        lines = block.splitlines()
        assert lines[0].startswith("query:") and lines[1].split() == ["rank", "similarity",
                                                                         "image"]
        rank, sim, name = lines[2].split()
        assert (rank, name) == ("1", own)
        assert float(sim) == pytest.approx(1.0, abs=1e-4)
        assert len(lines) == 2 + 3


def test_search_json(indexed, capsys):
    folder, index, names = indexed
    code, out, _ = _run(capsys, "search", index, folder / "g0_1.png", folder / "g1_1.png",
                        "-k", 4, "--json")
    assert code == 0
    results = json.loads(out)  # stdout holds the JSON only
    assert [r["query"] for r in results] == [str(folder / "g0_1.png"),
                                             str(folder / "g1_1.png")]
    for res, own in zip(results, ["g0_1.png", "g1_1.png"]):
        assert res["box"] is None
        assert [h["rank"] for h in res["results"]] == [1, 2, 3, 4]
        assert res["results"][0]["name"] == own
        assert res["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        sims = [h["similarity"] for h in res["results"]]
        assert sims == sorted(sims, reverse=True)
        assert all(h["name"] in names for h in res["results"])


def test_search_k_larger_than_database_is_clipped(indexed, capsys):
    folder, index, _ = indexed
    code, out, err = _run(capsys, "search", index, folder / "g0_0.png", "-k", 50, "--json")
    assert code == 0
    assert len(json.loads(out)[0]["results"]) == 6
    assert "only 6 image(s)" in err


def test_search_box(indexed, capsys):
    folder, index, _ = indexed
    query = folder / "g0_0.png"  # 80 x 60
    code, out, err = _run(capsys, "search", index, query, "-k", 6, "--json",
                          "--box", 0, 0, 80, 60)
    assert code == 0, err
    whole = json.loads(out)[0]
    assert whole["box"] == [0, 0, 80, 60]
    assert whole["results"][0]["name"] == "g0_0.png"  # the box covers the whole image
    assert whole["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)

    code, out, err = _run(capsys, "search", index, query, "-k", 6, "--json",
                          "--box", 10, 5, 50, 45)
    assert code == 0, err
    part = json.loads(out)[0]
    assert part["box"] == [10, 5, 50, 45]
    # a part of the image is not the image: no exact match any more
    assert part["results"][0]["similarity"] < 1 - 1e-5

    code, out, err = _run(capsys, "search", index, query, "--box", 10, 5, 50, 45)
    assert code == 0 and out.startswith(f"query: {query} box (10, 5, 50, 45)")


def test_search_box_errors(indexed, capsys):
    folder, index, _ = indexed
    code, _, err = _run(capsys, "search", index, folder / "g0_0.png", folder / "g1_0.png",
                        "--box", 0, 0, 10, 10)
    assert code == 2 and "single query" in err
    code, _, err = _run(capsys, "search", index, folder / "g0_0.png", "--box", 10, 0, 5, 10)
    assert code == 2 and "X2 > X1" in err
    code, _, err = _run(capsys, "search", index, folder / "g0_0.png",
                        "--box", 500, 500, 600, 600)
    assert code == 2 and "outside the image" in err and "Traceback" not in err


def test_search_bad_inputs_exit_2(indexed, tmp_path, capsys):
    folder, index, _ = indexed
    code, _, err = _run(capsys, "search", tmp_path / "missing.joblib", folder / "g0_0.png")
    assert code == 2 and "index file not found" in err
    joblib.dump({"not": "a pipeline"}, tmp_path / "other.joblib")
    code, _, err = _run(capsys, "search", tmp_path / "other.joblib", folder / "g0_0.png")
    assert code == 2 and "retrieval pipeline" in err
    code, _, err = _run(capsys, "search", index, tmp_path / "missing.png")
    assert code == 2 and "missing.png" in err
    (tmp_path / "bad.png").write_bytes(b"not a png")
    code, _, err = _run(capsys, "search", index, tmp_path / "bad.png")
    assert code == 2 and "bad.png" in err and "Traceback" not in err


# ---------------------------------------------------------------------------
# demo data set and figure
# ---------------------------------------------------------------------------
N_VIEWS = len(VIEWS)


@pytest.fixture(scope="module")
def demo_small():
    return load_demo_dataset(max_side=96, random_state=0)


def _area(img):
    return img.shape[0] * img.shape[1]


def test_load_demo_dataset(demo_small):
    images, labels, names = demo_small
    assert len(images) == len(names) == labels.shape[0]
    assert labels.dtype.kind == "i"
    scenes = labels >= 0
    n_scenes = len(np.unique(labels[scenes]))
    n_scene_images = int(scenes.sum())
    assert n_scenes == 8 and N_VIEWS >= 6
    # the scenes first, scene by scene; then the distractors, all labelled -1
    np.testing.assert_array_equal(labels[:n_scene_images],
                                  np.repeat(np.arange(n_scenes), N_VIEWS))
    assert DISTRACTOR_LABEL == -1
    assert np.all(labels[n_scene_images:] == DISTRACTOR_LABEL)
    n_distractors = len(images) - n_scene_images
    assert n_distractors >= 8 * 4 and n_distractors % 4 == 0  # original + 3 views each
    for img in images:
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8
        assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 16
        assert max(img.shape[:2]) <= 96
    assert len(set(names)) == len(names)
    scene_photos = {n.split("/")[0] for n in names[:n_scene_images]}
    distractor_photos = {n.split("/")[0] for n in names[n_scene_images:]}
    assert len(scene_photos) == n_scenes and len(distractor_photos) == n_distractors // 4
    assert not scene_photos & distractor_photos
    assert "motorcycle_right" not in " ".join(names)  # the same scene: no distractor
    for i in range(0, n_scene_images, N_VIEWS):
        block, original = images[i:i + N_VIEWS], images[i]
        views = dict(zip([n.split("/")[1] for n in names[i:i + N_VIEWS]], block))
        assert list(views) == list(VIEWS)
        assert len({n.split("/")[0] for n in names[i:i + N_VIEWS]}) == 1
        assert max(original.shape[:2]) == 96  # the downscaled original
        for view in block[1:]:  # the views differ from the original
            assert view.shape != original.shape or not np.array_equal(view, original)
        # a crop of 25-50 % of the area (some slack for the rounding)
        assert 0.2 <= _area(views["crop"]) / _area(original) <= 0.55
        # changes within the frame keep it; rotations and shears cut it down
        for name in ("zoomed-out", "perspective", "relit-jpeg", "occluded"):
            assert views[name].shape == original.shape
        for name in ("rotated", "sheared"):
            assert _area(views[name]) < _area(original)
    for i in range(n_scene_images, len(images), 4):
        assert names[i].endswith("/original")
        assert all(n.split("/")[1] in DISTRACTOR_VIEWS for n in names[i + 1:i + 4])


def test_load_demo_dataset_groups_share_no_photo(demo_small):
    images, labels, names, groups = load_demo_dataset(max_side=96, random_state=0,
                                                      return_groups=True)
    assert names == demo_small[2]
    assert set(groups.tolist()) == {0, 1}
    np.testing.assert_array_equal(groups[labels >= 0], labels[labels >= 0] % 2)
    photos = [{n.split("/")[0] for n, g in zip(names, groups) if g == k} for k in (0, 1)]
    assert not photos[0] & photos[1]
    for k in (0, 1):  # scenes and distractors in both groups
        assert np.any((groups == k) & (labels >= 0))
        assert np.any((groups == k) & (labels < 0))
    # without the distractors: the scenes only, unchanged
    scenes_only, scene_labels, scene_names = load_demo_dataset(
        max_side=96, random_state=0, distractors=False)
    n = len(scenes_only)
    assert n == int(np.sum(labels >= 0)) and scene_names == names[:n]
    np.testing.assert_array_equal(scene_labels, labels[:n])
    for a, b in zip(scenes_only, images[:n]):
        np.testing.assert_array_equal(a, b)


def test_load_demo_dataset_is_deterministic(demo_small):
    images, labels, names = demo_small
    again, labels2, names2 = load_demo_dataset(max_side=96, random_state=0)
    np.testing.assert_array_equal(labels, labels2)
    assert names == names2
    for a, b in zip(images, again):
        np.testing.assert_array_equal(a, b)
    other, labels3, _ = load_demo_dataset(max_side=96, random_state=1)
    np.testing.assert_array_equal(labels, labels3)
    assert any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(images, other))


def test_load_demo_dataset_rejects_tiny_side():
    with pytest.raises(ValueError, match="at least 16"):
        load_demo_dataset(max_side=8)


def test_demo_evaluation_never_whitens_on_the_searched_group(monkeypatch):
    """Each group is searched on its own, with a whitening fitted on the other."""
    from skretrieval.pooling._whitening import PCAWhitener

    rng = np.random.default_rng(0)
    labels = np.r_[np.repeat(np.arange(4), 5), np.full(12, -1)]
    groups = np.r_[np.repeat(np.arange(4) % 2, 5), np.arange(12) % 2]
    centres = rng.normal(size=(4, 64))
    X = rng.normal(scale=0.05, size=(len(labels), 64))
    X[labels >= 0] += centres[labels[labels >= 0]]
    X[labels < 0] += rng.normal(size=(12, 64))

    fitted_on = []
    real_fit = PCAWhitener.fit

    def spy_fit(self, Xtrain, y=None):
        rows = [int(np.flatnonzero(np.all(X == x, axis=1))[0]) for x in np.asarray(Xtrain)]
        fitted_on.append(sorted(rows))
        return real_fit(self, Xtrain, y)

    monkeypatch.setattr(PCAWhitener, "fit", spy_fit)
    ap_raw, ap_white, rankings, sims = _evaluate(X, labels, groups, n_components=4,
                                                 whiten_power=0.5)
    # one whitening per group, each fitted on exactly the other group
    assert sorted(fitted_on) == sorted(np.flatnonzero(groups == g).tolist() for g in (0, 1))
    # AP of the scene images only; distinct clusters: perfect raw retrieval
    assert np.all(np.isnan(ap_raw[labels < 0])) and np.all(np.isnan(ap_white[labels < 0]))
    np.testing.assert_allclose(ap_raw[labels >= 0], 1.0)
    assert np.all((ap_white[labels >= 0] >= 0) & (ap_white[labels >= 0] <= 1))
    # rankings stay within the query's group, never the query itself
    assert rankings.shape == (len(labels), int(np.sum(groups == 0)) - 1) == sims.shape
    for i in range(len(labels)):
        assert i not in rankings[i]
        assert np.all(groups[rankings[i]] == groups[i])
    assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_demo_figure_shows_the_median_query_of_every_view(demo_small):
    _, labels, names = demo_small
    ap = np.where(labels >= 0, np.linspace(0, 1, len(labels)), np.nan)
    queries = _median_queries(labels, names, ap)
    assert [names[q].split("/")[1] for q in queries] == list(VIEWS)
    for view, q in zip(VIEWS, queries):
        members = [i for i, n in enumerate(names) if n.endswith(f"/{view}") and labels[i] >= 0]
        assert labels[q] >= 0 and q in members
        # as many of the view's queries below it as above it (lower median)
        below = sum(ap[m] < ap[q] for m in members)
        assert below == (len(members) - 1) // 2


def test_plot_rankings_writes_png(demo_small, tmp_path):
    images, labels, names = demo_small
    n = len(images)
    rng = np.random.default_rng(0)
    rankings = np.array([rng.permutation(np.delete(np.arange(n), i))[:5] for i in range(n)])
    sims = np.sort(rng.random((n, 5)), axis=1)[:, ::-1]
    path = tmp_path / "rankings.png"
    fig = plot_rankings(images, labels, rankings, similarities=sims, names=names, path=path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    axes = fig.get_axes()
    assert len(axes) == 6 * 6  # 6 rows: query + top 5
    titles = [ax.get_title() for ax in axes]
    assert titles[0].startswith("query") and titles[1].startswith("#1")
    # frames: blue query, then green / red results by label
    from matplotlib.colors import to_rgba
    import matplotlib.pyplot as plt

    q = 0  # the first default query: the first image of the first scene
    assert titles[0] == f"query\n{names[q]}"
    # the default queries: one per scene, never a distractor (label -1)
    query_names = [titles[6 * row].split("\n")[1] for row in range(6)]
    assert len(set(query_names)) == 6
    assert all(labels[names.index(name)] >= 0 for name in query_names)
    assert axes[0].spines["top"].get_edgecolor() == to_rgba("tab:blue")
    for r in range(5):
        relevant = labels[rankings[q, r]] == labels[q]
        expected = to_rgba("tab:green" if relevant else "tab:red")
        assert axes[1 + r].spines["left"].get_edgecolor() == expected
        assert f"sim {sims[q, r]:.3f}" in titles[1 + r]
    plt.close(fig)

    # without a path nothing is written; k and n_queries are respected
    fig = plot_rankings(images, labels, rankings, n_queries=2, k=3)
    assert len(fig.get_axes()) == 2 * 4
    plt.close(fig)


def test_plot_rankings_rejects_bad_shapes(demo_small):
    images, labels, _ = demo_small
    with pytest.raises(ValueError, match="one row per image"):
        plot_rankings(images, labels, np.zeros((3, 5), dtype=int))


def _real_weights_available():
    return any(os.path.isfile(os.path.join(d, "mobilenet_v2-b0353104.pth"))
               for d in weights_search_dirs())


@pytest.mark.slow
def test_demo_with_real_weights(tmp_path, capsys):
    if not _real_weights_available():
        pytest.skip("the MobileNetV2 ImageNet weights (mobilenet_v2-b0353104.pth) are "
                    "not installed")
    out_png = tmp_path / "d.png"
    code, out, err = _run(capsys, "demo", "--out", out_png, "--max-size", 128,
                          "--device", "cpu")
    assert code == 0, err
    # the table: pooler, dim, raw mAP, whitened mAP, time
    table = re.compile(r"^(\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+s$")
    rows = {m.group(1): m.groups() for m in map(table.match, out.splitlines()) if m}
    raw, white = {}, {}
    assert list(rows) == ["SPoC", "MAC", "GeM", "R-MAC", "CroW"], out
    for pooler in rows:
        raw[pooler], white[pooler] = float(rows[pooler][2]), float(rows[pooler][3])
        # hard views and distractors: good, but not perfect, retrieval
        assert 0.3 < raw[pooler] < 0.99
        # the whitening is learned on other images: it may not help, but it
        # must not wreck the descriptors either
        assert 0.2 < white[pooler] <= 1
    assert raw["GeM"] > 0.5
    assert len({round(v, 3) for v in raw.values()}) > 1  # the poolers differ
    assert "distractors" in out and "relevant to no query" in out
    assert "learned on the OTHER group" in out and "FrozenEstimator" in out
    # the mAP of every pooler for the queries of every view
    header = out.split("raw mAP by query view")[1].splitlines()[1].split()
    assert header == ["pooler", *VIEWS]
    per_view = {line.split()[0]: [float(v) for v in line.split()[1:]]
                for line in out.split("raw mAP by query view")[1].splitlines()[2:7]}
    assert list(per_view) == list(rows)
    for pooler, values in per_view.items():
        assert len(values) == len(VIEWS) and all(0 <= v <= 1 for v in values)
        # the untouched originals are easy; the hard views are not
        assert values[VIEWS.index("original")] > 0.8
        assert min(values) < values[VIEWS.index("original")]
    assert "wall time" in out
    assert out_png.read_bytes()[:8] == PNG_SIGNATURE
