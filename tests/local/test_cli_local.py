"""ASMK indexes through the index machinery and the command line.

``add_to_index`` on a SIFT -> ASMK pipeline (fingerprints: skip, replace),
old ASMK files without fingerprints, ``skretrieval index --local sift
--asmk K`` / ``--append`` / ``search``, and the errors of bad options.
Tiny real photos (scikit-image's, 160 px), K = 16, 200 SIFT keypoints.
"""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.pipeline import make_pipeline

from skretrieval import add_to_index, item_fingerprint
from skretrieval.cli import main
from skretrieval.index import load_index
from skretrieval.local import ASMKRetriever, SIFTExtractor
from skretrieval.persistence import load_pipeline, save_pipeline

cv2 = pytest.importorskip("cv2")
data = pytest.importorskip("skimage.data")

SIZE = 160
LOCAL = ["--local", "sift", "--asmk", "16", "--local-features", "200", "--max-size", str(SIZE)]


def _small(img):
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    h, w = img.shape[:2]
    s = SIZE / max(h, w)
    return np.asarray(Image.fromarray(img[..., :3]).resize((round(w * s), round(h * s)),
                                                           Image.BILINEAR))


def _warp(img):
    """A homography-warped copy (viewpoint change)."""
    h, w = img.shape[:2]
    H = np.array([[0.88, 0.1, 12], [-0.06, 0.9, 8], [3e-4, 2e-4, 1]])
    return cv2.warpPerspective(img, H, (w, h), borderValue=(90, 90, 90))


@pytest.fixture(scope="module")
def photos():
    return [_small(f()) for f in (data.astronaut, data.chelsea, data.coffee, data.rocket,
                                  data.camera)]


