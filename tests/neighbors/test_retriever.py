"""Tests of skretrieval.NearestNeighborRetriever."""

import ast
import pathlib
import pickle
import warnings

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import NotFittedError, UndefinedMetricWarning
from sklearn.preprocessing import normalize
from sklearn.utils._param_validation import InvalidParameterError

import skretrieval.neighbors._backends as backends_module
import skretrieval.neighbors._retriever as retriever_module
from skretrieval import NearestNeighborRetriever

from _helpers import FLOAT32_RTOL, assert_rankings_equivalent

METRICS = ["cosine", "inner_product", "euclidean"]


# ---------------------------------------------------------------------------
# reference implementations
# ---------------------------------------------------------------------------
def _distance_matrix(Q, X, metric):
    Q, X = np.asarray(Q, dtype=np.float64), np.asarray(X, dtype=np.float64)
    if metric == "cosine":
        return 1.0 - normalize(Q) @ normalize(X).T
    if metric == "inner_product":
        return -(Q @ X.T)
    return np.sqrt(np.maximum(((Q[:, None, :] - X[None, :, :]) ** 2).sum(-1), 0))


def _full_ranking(D):
    """Argsort of every row by distance, ties by the lower index."""
    index = np.broadcast_to(np.arange(D.shape[1]), D.shape)
    return np.array([np.lexsort((index[i], D[i])) for i in range(D.shape[0])])


def _reference_ap(relevance_row, n_positives):
    """Oxford trapezoid AP of one ranked list, written out in a loop."""
    ap, j = 0.0, 0
    for r, relevant in enumerate(relevance_row):
        if relevant:
            p0 = 1.0 if r == 0 else j / r
            p1 = (j + 1) / (r + 1)
            ap += (p0 + p1) / (2 * n_positives)
            j += 1
    return ap


def _reference_map(D, y_db, y_q, k=None, loo=False):
    D = D.copy()
    if loo:
        np.fill_diagonal(D, np.inf)
    ranking = _full_ranking(D)
    if loo:
        ranking = ranking[:, :-1]
    if k is not None:
        ranking = ranking[:, :k]
    aps = []
    for i in range(D.shape[0]):
        n_pos = np.sum(y_db == y_q[i]) - int(loo)
        if n_pos:
            aps.append(_reference_ap(y_db[ranking[i]] == y_q[i], n_pos))
    return np.mean(aps)


def _well_separated(D):
    """Whether all the distances of every row differ by more than 1e-5."""
    return np.diff(np.sort(D, axis=1), axis=1).min() > 1e-5


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(42)
    X = rng.randn(60, 8)
    Q = rng.randn(15, 8)
    y = rng.randint(0, 5, size=60)
    y_q = rng.randint(0, 5, size=15)
    return X, Q, y, y_q


# ---------------------------------------------------------------------------
# kneighbors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRICS)
def test_brute_kneighbors_matches_full_argsort(data, metric):
    X, Q, y, _ = data
    D = _distance_matrix(Q, X, metric)
    assert _well_separated(D)  # so float32 rounding cannot swap neighbours
    ranking = _full_ranking(D)

    retriever = NearestNeighborRetriever(n_neighbors=7, metric=metric).fit(X, y)
    dist, ind = retriever.kneighbors(Q)
    assert dist.shape == ind.shape == (15, 7)
    assert dist.dtype == np.float32
    # float32 against the float64 reference: distances to float32 precision
    assert_rankings_equivalent(dist, ind, np.take_along_axis(D, ranking[:, :7], 1),
                               ranking[:, :7], atol=1e-5)
    assert np.all(np.diff(dist, axis=1) >= 0)

    dist_all, ind_all = retriever.kneighbors(Q, n_neighbors="all")
    assert_rankings_equivalent(dist_all, ind_all, np.take_along_axis(D, ranking, 1), ranking,
                               atol=1e-5)
    # the same search without the distances (the same code path): the same indices
    assert_array_equal(retriever.kneighbors(Q, return_distance=False), ind)


