"""Growing indexes: partial_fit, ids, remove, persistence (FAISS, the store and the
top-k selection: tests/neighbors/)."""

import os

import joblib
import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.pipeline import make_pipeline

from skretrieval import NearestNeighborRetriever, PCAWhitener, add_to_index
from skretrieval.persistence import load_pipeline, save_pipeline

from _helpers import (
    assert_rankings_equivalent,
    assert_removed_and_recall,
    clustered_descriptors,
    grown_retriever,
    recall,
    write_images,
)

@pytest.fixture(scope="module")
def clustered():
    return clustered_descriptors()


# ---------------------------------------------------------------------------
# partial_fit
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "euclidean", "inner_product"])
@pytest.mark.parametrize("params", [{}, {"store": True}, {"dtype": "float16"}])
def test_partial_fit_equals_fit(clustered, metric, params, tmp_path):
    X, y, ids, Q, y_q = clustered
    if params.get("store"):
        params = {"store": tmp_path / "full.f32"}
    full = NearestNeighborRetriever(n_neighbors=10, metric=metric, **params).fit(X, y, ids=ids)
    if "store" in params:
        params = {"store": tmp_path / "grown.f32"}
    grown = grown_retriever(X, y, ids, n_neighbors=10, metric=metric, **params)
    assert grown.n_samples_fit_ == 2000
    assert_array_equal(grown.X_fit_, full.X_fit_)
    assert grown.X_fit_.dtype == full.X_fit_.dtype
    assert_array_equal(grown.y_, full.y_)
    assert_array_equal(grown.ids_, full.ids_)
    for queries in (Q, None):
        d_full, i_full = full.kneighbors(queries)
        d_grown, i_grown = grown.kneighbors(queries)
        assert_array_equal(i_grown, i_full)
        assert_array_equal(d_grown, d_full)
    assert grown.score(Q, y_q) == full.score(Q, y_q)
    assert grown.score(None, None) == full.score(None, None)
    if "store" in params:
        assert isinstance(grown.X_fit_, np.memmap)
        assert os.path.getsize(params["store"]) == 2000 * 32 * 4


def test_default_ids_and_return_ids(clustered):
    X, y, ids, Q, _ = clustered
    r = NearestNeighborRetriever(n_neighbors=5).fit(X[:10])
    assert_array_equal(r.ids_, np.arange(10))
    r.partial_fit(X[10:15])
    assert_array_equal(r.ids_, np.arange(15))
    r.remove([14, 3])
    r.partial_fit(X[15:17])  # never reuses a removed id
    assert_array_equal(r.ids_, [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16])
    dist, ind = r.kneighbors(Q)
    dist_ids, found = r.kneighbors(Q, return_ids=True)
    assert_array_equal(found, r.ids_[ind])
    assert_array_equal(dist_ids, dist)
    assert_array_equal(r.rows_of([15, 0]), [13, 0])
    assert r.rows_of(16) == 14

    s = NearestNeighborRetriever(n_neighbors=3).fit(X[:20], y[:20], ids=ids[:20])
    assert_array_equal(s.kneighbors(X[:2], return_ids=True, return_distance=False)[:, 0],
                       ids[:2])


def test_partial_fit_errors(clustered):
    X, y, ids, _, _ = clustered
    r = NearestNeighborRetriever().fit(X[:10], y[:10], ids=ids[:10])
    with pytest.raises(ValueError, match="fitted with labels"):
        r.partial_fit(X[10:12])
    with pytest.raises(ValueError, match="non-integer ids"):
        r.partial_fit(X[10:12], y[10:12])
    with pytest.raises(ValueError, match="already in the database"):
        r.partial_fit(X[10:12], y[10:12], ids=ids[8:10])
    with pytest.raises(ValueError, match="unique"):
        r.partial_fit(X[10:12], y[10:12], ids=["a", "a"])
    with pytest.raises(ValueError, match="kind of ids_"):
        r.partial_fit(X[10:12], y[10:12], ids=[100, 101])
    with pytest.raises(ValueError, match="features"):
        r.partial_fit(X[10:12, :5], y[10:12], ids=["a", "b"])
    with pytest.raises(ValueError, match="one per item"):
        r.partial_fit(X[10:12], y[10:12], ids=["a"])
    assert r.n_samples_fit_ == 10  # failed calls changed nothing
    unlabelled = NearestNeighborRetriever().fit(X[:10])
    with pytest.raises(ValueError, match="without labels"):
        unlabelled.partial_fit(X[10:12], y[10:12])
    with pytest.raises(ValueError, match="unique"):
        NearestNeighborRetriever().fit(X[:3], ids=[1, 2, 1])


