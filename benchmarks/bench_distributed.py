"""Throughput of ConvFeatureExtractor on a dask.distributed LocalCluster (1 vs 2 workers).

The same extractor (MobileNetV2 ImageNet, last conv layer) transforms ``--n``
COIL-100 views at ``--max-size``:

* in this process, torch on 2 threads (its default on this machine) and on 1;
* under ``joblib.parallel_backend("dask")`` on a ``LocalCluster`` of 1 and
  then 2 worker processes, 1 task thread each (dask starts its workers with
  ``OMP_NUM_THREADS=1``: torch runs on 1 thread per task).

Each cluster is started and warmed up first (workers import torch, receive
the extractor and build the network once): the timed runs are what a
long-lived cluster does per ``transform``, shipping the extractor included.
Every configuration runs ``--repeat`` times, interleaved, and the best run
is kept (other jobs may share the cores).  The maps are checked against the
in-process ones.

Run:  python benchmarks/bench_distributed.py [--n 400] [--max-size 256] [--repeat 2]
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def coil_paths(n):
    files = sorted((DATA / "coil100").glob("obj*__*.png"))
    files = [p for p in files if not p.name.startswith("obj1__")]  # obj1 is 32x32
    if len(files) < n:
        sys.exit(f"need {n} COIL-100 images in {DATA / 'coil100'}, found {len(files)}")
    step = len(files) // n  # spread over the objects
    return [str(p) for p in files[::step][:n]]


def max_diff(a, b):
    return max(float(np.abs(x[0] - y[0]).max()) for x, y in zip(a, b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--max-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import joblib
    import torch
    from distributed import Client, LocalCluster

    from skretrieval import ConvFeatureExtractor

    paths = coil_paths(args.n)
    ext = ConvFeatureExtractor("mobilenet_v2", weights="IMAGENET1K_V1",
                               max_size=args.max_size, device="cpu").fit()
    load_before = os.getloadavg()
    default_threads = torch.get_num_threads()
    results = {}

    def timed(name, fn):
        t = time.perf_counter()
        maps = fn()
        dt = time.perf_counter() - t
        results.setdefault(name, []).append(dt)
        print(f"  {name}: {dt:.2f} s ({len(paths) / dt:.1f} img/s)", flush=True)
        return maps

    def in_process(threads):
        torch.set_num_threads(threads)
        try:
            return ext.transform(paths)
        finally:
            torch.set_num_threads(default_threads)

    ext.transform(paths[:4])  # warm-up
    reference = None
    clusters = {}
    diffs = {}
    for workers in (1, 2):
        t = time.perf_counter()
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(cluster, set_as_default=False)
        with joblib.parallel_backend("dask", client=client):
            ext.transform(paths[:8 * workers])  # workers import torch, build the network
        threads = sorted(set(client.run(torch.get_num_threads).values()))
        clusters[workers] = (cluster, client, time.perf_counter() - t, threads)
        print(f"LocalCluster({workers} worker(s)) started and warmed up in "
              f"{clusters[workers][2]:.1f} s; torch threads per worker: {threads}", flush=True)

    for r in range(args.repeat):
        print(f"run {r + 1}/{args.repeat}", flush=True)
        maps = timed(f"in-process, torch {default_threads} threads",
                     lambda: in_process(default_threads))
        reference = reference if reference is not None else maps
        timed("in-process, torch 1 thread", lambda: in_process(1))
        for workers in (1, 2):
            client = clusters[workers][1]
            with joblib.parallel_backend("dask", client=client):
                maps = timed(f"dask LocalCluster, {workers} worker(s) x 1 thread",
                             lambda: ext.transform(paths))
            diffs[workers] = max(diffs.get(workers, 0.0), max_diff(reference, maps))
    for cluster, client, _, _ in clusters.values():
        client.close()
        cluster.close()
    load_after = os.getloadavg()

    best = {name: min(times) for name, times in results.items()}
    one = best["dask LocalCluster, 1 worker(s) x 1 thread"]
    print(f"\n{len(paths)} COIL-100 views, MobileNetV2 ImageNet (last conv layer), "
          f"max_size={args.max_size}, {os.cpu_count()} CPU cores; best of {args.repeat}; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}\n")
    print("| configuration | time (s) | images/s | vs dask 1 worker |")
    print("|---|---|---|---|")
    for name, dt in best.items():
        print(f"| {name} | {dt:.2f} | {len(paths) / dt:.1f} | {one / dt:.2f}x |")
    print(f"\nmax |diff| of the maps against in-process: 1 worker {diffs[1]:.1e}, "
          f"2 workers {diffs[2]:.1e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": len(paths), "max_size": args.max_size, "times": results,
                       "best": best, "load_before": load_before, "load_after": load_after,
                       "max_diff": diffs,
                       "startup_s": {w: c[2] for w, c in clusters.items()}}, fh, indent=1)


if __name__ == "__main__":
    main()
