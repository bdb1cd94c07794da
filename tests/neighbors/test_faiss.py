"""The FAISS backend: agreement with the exact search, growth, removal, persistence."""

import sys
import warnings

import joblib
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from skretrieval import NearestNeighborRetriever
from skretrieval.persistence import load_pipeline, save_pipeline

from _helpers import (
    assert_approx_agrees,
    assert_rankings_equivalent,
    assert_removed_and_recall,
    grown_retriever,
    recall,
)

faiss = pytest.importorskip("faiss")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("factory,k_factor", [("IVF{nlist},Flat", 1), ("IVF{nlist},PQ{m}", 4)])
def test_faiss_agrees_with_brute(clustered, metric, factory, k_factor, tmp_path):
    X, y, ids, Q, y_q = clustered
    brute = NearestNeighborRetriever(n_neighbors=10, metric=metric).fit(X, y, ids=ids)
    params = {"factory": factory, "k_factor": k_factor, "nprobe": 8}
    r = NearestNeighborRetriever(n_neighbors=10, metric=metric, algorithm="faiss",
                                 algorithm_params=params, random_state=0).fit(X, y, ids=ids)
    assert_approx_agrees(r, brute, Q, min_recall=0.9)

    # joblib and save_pipeline round trips: identical results, no refit
    expected = r.kneighbors(Q)
    loaded = joblib.load(joblib.dump(r, tmp_path / "faiss.joblib")[0])
    assert loaded._index is None and loaded._index_blob.dtype == np.uint8
    got = loaded.kneighbors(Q)
    assert_array_equal(got[1], expected[1])
    assert_array_equal(got[0], expected[0])
    save_pipeline(r, tmp_path / "faiss.zip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        safe = load_pipeline(tmp_path / "faiss.zip")
    assert_array_equal(safe.kneighbors(Q)[1], expected[1])


def test_faiss_partial_fit_and_remove(clustered, tmp_path):
    X, y, ids, Q, _ = clustered
    brute = NearestNeighborRetriever(n_neighbors=10).fit(X, y, ids=ids)
    r = grown_retriever(X, y, ids, n_neighbors=10, algorithm="faiss", random_state=0,
               store=tmp_path / "db.f32")
    index = r._index
    assert index.ntotal == 2000  # one index, grown without retraining
    _, found = r.kneighbors(Q, return_ids=True)
    assert recall(found, brute.kneighbors(Q, return_ids=True)[1]) >= 0.9

    gone = ids[1::2]
    r.remove(gone)
    assert r._index is index and index.ntotal == 1000
    assert_removed_and_recall(r, X, y, ids, Q, gone)
    back = np.array([1, 3, 5])  # removed above
    r.partial_fit(X[back], y[back], ids=["a", "b", "c"])
    assert index.ntotal == 1003
    assert_array_equal(r.kneighbors(X[back], n_neighbors=1, return_ids=True)[1].ravel(),
                       ["a", "b", "c"])
    # nprobe changes without refitting; a tiny nprobe falls back to exact rows
    r.set_params(algorithm_params={"nprobe": 1})
    _, found = r.kneighbors(Q, return_ids=True)
    assert not np.isin(found, gone).any()
    reloaded = joblib.load(joblib.dump(r, tmp_path / "r.joblib")[0])
    assert_array_equal(reloaded.kneighbors(Q)[1], r.kneighbors(Q)[1])


def test_faiss_missing_gives_install_hint(clustered, monkeypatch):
    X = clustered[0][:100]
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"pip install skretrieval\[faiss\]"):
        NearestNeighborRetriever(algorithm="faiss").fit(X)


def test_faiss_params_are_checked(clustered):
    X = clustered[0][:100]
    with pytest.raises(ValueError, match="takes the keys"):
        NearestNeighborRetriever(algorithm="faiss", algorithm_params={"nlsit": 4}).fit(X)
    with pytest.raises(ValueError, match="positive int"):
        NearestNeighborRetriever(algorithm="faiss", algorithm_params={"nprobe": 0}).fit(X)
    flat = NearestNeighborRetriever(algorithm="faiss", algorithm_params={"factory": "Flat"},
                                    n_neighbors=5).fit(X)
    brute = NearestNeighborRetriever(n_neighbors=5).fit(X)
    assert_rankings_equivalent(*flat.kneighbors(), *brute.kneighbors())
    flat.remove([0, 1])
    assert not np.isin(flat.kneighbors(return_ids=True)[1], [0, 1]).any()


def test_faiss_hnsw_search_depths(clustered, tmp_path):
    """ef_construction / ef_search reach the graph of an HNSW factory; deeper
    searches recall more; a saved retriever keeps them; other factories refuse them."""
    X, y, ids, Q, y_q = clustered
    brute = NearestNeighborRetriever(n_neighbors=10).fit(X)
    exact = brute.kneighbors(Q)[1]
    params = {"factory": "HNSW8", "ef_construction": 16}
    r = NearestNeighborRetriever(n_neighbors=10, algorithm="faiss",
                                 algorithm_params=params).fit(X)
    graph = faiss.downcast_index(faiss.downcast_index(r._index).index).hnsw
    assert graph.efConstruction == 16
    recalls = []
    for ef in (10, 200):
        r.set_params(algorithm_params={**params, "ef_search": ef})
        recalls.append(recall(r.kneighbors(Q)[1], exact))
        assert graph.efSearch == ef
    assert recalls[0] < recalls[1] and recalls[1] >= 0.99, recalls
    assert_approx_agrees(r, brute, Q, min_recall=0.99)
    loaded = joblib.load(joblib.dump(r, tmp_path / "hnsw.joblib")[0])
    assert_array_equal(loaded.kneighbors(Q)[1], r.kneighbors(Q)[1])
    with pytest.raises(ValueError, match="apply to an HNSW factory"):
        NearestNeighborRetriever(algorithm="faiss",
                                 algorithm_params={"ef_search": 64}).fit(X[:100])
    with pytest.raises(ValueError, match="positive int"):
        NearestNeighborRetriever(algorithm="faiss",
                                 algorithm_params={"factory": "HNSW8", "ef_search": 0}).fit(X)