@pytest.fixture(scope="module")
def folder(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("local") / "db"
    (root / "sub").mkdir(parents=True)
    names = ["astronaut.png", "chelsea.png", "coffee.png", "sub/rocket.png"]
    for name, img in zip(names, photos):
        Image.fromarray(img).save(root / name)
    return root, names


def _pipeline():
    return make_pipeline(SIFTExtractor(n_features=200, max_size=SIZE),
                         ASMKRetriever(n_clusters=16))


def test_add_to_index_skips_unchanged_and_replaces_changed(photos):
    names = np.array(["a", "b", "c"])
    pipe = _pipeline().fit(photos[:3], names, asmkretriever__ids=names,
                           asmkretriever__fingerprints=[item_fingerprint(p)
                                                        for p in photos[:3]])
    r = pipe[-1]
    assert r.fingerprints_.tolist() == [item_fingerprint(p) for p in photos[:3]]
    _, report = add_to_index(pipe, [photos[0], photos[3]], ["a", "d"], ids=["a", "d"],
                             return_report=True)
    assert (report.added, report.replaced, report.unchanged) == (["d"], [], ["a"])
    assert r.ids_.tolist() == ["a", "b", "c", "d"]
    edited = photos[4]  # "b" is now another photo
    _, report = add_to_index(pipe, [edited], ["b"], ids=["b"], return_report=True)
    assert report.replaced == ["b"] and r.ids_.tolist() == ["a", "c", "d", "b"]
    assert r.fingerprints_[-1] == item_fingerprint(edited)
    # the grown index ranks as a fit on the same images with the same codebook
    full = ASMKRetriever(n_clusters=16, kmeans="kmeans").fit(  # the same words
        pipe[0].transform([photos[0], photos[2], photos[3], edited]),
        codebook_features=np.asarray(r.centroids_))
    Q = pipe[0].transform([_warp(edited), _warp(photos[0])])
    np.testing.assert_allclose(r.similarities(Q), full.similarities(Q), rtol=1e-6)
    assert r.kneighbors(Q, 1, return_ids=True)[1][:, 0].tolist() == ["b", "a"]


def test_fingerprints_persist_and_old_files_load(photos, tmp_path):
    pipe = _pipeline().fit(photos[:3], asmkretriever__fingerprints=["x", "y", "z"])
    back = load_pipeline(save_pipeline(pipe, tmp_path / "new.zip"))
    assert back[-1].fingerprints_.tolist() == ["x", "y", "z"]
    # a file of the version before fingerprints: no such attribute stored
    del pipe[-1].fingerprints_
    old = load_pipeline(save_pipeline(pipe, tmp_path / "old.zip"))
    assert getattr(old[-1], "fingerprints_", None) is None
    _, report = add_to_index(old, [photos[1]], ids=[1], return_report=True)
    assert report.replaced == [1]  # unknown content counts as changed
    assert old[-1].fingerprints_.tolist() == ["", "", item_fingerprint(photos[1])]
    with pytest.raises(ValueError, match="fingerprints"):
        old[-1].partial_fit(old[0].transform(photos[3:4]), fingerprints=["a", "b"])


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sift_index(folder, tmp_path_factory):
    root, names = folder
    index = tmp_path_factory.mktemp("index") / "local.zip"
    assert main(["index", str(root), "-o", str(index), "-q", *LOCAL]) == 0
    return index


def test_index_local_sift_asmk_zip(sift_index, folder):
    root, names = folder
    pipe = load_index(sift_index)  # pickle-free
    extractor, asmk = pipe[0], pipe[-1]
    assert isinstance(extractor, SIFTExtractor) and isinstance(asmk, ASMKRetriever)
    assert (extractor.n_features, extractor.max_size, asmk.n_clusters) == (200, SIZE, 16)
    assert extractor.cache is None  # the saved index points at no cache
    assert asmk.ids_.tolist() == names and asmk.y_.tolist() == names
    assert asmk.fingerprints_.tolist() == [item_fingerprint(str(root / n)) for n in names]


def test_search_finds_the_warped_original_first(sift_index, folder, photos, tmp_path, capsys):
    root, names = folder
    queries = []
    for i in (1, 3):
        q = tmp_path / f"warped{i}.png"
        Image.fromarray(_warp(photos[i])).save(q)
        queries.append(q)
    code, out, _ = _run(capsys, "search", sift_index, *queries, "-k", "4", "--json")
    assert code == 0
    results = json.loads(out)
    assert [r["results"][0]["name"] for r in results] == [names[1], names[3]]
    # the printed similarity is the ASMK kernel (higher is better), not 1 - it
    pipe = load_index(sift_index)
    K = pipe[-1].similarities(pipe[0].transform([str(q) for q in queries]))
    for qi, res in enumerate(results):
        sims = [h["similarity"] for h in res["results"]]
        assert sims == sorted(sims, reverse=True) and sims[0] > 0
        np.testing.assert_allclose(sims, K[qi][[h["index"] for h in res["results"]]],
                                   atol=1e-6)
    code, out, _ = _run(capsys, "search", sift_index, queries[0], "-k", "2")
    assert code == 0 and "similarity" in out.splitlines()[1]
    assert out.splitlines()[2].split()[-1] == names[1]


def test_append_adds_new_and_skips_unchanged(folder, photos, tmp_path, capsys):
    root, names = folder
    db = tmp_path / "db"
    db.mkdir()
    for n in names[:2]:
        (db / n).write_bytes((root / n).read_bytes())
    index = tmp_path / "grown.joblib"  # the joblib format, for once
    assert _run(capsys, "index", db, "-o", index, "-q", *LOCAL)[0] == 0
    Image.fromarray(photos[4]).save(db / "camera.png")
    code, out, _ = _run(capsys, "index", db, "-o", index, "--append", "-q")
    assert code == 0 and "added 1 image(s)" in out
    pipe = load_index(index)
    assert pipe[-1].ids_.tolist() == names[:2] + ["camera.png"]
    assert pipe[-1].n_clusters == 16  # the codebook as saved
    code, out, _ = _run(capsys, "index", db, "-o", index, "--append", "-q")
    assert code == 0 and "nothing to add" in out
    # an edited image is extracted again, its entry replaced
    Image.fromarray(photos[2]).save(db / names[0])
    code, out, _ = _run(capsys, "index", db, "-o", index, "--append", "-q")
    assert code == 0 and "replaced 1 changed one(s)" in out
    q = tmp_path / "q.png"
    Image.fromarray(_warp(photos[2])).save(q)
    code, out, _ = _run(capsys, "search", index, q, "-k", "1", "--json")
    assert json.loads(out)[0]["results"][0]["name"] == names[0]


@pytest.mark.parametrize("options, words", [
    (["--asmk", "16"], "--asmk applies to local features"),
    (["--local-features", "50"], "--local-features applies to local features"),
    (["--local", "sift"], "give the codebook size"),
    (LOCAL + ["--pooler", "gem"], "--pooler applies to global descriptors"),
    (LOCAL + ["--algorithm", "brute"], "--algorithm applies to global descriptors"),
    (LOCAL + ["--backbone", "resnet18"], "--backbone applies to the network"),
    (LOCAL + ["--pca", "8"], "--pca applies to global descriptors and --local deep"),
    (["--local", "sift", "--asmk", "100000", "--max-size", "64"],
     "--asmk 100000: the codebook of 100000 visual words needs at least as many"),
])
def test_bad_local_options(folder, tmp_path, capsys, options, words):
    root, _ = folder
    code, out, err = _run(capsys, "index", root, "-o", tmp_path / "x.zip", "-q", *options)
    assert code == 2 and words in err, err
    assert not (tmp_path / "x.zip").exists()


def test_index_local_deep(folder, tmp_path, capsys):
    root, names = folder
    index = tmp_path / "deep.zip"
    code, out, _ = _run(capsys, "index", root, "-o", index, "--local", "deep", "--asmk", "8",
                        "--backbone", "resnet18", "--weights", "none", "--layer", "layer2",
                        "--max-size", "64", "--local-features", "20", "--pca", "16",
                        "--device", "cpu", "-q")
    assert code == 0 and "ASMK* codebook of 8 visual words" in out
    pipe = load_index(index)
    assert pipe[0].n_dims_ == 16 and pipe[-1].n_features_in_ == 16
    code, out, _ = _run(capsys, "search", index, root / names[2], "-k", "1", "--json")
    hit = json.loads(out)[0]["results"][0]
    assert hit["name"] == names[2] and hit["similarity"] == pytest.approx(1.0, abs=1e-3)