@pytest.mark.parametrize("metric", METRICS)
def test_kneighbors_without_X_excludes_self(data, metric):
    X, _, y, _ = data
    D = _distance_matrix(X, X, metric)
    np.fill_diagonal(D, np.inf)
    ranking = _full_ranking(D)[:, :-1]

    retriever = NearestNeighborRetriever(n_neighbors=5, metric=metric).fit(X, y)
    dist, ind = retriever.kneighbors()
    assert ind.shape == (60, 5)
    assert not np.any(ind == np.arange(60)[:, None])
    # against the float64 reference (some cosine distances here differ by
    # less than 1e-6: they may come in either order)
    assert_rankings_equivalent(dist, ind, np.take_along_axis(D, ranking[:, :5], 1),
                               ranking[:, :5], atol=1e-5)

    dist, ind = retriever.kneighbors(n_neighbors="all")
    assert ind.shape == (60, 59)
    assert_rankings_equivalent(dist, ind, np.take_along_axis(D, ranking, 1), ranking,
                               atol=1e-5)
    # the largest possible n_neighbors without X: the same full ranking
    assert_array_equal(retriever.kneighbors(n_neighbors=59)[1], ind)


@pytest.mark.parametrize("metric", METRICS)
def test_ties_are_broken_by_lower_index(metric):
    # Repeated database rows give exactly tied distances.  With small integers,
    # products and squared norms are exact in float32, so distinct rows can
    # tie too (inner product, euclidean).  Parallel integer rows have equal
    # cosines that float32 normalisation does not keep exactly equal, hence
    # generic rows for the cosine.
    rng = np.random.RandomState(0)
    if metric == "cosine":
        base = rng.randn(12, 4)
        assert _well_separated(_distance_matrix(base, base, metric))
    else:
        base = rng.randint(-3, 4, size=(12, 4)).astype(np.float64)
    X = base[rng.randint(0, 12, size=40)]  # many duplicates
    Q = np.vstack([base[:6], X[:4]])
    D = _distance_matrix(Q, X, metric)
    # make ties of the reference exact too
    D = np.round(D, 6)
    ranking = _full_ranking(D)

    retriever = NearestNeighborRetriever(n_neighbors=9, metric=metric).fit(X)
    for k in (1, 3, 9, 25, 39, 40):
        ind = retriever.kneighbors(Q, n_neighbors=k, return_distance=False)
        assert_array_equal(ind, ranking[:, :k], err_msg=f"k={k}")
    # self-exclusion with duplicates: a duplicate is found at distance 0
    # (cosine, euclidean), in index order
    D_self = np.round(_distance_matrix(X, X, metric), 6)
    np.fill_diagonal(D_self, np.inf)
    ranking_self = _full_ranking(D_self)
    for k in (1, 4, 39):
        ind = retriever.kneighbors(n_neighbors=k, return_distance=False)
        assert_array_equal(ind, ranking_self[:, :k], err_msg=f"k={k}")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_size", [1, 3, 7])
def test_chunked_equals_unchunked(data, metric, chunk_size):
    X, Q, y, y_q = data
    full = NearestNeighborRetriever(n_neighbors=6, metric=metric).fit(X, y)
    chunked = NearestNeighborRetriever(
        n_neighbors=6, metric=metric, chunk_size=chunk_size
    ).fit(X, y)
    for queries in (Q, None):
        # other block shapes (one query: a matrix-vector product): BLAS may sum
        # in another order, and near-tied items may swap
        assert_rankings_equivalent(*full.kneighbors(queries), *chunked.kneighbors(queries))
    # a swap of near-tied items of different labels moves a score a little
    assert_allclose(full.score(Q, y_q), chunked.score(Q, y_q), atol=1e-3)
    assert_allclose(full.score(None, None), chunked.score(None, None), atol=1e-3)


def test_default_chunk_size_bounds_the_similarity_block():
    retriever = NearestNeighborRetriever().fit(np.ones((1000, 2)))
    assert retriever._chunk_rows() * 1000 * 4 <= 256 * 2**20
    assert retriever._chunk_rows() >= 1


def test_fitted_attributes_and_dtype(data):
    X, _, y, _ = data
    retriever = NearestNeighborRetriever().fit(X, y)
    assert retriever.X_fit_.dtype == np.float32
    assert_allclose(retriever.X_fit_, normalize(X), rtol=1e-6)
    assert retriever.n_samples_fit_ == 60
    assert retriever.n_features_in_ == 8
    assert_array_equal(retriever.y_, y)

    X32 = X.astype(np.float32)
    retriever = NearestNeighborRetriever(metric="euclidean").fit(X32)
    assert retriever.X_fit_.dtype == np.float32
    assert_array_equal(retriever.X_fit_, X32)
    assert retriever.y_ is None


