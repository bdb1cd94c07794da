"""ASMKRetriever: kernel and codebook by hand, a warped photo found, growth, persistence."""

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from skretrieval.local import (ASMKRetriever, LocalFeatures, SIFTExtractor, selective_kernel,
                               train_codebook)
from skretrieval.persistence import load_pipeline, save_pipeline

cv2 = pytest.importorskip("cv2")
data = pytest.importorskip("skimage.data")


def _features(rows):
    return LocalFeatures([(np.zeros((len(r), 4)), np.asarray(r, float)) for r in rows])


# two visual words at (0, 0) and (10, 10): 5 copies of each train k-means exactly
CODEBOOK = np.array([[0, 0]] * 5 + [[10, 10]] * 5, float)


def test_selective_kernel_formula():
    u = np.array([-0.5, 0.0, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(selective_kernel(u, 3, 0.0), [0, 0, 0.008, 0.125, 1.0])
    np.testing.assert_allclose(selective_kernel(u, 1, 0.3), [0, 0, 0, 0.5, 1.0])
    np.testing.assert_allclose(selective_kernel(u, 2, -1.0), [-0.25, 0, 0.04, 0.25, 1.0])


def test_codebook_on_a_hand_computed_case():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [5, 0], [0, 5]], float)
    offsets = np.array([[0.1, 0], [-0.1, 0], [0, 0.2], [0, -0.2]])
    D = np.concatenate([c + offsets for c in centres])[rng.permutation(12)]
    for kmeans in ("kmeans", "faiss"):
        if kmeans == "faiss":
            pytest.importorskip("faiss")
        C = train_codebook(D, 3, kmeans=kmeans, seed=0)
        C = C[np.lexsort((C[:, 1].round(3), C[:, 0].round(3)))]
        np.testing.assert_allclose(C, centres[[0, 2, 1]], atol=1e-5)
    with pytest.raises(ValueError, match="at least as many"):
        train_codebook(D[:2], 3)


@pytest.mark.parametrize("binary", [False, True])
def test_kernel_on_a_hand_computed_case(binary):
    db = _features([[[1, 0], [0, 2], [11, 10]],   # word 0: residual sum (1, 2); word 1: (1, 0)
                    [[10, 12]]])                   # word 1: (0, 2)
    q = _features([[[0, 1], [1, 1]]])              # word 0: (1, 2)/... = (1, 2) summed
    asmk = ASMKRetriever(n_clusters=2, binary=binary, kmeans="kmeans").fit(
        db, codebook_features=CODEBOOK)
    rtol = 1e-6 if binary else 2e-3  # ASMK stores its residuals as float16
    np.testing.assert_allclose(np.sort(asmk.centroids_[:, 0]), [0, 10], atol=1e-6)
    S = asmk.similarities(q)
    # query word 0: residuals (0, 1) + (1, 1) = (1, 2); image 0's word 0: (1, 2) too
    # ASMK: u = 1; ASMK*: the signs (+, +) agree, u = 1; image 0 has 2 words
    np.testing.assert_allclose(S[0], [1 / np.sqrt(2), 0.0], rtol=rtol)
    S = asmk.similarities(_features([[[12, 10], [10, 9]]]))  # word 1: (2, -1)
    # image 0's word 1 (1, 0): ASMK u = 2/sqrt(5), sigma = u^3, gamma = 1/sqrt(2);
    # image 1's (0, 2): u = -1/sqrt(5) < 0: nothing.  ASMK*: bits (+, -) vs
    # (+, -) [0 is not > 0] -> u = 1; (-, +) -> u = -1
    first = 1.0 if binary else (2 / np.sqrt(5)) ** 3
    np.testing.assert_allclose(S[0], [first / np.sqrt(2), 0.0], rtol=rtol)
    # database images against themselves score 1
    np.testing.assert_allclose(np.diag(asmk.similarities()), 1.0, rtol=rtol)


