"""The verification rule of LocalVerificationReranker: one-to-one matches, the a contrario
threshold (NFA), the retriever's order kept for what does not verify; the deep features'
border cells."""

from math import comb, pi

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skretrieval import NearestNeighborRetriever
from skretrieval.local import LocalFeatures, strongest_cells
from skretrieval.reranking import (
    LocalVerificationReranker,
    distinct_matches,
    false_alarms,
    verified_order,
    verify_matches,
)

pytest.importorskip("cv2")

AFFINE = np.array([[0.9, 0.2, 40.0], [-0.15, 1.1, -20.0]])


def _warp(points):
    return points @ AFFINE[:, :2].T + AFFINE[:, 2]


def test_false_alarms_is_the_binomial_tail_times_the_hypotheses():
    # by hand: 20 matches, affine (3-point samples), 600 x 600 query region, 8 px
    p = pi * 64 / 360_000
    tail = 1 - (1 - p) ** 17 - 17 * p * (1 - p) ** 16  # P(Bin(17, p) >= 2)
    assert false_alarms(20, 5, 360_000, 8.0) == pytest.approx(comb(20, 3) * tail, rel=1e-9)
    # the hypotheses are capped by max_trials
    assert false_alarms(200, 9, 360_000, 8.0, max_trials=50) == pytest.approx(
        false_alarms(200, 9, 360_000, 8.0) * 50 / 2000, rel=1e-9)
    # more inliers: less likely by chance; more matches or a larger radius: more likely
    nfa = false_alarms(100, np.arange(4, 12), 360_000, 8.0)
    assert np.all(np.diff(nfa) < 0)
    assert false_alarms(300, 7, 360_000, 8.0) > false_alarms(30, 7, 360_000, 8.0)
    assert false_alarms(30, 7, 360_000, 16.0) > false_alarms(30, 7, 360_000, 8.0)
    assert false_alarms(2, 2, 1e4, 8.0) == np.inf  # fewer matches than a sample


def test_the_threshold_on_a_hand_made_match_set():
    rng = np.random.default_rng(0)
    true_src = rng.random((7, 2)) * 300
    # 7 exact inliers among 7 matches in a 300 x 300 region: far above chance
    src, dst = true_src, _warp(true_src)
    assert verify_matches(src, dst, significance=1.0, rng=0) == 7
    # the same 7 inliers among 400 matches crowded into a 60 x 60 region, where
    # chance alone gives about as many at 8 px: the count floor verifies, the test not
    noise_src = rng.random((393, 2)) * 300
    noise_dst = rng.random((393, 2)) * 60
    src = np.concatenate([true_src, noise_src])
    dst = np.concatenate([_warp(true_src) * 0.2, noise_dst])
    old = verify_matches(src, dst, min_inliers=5, rng=0)
    assert old >= 7
    assert verify_matches(src, dst, min_inliers=5, rng=0, significance=1.0) == 0
    assert false_alarms(400, old, 60 * 60, 8.0) > 1


def test_distinct_matches_keeps_one_match_per_position():
    q = np.array([[0, 0], [0, 0.2], [10, 10], [20, 20]], float)  # rows 0, 1: one position
    d = np.array([[5, 5], [50, 50], [70, 70]], float)
    pairs = np.array([[0, 0], [1, 1], [2, 0], [3, 2]])
    strength = np.array([0.5, 0.9, 0.8, 0.7])
    got = distinct_matches(pairs, q, d, strength)
    # (1, 1) beats (0, 0) at query (0, 0); then (2, 0) has database (5, 5) alone
    assert got.tolist() == [[1, 1], [2, 0], [3, 2]]


def _unit(rng, n, d=32):
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _order_code(features):
    # the "global descriptor" of these tests: the angle of the first keypoint
    return np.array([[kp[0, 3], 0.0] for kp, _ in features])


def _collection():
    """A query, a true match ranked first by the retriever (4 consistent positions:
    too few to verify), a false image ranked second whose 3 positions (any 3 fit an
    affinity exactly) each carry 4 keypoints, as SIFT's orientations do (12 inliers
    when each keypoint counts), and a third image with nothing in common."""
    rng = np.random.default_rng(0)
    q_pos = rng.random((30, 2)) * 400
    q_desc = _unit(rng, 30)
    # false image: query keypoints 0-11 sit at 3 positions, 4 per position
    q_pos[:12] = np.repeat(rng.random((3, 2)) * 400, 4, axis=0)
    f_pos = np.repeat(rng.random((3, 2)) * 400, 4, axis=0)
    false = (f_pos, q_desc[:12] + 0.05 * _unit(rng, 12))
    true = (np.linalg.solve(AFFINE[:, :2], (q_pos[12:16] - AFFINE[:, 2]).T).T,
            q_desc[12:16] + 0.05 * _unit(rng, 4))
    other = (rng.random((10, 2)) * 400, _unit(rng, 10))

    def entry(pos, desc, code):
        kp = np.column_stack([pos, np.full(len(pos), 4.0), np.full(len(pos), float(code))])
        return kp, desc

    db = LocalFeatures([entry(*true, 1), entry(*false, 2), entry(*other, 3)])
    return db, LocalFeatures([entry(q_pos, q_desc, 0)])