# ---------------------------------------------------------------------------
# remove
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("store", [False, True])
def test_remove_equals_fit_on_the_rest(clustered, store, tmp_path):
    X, y, ids, Q, y_q = clustered
    params = {"store": tmp_path / "db.f16", "dtype": "float16"} if store else {}
    r = NearestNeighborRetriever(n_neighbors=10, **params).fit(X, y, ids=ids)
    gone = ids[::3]
    r.remove(gone)
    keep = ~np.isin(ids, gone)
    ref = NearestNeighborRetriever(n_neighbors=10, dtype=params.get("dtype", "float32")).fit(
        X[keep], y[keep], ids=ids[keep])
    assert r.n_samples_fit_ == ref.n_samples_fit_ == keep.sum()
    assert_array_equal(r.ids_, ids[keep])
    _, found = r.kneighbors(Q, return_ids=True)
    assert not np.isin(found, gone).any()
    assert_array_equal(found, ref.kneighbors(Q, return_ids=True)[1])
    assert r.score(Q, y_q) == ref.score(Q, y_q)
    assert r.score(None, None) == ref.score(None, None)
    if store:
        assert os.path.getsize(params["store"]) == keep.sum() * 32 * 2  # compacted
    # partial_fit after removal; an id removed before may come back
    back = np.array([0, 3, 6])
    r.partial_fit(X[back], y[back], ids=ids[back])
    assert r.n_samples_fit_ == keep.sum() + 3
    assert_array_equal(r.kneighbors(X[back], n_neighbors=1, return_ids=True)[1].ravel(),
                       ids[back])
    with pytest.raises(ValueError, match="not in the database"):
        r.remove(["nope.jpg"])
    with pytest.raises(ValueError, match="empty"):
        r.remove(r.ids_)


# ---------------------------------------------------------------------------
# memory-mapped store and persistence
# ---------------------------------------------------------------------------
def test_persisted_pipeline_append_and_reopen(clustered, tmp_path):
    X, y, ids, Q, _ = clustered
    pipe = make_pipeline(PCAWhitener(n_components=16, random_state=0),
                         NearestNeighborRetriever(n_neighbors=10))
    pipe.fit(X[:1000], y[:1000], nearestneighborretriever__ids=ids[:1000])
    components = pipe[0].components_.copy()
    for path, dump, load in [
        (tmp_path / "index.joblib", joblib.dump, joblib.load),
        (tmp_path / "index.zip", save_pipeline, load_pipeline),
    ]:
        dump(pipe, path)
        reopened = load(path)
        add_to_index(reopened, X[1000:], y[1000:], ids=ids[1000:])
        if load is load_pipeline:
            save_pipeline(reopened, path, overwrite=True)
        else:
            dump(reopened, path)
        final = load(path)
        assert_array_equal(final[0].components_, components)  # whitening not refitted
        ref = NearestNeighborRetriever(n_neighbors=10).fit(pipe[0].transform(X), y, ids=ids)
        assert_array_equal(final[-1].ids_, ids)
        # the database transformed in two batches against one: ties may swap
        assert_rankings_equivalent(
            *final[-1].kneighbors(pipe[0].transform(Q), return_ids=True),
            *ref.kneighbors(pipe[0].transform(Q), return_ids=True))
    with pytest.raises(TypeError, match="partial_fit"):
        add_to_index(make_pipeline(PCAWhitener(n_components=2)).fit(X[:10]), X[:2])