def test_zero_query_and_database_rows_cosine():
    X = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    retriever = NearestNeighborRetriever(n_neighbors=3).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist, ind = retriever.kneighbors([[0.0, 0.0], [3.0, 0.1]])
    # a zero vector has similarity 0 to everything: ties in index order
    assert_array_equal(ind[0], [0, 1, 2])
    assert_allclose(dist[0], [1.0, 1.0, 1.0])
    assert_array_equal(ind[1], [0, 2, 1])


# ---------------------------------------------------------------------------
# predict and score
# ---------------------------------------------------------------------------
def test_predict(data):
    X, Q, y, _ = data
    retriever = NearestNeighborRetriever(n_neighbors=4).fit(X, y.astype(str))
    ind = retriever.kneighbors(Q, return_distance=False)
    labels = retriever.predict(Q)
    assert labels.shape == (15, 4)
    assert_array_equal(labels, y.astype(str)[ind])
    ind = retriever.kneighbors(return_distance=False)
    assert_array_equal(retriever.predict(), y.astype(str)[ind])


def test_score_hand_built_case():
    # database items on a line, at positions 1..5; queries at 0, 6 and 3
    X = np.column_stack([np.arange(1.0, 6.0), np.zeros(5)])
    y = np.array(["a", "b", "a", "b", "b"])
    Q = np.array([[0.0, 0.0], [6.0, 0.0], [3.2, 0.0]])
    retriever = NearestNeighborRetriever(n_neighbors=2, metric="euclidean")
    retriever.fit(X, y)

    # query 0: ranking a b a b b -> hits at ranks 0, 2 of 2 positives
    ap0 = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    # query 1: ranking b b a b a -> hits at ranks 0, 1, 3 of 3 positives
    ap1 = (1 + 1 + (2 / 3 + 3 / 4) / 2) / 3
    assert_allclose(ap0, 0.7916666666666666)
    assert_allclose(retriever.score(Q[:2], ["a", "b"]), (ap0 + ap1) / 2)
    # mAP@2: query 0 finds 1 of 2 positives, query 1 finds 2 of 3
    assert_allclose(
        retriever.score(Q[:2], ["a", "b"], n_neighbors=2), (0.5 + 2 / 3) / 2
    )
    # a query whose label is not in the database is skipped with a warning
    with pytest.warns(UndefinedMetricWarning, match="1 of 3 queries"):
        score = retriever.score(Q, ["a", "b", "c"])
    assert_allclose(score, (ap0 + ap1) / 2)
    # all queries skipped: nan
    with pytest.warns(UndefinedMetricWarning, match="2 of 2 queries.*nan"):
        assert np.isnan(retriever.score(Q[:2], ["c", "d"]))
    # leave-one-out, with ties at equal distances broken by the lower index:
    # item 0 (a): others ranked 1b 2a 3b 4b -> AP (0 + 1/2)/2        = 6/24
    # item 1 (b): 0a 2a 3b 4b -> ((0 + 1/3) + (1/3 + 1/2))/2/2      = 7/24
    # item 2 (a): 1b 3b 0a 4b -> (0 + 1/3)/2                        = 4/24
    # item 3 (b): 2a 4b 1b 0a -> ((0 + 1/2) + (1/2 + 2/3))/2/2      = 10/24
    # item 4 (b): 3b 2a 1b 0a -> ((1 + 1) + (1/2 + 2/3))/2/2        = 19/24
    assert_allclose(retriever.score(None, None), (6 + 7 + 4 + 10 + 19) / 24 / 5)
    assert_allclose(
        retriever.score(None, None),
        np.mean([_reference_ap(r, n) for r, n in _loo_relevance(X, y)]),
    )


def _loo_relevance(X, y):
    D = _distance_matrix(X, X, "euclidean")
    np.fill_diagonal(D, np.inf)
    ranking = _full_ranking(D)[:, :-1]
    for i in range(len(y)):
        yield y[ranking[i]] == y[i], np.sum(y == y[i]) - 1


