"""Spatial verification with local features (SIFT): OpenCV's estimators, the fall-backs,
re-ranking a global and an ASMK short list."""

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skretrieval import NearestNeighborRetriever

from skretrieval.local import ASMKRetriever, LocalFeatures, SIFTExtractor
from skretrieval.persistence import load_pipeline, save_pipeline
from skretrieval.reranking import FALLBACKS, LocalVerificationReranker, verify_matches

cv2 = pytest.importorskip("cv2")
data = pytest.importorskip("skimage.data")


def _similar_points(n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.random((n_in + n_out, 2)) * 400
    angle, scale, shift = 0.4, 1.3, np.array([25.0, -10.0])
    R = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ R.T + shift
    dst[n_in:] = rng.random((n_out, 2)) * 400  # outliers
    return src, dst


@pytest.mark.parametrize("transform", ["similarity", "affine", "homography"])
@pytest.mark.parametrize("method", sorted(FALLBACKS))
def test_estimators_find_the_inliers(transform, method):
    src, dst = _similar_points(40, 30)
    got = verify_matches(src, dst, transform, method, residual_threshold=3.0, rng=0)
    assert 38 <= got <= 42  # the 40 true matches (a chance outlier at most)
    # too few matches, or fewer inliers than min_inliers: 0
    assert verify_matches(src[:3], dst[:3], transform, method, min_inliers=5) == 0
    rng = np.random.default_rng(1)
    noise = verify_matches(rng.random((30, 2)) * 400, rng.random((30, 2)) * 400, transform,
                           method, residual_threshold=2.0, min_inliers=8, rng=0)
    assert noise == 0


@pytest.fixture(scope="module")
def scenes():
    a = data.astronaut()
    H = np.array([[0.85, 0.12, 30], [-0.08, 0.9, 20], [2e-4, 1e-4, 1]])
    warped = cv2.warpPerspective(a, H, (a.shape[1], a.shape[0]), borderValue=(90, 90, 90))
    db = [data.chelsea(), data.coffee(), data.rocket(), a, data.immunohistochemistry()]
    return db, [warped], np.arange(5)


def test_reranks_a_global_short_list_with_sift(scenes):
    db, q, y = scenes
    # a blind global search: every image ties, ranked by row
    blind = FunctionTransformer(lambda X: np.ones((len(X), 2)))
    glob = make_pipeline(blind, NearestNeighborRetriever(metric="euclidean"))
    before = glob.fit(db, y)[-1].kneighbors(glob[:-1].transform(q), "all",
                                            return_distance=False)
    sv = LocalVerificationReranker(glob, SIFTExtractor(n_features=500, max_size=256),
                                   n_rerank=5, transform="homography").fit(db, y)
    dist, ind = sv.kneighbors(q, "all")
    assert ind[0, 0] == 3 and before[0].tolist() == [0, 1, 2, 3, 4]
    assert np.all(np.diff(dist[0]) >= 0)
    counts = sv.inliers(q, ind[:, :2])
    assert counts[0, 0] >= 20 and counts[0, 1] == 0
    # nothing verifies: the retriever's order is kept
    none = LocalVerificationReranker(glob, SIFTExtractor(n_features=500, max_size=256),
                                     n_rerank=5, min_inliers=10_000).fit(db, y)
    np.testing.assert_array_equal(none.kneighbors(q, "all", return_distance=False), before)


def test_reranks_asmk_and_round_trips(scenes, tmp_path):
    db, q, y = scenes
    sift = SIFTExtractor(n_features=400, max_size=256)
    feats, qf = sift.fit_transform(db), sift.transform(q)
    sv = LocalVerificationReranker(ASMKRetriever(n_clusters=32), n_rerank=3).fit(feats, y)
    ind = sv.kneighbors(qf, 4, return_distance=False)
    assert ind[0, 0] == 3
    loo = sv.kneighbors(None, 2, return_distance=False)
    assert not np.any(loo == np.arange(5)[:, None])
    assert sv.score(qf, [3]) == 1.0
    pipe = make_pipeline(SIFTExtractor(n_features=300, max_size=256),
                         LocalVerificationReranker(ASMKRetriever(n_clusters=16), n_rerank=3))
    pipe.fit(db, y)
    save_pipeline(pipe, tmp_path / "m")
    back = load_pipeline(tmp_path / "m")
    a = pipe[-1].kneighbors(pipe[:-1].transform(q), "all")
    b = back[-1].kneighbors(back[:-1].transform(q), "all")
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0])
    # a query without features keeps the retriever's order
    empty = LocalFeatures([(np.zeros((0, 4)), np.zeros((0, 128)))])
    assert sv.kneighbors(empty, 3).__len__() == 2
