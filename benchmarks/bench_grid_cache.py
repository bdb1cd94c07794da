"""Wall time of a layer x scale x dimension grid search with and without the feature cache.

The grid of Ng et al.'s experiment in miniature: 3 MobileNetV2 layers x 2
input scales x 3 PCA-whitening dimensions, GeM pooling, 3-fold
cross-validation scored with ``RetrievalMAP``, on COIL-100 views from
``../shared/data`` (or ``$SKRETRIEVAL_SHARED_DATA``).  Without a cache each
of the 18 candidates x 3 folds runs the network on its images, plus the
refit; with ``cache=...`` and ``cache_layers=`` the three layers come out of
one forward pass per image and scale.

Run:  python benchmarks/bench_grid_cache.py [--objects 20] [--views 12]
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from skretrieval import (
    ConvFeatureExtractor,
    GeMPooler,
    NearestNeighborRetriever,
    PCAWhitener,
    RetrievalMAP,
    clear_memory_cache,
    forward_pass_count,
)
from skretrieval.extraction._cache import _MEMORY, get_cache

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
LAYERS = ["block10", "block14", "block17"]


def coil(n_objects, n_views):
    paths, labels = [], []
    for obj in range(2, 2 + n_objects):  # obj1 is stored at 32 px
        for deg in np.linspace(0, 360, n_views, endpoint=False).astype(int) // 5 * 5:
            p = DATA / "coil100" / f"obj{obj}__{deg}.png"
            if p.exists():
                paths.append(str(p))
                labels.append(obj)
    return paths, np.array(labels)


def grid(cache, max_size):
    ext = ConvFeatureExtractor("mobilenet_v2", max_size=max_size, device="cpu", cache=cache,
                               cache_layers=LAYERS if cache is not None else None)
    pipe = make_pipeline(ext, GeMPooler(), PCAWhitener(n_components=16),
                         NearestNeighborRetriever())
    return GridSearchCV(
        pipe,
        {"convfeatureextractor__layer": LAYERS,
         "convfeatureextractor__scales": [(1.0,), (1.5,)],
         "pcawhitener__n_components": [16, 32, 48]},
        scoring=RetrievalMAP(), cv=StratifiedKFold(3, shuffle=True, random_state=0))


def run(name, cache, paths, labels, max_size):
    clear_memory_cache()
    search = grid(cache, max_size)
    passes, t = forward_pass_count(), time.perf_counter()
    search.fit(paths, labels)
    seconds = time.perf_counter() - t
    passes = forward_pass_count() - passes
    print(f"{name:<28} {seconds:>8.1f} s {passes:>8d} passes   best "
          f"{search.best_params_} mAP {search.best_score_:.3f}", flush=True)
    return seconds, search


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--max-size", type=int, default=128)
    args = parser.parse_args()
    paths, labels = coil(args.objects, args.views)
    n = len(paths)
    print(f"{n} COIL-100 views, MobileNetV2 ImageNet, layers {LAYERS}, scales 1 and 1.5 of "
          f"max_size {args.max_size}, 3 dims, 3-fold CV: 18 candidates, {os.cpu_count()} cores")
    ConvFeatureExtractor("mobilenet_v2", max_size=32, device="cpu").fit().transform(paths[:2])

    t_none, _ = run("no cache", None, paths, labels, args.max_size)
    t_mem, _ = run("cache='memory'", "memory", paths, labels, args.max_size)
    ram = _MEMORY.nbytes
    directory = tempfile.mkdtemp(prefix="skretrieval-grid-")
    try:
        t_disk, _ = run("cache=<directory>", directory, paths, labels, args.max_size)
        disk = get_cache(directory).nbytes
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\nspeed-up of the memory cache: {t_none / t_mem:.1f}x; of the directory cache: "
          f"{t_none / t_disk:.1f}x (same run)")
    print(f"cache size for {n} images x 2 scales x 3 layers: {ram / 2**20:.1f} MiB in RAM, "
          f"{disk / 2**20:.1f} MiB on disk (float32 maps; the bound is "
          "$SKRETRIEVAL_CACHE_BYTES / $SKRETRIEVAL_DISK_CACHE_BYTES)")


if __name__ == "__main__":
    main()
