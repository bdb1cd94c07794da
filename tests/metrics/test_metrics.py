"""Tests for skretrieval.metrics."""

import math
import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skretrieval.metrics import (
    RetrievalMAP,
    average_precision,
    average_precision_from_relevance,
    mean_average_precision,
    mean_precision_at_k,
    precision_at_k,
    ukbench_score,
)


# ---------------------------------------------------------------------------
# independent reference: a line-by-line Python port of the logic of Oxford's
# compute_ap.cpp (running old_recall / old_precision, junk skipped)
# ---------------------------------------------------------------------------
def reference_ap(ranking, positives, junk):
    positives, junk = set(positives), set(junk)
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    intersect_size = 0
    j = 0  # rank in the junk-free list
    for item in ranking:
        if item in junk:
            continue
        if item in positives:
            intersect_size += 1
        recall = intersect_size / len(positives)
        precision = intersect_size / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
        j += 1
    return ap


def random_query(rng, n_db):
    k = int(rng.integers(0, n_db + 1))  # truncated rankings, sometimes empty
    ranking = rng.permutation(n_db)[:k]
    perm = rng.permutation(n_db)
    n_pos = int(rng.integers(1, 12))
    n_junk = int(rng.integers(0, 6))
    positives = perm[:n_pos]
    junk = perm[n_pos : n_pos + n_junk]
    return ranking, positives, junk


# ---------------------------------------------------------------------------
# average_precision: hand-computed cases
# ---------------------------------------------------------------------------
def test_perfect_ranking_is_one():
    assert average_precision([3, 1, 2, 0], positives=[3, 1]) == 1.0
    assert average_precision([5], positives={5}) == 1.0
    assert mean_average_precision([[3, 1, 2], [2, 0, 1]], [[3, 1], [2]]) == 1.0


def test_hand_computed_case():
    # 2 positives at 1-based ranks 1 and 3 (0-based ranks 0 and 2):
    #   first  (j=0, r=0): p0 = 1,       p1 = 1/1 = 1    -> (1 + 1) / 2   = 1
    #   second (j=1, r=2): p0 = 1/2,     p1 = 2/3        -> (1/2 + 2/3)/2 = 7/12
    #   AP = (1 + 7/12) / 2 = 19/24
    assert average_precision([10, 11, 12, 13], positives=[10, 12]) == pytest.approx(
        19 / 24, abs=1e-15
    )
    # 2 positives at 1-based ranks 2 and 4:
    #   (j=0, r=1): p0 = 0/1 = 0, p1 = 1/2 -> 1/4
    #   (j=1, r=3): p0 = 1/3, p1 = 2/4     -> (1/3 + 1/2)/2 = 5/12
    #   AP = (1/4 + 5/12) / 2 = 1/3
    assert average_precision([0, 1, 2, 3], positives=[1, 3]) == pytest.approx(
        1 / 3, abs=1e-15
    )
    # a single positive at 1-based rank 1 of a long list is perfect; at rank
    # 3: p0 = 0/2, p1 = 1/3 -> AP = 1/6
    assert average_precision([0, 1, 2], positives=[2]) == pytest.approx(1 / 6)


def test_differs_from_sklearn_average_precision_score():
    from sklearn.metrics import average_precision_score

    # sklearn's step-wise AP of [1, 0, 1] is (1 + 2/3) / 2 = 5/6, not 19/24
    sk = average_precision_score([1, 0, 1, 0], [4, 3, 2, 1])
    assert sk == pytest.approx(5 / 6)
    assert average_precision([0, 1, 2, 3], [0, 2]) == pytest.approx(19 / 24)


def test_junk_is_removed_from_the_ranking():
    ranking = [0, 1, 2, 3]
    positives = [1, 3]
    # item 0 counted as a negative: positives at 0-based ranks 1 and 3 -> 1/3
    as_negative = average_precision(ranking, positives)
    assert as_negative == pytest.approx(1 / 3)
    # item 0 as junk: the junk-free ranking is [1, 2, 3], positives at ranks
    # 0 and 2 -> 19/24 (exactly the hand case above)
    as_junk = average_precision(ranking, positives, junk=[0])
    assert as_junk == pytest.approx(19 / 24, abs=1e-15)
    assert as_junk > as_negative
    # junk between the positives: [1, 3] remain adjacent -> perfect
    assert average_precision(ranking, positives, junk=[0, 2]) == 1.0
    # junk ranked after every positive changes nothing
    assert average_precision([1, 3, 0, 2], positives, junk=[2]) == 1.0
    # junk not in the ranking changes nothing
    assert average_precision(ranking, positives, junk=[99]) == as_negative