@pytest.mark.parametrize("metric", METRICS)
def test_score_matches_direct_computation(data, metric):
    X, Q, y, y_q = data
    D = _distance_matrix(Q, X, metric)
    retriever = NearestNeighborRetriever(n_neighbors=5, metric=metric).fit(X, y)
    assert_allclose(retriever.score(Q, y_q), _reference_map(D, y, y_q))
    assert_allclose(
        retriever.score(Q, y_q, n_neighbors="all"), _reference_map(D, y, y_q)
    )
    assert_allclose(
        retriever.score(Q, y_q, n_neighbors=10), _reference_map(D, y, y_q, k=10)
    )
    # leave-one-out: some cosine distances of this data differ by less than
    # 1e-6, so float32 may rank two items in the other order than float64
    D_self = _distance_matrix(X, X, metric)
    assert_allclose(
        retriever.score(None, None), _reference_map(D_self, y, y, loo=True), atol=1e-3
    )
    assert_allclose(
        retriever.score(None, None, n_neighbors=8),
        _reference_map(D_self, y, y, k=8, loo=True),
        atol=1e-3,
    )


@pytest.mark.parametrize("metric", ["inner_product", "euclidean"])
def test_score_with_ties_matches_ranking_by_lower_index(metric):
    # exact ties (small integers, duplicated rows): the full-ranking score
    # (ranks found by binary search) follows the same tie-breaking as
    # kneighbors (lower index first)
    rng = np.random.RandomState(3)
    base = rng.randint(-2, 3, size=(8, 3)).astype(np.float64)
    X = base[rng.randint(0, 8, size=50)]
    y = rng.randint(0, 4, size=50)
    Q, y_q = base[:6], rng.randint(0, 4, size=6)
    retriever = NearestNeighborRetriever(metric=metric, chunk_size=4).fit(X, y)
    D = np.round(_distance_matrix(Q, X, metric), 6)
    assert_allclose(retriever.score(Q, y_q), _reference_map(D, y, y_q))
    D_self = np.round(_distance_matrix(X, X, metric), 6)
    assert_allclose(retriever.score(None, None), _reference_map(D_self, y, y, loo=True))
    # the same from the rankings of kneighbors
    ind = retriever.kneighbors(Q, n_neighbors="all", return_distance=False)
    expected = np.mean(
        [_reference_ap(y[ind[i]] == y_q[i], np.sum(y == y_q[i])) for i in range(6)]
    )
    assert_allclose(retriever.score(Q, y_q), expected)


def test_score_with_small_chunks_and_singleton_labels(data):
    # leave-one-out with items whose label is unique (no positive): skipped
    X, _, y, _ = data
    y = y.copy()
    y[:3] = [100, 101, 102]
    D_self = _distance_matrix(X, X, "cosine")
    retriever = NearestNeighborRetriever(chunk_size=4).fit(X, y)
    with pytest.warns(UndefinedMetricWarning, match="3 of 60 queries"):
        score = retriever.score(None, None)
    # float32 against float64 with near-tied cosine distances (< 1e-6 apart)
    assert_allclose(score, _reference_map(D_self, y, y, loo=True), atol=1e-3)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
def test_errors(data):
    X, Q, y, y_q = data
    with pytest.raises(NotFittedError):
        NearestNeighborRetriever().kneighbors(Q)
    with pytest.raises(ValueError, match="0 sample"):
        NearestNeighborRetriever().fit(X[:0])
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        NearestNeighborRetriever().fit(X_nan)
    with pytest.raises(InvalidParameterError, match="metric"):
        NearestNeighborRetriever(metric="manhattan").fit(X)
    with pytest.raises(ValueError, match="algorithm_params must not contain"):
        NearestNeighborRetriever(
            algorithm="nndescent", algorithm_params={"metric": "cosine"}
        ).fit(X)

    retriever = NearestNeighborRetriever(n_neighbors=5).fit(X)
    with pytest.raises(ValueError, match="X has 3 features, but"):
        retriever.kneighbors(Q[:, :3])
    with pytest.raises(ValueError, match="Input X contains NaN"):
        retriever.kneighbors(X_nan)
    with pytest.raises(ValueError, match="n_neighbors <= n_samples_fit"):
        retriever.kneighbors(Q, n_neighbors=61)
    with pytest.raises(ValueError, match="n_neighbors < n_samples_fit when X is None"):
        retriever.kneighbors(n_neighbors=60)
    with pytest.raises(ValueError, match="Expected n_neighbors > 0"):
        retriever.kneighbors(Q, n_neighbors=0)
    with pytest.raises(TypeError, match="enter integer value"):
        retriever.kneighbors(Q, n_neighbors=2.5)
    with pytest.raises(ValueError, match="'all' or None"):
        retriever.kneighbors(Q, n_neighbors="everything")
    # fitted without labels
    with pytest.raises(ValueError, match="fitted without them"):
        retriever.predict(Q)
    with pytest.raises(ValueError, match="fitted without them"):
        retriever.score(Q, y_q)

    retriever.fit(X, y)
    with pytest.raises(ValueError, match="needs the labels y"):
        retriever.score(Q)
    with pytest.raises(ValueError, match="y must be None when X is None"):
        retriever.score(None, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        retriever.score(Q, y_q[:-1])


def test_pickle_brute(data, tmp_path):
    X, Q, y, y_q = data
    retriever = NearestNeighborRetriever(n_neighbors=4).fit(X, y)
    path = tmp_path / "retriever.joblib"
    joblib.dump(retriever, path)
    loaded = joblib.load(path)
    assert_array_equal(loaded.kneighbors(Q)[1], retriever.kneighbors(Q)[1])
    assert loaded.score(Q, y_q) == retriever.score(Q, y_q)


@pytest.mark.parametrize("module", [retriever_module, backends_module])
def test_pynndescent_is_imported_lazily(module):
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    for node in tree.body:  # module-level statements only
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("pynndescent") for a in node.names)
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("pynndescent")