def test_retriever_pickled_before_ids_gets_default_ids(clustered):
    X, y, _, Q, _ = clustered
    r = NearestNeighborRetriever().fit(X[:50], y[:50])
    state = r.__getstate__()
    for key in ("ids_", "_keys", "_n_keys", "_next_id", "_store_path", "_store_dtype",
                "_index_kind"):
        state.pop(key)
    old = NearestNeighborRetriever.__new__(NearestNeighborRetriever)
    old.__setstate__(state)
    assert_array_equal(old.ids_, np.arange(50))
    assert_array_equal(old.kneighbors(Q)[1], r.kneighbors(Q)[1])
    old.partial_fit(X[50:60], y[50:60])
    assert_array_equal(old.ids_, np.arange(60))


# ---------------------------------------------------------------------------
# FAISS
# ---------------------------------------------------------------------------
# ---------------------------------------------------------------------------
# NN-descent (one small index: numba compiles pynndescent once per process)
# ---------------------------------------------------------------------------
@pytest.mark.nndescent
def test_nndescent_grow_remove_and_pickle(clustered, tmp_path):
    X, y, ids, Q, _ = clustered
    X, y, ids = X[:600], y[:600], ids[:600]
    r = NearestNeighborRetriever(n_neighbors=10, algorithm="nndescent", random_state=0)
    r.fit(X[:400], y[:400], ids=ids[:400])
    r.partial_fit(X[400:], y[400:], ids=ids[400:])
    assert r._index is None  # rebuilt over all the items on the next query
    brute = NearestNeighborRetriever(n_neighbors=10).fit(X, y, ids=ids)
    _, found = r.kneighbors(Q, return_ids=True)
    assert recall(found, brute.kneighbors(Q, return_ids=True)[1]) >= 0.9
    gone = ids[::4]
    r.remove(gone)
    assert_removed_and_recall(r, X, y, ids, Q, gone)
    loaded = joblib.load(joblib.dump(r, tmp_path / "nnd.joblib")[0])
    assert_array_equal(loaded.kneighbors(Q)[1], r.kneighbors(Q)[1])


# ---------------------------------------------------------------------------
# command line: index --save-every, --append
# ---------------------------------------------------------------------------


def test_cli_index_save_every_and_append(tmp_path, capsys):
    from skretrieval.cli import main

    fast = ["--backbone", "resnet18", "--weights", "none", "--max-size", "48",
            "--device", "cpu"]
    folder, index = tmp_path / "photos", tmp_path / "index.joblib"
    write_images(folder, [f"a{i}.png" for i in range(5)], seed=0)
    assert main(["index", str(folder), "-o", str(index), "--save-every", "2", "--progress",
                 *fast]) == 0
    out, err = capsys.readouterr()  # the bar (forced: stderr is no terminal here)
    assert "indexed and saved" in err and "5/5" in err and "indexed 5 image(s)" in out
    pipe = joblib.load(index)
    assert_array_equal(pipe[-1].ids_, [f"a{i}.png" for i in range(5)])
    assert pipe[0].verbose == 0 and pipe[0].cache is None

    write_images(folder, ["new/b0.png", "new/b1.png", "new/b2.png"], seed=1)
    assert main(["index", str(folder), "-o", str(index), "--append", "--save-every", "2",
                 "--cache", str(tmp_path / "cache"), *fast]) == 0
    out, err = capsys.readouterr()
    assert "added 3 image(s)" in out and "8 image(s) in all" in out
    grown = joblib.load(index)
    assert_array_equal(grown[-1].ids_[5:], ["new/b0.png", "new/b1.png", "new/b2.png"])
    assert_array_equal(grown[-1].y_, grown[-1].ids_)
    assert grown[0].cache is None  # the cache option is not saved in the index
    # the whitening-free pipeline of the first batch transforms the new images
    Xq = grown[:-1].transform([str(folder / "new" / "b1.png")])
    assert grown[-1].kneighbors(Xq, n_neighbors=1, return_ids=True)[1][0, 0] == "new/b1.png"

    assert main(["index", str(folder), "-o", str(index), "--append", *fast]) == 0
    assert "nothing to add" in capsys.readouterr()[0]
    assert main(["search", str(index), str(folder / "new" / "b2.png"), "-k", "1"]) == 0
    assert "new/b2.png" in capsys.readouterr()[0]
