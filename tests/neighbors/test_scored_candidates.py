"""Index distances as ranking keys (``SearchBackend.scored_candidates``).

A FAISS index with a flat storage (``HNSW32``, ``IVF...,Flat``) and a usearch
graph of float32 vectors hold the stored descriptors as they are: their
distances are the exact ranking keys, taken without the exact re-rank from
the retriever's store; ``algorithm_params["rerank"]`` chooses either way.
"""

import numpy as np
import pytest

from skretrieval import NearestNeighborRetriever

from _helpers import assert_rankings_equivalent

pytest.importorskip("faiss")
pytest.importorskip("usearch")

# (algorithm, algorithm_params) whose index holds the exact vectors
EXACT_VECTORS = [
    ("faiss", {"factory": "HNSW32", "ef_search": 64}),
    ("faiss", {"factory": "IVF{nlist},Flat", "nprobe": 8, "k_factor": 2}),
    ("hnsw", {"index_dtype": "float32", "M": 8, "ef_construction": 32}),
]
# ... and whose index holds approximations of them (re-ranked by default)
APPROX_VECTORS = [
    ("faiss", {"factory": "HNSW16_SQ8"}),
    ("faiss", {"factory": "IVF{nlist},PQ{m}", "k_factor": 4}),
    ("hnsw", {"M": 8, "ef_construction": 32}),  # float16 graph
]


def _fit(X, ids, metric, algorithm, params):
    return NearestNeighborRetriever(n_neighbors=10, metric=metric, algorithm=algorithm,
                                    algorithm_params=params, random_state=0,
                                    n_jobs=1).fit(X, ids=ids)


def _scored(r, Q, n=10):
    """The backend's ``(candidate rows, keys, prepared queries)`` for ``Q``."""
    queries = r._validate_queries(Q)
    cand, keys = r._backend().scored_candidates(r._get_index(), queries, n, None, r._keys)
    return cand, keys, queries


def _assert_exact_keys(r, Q):
    cand, keys, queries = _scored(r, Q)
    assert keys is not None and keys.dtype == np.float32 and keys.shape == cand.shape
    assert np.all(cand >= 0)
    exact = r._exact_keys(queries, cand)
    scale = max(1.0, float(np.abs(exact).max()))
    np.testing.assert_allclose(keys, exact, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "inner_product"])
@pytest.mark.parametrize("algorithm,params", EXACT_VECTORS)
def test_index_keys_are_the_exact_ones(clustered, metric, algorithm, params):
    X, _, ids, Q, _ = clustered
    if metric == "inner_product":  # a graph of inner products wants unit vectors
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
    r = _fit(X, ids, metric, algorithm, params)
    _assert_exact_keys(r, Q)

    # the same rankings as the exact re-rank of the same candidates (the
    # index kept: algorithm_params changes need no rebuild)
    taken = r.kneighbors(Q), r.kneighbors()
    index = r._index
    r.set_params(algorithm_params={**params, "rerank": True})
    assert _scored(r, Q)[1] is None
    reranked = r.kneighbors(Q), r.kneighbors()
    assert r._index is index
    for (d_a, i_a), (d_b, i_b) in zip(taken, reranked):
        assert_rankings_equivalent(d_a, i_a, d_b, i_b, rtol=1e-5, atol=1e-5)
    # leave-one-out: no item is its own result
    assert not np.any(taken[1][1] == np.arange(X.shape[0])[:, np.newaxis])


@pytest.mark.parametrize("algorithm,params", EXACT_VECTORS)
def test_index_keys_after_growth_and_removal(clustered, algorithm, params):
    X, _, ids, Q, _ = clustered
    r = _fit(X[:1500], ids[:1500], "euclidean", algorithm, params)
    r.partial_fit(X[1500:], ids=ids[1500:])
    r.remove(ids[::7])
    _assert_exact_keys(r, Q)
    found = r.kneighbors(Q, return_distance=False)
    assert not np.isin(r.ids_[found], ids[::7]).any()


@pytest.mark.parametrize("algorithm,params", APPROX_VECTORS)
def test_approximate_vectors_are_reranked(clustered, algorithm, params):
    X, _, ids, Q, _ = clustered
    r = _fit(X, ids, "cosine", algorithm, params)
    assert _scored(r, Q)[1] is None  # default: the exact re-rank
    expected = r.kneighbors(Q)

    # rerank=False: the index's own (approximate) distances, in their order
    r.set_params(algorithm_params={**params, "rerank": False})
    cand, keys, queries = _scored(r, Q)
    assert keys is not None
    valid = cand >= 0
    exact = r._exact_keys(queries, np.where(valid, cand, 0))
    assert np.abs(keys - exact)[valid].max() < 0.1
    dist, ind = r.kneighbors(Q)
    assert np.all(np.diff(dist, axis=1) >= 0)
    assert np.mean([np.isin(a, b).mean() for a, b in zip(ind, expected[1])]) > 0.7


@pytest.mark.parametrize("algorithm", ["faiss", "hnsw", "auto"])
@pytest.mark.parametrize("rerank", [1, "yes"])
def test_rerank_is_checked(clustered, algorithm, rerank):
    X = clustered[0]
    r = NearestNeighborRetriever(algorithm=algorithm, algorithm_params={"rerank": rerank})
    with pytest.raises(ValueError, match="rerank"):
        r.fit(X)
