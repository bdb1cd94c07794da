"""``algorithm="auto"`` above its threshold: FAISS's HNSW graph (float32, no
re-rank) when faiss is installed; a retriever saved with usearch's graph keeps it."""

import sys

import joblib
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from skretrieval import NearestNeighborRetriever
from skretrieval.neighbors import _backends
from skretrieval.persistence import load_pipeline, save_pipeline

from _helpers import recall

faiss = pytest.importorskip("faiss")
pytest.importorskip("usearch")


@pytest.fixture
def low_threshold(monkeypatch):
    monkeypatch.setattr(_backends, "AUTO_MIN_VALUES", 1000 * 32)


def _graph(r):
    """The FAISS HNSW object of a retriever's index."""
    return faiss.downcast_index(faiss.downcast_index(r._get_index()).index)


def test_auto_is_faiss_graph_with_exact_keys(clustered, low_threshold, tmp_path):
    X, y, ids, Q, _ = clustered
    r = NearestNeighborRetriever(n_neighbors=10, algorithm="auto", n_jobs=1).fit(X, y, ids=ids)
    assert r._algorithm() == r._index_kind == "faiss"
    assert isinstance(r._backend(), _backends.AutoFaissBackend)
    graph = _graph(r)
    m, efc, ef = _backends.faiss_graph_defaults(X.shape[0], X.shape[1])
    assert isinstance(graph, faiss.IndexHNSWFlat)  # float32 vectors
    assert graph.hnsw.efConstruction == efc and graph.hnsw.nb_neighbors(1) == m
    dist, ind = r.kneighbors(Q)
    assert graph.hnsw.efSearch == ef
    truth = NearestNeighborRetriever(n_neighbors=10).fit(X)
    t_dist, t_ind = truth.kneighbors(Q)
    assert recall(ind, t_ind) >= 0.95
    # the index's distances are taken (no re-rank) and are the exact ones
    queries = r._validate_queries(Q)
    cand, keys = r._backend().scored_candidates(r._index, queries, 10, None, r._keys)
    assert keys is not None
    np.testing.assert_allclose(keys, r._exact_keys(queries, cand), rtol=1e-5, atol=1e-6)
    same = ind == t_ind
    np.testing.assert_allclose(dist[same], t_dist[same], rtol=1e-5, atol=1e-6)

    # save_pipeline and joblib round trips: the same results
    save_pipeline(r, tmp_path / "auto.zip")
    loaded = load_pipeline(tmp_path / "auto.zip")
    assert_array_equal(loaded.kneighbors(Q)[1], ind)
    assert loaded._index_kind == "faiss"
    assert_array_equal(joblib.load(joblib.dump(r, tmp_path / "a.joblib")[0]).kneighbors(Q)[1],
                       ind)


def test_auto_takes_the_hnsw_params(clustered, low_threshold):
    X = clustered[0]
    params = {"M": 8, "ef_construction": 24, "ef_search": 50, "index_dtype": "float16"}
    r = NearestNeighborRetriever(algorithm="auto", algorithm_params=params, n_jobs=1).fit(X)
    r.kneighbors(clustered[3])
    graph = _graph(r)
    assert isinstance(graph, faiss.IndexHNSWSQ)  # float16: re-ranked from the store
    assert (graph.hnsw.efConstruction, graph.hnsw.efSearch) == (24, 50)
    assert graph.hnsw.nb_neighbors(1) == 8
    queries = r._validate_queries(clustered[3])
    assert r._backend().scored_candidates(r._index, queries, 10, None, r._keys)[1] is None
    with pytest.raises(ValueError, match="takes the keys"):
        NearestNeighborRetriever(algorithm="auto", algorithm_params={"factory": "HNSW8"}).fit(X)


def test_auto_removes_and_grows(clustered, low_threshold):
    X, y, ids, Q, _ = clustered
    r = NearestNeighborRetriever(n_neighbors=10, algorithm="auto", n_jobs=1).fit(
        X[:1500], y[:1500], ids=ids[:1500])
    index = r._index
    gone = ids[:1500:5]
    r.remove(gone)
    # FAISS's graph keeps the removed vectors (never returned), in place
    assert r._index is index and index.ntotal == 1500 and r.n_samples_fit_ == 1200
    r.partial_fit(X[1500:], y[1500:], ids=ids[1500:])
    assert r._index is index and index.ntotal == 2000
    found = r.kneighbors(Q, return_ids=True)[1]
    assert not np.isin(found, gone).any()
    kept = ~np.isin(ids, gone)
    truth = NearestNeighborRetriever(n_neighbors=10).fit(X[kept], ids=ids[kept])
    assert recall(found, truth.kneighbors(Q, return_ids=True)[1]) >= 0.95
    loo = r.kneighbors(return_distance=False)  # database items as queries
    assert not np.any(loo == np.arange(r.n_samples_fit_)[:, np.newaxis])


def test_auto_file_with_usearch_graph_keeps_it(clustered, low_threshold, monkeypatch,
                                               tmp_path):
    X, y, ids, Q, _ = clustered
    with monkeypatch.context() as m:  # saved where FAISS was not installed
        m.setitem(sys.modules, "faiss", None)
        r = NearestNeighborRetriever(n_neighbors=10, algorithm="auto", n_jobs=1).fit(
            X, y, ids=ids)
        assert r._index_kind == "hnsw"
        expected = r.kneighbors(Q, return_ids=True)
        save_pipeline(r, tmp_path / "old.zip")
        joblib.dump(r, tmp_path / "old.joblib")
    for loaded in (load_pipeline(tmp_path / "old.zip"), joblib.load(tmp_path / "old.joblib")):
        got = loaded.kneighbors(Q, return_ids=True)
        assert loaded._algorithm() == loaded._index_kind == "hnsw"
        assert_array_equal(got[1], expected[1])
        assert_array_equal(got[0], expected[0])
    # a refit chooses again: FAISS's graph
    assert loaded.fit(X)._index_kind == "faiss"
