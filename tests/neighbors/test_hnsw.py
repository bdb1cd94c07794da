"""The HNSW graph backend (usearch): recall, growth, removal, persistence, defaults."""

import sys
import warnings

import joblib
import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.utils.estimator_checks import parametrize_with_checks

from skretrieval import NearestNeighborRetriever
from skretrieval.neighbors import _backends
from skretrieval.persistence import load_pipeline, save_pipeline

from _helpers import (
    assert_approx_agrees,
    assert_removed_and_recall,
    grown_retriever,
    recall,
)

pytest.importorskip("usearch")

HNSW = {"algorithm": "hnsw", "n_jobs": 1}


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "inner_product"])
@pytest.mark.parametrize("index_dtype", ["float16", "float32"])
def test_hnsw_agrees_with_brute(clustered, metric, index_dtype):
    X, y, ids, Q, _ = clustered
    brute = NearestNeighborRetriever(n_neighbors=10, metric=metric).fit(X, y, ids=ids)
    r = NearestNeighborRetriever(n_neighbors=10, metric=metric, **HNSW,
                                 algorithm_params={"index_dtype": index_dtype}).fit(X, y, ids=ids)
    # distances are the exact ones of the returned items (re-ranked from the store)
    assert_approx_agrees(r, brute, Q, min_recall=0.95)


def test_hnsw_search_depth_trades_recall(clustered):
    X, y, ids, Q, _ = clustered
    truth = NearestNeighborRetriever(n_neighbors=10).fit(X).kneighbors(Q)[1]
    r = NearestNeighborRetriever(n_neighbors=10, **HNSW,
                                 algorithm_params={"M": 4, "ef_construction": 32}).fit(X)
    recalls = []
    for ef in (1, 200):  # changed without rebuilding
        r.set_params(algorithm_params={"M": 4, "ef_construction": 32, "ef_search": ef})
        recalls.append(recall(r.kneighbors(Q)[1], truth))
    assert recalls[1] >= 0.99 and recalls[1] > recalls[0]


def test_hnsw_partial_fit_matches_fit_on_all(clustered, tmp_path):
    X, y, ids, Q, _ = clustered
    truth = NearestNeighborRetriever(n_neighbors=10).fit(X, y, ids=ids).kneighbors(
        Q, return_ids=True)[1]
    whole = NearestNeighborRetriever(n_neighbors=10, **HNSW).fit(X, y, ids=ids)
    grown = grown_retriever(X, y, ids, n_neighbors=10, dtype="float16",
                            store=tmp_path / "db.f16", **HNSW)
    index = grown._index
    assert len(index) == 2000  # one graph, grown in place
    r_whole = recall(whole.kneighbors(Q, return_ids=True)[1], truth)
    r_grown = recall(grown.kneighbors(Q, return_ids=True)[1], truth)
    assert r_grown >= 0.95 and abs(r_grown - r_whole) <= 0.03

    gone = ids[1::2]
    grown.remove(gone)
    assert grown._index is index and len(index) == 1000  # removed natively
    assert_removed_and_recall(grown, X, y, ids, Q, gone)
    back = np.array([1, 3, 5])  # removed above: new items with new keys
    grown.partial_fit(X[back], y[back], ids=["a", "b", "c"])
    assert_array_equal(grown.kneighbors(X[back], n_neighbors=1, return_ids=True)[1].ravel(),
                       ["a", "b", "c"])


