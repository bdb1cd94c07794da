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
