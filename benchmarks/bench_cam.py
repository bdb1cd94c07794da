"""Class-weighted features, query expansion and re-ranking on real images (issue 5).

MobileNetV2 (official torchvision ImageNet weights), last convolutional layer
with its class activation maps, on COIL-100 (``../shared/data``, or
``$SKRETRIEVAL_SHARED_DATA``): every ``--step``-th view of each of the 100
objects, leave-one-out (each view queries all the others).  Every whitening
(of the global vectors and of the CAM class vectors) is learned on COIL-20,
never on the evaluated images.

Rows: SPoC, CroW and GeM (PCA-w), then the class-weighted features of
Jimenez et al. (offline and online aggregation), each with query expansion
(average QE over the top 5, as the paper), re-ranking of the top
``--rerank`` results with CAM proposals or R-MAC regions, and re-ranking +
QE.  Every row prints its mAP and the time of its own work (descriptors,
indexing, search; the feature maps are shared and timed once).

Run:  python benchmarks/bench_cam.py [--step 4] [--max-size 256] [--out FILE]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline

from skretrieval import (
    CAMWeighter,
    ConvFeatureExtractor,
    CroWPooler,
    GeMPooler,
    NearestNeighborRetriever,
    OnlineCAMRetriever,
    PCAWhitener,
    QueryExpansionRetriever,
    RegionReranker,
    SPoCPooler,
)
from skretrieval.datasets import load_coil

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=4, help="keep every STEP-th view (1: all)")
    ap.add_argument("--max-size", type=int, default=256)
    ap.add_argument("--dim", type=int, default=256, help="PCA-w dimension")
    ap.add_argument("--n-classes", type=int, default=64)
    ap.add_argument("--rerank", type=int, default=100)
    ap.add_argument("--qe", type=int, default=5)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/skretrieval-bench"))
    ap.add_argument("--out", help="also write the Markdown table here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    coil100 = load_coil(DATA / "coil100", name="coil100")
    coil20 = load_coil(DATA / "coil20", name="coil20")
    keep = np.arange(len(coil100.images)) % args.step == 0
    images = [im for im, k in zip(coil100.images, keep) if k]
    y = np.asarray(coil100.labels)[keep]
    ext = ConvFeatureExtractor("mobilenet_v2", max_size=args.max_size, cams=args.n_classes,
                               cache=args.cache, verbose=1).fit()
    t0 = time.perf_counter()
    maps = ext.transform(images)
    maps20 = ext.transform(coil20.images)
    t_maps = time.perf_counter() - t0
    print(f"maps + CAMs of {len(images)} + {len(coil20.images)} images: {t_maps:.1f} s",
          file=sys.stderr)

    rows = []

    def run(name, fn):
        t = time.perf_counter()
        score = fn()
        rows.append((name, score, time.perf_counter() - t))
        print(f"{name:45s} mAP {score:.4f}  {rows[-1][2]:7.1f} s", file=sys.stderr, flush=True)

    def whitened(pooler):
        return make_pipeline(pooler, PCAWhitener(args.dim, random_state=0)).fit(maps20)

    def loo(X, retriever=None):
        retriever = retriever or NearestNeighborRetriever()
        return retriever.fit(X, y).score()

    qe = QueryExpansionRetriever(qe_k=args.qe, qe_alpha=0.0)
    agg = {}
    for name, pooler in (("SPoC", SPoCPooler()), ("CroW", CroWPooler()),
                         ("GeM (p=3)", GeMPooler(p=3))):
        def global_(pooler=pooler, name=name):
            agg[name] = whitened(pooler)
            return loo(agg[name].transform(maps))
        run(f"{name} + PCA-w {args.dim}", global_)
    run(f"GeM + PCA-w {args.dim} + QE{args.qe}",
        lambda: loo(agg["GeM (p=3)"].transform(maps), clone(qe)))

    cw_params = dict(n_classes=args.n_classes, whitener=PCAWhitener(args.dim, random_state=0),
                     random_state=0)

    def offline():
        agg["CAM"] = CAMWeighter(**cw_params).fit(maps20)
        return loo(agg["CAM"].transform(maps))
    run(f"CAM-weighted offline (N_C={args.n_classes}) + PCA-w", offline)

    def online():
        cw = CAMWeighter(aggregation="online", **cw_params).fit(maps20)
        return OnlineCAMRetriever().fit(cw.transform(maps), y).score()
    run(f"CAM-weighted online (N_C={args.n_classes}) + PCA-w", online)
    run("CAM offline + QE", lambda: loo(agg["CAM"].transform(maps), clone(qe)))

    def rerank(aggregator, proposals, qe_k=0):
        rr = RegionReranker(FrozenEstimator(aggregator), n_rerank=args.rerank,
                            proposals=proposals, qe_k=qe_k)
        return rr.fit(maps, y).score()
    for proposals in ("cam", "rmac"):
        run(f"CAM offline + re-rank {args.rerank} ({proposals})",
            lambda p=proposals: rerank(agg["CAM"], p))
    run(f"CAM offline + re-rank {args.rerank} (cam) + QE{args.qe}",
        lambda: rerank(agg["CAM"], "cam", args.qe))
    run(f"GeM + PCA-w + re-rank {args.rerank} (rmac)",
        lambda: rerank(agg["GeM (p=3)"], "rmac"))
    run(f"GeM + PCA-w + re-rank {args.rerank} (rmac) + QE{args.qe}",
        lambda: rerank(agg["GeM (p=3)"], "rmac", args.qe))

    lines = [
        f"COIL-100, every {args.step}th view ({len(images)} images, {len(set(y))} objects), "
        f"leave-one-out; MobileNetV2 ImageNet, last conv layer, max_size {args.max_size}; "
        f"whitening learned on COIL-20. Maps + CAMs: {t_maps:.0f} s.",
        "",
        "| method | mAP | time (s) |",
        "|---|---|---|",
    ] + [f"| {n} | {s:.3f} | {t:.1f} |" for n, s, t in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
