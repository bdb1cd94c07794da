"""The descriptor store: memory-mapped files, float16, pickles, the streamed search."""

import os
import pickle

import joblib
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from skretrieval import NearestNeighborRetriever
from skretrieval.persistence import load_pipeline, save_pipeline

from _helpers import assert_rankings_equivalent


def test_store_pickle_references_the_file_and_reopens(clustered, tmp_path):
    X, y, ids, Q, _ = clustered
    store = tmp_path / "descriptors.f32"
    r = NearestNeighborRetriever(store=store).fit(X[:1500], y[:1500], ids=ids[:1500])
    expected = r.kneighbors(Q)
    blob = pickle.dumps(r)
    in_memory = NearestNeighborRetriever().fit(X[:1500], y[:1500], ids=ids[:1500])
    # the descriptors stay in the file
    assert len(blob) < len(pickle.dumps(in_memory)) - 0.99 * X[:1500].nbytes
    loaded = pickle.loads(blob)
    assert isinstance(loaded.X_fit_, np.memmap)
    assert_array_equal(loaded.kneighbors(Q)[1], expected[1])
    # append to the reopened index, save, reopen
    loaded.partial_fit(X[1500:], y[1500:], ids=ids[1500:])
    joblib.dump(loaded, tmp_path / "index.joblib")
    again = joblib.load(tmp_path / "index.joblib")
    full = NearestNeighborRetriever().fit(X, y, ids=ids)
    # a streamed search (the store) against a search in memory: ties may swap
    assert_rankings_equivalent(*again.kneighbors(Q), *full.kneighbors(Q))
    # save_pipeline copies the descriptors into the model
    save_pipeline(again, tmp_path / "model.zip")
    safe = load_pipeline(tmp_path / "model.zip")
    assert not isinstance(safe.X_fit_, np.memmap)
    assert_array_equal(safe.kneighbors(Q)[1], full.kneighbors(Q)[1])
    os.remove(store)
    with pytest.raises(FileNotFoundError, match="descriptor store"):
        pickle.loads(blob)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_streamed_search_reads_blocks_and_equals_in_memory(clustered, metric, dtype, tmp_path,
                                                           monkeypatch):
    import skretrieval.neighbors._exact as exact_module
    import skretrieval.neighbors._store as store_module

    X, y, ids, Q, _ = clustered
    # the reference: the same descriptors in RAM (float16 ones read in one block)
    ref = NearestNeighborRetriever(metric=metric, dtype=dtype).fit(X, y)
    cases = [(queries, k) for queries in (Q, None) for k in (1, 10, 150)]
    expected = [ref.kneighbors(queries, n_neighbors=k) for queries, k in cases]
    scores = ref.score(Q, y[:100]), ref.score(None, None, n_neighbors=10)
    # blocks of 96 rows: the search merges 21 blocks, the last one shorter (and
    # float16 blocks are converted into one reused buffer); k larger than a block too
    monkeypatch.setattr(store_module, "_STORE_BLOCK_BYTES", 96 * 4 * 32)
    monkeypatch.setattr(exact_module, "_STREAMED_QUERY_ROWS", 700)  # X=None: 3 groups
    r = NearestNeighborRetriever(metric=metric, store=tmp_path / "x.store",
                                 dtype=dtype).fit(X, y)
    for (queries, k), (d_ref, i_ref) in zip(cases, expected):
        # blocks of another shape than the whole database: BLAS may sum in
        # another order, and items tied to float32 precision may swap
        assert_rankings_equivalent(*r.kneighbors(queries, n_neighbors=k), d_ref, i_ref,
                                   err_msg=f"k={k}, queries={queries is not None}")
    # a swap of two tied items of different labels moves an AP a little
    assert (r.score(Q, y[:100]), r.score(None, None, n_neighbors=10)) == pytest.approx(
        scores, abs=1e-3)