# ---------------------------------------------------------------------------
# NN-descent (numba compiles pynndescent once per process: one fitted index)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nndescent_data():
    rng = np.random.RandomState(0)
    centers = rng.randn(25, 32) * 3
    labels = rng.randint(0, 25, size=600)
    X = centers[labels] + rng.randn(600, 32)
    X_db, y_db, Q, y_q = X[:500], labels[:500], X[500:], labels[500:]
    retriever = NearestNeighborRetriever(
        n_neighbors=10, algorithm="nndescent", random_state=0
    ).fit(X_db, y_db)
    return retriever, X_db, y_db, Q, y_q


def _recall(ind, ind_exact):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ind, ind_exact)])


@pytest.mark.nndescent
def test_nndescent_recall_and_distances(nndescent_data):
    retriever, X_db, y_db, Q, y_q = nndescent_data
    brute = NearestNeighborRetriever(n_neighbors=10).fit(X_db, y_db)
    for queries in (Q, None):
        dist, ind = retriever.kneighbors(queries)
        assert ind.shape == (Q.shape[0] if queries is not None else 500, 10)
        assert _recall(ind, brute.kneighbors(queries)[1]) >= 0.9
        # distances are exact cosine distances of the returned items, sorted
        q = normalize(X_db if queries is None else queries)
        exact = 1 - np.einsum("ij,ikj->ik", q, normalize(X_db)[ind])
        assert_allclose(dist, exact, rtol=FLOAT32_RTOL, atol=1e-5)
        assert np.all(np.diff(dist, axis=1) >= 0)
    ind = retriever.kneighbors(return_distance=False)
    assert not np.any(ind == np.arange(500)[:, None])
    # more neighbours than the graph degree, without X
    ind = retriever.kneighbors(n_neighbors=40, return_distance=False)
    assert not np.any(ind == np.arange(500)[:, None])
    assert _recall(ind, brute.kneighbors(n_neighbors=40, return_distance=False)) >= 0.9

    assert_array_equal(retriever.predict(Q), y_db[retriever.kneighbors(Q)[1]])
    # score is mAP@n_neighbors
    assert_allclose(
        retriever.score(Q, y_q), brute.score(Q, y_q, n_neighbors=10), atol=0.05
    )
    with pytest.raises(ValueError, match="needs algorithm='brute'"):
        retriever.kneighbors(Q, n_neighbors="all")


@pytest.mark.nndescent
def test_nndescent_pickle_rebuilds_index_lazily(nndescent_data, tmp_path):
    retriever, X_db, _, Q, y_q = nndescent_data
    assert retriever._index is not None
    expected = retriever.kneighbors(Q)
    expected_self = retriever.kneighbors(return_distance=False)

    assert b"pynndescent" not in pickle.dumps(retriever)
    path = tmp_path / "retriever.joblib"
    joblib.dump(retriever, path)
    loaded = joblib.load(path)
    assert loaded._index is None
    assert retriever._index is not None  # pickling left the original alone

    dist, ind = loaded.kneighbors(Q)
    assert loaded._index is not None  # rebuilt on the first query
    assert_array_equal(ind, expected[1])
    assert_allclose(dist, expected[0])
    assert_array_equal(loaded.kneighbors(return_distance=False), expected_self)
    assert loaded.score(Q, y_q) == retriever.score(Q, y_q)