def test_truncated_ranking_missing_positives():
    # 3 positives, only one retrieved at rank 0: (1 + 1)/2 / 3 = 1/3
    assert average_precision([4, 5], positives=[4, 7, 8]) == pytest.approx(1 / 3)
    # none retrieved
    assert average_precision([0, 1, 2], positives=[5, 6]) == 0.0
    # empty ranking
    assert average_precision([], positives=[1]) == 0.0
    assert average_precision(np.array([], dtype=int), positives=[1]) == 0.0
    # same positives, hits at the same ranks: truncation only removes the
    # contribution of the unretrieved positive
    full = average_precision([4, 0, 7, 1, 8], positives=[4, 7, 8])
    trunc = average_precision([4, 0, 7], positives=[4, 7, 8])
    last = ((2 / 4 + 3 / 5) / 2) / 3
    assert full - trunc == pytest.approx(last, abs=1e-15)


def test_no_positives_is_nan():
    assert math.isnan(average_precision([0, 1, 2], positives=[]))
    assert math.isnan(average_precision([0, 1, 2], positives=[], junk=[1]))


def test_positives_may_be_any_iterable():
    expected = 19 / 24
    for pos in ([0, 2], (0, 2), {0, 2}, np.array([2, 0]), range(0, 3, 2), iter([0, 2])):
        assert average_precision([0, 1, 2], pos) == pytest.approx(expected)
    # repeated positives are a set
    assert average_precision([0, 1, 2], [0, 2, 2, 0]) == pytest.approx(expected)


# ---------------------------------------------------------------------------
# mean_average_precision
# ---------------------------------------------------------------------------
def test_mean_average_precision_hand_case():
    rankings = np.array([[10, 11, 12, 13], [0, 1, 2, 3]])
    mAP, ap = mean_average_precision(rankings, [[10, 12], [1, 3]], return_ap=True)
    np.testing.assert_allclose(ap, [19 / 24, 1 / 3], atol=1e-15)
    assert mAP == pytest.approx((19 / 24 + 1 / 3) / 2, abs=1e-15)
    assert isinstance(mAP, float)


def test_mean_average_precision_ragged_list_and_junk():
    rankings = [[0, 1, 2, 3], [5], []]
    positives = [[1, 3], [5, 6], [2]]
    junk = [[0], [], None]
    mAP, ap = mean_average_precision(rankings, positives, junk, return_ap=True)
    np.testing.assert_allclose(ap, [19 / 24, 1 / 2, 0.0], atol=1e-15)
    assert mAP == pytest.approx((19 / 24 + 1 / 2) / 3)


def test_mean_skips_queries_without_positives():
    rankings = np.array([[0, 1, 2], [0, 1, 2], [2, 1, 0]])
    positives = [[0], [], [2, 1]]
    with pytest.warns(UndefinedMetricWarning, match="1 of 3 queries"):
        mAP, ap = mean_average_precision(rankings, positives, return_ap=True)
    assert mAP == 1.0
    assert ap[0] == 1.0 and math.isnan(ap[1]) and ap[2] == 1.0


def test_mean_all_queries_without_positives_is_nan():
    with pytest.warns(UndefinedMetricWarning, match="2 of 2 queries"):
        mAP = mean_average_precision([[0, 1], [1, 0]], [[], set()])
    assert math.isnan(mAP)


def test_mean_no_warning_when_all_defined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean_average_precision([[0, 1]], [[1]])


def test_matches_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    rankings, positives, junk, expected = [], [], [], []
    for _ in range(300):
        n_db = int(rng.integers(1, 60))
        ranking, pos, jnk = random_query(rng, n_db)
        rankings.append(ranking)
        positives.append(pos)
        junk.append(jnk)
        expected.append(reference_ap(ranking, pos, jnk))
    expected = np.array(expected)

    mAP, ap = mean_average_precision(rankings, positives, junk, return_ap=True)
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
    assert abs(mAP - expected.mean()) < 1e-12

    for i in range(0, 300, 7):
        assert abs(average_precision(rankings[i], positives[i], junk[i]) - expected[i]) < 1e-12

    # average_precision_from_relevance on junk-free relevance rows, padded
    # with False up to a common width (padding changes nothing)
    width = max(len(r) for r in rankings)
    relevance = np.zeros((len(rankings), width), dtype=bool)
    for i, (r, p, j) in enumerate(zip(rankings, positives, junk)):
        clean = [x for x in r if x not in set(j)]
        relevance[i, : len(clean)] = np.isin(clean, p)
    n_pos = np.array([len(p) for p in positives])
    ap_rel = average_precision_from_relevance(relevance, n_pos)
    np.testing.assert_allclose(ap_rel, expected, rtol=0, atol=1e-12)