def test_an_unverified_true_match_keeps_its_place():
    db, q = _collection()
    glob = make_pipeline(FunctionTransformer(_order_code),
                         NearestNeighborRetriever(metric="euclidean"))
    params = dict(n_rerank=3, transform="affine", residual_threshold=3.0)
    before = LocalVerificationReranker(glob, n_rerank=0).fit(db).kneighbors(
        q, "all", return_distance=False)
    assert before[0].tolist() == [0, 1, 2]
    # the old rule: the false image's 12 repeated inliers put it above the true match
    old = LocalVerificationReranker(glob, distinct=False, significance=None, order="inliers",
                                    **params).fit(db)
    assert old.inliers(q, [[0, 1, 2]])[0].tolist() == [0, 12, 0]
    assert old.kneighbors(q, "all", return_distance=False)[0].tolist() == [1, 0, 2]
    # the new rule: 3 distinct positions verify nothing; the retriever's order stays
    new = LocalVerificationReranker(glob, **params).fit(db)
    assert new.inliers(q, [[0, 1, 2]])[0].tolist() == [0, 0, 0]
    dist, ind = new.kneighbors(q, "all")
    np.testing.assert_array_equal(ind, before)
    assert np.all(np.diff(dist[0]) >= 0)


def test_a_significant_match_still_goes_first():
    rng = np.random.default_rng(1)
    q_pos = rng.random((40, 2)) * 400
    q_desc = _unit(rng, 40)
    src = np.linalg.solve(AFFINE[:, :2], (q_pos[:12] - AFFINE[:, 2]).T).T
    db = LocalFeatures([(np.column_stack([rng.random((12, 2)) * 400, np.full(12, 4.0),
                                          np.full(12, 1.0)]), _unit(rng, 12)),
                        (np.column_stack([src, np.full(12, 4.0), np.full(12, 2.0)]),
                         q_desc[:12] + 0.05 * _unit(rng, 12))])
    q = LocalFeatures([(np.column_stack([q_pos, np.full(40, 4.0), np.zeros(40)]), q_desc)])
    glob = make_pipeline(FunctionTransformer(_order_code),
                         NearestNeighborRetriever(metric="euclidean"))
    sv = LocalVerificationReranker(glob, n_rerank=2, residual_threshold=3.0).fit(db)
    assert sv.inliers(q, [[0, 1]])[0].tolist() == [0, 12]
    assert sv.kneighbors(q, "all", return_distance=False)[0].tolist() == [1, 0]


def test_verified_images_first_in_the_retrievers_order_or_by_inliers():
    counts = np.array([0, 7, 0, 12, 7])
    order, key = verified_order(counts)
    assert order.tolist() == [1, 3, 4, 0, 2] and np.all(np.diff(key) < 0)
    order, key = verified_order(counts, "inliers")
    assert order.tolist() == [3, 1, 4, 0, 2] and np.all(np.diff(key) < 0)
    assert verified_order(np.zeros(4, int))[0].tolist() == [0, 1, 2, 3]


def test_deep_border_cells_are_not_candidates():
    # a 1-channel 5 x 6 map whose edge cells are the strongest
    m = np.ones((1, 5, 6), np.float32)
    m[0, 0, :] = m[0, -1, :] = m[0, :, 0] = m[0, :, -1] = 10.0
    m[0, 2, 3] = 5.0
    kp, _ = strongest_cells([m], 3, 16.0)
    assert np.all(np.isin(kp[:, 0], [8.0, 88.0]) | np.isin(kp[:, 1], [8.0, 72.0]))
    kp, _ = strongest_cells([m], 3, 16.0, border=1)
    assert kp[0, :2].tolist() == [56.0, 40.0]  # the inner cell (row 2, col 3) first
    assert np.all((kp[:, 0] > 8) & (kp[:, 0] < 88) & (kp[:, 1] > 8) & (kp[:, 1] < 72))
    # a map without inner cells keeps every cell
    assert len(strongest_cells([m[:, :2, :2]], 10, 16.0, border=1)[0]) == 4
