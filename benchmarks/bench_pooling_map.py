"""mAP of every pooler, raw and PCA-whitened, with the real MobileNetV2 weights.

Data (``../shared/data``, or ``$SKRETRIEVAL_SHARED_DATA``):

* COIL-100, leave-one-out: each of the 7,168 views queries all the others;
  relevant = the other views of the same object (~71 per query).
* UKBench sample (10 photos, groups of 4): N-S score (relevant among the top
  4, the query included, as the UKBench protocol counts it) and
  leave-one-out mAP; the Holidays sample (query ``100000.jpg``, its 2
  relevant images) is added to it as a third set of distractors / queries.

Whitening is learned on a different collection, COIL-20 (1,440 grey views of
20 other objects), as the literature learns it on Paris6k for Oxford5k:
never on the images it is evaluated on.

Run:  python benchmarks/bench_pooling_map.py [--max-size 256] [--cache DIR]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from skretrieval import (
    ConvFeatureExtractor,
    CroWPooler,
    GeMPooler,
    MACPooler,
    NearestNeighborRetriever,
    PCAWhitener,
    RMACPooler,
    SPoCPooler,
)
from skretrieval.metrics import mean_average_precision, ukbench_score

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))

POOLERS = {
    "SPoC": SPoCPooler(),
    "MAC": MACPooler(),
    "GeM (p=3)": GeMPooler(p=3),
    "R-MAC": RMACPooler(),
    "CroW": CroWPooler(),
}


def coil(folder):
    paths = sorted((DATA / folder).glob("obj*__*.png"))
    labels = np.array([int(p.name[3:].split("__")[0]) for p in paths])
    return [str(p) for p in paths], labels


def small_sets():
    uk = sorted((DATA / "ukbench-sample").glob("ukbench*.jpg"))
    hol = sorted((DATA / "holidays-sample").glob("*.jpg"))
    paths = [str(p) for p in uk + hol]
    labels = np.array([int(p.stem[7:]) // 4 for p in uk]
                      + [1000 + int(p.stem[:4]) for p in hol])
    return paths, labels, len(uk)


def loo_map(desc, labels):
    return NearestNeighborRetriever().fit(desc, labels).score(None, None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-size", type=int, default=128,
                        help="longest side (COIL images are 128 px: native resolution)")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/skretrieval-bench"),
                        help="feature cache directory (reruns skip the network)")
    args = parser.parse_args()
    if not (DATA / "coil100").is_dir():
        sys.exit(f"needs COIL-100 in {DATA} (set SKRETRIEVAL_SHARED_DATA)")

    ext = ConvFeatureExtractor("mobilenet_v2", weights="IMAGENET1K_V1",
                               max_size=args.max_size, cache=args.cache, store="disk",
                               dtype="float16", verbose=1).fit()
    sets = {}
    t0 = time.perf_counter()
    for name, (paths, labels) in {"coil100": coil("coil100"), "coil20": coil("coil20")}.items():
        sets[name] = (ext.transform(paths), labels)
    small_paths, small_labels, n_uk = small_sets()
    sets["small"] = (ext.transform(small_paths), small_labels)
    t_extract = time.perf_counter() - t0
    n_total = sum(len(v[0]) for v in sets.values())
    print(f"\nMobileNetV2 (ImageNet, torchvision IMAGENET1K_V1), layer {ext.layer_name_}, "
          f"{ext.n_channels_} channels, max_size {args.max_size}; {n_total} images "
          f"extracted in {t_extract:.0f} s")
    print("PCA-w: PCAWhitener learned on COIL-20 (never on the evaluated images)\n")

    header = (f"{'pooler':10s} {'variant':10s} {'COIL-100 mAP':>12s} "
              f"{'UKB N-S':>8s} {'UKB+Hol mAP':>11s} {'pool s':>7s}")
    print(header)
    print("-" * len(header))
    for name, pooler in POOLERS.items():
        t = time.perf_counter()
        desc = {k: pooler.transform(v[0]) for k, v in sets.items()}
        t_pool = time.perf_counter() - t
        variants = [("raw", lambda d: d)]
        for dim in args.dims:
            whitener = PCAWhitener(n_components=dim).fit(desc["coil20"])
            variants.append((f"PCA-w {dim}", whitener.transform))
        for vname, fn in variants:
            coil_map = loo_map(fn(desc["coil100"]), sets["coil100"][1])
            small = fn(desc["small"])
            labels = sets["small"][1]
            # UKBench: the query is in the database and counts (score 0..4)
            _, idx = NearestNeighborRetriever().fit(small, labels).kneighbors(
                small[:n_uk], n_neighbors=4)
            positives = [np.flatnonzero(labels == labels[i]) for i in range(n_uk)]
            ns = ukbench_score(idx, positives)
            # mAP over all small-set queries with at least one other relevant image
            _, full = NearestNeighborRetriever().fit(small, labels).kneighbors(
                None, n_neighbors="all")
            pos = [np.flatnonzero((labels == labels[i]) & (np.arange(len(labels)) != i))
                   for i in range(len(labels))]
            keep = [i for i in range(len(labels)) if len(pos[i])]
            small_map = mean_average_precision(full[keep], [pos[i] for i in keep])
            print(f"{name:10s} {vname:10s} {coil_map:12.4f} {ns:8.2f} {small_map:11.4f} "
                  f"{t_pool:7.1f}")


if __name__ == "__main__":
    main()
