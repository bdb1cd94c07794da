"""Backbones on this CPU: time and memory per image, and a COIL-100 check.

Part 1 (``--timing``): seconds per image and peak resident memory of
``ConvFeatureExtractor`` for ViT-S/16, ViT-B/16 (timm and torchvision),
DINOv2 ViT-S/14 and MobileNetV2, at 224 and 512 px (longest side = square
images of that side), random weights (the time does not depend on them).
Each configuration runs in its own process, so that its peak memory
(``ru_maxrss``) is its own; the baseline is the same process after loading
torch and the network, before the first image.

Part 2 (``--coil``): leave-one-out mAP and time per image on a COIL-100
subset (``--objects`` objects x 12 views, 128 px): MobileNetV2 ImageNet
(the library's reference numbers: unchanged by the transformer backbones)
and random-weight ViTs (timing only: random weights retrieve poorly).

Usage::

    python benchmarks/bench_backbones.py --timing
    python benchmarks/bench_backbones.py --coil --root ../shared/data/coil100

Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

#: (backbone, layer, engine): "auto" is what a user gets (ONNX Runtime for
#: MobileNetV2 and torchvision's ViTs); timm's ViTs run with torch, which is
#: what "auto" falls back to for them (their exports freeze the token grid),
#: timed without the failed export so that the peak memory is the network's.
TIMING = [
    ("mobilenet_v2", None, "torch"),
    ("mobilenet_v2", None, "auto"),
    ("timm:vit_small_patch16_224", None, "torch"),
    ("timm:vit_small_patch14_dinov2.lvd142m", None, "torch"),
    ("timm:vit_base_patch16_224", None, "torch"),
    ("vit_b_16", None, "torch"),
    ("vit_b_16", None, "auto"),
]


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(backbone, size, n_images, layer, engine="auto"):
    """Time and memory of one configuration (run in a fresh process)."""
    import torch

    from skretrieval import ConvFeatureExtractor

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n_images)]
    ext = ConvFeatureExtractor(backbone, weights=None, layer=layer, max_size=size,
                               device="cpu", engine=engine, cache=None).fit()
    base = _rss_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an engine that cannot run the network: torch
        ext.transform(images[:1])  # warm-up (and the export of an engine)
    times = []
    for img in images:
        t = time.perf_counter()
        maps = ext.transform([img])
        times.append(time.perf_counter() - t)
    shape = maps[0][0].shape
    return {"backbone": backbone, "size": size, "layer": ext.layer_name_,
            "engine": ext.engine_,
            "s_per_image": float(np.median(times)), "peak_mb": _rss_mb(),
            "network_mb": base, "map": list(shape), "threads": torch.get_num_threads(),
            "params_m": sum(p.numel() for p in ext.trunk_.parameters()) / 1e6}


def timing(sizes, n_images):
    print(f"load average before: {os.getloadavg()}")
    print("| backbone | engine | px | params (M) | map (C x h x w) | s / image | "
          "peak RSS (MB) | after loading (MB) |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for backbone, layer, engine in TIMING:
        for size in sizes:  # one process per row; each row printed when measured
            cmd = [sys.executable, __file__, "--one", backbone, str(size), str(n_images),
                   layer or "", engine]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{backbone} {size}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            c, h, w = r["map"]
            print(f"| {r['backbone']} | {r['engine']} | {r['size']} | {r['params_m']:.1f} | "
                  f"{c} x {h} x {w} | {r['s_per_image']:.3f} | {r['peak_mb']:.0f} | "
                  f"{r['network_mb']:.0f} |",
                  flush=True)
    print(f"(median of {n_images} images after one warm-up; random weights; load average "
          f"after: {os.getloadavg()})")


def coil(root, n_objects, weights):
    from sklearn.pipeline import make_pipeline

    from skretrieval import ConvFeatureExtractor, GeMPooler, MACPooler, NearestNeighborRetriever

    paths, labels = [], []
    for obj in range(2, 2 + n_objects):
        for deg in range(0, 360, 30):
            p = os.path.join(root, f"obj{obj}__{deg}.png")
            if os.path.exists(p):
                paths.append(p)
                labels.append(obj)
    configs = [("mobilenet_v2", weights, None, GeMPooler(), "torch"),
               ("mobilenet_v2", weights, None, GeMPooler(), "auto"),
               ("timm:vit_small_patch16_224", None, "norm", GeMPooler(), "auto"),
               ("timm:vit_small_patch16_224", None, "norm.cls", MACPooler(), "auto"),
               ("vit_b_16", None, "norm.cls", MACPooler(), "auto")]
    print(f"COIL-100 subset: {len(paths)} images ({n_objects} objects x 12 views), "
          f"max_size 128, leave-one-out; load average {os.getloadavg()}")
    print("| backbone | weights | engine | layer | pooler | LOO mAP (%) | s / image |")
    print("|---|---|---|---|---|---|---|")
    for backbone, w, layer, pooler, engine in configs:
        ext = ConvFeatureExtractor(backbone, weights=w, layer=layer, max_size=128,
                                   device="cpu", engine=engine, cache=None).fit()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an engine that cannot run the network: torch
            ext.transform(paths[:1])  # warm-up (and the export of an engine)
        t = time.perf_counter()
        maps = ext.transform(paths)
        dt = (time.perf_counter() - t) / len(paths)
        search = make_pipeline(pooler, NearestNeighborRetriever()).fit(maps, labels)
        print(f"| {backbone} | {w or 'random'} | {ext.engine_} | {ext.layer_name_} | "
              f"{type(pooler).__name__} | {100 * search[-1].score(None, None):.2f} | "
              f"{dt:.4f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--n-images", type=int, default=5)
    ap.add_argument("--coil", action="store_true")
    ap.add_argument("--root", default=os.path.join("..", "shared", "data", "coil100"))
    ap.add_argument("--objects", type=int, default=20)
    ap.add_argument("--weights", default="IMAGENET1K_V1")
    ap.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        backbone, size, n, layer, engine = args.one
        print(json.dumps(one(backbone, int(size), int(n), layer or None, engine)))
        return
    if args.timing:
        timing(args.sizes, args.n_images)
    if args.coil:
        coil(args.root, args.objects, args.weights)


if __name__ == "__main__":
    main()
