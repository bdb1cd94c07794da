"""Re-ranking on single objects (COIL-100) and in clutter (make_cluttered_objects), issue 18.

MobileNetV2 (torchvision ImageNet weights), last conv layer, GeM (p=3),
L2-normalised, cosine search; every method then refines that search:

* alpha-QE / alpha-DBA (``QueryExpansionRetriever``, alpha = 3);
* region re-ranking (``RegionReranker``, R-MAC regions) of the top ``--rerank``;
* spatial verification (``SpatialVerificationReranker``: 100 strongest cells,
  PCA-128 descriptors, mutual NN, similarity RANSAC) of the top ``--rerank``,
  alone and with QE over its verified results;
* when importable (issue 18a): diffusion, k-reciprocal re-ranking, learned
  whitening (learned on COIL-20 with its labels, never on the evaluated
  images), alone and combined; printed as skipped otherwise.

Benchmarks: COIL-100 every ``--step``-th view, leave-one-out, ``max_size``
128; the fixed cluttered instance ``CLUTTERED_BENCHMARK`` (40 objects x 3
scenes + 120 distractor scenes, 384 x 384, regenerated from seed 0),
``max_size`` 384 (``--max-size``: 768 gives the last layer a 24 x 24 grid of
16 px cells of the scene), clean COIL views as queries.  Every row prints its mAP and
its time per query: search and re-ranking (the fit, which describes and
indexes the database, is timed separately; the feature maps are shared).

With ``--tune-sv``, the spatial verification's parameters (``SV_GRID``) are
first chosen on a validation instance of the generator (``random_state=1``)
and the chosen ones get their own rows ("tuned").

Run:  python benchmarks/bench_rerank.py [--step 8] [--rerank 20] [--max-trials 100]
      [--tune-sv] [--only coil|cluttered] [--out FILE]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import make_pipeline

from skretrieval import (
    ConvFeatureExtractor,
    GeMPooler,
    NearestNeighborRetriever,
    QueryExpansionRetriever,
    RegionReranker,
    SpatialVerificationReranker,
)
from skretrieval.datasets import CLUTTERED_BENCHMARK, load_coil, make_cluttered_objects

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def _optional():
    """The estimators of issue 18a, when this checkout has them."""
    found = {}
    try:
        from skretrieval.reranking import DiffusionRetriever
        found["diffusion"] = DiffusionRetriever
    except ImportError:
        pass
    try:
        from skretrieval.reranking import KReciprocalRetriever
        found["kreciprocal"] = KReciprocalRetriever
    except ImportError:
        pass
    try:
        from skretrieval.pooling import LearnedWhitener
        found["lw"] = LearnedWhitener
    except ImportError:
        pass
    return found


class Bench:
    """Rows of one benchmark: fit on the database, rank the queries, mAP and times."""

    def __init__(self, name, maps, y, queries=None, evaluate=None):
        self.name, self.maps, self.y, self.queries, self.evaluate = name, maps, y, queries, evaluate
        self.rows = []

    def score(self, est):
        t0 = time.perf_counter()
        est.fit(self.maps, self.y)
        t_fit = time.perf_counter() - t0
        last = est[-1] if hasattr(est, "steps") else est
        t0 = time.perf_counter()
        if self.queries is None:  # leave-one-out
            m = last.score()
            n_q = len(self.y)
        else:
            Q = est[:-1].transform(self.queries) if hasattr(est, "steps") else self.queries
            m = self.evaluate(last.kneighbors(Q, n_neighbors="all", return_distance=False))
            n_q = len(self.queries)
        return m, t_fit, 1000 * (time.perf_counter() - t0) / n_q

    def run(self, label, build):
        try:
            est = build()
        except Exception as exc:  # an optional method whose API this script guessed wrong
            print(f"[{self.name}] {label}: skipped ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            self.rows.append((label, None, None, None))
            return
        if est is None:
            print(f"[{self.name}] {label}: skipped (not importable, or not asked for)",
                  file=sys.stderr)
            self.rows.append((label, None, None, None))
            return
        m, t_fit, ms = self.score(est)
        self.rows.append((label, m, t_fit, ms))
        print(f"[{self.name}] {label:40s} mAP {m:.4f}  fit {t_fit:6.1f} s  {ms:7.1f} ms/query",
              file=sys.stderr, flush=True)


def _methods(bench, args, qe, lw_maps, lw_y):
    """Every row, as a builder of the final pipeline step (over the maps)."""
    opt = _optional()
    nn = NearestNeighborRetriever()
    gem = GeMPooler()
    # the descriptor stage before a retriever: GeM -> retriever over the GeM vectors
    as_pipe = lambda agg, r: make_pipeline(agg, r)  # noqa: E731
    qe_r = QueryExpansionRetriever(nn, qe_k=qe, qe_alpha=3.0)
    dba_qe = QueryExpansionRetriever(nn, qe_k=qe, qe_alpha=3.0, dba_k=qe + 1, dba_alpha=3.0)
    sv = dict(n_rerank=args.rerank, max_features=100, n_components=128,
              max_trials=args.max_trials)
    tuned = {**sv, **(args.sv_tuned or {})}
    rows = [
        ("GeM", lambda: as_pipe(gem, nn)),
        (f"GeM + alpha-QE{qe}", lambda: as_pipe(gem, qe_r)),
        (f"GeM + alpha-DBA{qe + 1} + alpha-QE{qe}", lambda: as_pipe(gem, dba_qe)),
        (f"GeM + region re-rank {args.rerank} (rmac)",
         lambda: RegionReranker(gem, nn, n_rerank=args.rerank, proposals="rmac")),
        (f"GeM + SV {args.rerank}", lambda: SpatialVerificationReranker(gem, nn, **sv)),
        (f"GeM + SV {args.rerank} + QE{qe}",
         lambda: SpatialVerificationReranker(gem, nn, qe_k=qe, **sv)),
        (f"GeM + SV {args.rerank} tuned{_short(args.sv_tuned)}",
         lambda: args.sv_tuned and SpatialVerificationReranker(gem, nn, **tuned)),
        (f"GeM + SV {args.rerank} tuned + QE{qe}",
         lambda: args.sv_tuned and SpatialVerificationReranker(gem, nn, qe_k=qe, **tuned)),
        (f"GeM + DBA + SV {args.rerank} + QE{qe}",
         lambda: SpatialVerificationReranker(gem, QueryExpansionRetriever(
             nn, dba_k=qe + 1, dba_alpha=3.0), qe_k=qe, **sv)),
    ]
    D, K, LW = opt.get("diffusion"), opt.get("kreciprocal"), opt.get("lw")

    def lw():
        return make_pipeline(gem, LW()).fit(lw_maps, lw_y)

    from sklearn.frozen import FrozenEstimator
    rows += [
        ("GeM + diffusion", lambda: D and as_pipe(gem, D(nn))),
        ("GeM + k-reciprocal", lambda: K and as_pipe(gem, K(nn))),
        ("GeM + Lw (COIL-20)", lambda: LW and as_pipe(FrozenEstimator(lw()), nn)),
        ("GeM + Lw + diffusion", lambda: LW and D and as_pipe(FrozenEstimator(lw()), D(nn))),
        (f"GeM + Lw + SV {args.rerank} + QE{qe}",
         lambda: LW and SpatialVerificationReranker(FrozenEstimator(lw()), nn, qe_k=qe, **sv)),
        (f"GeM + SV {args.rerank} + diffusion",
         lambda: D and SpatialVerificationReranker(gem, D(nn), **sv)),
    ]
    for label, build in rows:
        bench.run(label, build)


#: Parameters of the spatial verification searched on the validation instance.
SV_GRID = {"max_features": [25, 50, 100], "min_inliers": [4, 6, 8],
           "residual_threshold": [16.0, 32.0], "matching": ["mutual", "ratio"]}


def _short(params):
    if not params:
        return ""
    return " (" + ", ".join(f"{k} {v}" for k, v in sorted(params.items())) + ")"


def _tune_sv(args):
    """The best ``SV_GRID`` parameters on a validation instance of the cluttered
    generator (``random_state=1``: other objects, photos and placements),
    never on the instance of the table."""
    from sklearn.model_selection import ParameterGrid

    b = make_cluttered_objects(DATA / "coil100", **{**CLUTTERED_BENCHMARK, "random_state": 1})
    (maps, queries), _ = _extract(args.max_size, args, b.images, b.queries)
    bench = Bench("validation", maps, b.labels, queries,
                  lambda ind: b.evaluate(ind)["default"]["mAP"])
    bench.run("GeM", lambda: make_pipeline(GeMPooler(), NearestNeighborRetriever()))
    for params in ParameterGrid(SV_GRID):
        bench.run(f"GeM + SV{_short(params)}", lambda: SpatialVerificationReranker(
            GeMPooler(), n_rerank=args.rerank, n_components=128,
            max_trials=args.max_trials, **params))
    scored = [(m, label, params) for (label, m, _, _), params
              in zip(bench.rows[1:], ParameterGrid(SV_GRID))]
    best = max(scored, key=lambda r: r[0])
    print(f"[validation] best: {best[1]} mAP {best[0]:.4f} (GeM {bench.rows[0][1]:.4f})",
          file=sys.stderr, flush=True)
    return best[2], _table(bench, (
        f"**Validation instance** (`make_cluttered_objects(coil100, **{{**CLUTTERED_BENCHMARK, "
        f"'random_state': 1}})`), used only to choose the spatial verification's "
        f"parameters; short list {args.rerank}, {args.max_trials} RANSAC hypotheses."))


def _table(bench, header):
    lines = [header, "", "| method | mAP | fit (s) | ms / query |", "|---|---|---|---|"]
    for label, m, t_fit, ms in bench.rows:
        if m is None:
            lines.append(f"| {label} | skipped | | |")
        else:
            lines.append(f"| {label} | {m:.3f} | {t_fit:.1f} | {ms:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=8, help="COIL-100: keep every STEP-th view")
    ap.add_argument("--rerank", type=int, default=20, help="short list re-ranked per query")
    ap.add_argument("--max-trials", type=int, default=100, help="RANSAC hypotheses")
    ap.add_argument("--tune-sv", action="store_true",
                    help="choose SV parameters on a validation instance (seed 1) first")
    ap.add_argument("--max-size", type=int, default=384,
                    help="cluttered benchmark: longest side of scenes and queries")
    ap.add_argument("--only", choices=("coil", "cluttered"), help="run one benchmark only")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/skretrieval-bench"))
    ap.add_argument("--out", help="also write the Markdown tables here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    coil20 = load_coil(DATA / "coil20", name="coil20")
    tables = []
    args.sv_tuned = None
    if args.tune_sv:
        args.sv_tuned, table = _tune_sv(args)
        tables.append(table)
    if args.only in (None, "coil"):
        tables.append(_coil(args, coil20))
    if args.only in (None, "cluttered"):
        tables.append(_cluttered(args, coil20))
    text = "\n\n".join(tables)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _extract(max_size, args, *image_lists):
    ext = ConvFeatureExtractor("mobilenet_v2", max_size=max_size, cache=args.cache).fit()
    t0 = time.perf_counter()
    print(f"extracting {[len(i) for i in image_lists]} images at max_size {max_size}",
          file=sys.stderr, flush=True)
    out = [ext.transform(images) if len(images) else None for images in image_lists]
    return out, time.perf_counter() - t0


def _coil(args, coil20):
    coil = load_coil(DATA / "coil100", name="coil100")
    keep = np.arange(len(coil.images)) % args.step == 0
    images = [im for im, k in zip(coil.images, keep) if k]
    y = np.asarray(coil.labels)[keep]
    lw_images = coil20.images if "lw" in _optional() else []
    (maps, maps20), t_maps = _extract(128, args, images, lw_images)
    bench = Bench("coil100", maps, y)
    _methods(bench, args, 5, maps20, np.asarray(coil20.labels))
    return _table(bench, (
        f"**COIL-100**, every {args.step}th view ({len(images)} images, {len(set(y))} "
        f"objects), leave-one-out; MobileNetV2 ImageNet, max_size 128 (4 x 4 maps). "
        f"Maps of {len(images)} + {len(lw_images)} (Lw) images: {t_maps:.0f} s."))


def _cluttered(args, coil20):
    t0 = time.perf_counter()
    b = make_cluttered_objects(DATA / "coil100", **CLUTTERED_BENCHMARK)
    t_gen = time.perf_counter() - t0
    lw_images = coil20.images if "lw" in _optional() else []
    (maps, queries, maps20), t_maps = _extract(args.max_size, args, b.images, b.queries,
                                               lw_images)
    bench = Bench("cluttered", maps, b.labels, queries,
                  lambda ind: b.evaluate(ind)["default"]["mAP"])
    _methods(bench, args, 2, maps20, np.asarray(coil20.labels))
    return _table(bench, (
        f"**Cluttered COIL-100** (`make_cluttered_objects(coil100, **CLUTTERED_BENCHMARK)`: "
        f"{b.n_queries} clean queries, {b.n_images} scenes of which "
        f"{int((b.labels == -1).sum())} distractors; generated in {t_gen:.0f} s); "
        f"MobileNetV2 ImageNet, max_size {args.max_size} ({args.max_size // 32} x "
        f"{args.max_size // 32} maps). Maps: {t_maps:.0f} s."))


if __name__ == "__main__":
    main()