def test_matches_reference_on_2d_full_rankings():
    rng = np.random.default_rng(1)
    n_queries, n_db = 200, 300
    rankings = np.argsort(rng.random((n_queries, n_db)), axis=1)
    positives, junk = [], []
    for _ in range(n_queries):
        perm = rng.permutation(n_db)
        n_pos = int(rng.integers(1, 30))
        positives.append(perm[:n_pos])
        junk.append(perm[n_pos : n_pos + int(rng.integers(0, 30))])
    expected = [reference_ap(r, p, j) for r, p, j in zip(rankings, positives, junk)]
    mAP, ap = mean_average_precision(rankings, positives, junk, return_ap=True)
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
    # top-k truncation of the same rankings
    expected_k = [reference_ap(r[:50], p, j) for r, p, j in zip(rankings, positives, junk)]
    ap_k = mean_average_precision(rankings[:, :50], positives, junk, return_ap=True)[1]
    np.testing.assert_allclose(ap_k, expected_k, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# average_precision_from_relevance
# ---------------------------------------------------------------------------
def test_from_relevance_hand_cases():
    relevance = np.array(
        [
            [True, False, True, False],  # 19/24
            [False, True, False, True],  # 1/3
            [True, False, False, False],  # 1 of 3 positives retrieved -> 1/3
            [False, False, False, False],  # positive never retrieved -> 0
            [False, False, False, False],  # no positives -> nan
        ]
    )
    ap = average_precision_from_relevance(relevance, [2, 2, 3, 1, 0])
    np.testing.assert_allclose(ap[:4], [19 / 24, 1 / 3, 1 / 3, 0.0], atol=1e-15)
    assert math.isnan(ap[4])
    assert ap.shape == (5,) and ap.dtype == np.float64
    # 0/1 integers are accepted
    np.testing.assert_allclose(
        average_precision_from_relevance(relevance.astype(int)[:4], [2, 2, 3, 1]),
        ap[:4],
    )


def test_from_relevance_empty_shapes():
    assert average_precision_from_relevance(np.zeros((0, 5), bool), []).shape == (0,)
    np.testing.assert_array_equal(
        average_precision_from_relevance(np.zeros((2, 0), bool), [1, 3]), [0.0, 0.0]
    )


def test_from_relevance_errors():
    with pytest.raises(ValueError, match="2-D"):
        average_precision_from_relevance(np.array([True, False]), [1])
    with pytest.raises(ValueError, match="boolean"):
        average_precision_from_relevance(np.array([[0.5, 1.0]]), [1])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        average_precision_from_relevance(np.ones((2, 3), bool), [3])
    with pytest.raises(ValueError, match="non-negative"):
        average_precision_from_relevance(np.zeros((1, 3), bool), [-1])
    with pytest.raises(ValueError, match="integer"):
        average_precision_from_relevance(np.zeros((1, 3), bool), [1.5])
    with pytest.raises(ValueError, match=r"row 1 .* 2 relevant items"):
        average_precision_from_relevance(
            np.array([[True, False], [True, True]]), [1, 1]
        )


# ---------------------------------------------------------------------------
# precision@k and UKBench
# ---------------------------------------------------------------------------
def test_precision_at_k_hand_cases():
    ranking = [4, 2, 9, 1, 7]
    positives = [4, 9, 7]
    assert precision_at_k(ranking, positives, 1) == 1.0
    assert precision_at_k(ranking, positives, 2) == 0.5
    assert precision_at_k(ranking, positives, 3) == pytest.approx(2 / 3)
    np.testing.assert_allclose(
        precision_at_k(ranking, positives, [1, 2, 5]), [1.0, 0.5, 3 / 5]
    )
    # junk removed before counting: junk-free ranking is [4, 9, 1, 7]
    assert precision_at_k(ranking, positives, 2, junk=[2]) == 1.0
    # truncated: fewer than k items still divide by k
    assert precision_at_k([4, 9], positives, 4) == 0.5
    assert precision_at_k([], positives, 3) == 0.0
    assert math.isnan(precision_at_k(ranking, [], 3))
    assert isinstance(precision_at_k(ranking, positives, np.int64(2)), float)


def test_mean_precision_at_k():
    rankings = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]])
    positives = [[0, 1], [0, 1], []]
    with pytest.warns(UndefinedMetricWarning, match="1 of 3 queries"):
        p = mean_precision_at_k(rankings, positives, [1, 2, 4])
    np.testing.assert_allclose(p, [0.5, 0.5, 0.5])
    with pytest.warns(UndefinedMetricWarning):
        assert mean_precision_at_k(rankings, positives, 2, junk=[[], [3, 2], []]) == 1.0
    with pytest.warns(UndefinedMetricWarning, match="1 of 1"):
        assert math.isnan(mean_precision_at_k([[0]], [[]], 1))