@pytest.fixture(scope="module")
def photos():
    imgs = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
            data.immunohistochemistry(), data.stereo_motorcycle()[0]]
    a = imgs[0]
    H = np.array([[0.85, 0.12, 30], [-0.08, 0.9, 20], [2e-4, 1e-4, 1]])
    warped = cv2.warpPerspective(a, H, (a.shape[1], a.shape[0]), borderValue=(90, 90, 90))
    sift = SIFTExtractor(n_features=400, max_size=256)
    return sift, sift.fit_transform(imgs), sift.transform([warped])


@pytest.mark.parametrize("binary", [True, False])
def test_warped_copy_ranks_first(photos, binary):
    _, db, q = photos
    asmk = ASMKRetriever(n_clusters=64, binary=binary, multiple_assignment=2).fit(db)
    dist, ind = asmk.kneighbors(q, n_neighbors="all")
    assert ind[0, 0] == 0 and (1 - dist[0, 0]) > 3 * (1 - dist[0, 1])
    assert np.all(np.diff(dist[0]) >= 0)


def test_partial_fit_and_remove_equal_fit(photos):
    _, db, q = photos
    codebook = db[[0, 2, 4]]
    y = np.array([0, 0, 1, 1, 2, 2])
    full = ASMKRetriever(n_clusters=32).fit(db, y, codebook_features=codebook)
    grown = ASMKRetriever(n_clusters=32).fit(db[:2], y[:2], codebook_features=codebook)
    grown.partial_fit(db[2:4], y[2:4]).partial_fit(db[4:], y[4:])
    np.testing.assert_array_equal(grown.centroids_, full.centroids_)
    for X in (q, None):
        d1, i1 = full.kneighbors(X, "all")
        d2, i2 = grown.kneighbors(X, "all")
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(d1, d2)
    assert grown.score(None) == full.score(None)
    # removing images equals fitting without them (same codebook)
    grown.remove([1, 3])
    part = ASMKRetriever(n_clusters=32).fit(db[[0, 2, 4, 5]], ids=[0, 2, 4, 5],
                                             codebook_features=codebook)
    np.testing.assert_allclose(grown.similarities(q), part.similarities(q))
    assert grown.kneighbors(q, 2, return_ids=True)[1][0, 0] == 0
    with pytest.raises(ValueError, match="not in the database"):
        grown.remove([1])
    with pytest.raises(ValueError, match="labels"):
        grown.partial_fit(db[:1])


def test_save_load_same_rankings(photos, tmp_path):
    sift, db, q = photos
    imgs = [data.astronaut(), data.chelsea(), data.coffee()]
    pipe = make_pipeline(SIFTExtractor(n_features=300, max_size=256),
                         ASMKRetriever(n_clusters=32, binary=False)).fit(imgs, [0, 1, 2])
    save_pipeline(pipe, tmp_path / "model")
    back = load_pipeline(tmp_path / "model")
    Q = pipe[:-1].transform([imgs[1], imgs[0]])
    d1, i1 = pipe[-1].kneighbors(Q, "all")
    d2, i2 = back[-1].kneighbors(back[:-1].transform([imgs[1], imgs[0]]), "all")
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2)
    assert back[-1].entry_vectors_.dtype == np.float16
    np.testing.assert_array_equal(back[-1].y_, [0, 1, 2])


def test_queries_and_images_without_features(photos):
    _, db, _ = photos
    empty = LocalFeatures([(np.zeros((0, 4)), np.zeros((0, 128)))])
    asmk = ASMKRetriever(n_clusters=16).fit(LocalFeatures(list(db) + list(empty)))
    assert asmk.n_samples_fit_ == 7
    dist, ind = asmk.kneighbors(empty, n_neighbors=3)
    np.testing.assert_array_equal(dist, 1.0)
    np.testing.assert_array_equal(ind, [[0, 1, 2]])
    # the empty database image is never similar to anything
    assert asmk.similarities(db[:2])[:, 6].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="no local descriptor"):
        ASMKRetriever(n_clusters=2).fit(empty)
    with pytest.raises(ValueError, match="dimensions"):
        asmk.kneighbors(_features([[[0.0, 1.0]]]))
    with pytest.raises(TypeError, match="LocalFeatures"):
        asmk.kneighbors(np.zeros((2, 128)))
