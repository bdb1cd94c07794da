"""Bounded load test of the HTTP service (``python -m skretrieval.serve``).

Builds an index of generated images (MobileNetV2 with its ImageNet weights
when they are installed; otherwise ResNet-18 with random weights, whose
features still tell the images apart), saves it with
``save_pipeline``, starts the server in a subprocess on 127.0.0.1 only (a
free port), and runs ``--clients`` concurrent clients of ``--queries``
uploads each (``POST /search``, k=10, images of the index).  It stops by
itself after the queries or ``--time-limit`` seconds, whichever comes first,
stops the server, and prints the latency percentiles (p50, p99), the
throughput, the error count (non-200 answers and transport errors) and how
often the top hit was the uploaded image itself.

Usage::

    python benchmarks/bench_serve.py [--clients 8] [--queries 50] [--n-images 200]
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_images(folder, n, size=(320, 240), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        w, h = size
        img = np.kron(blocks, np.ones((h // 6 + 1, w // 8 + 1, 1), np.uint8))[:h, :w]
        noise = rng.integers(-25, 25, size=img.shape)
        img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
        name = f"img{i:04d}.jpg"
        Image.fromarray(img).save(folder / name, quality=90)
        names.append(name)
    return names


def build_model(folder, names, out, backbone, weights, max_size):
    from sklearn.pipeline import make_pipeline

    from skretrieval import (ConvFeatureExtractor, GeMPooler, NearestNeighborRetriever,
                             WeightsNotFoundError)
    from skretrieval.persistence import save_pipeline

    extractor = ConvFeatureExtractor(backbone, weights=weights, max_size=max_size,
                                     device="cpu")
    try:
        extractor.fit()
    except WeightsNotFoundError:
        # random MobileNetV2 weights give all-zero descriptors: use ResNet-18
        backbone, weights = "resnet18", None
        extractor = ConvFeatureExtractor(backbone, weights=None, max_size=max_size,
                                         device="cpu")
    pipe = make_pipeline(extractor, GeMPooler(), NearestNeighborRetriever())
    labels = np.asarray(names)
    pipe.fit([str(folder / n) for n in names], labels, nearestneighborretriever__ids=labels)
    return save_pipeline(pipe, out), f"{backbone} ({weights or 'random'} weights)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, timeout=120):
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited: " + proc.stdout.read().decode())
        try:
            return httpx.get(url + "/health", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start in time")


def main(argv=None):
    import httpx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--queries", type=int, default=50, help="per client")
    p.add_argument("--n-images", type=int, default=120)
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--weights", default="IMAGENET1K_V1")
    p.add_argument("--max-size", type=int, default=224)
    p.add_argument("--time-limit", type=float, default=300.0,
                   help="stop the clients after this many seconds")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp = Path(tmp)
        root = tmp / "images"
        root.mkdir()
        t0 = time.perf_counter()
        names = write_images(root, args.n_images)
        model, network = build_model(root, names, tmp / "model.zip", args.backbone,
                                     args.weights, args.max_size)
        print(f"index: {len(names)} images 320x240, {network}, "
              f"max_size {args.max_size}, built in {time.perf_counter() - t0:.1f} s")

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep
                   + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [sys.executable, "-m", "skretrieval.serve", model, "--host", "127.0.0.1",
             "--port", str(port), "--images", str(root), "--log-level", "warning",
             "--device", "cpu"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            health = wait_ready(url, proc)
            print(f"server: {url} ({health['n_images']} images, {health['dimension']} "
                  f"dimensions); {args.clients} clients x {args.queries} queries")
            payloads = {n: (root / n).read_bytes() for n in names}
            latencies, errors, top1 = [], [], [0]
            lock = threading.Lock()
            stop_at = time.monotonic() + args.time_limit

            def client(seed):
                rng = np.random.default_rng(seed)
                with httpx.Client(base_url=url, timeout=120) as c:
                    for _ in range(args.queries):
                        if time.monotonic() > stop_at:
                            return
                        name = names[rng.integers(len(names))]
                        t = time.perf_counter()
                        try:
                            r = c.post("/search", data={"k": "10"},
                                       files={"image": (name, payloads[name], "image/jpeg")})
                            ok = r.status_code == 200
                            hit = ok and r.json()["results"][0]["id"] == name
                            why = None if ok else f"HTTP {r.status_code}: {r.text[:100]}"
                        except httpx.HTTPError as exc:
                            ok, hit, why = False, False, f"{type(exc).__name__}: {exc}"
                        dt = time.perf_counter() - t
                        with lock:
                            latencies.append(dt)
                            top1[0] += hit
                            if not ok:
                                errors.append(why)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    lat = np.asarray(latencies) * 1000
    n = len(lat)
    print(f"requests: {n} of {args.clients * args.queries} in {wall:.1f} s"
          + (" (time limit reached)" if n < args.clients * args.queries else ""))
    print(f"latency ms: p50 {np.percentile(lat, 50):.0f}, p90 {np.percentile(lat, 90):.0f}, "
          f"p99 {np.percentile(lat, 99):.0f}, max {lat.max():.0f}")
    print(f"throughput: {n / wall:.1f} requests/s")
    print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"top hit is the uploaded image: {top1[0]}/{n}")
    print(f"machine: {os.cpu_count()} CPU(s), torch threads as set by the server process")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
