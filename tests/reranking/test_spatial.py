"""SpatialVerificationReranker: against a straightforward reference, Pipeline, GridSearchCV,
joblib and save_pipeline round trips."""

from itertools import combinations
from math import comb

import joblib
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.utils import check_random_state

from skretrieval import (
    ConvFeatureExtractor,
    FeatureMaps,
    GeMPooler,
    NearestNeighborRetriever,
    QueryExpansionRetriever,
    RetrievalMAP,
    SpatialVerificationReranker,
)
from skretrieval.reranking import count_inliers
from skretrieval.persistence import load_pipeline, save_pipeline

pytest.importorskip("skimage")
from skimage.transform import AffineTransform, SimilarityTransform  # noqa: E402

C, N_FEAT, STRIDE = 16, 30, 32.0
# off the lattice distances 32 * sqrt(k): no residual sits on the threshold,
# where the library's and scikit-image's rounding could disagree
THRESHOLD = 0.9 * STRIDE


def _synthetic():
    """A query, a rotated + shifted copy of its maps, a cell-shuffled copy, random maps."""
    rng = np.random.default_rng(0)
    q = (rng.random((C, 10, 10)) ** 4).astype(np.float32)
    moved = (0.01 * rng.random((C, 14, 14))).astype(np.float32)
    moved[:, 2:12, 3:13] = np.rot90(q, k=1, axes=(1, 2))        # a similarity transform
    shuffled = q.reshape(C, -1)[:, rng.permutation(100)].reshape(C, 10, 10)  # same GeM
    others = [(rng.random((C, 10, 10)) ** 4).astype(np.float32) for _ in range(6)]
    db = FeatureMaps([(m,) for m in [shuffled, others[0], moved] + others[1:]])
    return FeatureMaps([(q,)]), db


def _reference_features(m, n):
    """Top-n cells by norm: centres in pixels, L2-normalised vectors (plain loops)."""
    cells = []
    for r in range(m.shape[1]):
        for c in range(m.shape[2]):
            v = m[:, r, c].astype(np.float64)
            cells.append((-np.linalg.norm(v), r * m.shape[2] + c, ((c + .5) * STRIDE, (r + .5) * STRIDE), v))
    cells.sort(key=lambda t: (t[0], t[1]))
    kp = np.array([t[2] for t in cells[:n]])
    desc = np.array([t[3] / np.linalg.norm(t[3]) for t in cells[:n]])
    return kp, desc


def _reference_inliers(qm, dm, seed, i, model=SimilarityTransform, n_min=2, min_inliers=4):
    q_kp, q_d = _reference_features(qm, N_FEAT)
    d_kp, d_d = _reference_features(dm, N_FEAT)
    # the database side as stored: float16
    d_kp, d_d = d_kp.astype(np.float16).astype(np.float64), d_d.astype(np.float16).astype(np.float64)
    S = q_d @ d_d.T
    pairs = [(a, int(np.argmax(S[a]))) for a in range(len(q_d))
             if int(np.argmax(S[:, int(np.argmax(S[a]))])) == a]
    if len(pairs) < max(min_inliers, n_min + 1):
        return 0
    src = np.array([d_kp[b] for _, b in pairs])
    dst = np.array([q_kp[a] for a, _ in pairs])
    return _reference_ransac(src, dst, model, n_min, min_inliers,
                             np.random.default_rng([seed, i]))


def _estimate(model, src, dst):
    """scikit-image's least-squares transform through the points, None if degenerate."""
    if hasattr(model, "from_estimate"):  # scikit-image >= 0.26
        t = model.from_estimate(src, dst)
        return t if t else None
    t = model()
    return t if t.estimate(src, dst) else None