def test_ukbench_score():
    # a query is its own first result on UKBench and counts
    rankings = np.array(
        [
            [0, 1, 2, 3, 4],  # all 4 images of the object in the top 4 -> 4
            [1, 5, 0, 6, 2],  # 1, 0 -> 2 (2 is at rank 5, not counted)
            [8, 9, 10, 11, 2],  # 0
        ]
    )
    obj = [0, 1, 2, 3]
    assert ukbench_score(rankings, [obj, obj, obj]) == pytest.approx(2.0)
    assert ukbench_score([[0, 1, 2, 3]], [obj]) == 4.0
    assert ukbench_score([[0, 7]], [obj]) == 1.0  # shorter ranking allowed


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------
def test_duplicate_index_raises():
    with pytest.raises(ValueError, match="duplicate index 3"):
        average_precision([1, 3, 2, 3], positives=[1])
    with pytest.raises(ValueError, match=r"ranking\[1\] contains duplicate index 0"):
        mean_average_precision([[0, 1], [0, 0]], [[0], [0]])
    with pytest.raises(ValueError, match="duplicate index 5"):
        precision_at_k([5, 5], [5], 1)
    with pytest.raises(ValueError, match="duplicate"):
        ukbench_score([[1, 1, 2, 3]], [[1]])


def test_positive_and_junk_overlap_raises():
    with pytest.raises(ValueError, match=r"\{2\} are both in positives and in junk"):
        average_precision([0, 1, 2], positives=[0, 2], junk=[2, 1])
    with pytest.raises(ValueError, match=r"positives\[0\]"):
        mean_average_precision([[0, 1]], [[0]], [[0]])


@pytest.mark.parametrize(
    "ranking, match",
    [
        (np.array([[0, 1], [2, 3]]), "1-D"),
        (np.array([0.0, 1.0]), "integer"),
        (np.array([True, False]), "integer"),
        (["a", "b"], "integer"),
        ([0, -1], "non-negative"),
        (3, "1-D"),
    ],
)
def test_bad_ranking(ranking, match):
    with pytest.raises(ValueError, match=match):
        average_precision(ranking, positives=[0])


def test_bad_positives_and_junk():
    with pytest.raises(TypeError, match="iterable"):
        average_precision([0, 1], positives=0)
    with pytest.raises(TypeError, match="iterable"):
        average_precision([0, 1], positives="01")
    with pytest.raises(ValueError, match="integer"):
        average_precision([0, 1], positives=[0.5])
    with pytest.raises(ValueError, match="junk must contain non-negative"):
        average_precision([0, 1], positives=[0], junk=[-2])


def test_bad_mean_inputs():
    with pytest.raises(ValueError, match="2 entries but there are 3"):
        mean_average_precision([[0], [1], [2]], [[0], [1]])
    with pytest.raises(ValueError, match="junk has 1 entries"):
        mean_average_precision([[0], [1]], [[0], [1]], junk=[[]])
    with pytest.raises(ValueError, match="2-D array"):
        mean_average_precision(np.arange(3), [[0], [1], [2]])
    with pytest.raises(TypeError, match="rankings"):
        mean_average_precision(5, [[0]])
    with pytest.raises(ValueError, match="required"):
        mean_average_precision([[0]], None)


@pytest.mark.parametrize("k", [0, -1, 1.5, [1, 0], [], "3", True])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k([0, 1], [0], k)