def test_hnsw_save_and_load(clustered, tmp_path, monkeypatch):
    X, y, ids, Q, _ = clustered
    r = NearestNeighborRetriever(n_neighbors=10, dtype="float16", **HNSW).fit(X, y, ids=ids)
    r.remove(ids[:100])
    expected = r.kneighbors(Q, return_ids=True)
    loaded = joblib.load(joblib.dump(r, tmp_path / "hnsw.joblib")[0])
    # the library's own bytes, not a pickled library object
    assert loaded._index is None and loaded._index_blob.dtype == np.uint8
    assert loaded._index_library.startswith("usearch ")
    got = loaded.kneighbors(Q, return_ids=True)
    assert_array_equal(got[1], expected[1])
    assert_array_equal(got[0], expected[0])
    save_pipeline(r, tmp_path / "hnsw.zip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        safe = load_pipeline(tmp_path / "hnsw.zip")
    assert_array_equal(safe.kneighbors(Q, return_ids=True)[1], expected[1])

    # another version of the library: rebuilt from the stored descriptors
    other = joblib.load(tmp_path / "hnsw.joblib")
    other._index_library = "usearch 0.0.1"
    monkeypatch.setattr(_backends.HNSWBackend, "from_state", None)  # never read
    _, found = other.kneighbors(Q, return_ids=True)
    assert other._index is not None and len(other._index) == 1900
    assert recall(found, expected[1]) >= 0.95
    # altered bytes are refused
    bad = joblib.load(tmp_path / "hnsw.joblib")
    bad._index_blob = bad._index_blob.copy()
    bad._index_blob[-1] ^= 1
    with pytest.raises(ValueError, match="corrupted"):
        bad.kneighbors(Q)


def test_hnsw_missing_gives_install_hint(clustered, monkeypatch):
    X = clustered[0][:100]
    monkeypatch.setitem(sys.modules, "usearch", None)
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    with pytest.raises(ImportError, match=r"pip install skretrieval\[hnsw\]"):
        NearestNeighborRetriever(algorithm="hnsw").fit(X)
    # "auto" takes FAISS's graph, or without FAISS either falls back to the
    # exact search
    monkeypatch.setattr(_backends, "AUTO_MIN_VALUES", 10)
    r = NearestNeighborRetriever(algorithm="auto").fit(X)
    assert r._algorithm() == ("faiss" if _has("faiss") else "brute")
    monkeypatch.setitem(sys.modules, "faiss", None)
    r = NearestNeighborRetriever(algorithm="auto").fit(X)
    assert r._algorithm() == "brute"


def test_hnsw_params_are_checked(clustered):
    X = clustered[0][:100]
    for params, match in [({"ef": 4}, "takes the keys"), ({"M": 1}, "int >= 2"),
                          ({"ef_search": 0}, "positive int"), ({"k_factor": 0.5}, ">= 1"),
                          ({"index_dtype": "int8"}, "'float16' or 'float32'")]:
        with pytest.raises(ValueError, match=match):
            NearestNeighborRetriever(algorithm="hnsw", algorithm_params=params).fit(X)
    with pytest.raises(ValueError, match="takes the keys"):
        NearestNeighborRetriever(algorithm="auto", algorithm_params={"ef": 4}).fit(X)


def test_auto_is_exact_when_small_and_a_graph_when_large(clustered, monkeypatch):
    X, y, ids, Q, _ = clustered
    assert _backends.hnsw_defaults(10_000, 128) == (16, 128, 32)
    small = NearestNeighborRetriever(algorithm="auto").fit(X[:1000], y[:1000])
    assert small._algorithm() == "brute" and small._index is None
    assert small.score(None, None) == NearestNeighborRetriever().fit(
        X[:1000], y[:1000]).score(None, None)  # the exact, full-ranking mAP
    # above the threshold (lowered here) it is the graph, usearch's without
    # FAISS (FAISS's: tests/neighbors/test_auto.py); it grows into it
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setattr(_backends, "AUTO_MIN_VALUES", 1500 * X.shape[1])
    small.partial_fit(X[1000:], y[1000:])
    assert small._algorithm() == "hnsw"
    truth = NearestNeighborRetriever().fit(X).kneighbors(Q)[1]
    assert recall(small.kneighbors(Q)[1], truth) >= 0.95
    assert small._index_kind == "hnsw"


def test_grid_search_over_ef_search(clustered):
    X, y, _, _, _ = clustered
    grid = GridSearchCV(
        NearestNeighborRetriever(n_neighbors=10, **HNSW),
        {"algorithm_params": [{"ef_search": 1, "M": 2, "ef_construction": 2},
                              {"ef_search": 64}]},
        cv=KFold(3, shuffle=True, random_state=0), error_score="raise",
    ).fit(X, y)
    scores = grid.cv_results_["mean_test_score"]
    assert np.all((scores > 0) & (scores <= 1))
    assert grid.best_params_ == {"algorithm_params": {"ef_search": 64}}


@parametrize_with_checks([NearestNeighborRetriever(n_neighbors=2, algorithm="hnsw", n_jobs=1)])
def test_hnsw_sklearn_compatible(estimator, check):
    check(estimator)