def _reference_ransac(src, dst, model, n_min, min_inliers, rng, max_trials=100):
    """RANSAC in a loop, one scikit-image estimate per hypothesis: the library's
    sampling rule, the first best hypothesis refitted on its inliers."""
    m = len(src)
    if comb(m, n_min) <= max_trials:
        samples = list(combinations(range(m), n_min))
    else:
        samples = rng.permuted(np.tile(np.arange(m), (max_trials, 1)), axis=1)[:, :n_min]
    best = None
    for sample in samples:
        t = _estimate(model, src[list(sample)], dst[list(sample)])
        if t is None or not np.isfinite(t.params).all():
            continue
        inl = np.linalg.norm(t(src) - dst, axis=1) < THRESHOLD
        if best is None or inl.sum() > best.sum():
            best = inl
    if best is None or not best.any():
        return 0
    t = _estimate(model, src[best], dst[best])
    n = max(int(best.sum()), int((np.linalg.norm(t(src) - dst, axis=1) < THRESHOLD).sum()))
    return n if n >= min_inliers else 0


@pytest.mark.parametrize("transform, model, n_min", [("similarity", SimilarityTransform, 2),
                                                     ("affine", AffineTransform, 3)])
def test_inliers_and_ranking_match_the_reference(transform, model, n_min):
    query, db = _synthetic()
    sv = SpatialVerificationReranker(GeMPooler(), n_rerank=8, max_features=N_FEAT,
                                     n_components=None, transform=transform,
                                     residual_threshold=THRESHOLD).fit(db)
    seed = check_random_state(0).randint(2**31 - 1)
    ref = [_reference_inliers(query[0][0], db[i][0], seed, i, model, n_min) for i in range(8)]
    counts = sv.inliers(query, [list(range(8))])[0]
    np.testing.assert_array_equal(counts, ref)
    assert counts[2] == N_FEAT                              # every feature of the copy
    assert counts[0] < N_FEAT // 2                          # shuffled: no consistent geometry
    glob = sv.retriever_.kneighbors(sv._queries(query)[0], n_neighbors=8)[1][0]
    assert glob[0] == 0 and glob[1] != 2 or glob[0] != 2    # the copy is not first globally
    dist, ind = sv.kneighbors(query, n_neighbors="all")
    # the reference ranking: inliers, then the global similarity
    sims = sv.global_ @ sv._queries(query)[0][0]
    want = sorted(range(8), key=lambda i: (-ref[i], -sims[i]))
    assert ind[0, 0] == 2 and list(ind[0]) == want
    assert np.all(np.diff(dist[0]) > 0)


@pytest.mark.parametrize("transform, true", [
    ("similarity", SimilarityTransform(scale=1.3, rotation=0.4, translation=(20, -10))),
    ("affine", AffineTransform(scale=(1.2, 0.8), rotation=0.3, shear=0.2, translation=(5, 7)))])
def test_count_inliers_finds_the_transform_among_outliers(transform, true):
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 400, (60, 2))
    dst = true(src) + rng.normal(0, 1, src.shape)
    dst[:25] = rng.uniform(0, 400, (25, 2))                    # 25 wrong matches
    expected = int((np.linalg.norm(true(src) - dst, axis=1) < 8).sum())
    assert expected >= 35
    assert count_inliers(src, dst, transform, 8.0, max_trials=200, rng=0) == expected
    # few matches: every minimal sample is tried, whatever the seed
    few = [count_inliers(src[25:31], dst[25:31], transform, 8.0, rng=s) for s in range(3)]
    assert few == [6, 6, 6]
    # too few matches, or only degenerate samples (one source point; a line for affine)
    assert count_inliers(src[25:28], dst[25:28], transform, 8.0, min_inliers=4) == 0
    assert count_inliers(np.zeros((10, 2)), dst[25:35], transform, 8.0) == 0
    line = np.stack([np.arange(10.0), 2 * np.arange(10.0)], 1)
    if transform == "affine":
        assert count_inliers(line, line + 5, transform, 1.0) == 0
    else:
        assert count_inliers(line, line + 5, transform, 1.0) == 10