# ---------------------------------------------------------------------------
# RetrievalMAP scorer
# ---------------------------------------------------------------------------
class FakeRetriever(BaseEstimator):
    """Cosine brute-force retriever whose score is the label mAP."""

    def __init__(self, power=1.0):
        self.power = power

    def fit(self, X, y):
        X = np.asarray(X, dtype=float)
        self.db_ = X / np.linalg.norm(X, axis=1, keepdims=True)
        self.db_labels_ = np.asarray(y)
        return self

    def score(self, X, y, n_neighbors=None):
        X = np.asarray(X, dtype=float)
        q = X / np.linalg.norm(X, axis=1, keepdims=True)
        sim = np.sign(q @ self.db_.T) * np.abs(q @ self.db_.T) ** self.power
        order = np.argsort(-sim, axis=1, kind="stable")
        if n_neighbors is not None:
            order = order[:, :n_neighbors]
        y = np.asarray(y)
        relevance = self.db_labels_[order] == y[:, None]
        n_pos = (self.db_labels_[None, :] == y[:, None]).sum(axis=1)
        return float(np.nanmean(average_precision_from_relevance(relevance, n_pos)))


class NoScore(BaseEstimator):
    def fit(self, X, y=None):
        return self


class ScoreWithoutK(BaseEstimator):
    def fit(self, X, y=None):
        return self

    def score(self, X, y):
        return 1.0


def _data(seed=0, n=60, d=8, n_classes=4):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d)) * 3
    y = np.repeat(np.arange(n_classes), n // n_classes)
    X = centers[y] + rng.normal(size=(n, d)) + 5.0
    return X, y


def test_retrieval_map_init_and_repr():
    assert repr(RetrievalMAP()) == "RetrievalMAP(k=None)"
    assert repr(RetrievalMAP(k=10)) == "RetrievalMAP(k=10)"
    assert RetrievalMAP(np.int64(5)).k == 5
    for bad in (0, -3, 2.5, "10", True):
        with pytest.raises(ValueError, match="k must be None or a positive integer"):
            RetrievalMAP(k=bad)
    scorer = pickle.loads(pickle.dumps(RetrievalMAP(k=3)))
    assert scorer.k == 3


def test_retrieval_map_pipeline():
    X, y = _data()
    X_db, y_db, X_q, y_q = X[::2], y[::2], X[1::2], y[1::2]
    pipe = make_pipeline(StandardScaler(), FakeRetriever()).fit(X_db, y_db)
    Xt = pipe[:-1].transform(X_q)
    expected = pipe[-1].score(Xt, y_q)
    assert RetrievalMAP()(pipe, X_q, y_q) == pytest.approx(expected, abs=1e-15)
    assert 0.5 < expected <= 1.0
    expected_k = pipe[-1].score(Xt, y_q, n_neighbors=5)
    assert RetrievalMAP(k=5)(pipe, X_q, y_q) == pytest.approx(expected_k, abs=1e-15)
    assert expected_k <= expected  # truncation can only lose positives
    # a bare retriever is scored on X as is
    bare = FakeRetriever().fit(X_db, y_db)
    assert RetrievalMAP()(bare, X_q, y_q) == pytest.approx(bare.score(X_q, y_q))
    # a one-step pipeline
    one = make_pipeline(FakeRetriever()).fit(X_db, y_db)
    assert RetrievalMAP()(one, X_q, y_q) == pytest.approx(bare.score(X_q, y_q))


def test_retrieval_map_in_grid_search():
    X, y = _data(seed=1)
    pipe = make_pipeline(StandardScaler(), FakeRetriever())
    search = GridSearchCV(
        pipe,
        {"standardscaler__with_mean": [True, False], "fakeretriever__power": [1.0, 3.0]},
        scoring=RetrievalMAP(k=10),
        cv=3,
        error_score="raise",
    ).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (4,)
    assert np.all((scores >= 0) & (scores <= 1))
    assert search.best_score_ == scores.max()


def test_retrieval_map_requires_a_retriever():
    X, y = _data()
    with pytest.raises(TypeError, match="final estimator.*NoScore"):
        RetrievalMAP()(make_pipeline(StandardScaler(), NoScore()).fit(X, y), X, y)
    with pytest.raises(TypeError, match="n_neighbors"):
        RetrievalMAP()(ScoreWithoutK().fit(X, y), X, y)
