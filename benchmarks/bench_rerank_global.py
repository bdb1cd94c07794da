"""Diffusion, k-reciprocal re-ranking and learned whitening on COIL-100 (issue 18).

MobileNetV2 (official torchvision ImageNet weights), last convolutional layer,
``max_size=128``, GeM (p=3), on COIL-100 (``../shared/data``, or
``$SKRETRIEVAL_SHARED_DATA``), leave-one-out as ``benchmarks/report.py``:
every view queries all the others, label mAP over the full ranking.  The
whitenings (PCA-w and the learned Lw) are learned on COIL-20, never on the
evaluated images.

Rows: each descriptor (GeM, GeM + PCA-w, GeM + Lw) searched plainly, with
alpha-QE, with alpha-DBA + alpha-QE, with diffusion (conjugate gradient on
the truncated graph, and fast spectral ranking), with k-reciprocal
re-ranking, and each of those two around alpha-DBA + alpha-QE.  Every row
prints its mAP, its fit time (graph, decomposition, DBA) and its time per
query (search, re-ranking and the full ranking that the mAP needs).

The feature maps go through the extractor's disk cache (``--cache``) and the
pooled descriptors are saved there too: a rerun starts at the searches.

Run:  python benchmarks/bench_rerank_global.py [--dim 256] [--out FILE]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone

from skretrieval import (
    ConvFeatureExtractor,
    DiffusionRetriever,
    GeMPooler,
    KReciprocalRetriever,
    LearnedWhitener,
    NearestNeighborRetriever,
    PCAWhitener,
    QueryExpansionRetriever,
)
from skretrieval.datasets import load_coil

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data")).resolve()


def descriptors(name, cache):
    """GeM descriptors and labels of a COIL collection (computed once, then read)."""
    bench = load_coil(DATA / name, name=name)
    path = Path(cache) / f"{name}-mobilenet_v2-128-gem3.npy"
    if not path.exists():
        ext = ConvFeatureExtractor("mobilenet_v2", weights="IMAGENET1K_V1", max_size=128,
                                   device="cpu", cache=cache, verbose=1).fit()
        maps = ext.transform(bench.images)
        np.save(path, np.asarray(GeMPooler(p=3).transform(maps), dtype=np.float32))
    return np.load(path), np.asarray(bench.labels)


def methods(args):
    """(name, retriever) of every search compared."""
    qe = QueryExpansionRetriever(qe_k=args.qe_k, qe_alpha=3.0)
    dba_qe = QueryExpansionRetriever(qe_k=args.qe_k, qe_alpha=3.0, dba_k=args.dba_k,
                                     dba_alpha=3.0)
    cg = DiffusionRetriever(k=args.graph_k, query_k=10, n_rerank=args.trunc)
    spectral = DiffusionRetriever(method="spectral", k=args.graph_k, query_k=10,
                                  n_components=args.rank, random_state=0)
    kr = KReciprocalRetriever(n_rerank=args.rerank, k1=20, k2=6, lambda_value=0.3)
    return [
        ("plain", NearestNeighborRetriever()),
        (f"alpha-QE (k={args.qe_k})", qe),
        (f"alpha-DBA (k={args.dba_k}) + alpha-QE", dba_qe),
        (f"diffusion CG (k={args.graph_k}, R={args.trunc})", cg),
        (f"diffusion spectral (r={args.rank})", spectral),
        (f"k-reciprocal (R={args.rerank}, 20/6/0.3)", kr),
        ("alpha-DBA + diffusion CG", clone(cg).set_params(
            retriever=QueryExpansionRetriever(dba_k=args.dba_k, dba_alpha=3.0))),
        ("alpha-DBA + alpha-QE + k-reciprocal", clone(kr).set_params(retriever=dba_qe)),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=256, help="PCA-w and Lw dimension")
    ap.add_argument("--qe-k", type=int, default=2)
    ap.add_argument("--dba-k", type=int, default=3)
    ap.add_argument("--graph-k", type=int, default=50)
    ap.add_argument("--trunc", type=int, default=1000, help="diffusion short list R")
    ap.add_argument("--rank", type=int, default=100, help="spectral rank r")
    ap.add_argument("--rerank", type=int, default=100, help="k-reciprocal short list")
    ap.add_argument("--only", nargs="*", default=None, help="descriptor names to run")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/skretrieval-rerank-global"))
    ap.add_argument("--out", help="also write the Markdown table here")
    args = ap.parse_args(argv)
    if not (DATA / "coil100").is_dir():
        sys.exit(f"COIL-100 not found under {DATA}")
    os.makedirs(args.cache, exist_ok=True)
    torch.manual_seed(0)
    X, y = descriptors("coil100", args.cache)
    X20, y20 = descriptors("coil20", args.cache)
    bases = {
        "GeM": X,
        f"GeM + PCA-w {args.dim}": PCAWhitener(args.dim, random_state=0).fit(X20).transform(X),
        f"GeM + Lw {args.dim}": LearnedWhitener(args.dim).fit(X20, y20).transform(X),
    }
    print(f"COIL-100: {len(X)} images, leave-one-out; whitening learned on COIL-20 "
          f"({len(X20)} images)", file=sys.stderr)
    lines = ["| descriptor | search | mAP | fit (s) | ms / query |", "|---|---|---|---|---|"]
    for bname, D in bases.items():
        if args.only and not any(o in bname for o in args.only):
            continue
        for mname, est in methods(args):
            t = time.perf_counter()
            est = clone(est).fit(D, y)
            t_fit = time.perf_counter() - t
            if hasattr(est, "graph_indices_"):
                extra = getattr(est, "eigenvectors_", np.empty((len(D), 0), np.float32))
                size = (est.graph_indices_.nbytes + est.graph_weights_.nbytes
                        + est.graph_indptr_.nbytes + extra.nbytes) / len(D)
                print(f"{mname}: {size:.0f} bytes per image besides the descriptors",
                      file=sys.stderr)
            t = time.perf_counter()
            score = est.score(None, None)
            per_query = (time.perf_counter() - t) / len(D) * 1e3
            line = f"| {bname} | {mname} | {score:.4f} | {t_fit:.1f} | {per_query:.2f} |"
            print(line, flush=True)
            lines.append(line)
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