def test_short_list_only_and_leave_one_out():
    _, db = _synthetic()
    y = np.array([0, 1, 0, 1, 2, 2, 3, 3])
    sv = SpatialVerificationReranker(GeMPooler(), n_rerank=3, max_features=N_FEAT).fit(db, y)
    g_dist, g_ind = sv.retriever_.kneighbors(sv.global_[:4], n_neighbors=8)
    dist, ind = sv.kneighbors(db[:4], n_neighbors="all")
    for j in range(4):
        assert set(ind[j, :3]) == set(g_ind[j, :3])
        np.testing.assert_array_equal(ind[j, 3:], g_ind[j, 3:])
        np.testing.assert_allclose(dist[j, 3:], g_dist[j, 3:], atol=1e-6)
        assert np.all(np.diff(dist[j]) >= -1e-6)
    loo = sv.kneighbors(None, n_neighbors="all")[1]
    assert loo.shape == (8, 7) and not (loo == np.arange(8)[:, None]).any()
    assert 0 <= sv.score() <= 1 and sv.predict(db[:2]).shape == (2, 8)
    # compact storage: float16, at most max_features * (2 d + 4) + 8 bytes per image
    d = sv.local_descriptors_.shape[1]
    assert sv.local_descriptors_.dtype == sv.local_keypoints_.dtype == np.float16
    stored = sv.local_descriptors_.nbytes + sv.local_keypoints_.nbytes + sv.local_offsets_.nbytes
    assert stored <= 8 * (N_FEAT * (2 * d + 4) + 8) + 8


def test_query_expansion_keeps_the_verified_first():
    query, db = _synthetic()
    sv = SpatialVerificationReranker(GeMPooler(), n_rerank=8, max_features=N_FEAT,
                                     qe_k=1).fit(db)
    plain = SpatialVerificationReranker(GeMPooler(), n_rerank=8, max_features=N_FEAT).fit(db)
    counts = plain.inliers(query, [list(range(8))])[0]
    dist, ind = sv.kneighbors(query, n_neighbors="all")
    n_ver = int((counts > 0).sum())
    assert n_ver >= 1 and ind[0, 0] == 2
    np.testing.assert_array_equal(ind[0, :n_ver], plain.kneighbors(query, "all")[1][0, :n_ver])
    assert sorted(ind[0]) == list(range(8)) and np.all(np.diff(dist[0]) >= -1e-6)


def _tiny_images(n, seed):
    rng = np.random.default_rng(seed)
    return [(rng.random((48, 64, 3)) * 255).astype(np.uint8) for _ in range(n)]


def test_pipeline_grid_search_and_round_trips(tmp_path):
    images, y = _tiny_images(12, 1), np.arange(12) % 3
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu").fit()
    maps = ext.transform(images)
    grid = GridSearchCV(
        make_pipeline(SpatialVerificationReranker(GeMPooler(), n_rerank=4, max_features=12,
                                                  n_components=8)),
        {"spatialverificationreranker__transform": ["similarity", "affine"],
         "spatialverificationreranker__matching": ["mutual", "ratio"]},
        scoring=RetrievalMAP(), cv=StratifiedKFold(2))
    grid.fit(maps, y)
    assert len(grid.cv_results_["params"]) == 4 and 0 <= grid.best_score_ <= 1
    pipe = make_pipeline(
        ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu"),
        SpatialVerificationReranker(GeMPooler(), QueryExpansionRetriever(
            NearestNeighborRetriever(), dba_k=2), n_rerank=5, max_features=12, n_components=8,
            qe_k=2)).fit(images, y)
    queries = _tiny_images(3, 5)
    before = pipe[-1].kneighbors(pipe[:-1].transform(queries), n_neighbors="all")
    assert pipe[-1].local_components_.shape == (8, pipe[0].n_channels_)
    joblib.dump(pipe, tmp_path / "p.joblib")
    save_pipeline(pipe, tmp_path / "m.zip")
    for loaded in (joblib.load(tmp_path / "p.joblib"),
                   load_pipeline(tmp_path / "m.zip")):
        after = loaded[-1].kneighbors(loaded[:-1].transform(queries), n_neighbors="all")
        np.testing.assert_array_equal(before[1], after[1])
        np.testing.assert_allclose(before[0], after[0], atol=1e-5)


def test_parameter_errors():
    _, db = _synthetic()
    with pytest.raises(ValueError, match="max_features"):
        SpatialVerificationReranker(GeMPooler(), max_features=0).fit(db)
    with pytest.raises(ValueError, match="transform"):
        SpatialVerificationReranker(GeMPooler(), transform="projective").fit(db)
    with pytest.raises(ValueError, match="euclidean|similarities"):
        SpatialVerificationReranker(GeMPooler(),
                                    NearestNeighborRetriever(metric="euclidean")).fit(db)
