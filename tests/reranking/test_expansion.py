"""QueryExpansionRetriever: alpha-QE and alpha-DBA formulas, leave-one-out, grid search."""

import pickle

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from skretrieval import NearestNeighborRetriever, QueryExpansionRetriever, RetrievalMAP

from _helpers import assert_rankings_equivalent


def _unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# a hand case: 4 database vectors in 2-D, one query
DB = _unit([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.1]])
Q = _unit([[0.9, 0.3]])


def test_alpha_query_expansion_matches_the_formula():
    qe = QueryExpansionRetriever(qe_k=2, qe_alpha=3.0).fit(DB)
    sims = DB @ Q[0]
    top = np.argsort(-sims)[:2]
    expanded = _unit(Q[0] + sum(sims[j] ** 3 * DB[j] for j in top))
    expected = np.argsort(-(DB @ expanded), kind="stable")
    dist, ind = qe.kneighbors(Q, n_neighbors=4)
    np.testing.assert_array_equal(ind[0], expected)
    np.testing.assert_allclose(1 - dist[0], (DB @ expanded)[expected], atol=1e-6)
    # average QE: equal weights
    aqe = QueryExpansionRetriever(qe_k=2, qe_alpha=0).fit(DB)
    mean = _unit(Q[0] + DB[top].sum(axis=0))
    np.testing.assert_allclose(1 - aqe.kneighbors(Q, 4)[0][0],
                               np.sort(DB @ mean)[::-1], atol=1e-6)


def test_alpha_dba_matches_the_formula():
    dba = QueryExpansionRetriever(dba_k=2, dba_alpha=3.0).fit(DB)
    sims = DB @ DB.T
    augmented = []
    for i in range(4):
        nn = np.argsort(-sims[i], kind="stable")[:2]  # itself, then its nearest
        assert nn[0] == i
        augmented.append(_unit(sum(max(sims[i, j], 0) ** 3 * DB[j] for j in nn)))
    np.testing.assert_allclose(dba.retriever_.X_fit_, np.array(augmented), atol=1e-6)
    # negative similarities weigh nothing
    far = QueryExpansionRetriever(dba_k=4, dba_alpha=1.0).fit(DB)
    w = np.maximum(sims[3], 0)
    np.testing.assert_allclose(far.retriever_.X_fit_[3], _unit(w @ DB), atol=1e-6)


def test_without_expansion_it_is_the_plain_retriever():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(30, 6)), rng.normal(size=(5, 6))
    plain = NearestNeighborRetriever().fit(X)
    wrapped = QueryExpansionRetriever().fit(X)
    # the wrapper normalises on its own and searches leave-one-out by dropping
    # the item from k + 1 results: another code path, near-ties may swap
    assert_rankings_equivalent(*plain.kneighbors(Y, 10), *wrapped.kneighbors(Y, 10))
    assert_rankings_equivalent(*plain.kneighbors(None, 5), *wrapped.kneighbors(None, 5))


def test_leave_one_out_never_returns_the_query_and_drops_nothing():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(25, 5))
    qe = QueryExpansionRetriever(qe_k=3, dba_k=3).fit(X)
    ind = qe.kneighbors(None, "all", return_distance=False)
    assert ind.shape == (25, 24)
    for q in range(25):
        assert q not in ind[q]
        assert sorted(ind[q]) == sorted(set(range(25)) - {q})


def test_grid_search_over_expansion_and_pickling():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 16))
    X = np.repeat(centres, 6, axis=0) + 0.9 * rng.normal(size=(24, 16))
    y = np.repeat(np.arange(4), 6)
    grid = GridSearchCV(make_pipeline(QueryExpansionRetriever()),
                        {"queryexpansionretriever__qe_k": [0, 2],
                         "queryexpansionretriever__dba_k": [0, 2]},
                        scoring=RetrievalMAP(), cv=StratifiedKFold(2))
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4 and 0 < grid.best_score_ <= 1
    qe = QueryExpansionRetriever(qe_k=2, dba_k=2).fit(X, y)
    loaded = pickle.loads(pickle.dumps(qe))
    np.testing.assert_array_equal(loaded.kneighbors(X[:5], 10)[1], qe.kneighbors(X[:5], 10)[1])
    assert loaded.score(None, None) == pytest.approx(qe.score(None, None))
    assert loaded.predict(X[:2]).shape == (2, 10)


def test_errors():
    with pytest.raises(ValueError, match="similarity search"):
        QueryExpansionRetriever(NearestNeighborRetriever(metric="euclidean"), qe_k=2).fit(DB)
    with pytest.raises(ValueError, match="fit with y"):
        QueryExpansionRetriever().fit(DB).score(None, None)
    with pytest.raises(ValueError, match="qe_k"):
        QueryExpansionRetriever(qe_k=-1).fit(DB)
