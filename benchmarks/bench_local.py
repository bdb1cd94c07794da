"""Local features (SIFT, deep local), ASMK / ASMK* and spatial verification (issue 27).

Methods, on every collection:

* **GeM**: MobileNetV2 (ImageNet), last conv layer, GeM (p=3), exact search;
* **GeM + SV**: its short list re-ranked by ``LocalVerificationReranker`` with
  RootSIFT (the "global + local" combination);
* every "+ SV" row is the reranker at its defaults (one-to-one matches, the
  a contrario test NFA <= 1 on top of 5 inliers, verified images first in
  the retriever's order); "+ SV by inliers" orders the same verified images
  by inliers (``order="inliers"``), "+ SV old rule" is the rule before
  (``distinct=False, significance=None, order="inliers"``, 6 inliers): all
  three from the same short list (``inliers`` and ``verified_order``, what
  ``kneighbors`` runs);
* **SIFT + ASMK\\*** / **SIFT + ASMK**: ``SIFTExtractor`` (RootSIFT, 2000
  features) -> ``ASMKRetriever`` (binary residuals, or full), each also with
  spatial verification of its short list (RootSIFT, ratio test 0.8, affine
  model by OpenCV's USAC/MAGSAC);
* **deep + ASMK\\***: ``DeepLocalFeatures`` (MobileNetV2 ``block13``, stride
  16, the 800 strongest cells but those of the two outer rings (``border=2``),
  PCA-whitened to 128 dimensions on the database) -> ``ASMKRetriever``, with
  and without verification (of the deep features' own positions, threshold
  one cell), and deep + ASMK (full residuals, 4096 words);
* **fused**: the per-query z-scored similarities of GeM, SIFT + ASMK and
  deep + ASMK summed with the weights chosen on the validation instance.

Collections (``../shared/data`` or ``$SKRETRIEVAL_SHARED_DATA``):

* the cluttered benchmark ``make_cluttered_objects(coil100,
  **CLUTTERED_BENCHMARK)`` with ``--max-size`` (default 768: scenes and
  queries resized to 768 px); the codebook size, ASMK vs ASMK\\* and the
  multiple assignment were chosen on the **validation instance**
  (``random_state=1``, ``--tune`` prints that grid), the table is on the
  benchmark's instance (``random_state=0``);
* the demo collection (``load_demo_dataset``: 8 scenes under crop, zoom,
  rotation, perspective, shear, relighting and occlusion, with distractors),
  leave-one-out over the scene images at 768 px;
* the Holidays and UKBench samples (3 and 10 photos), leave-one-out;
* COIL-100, 12 views (every 30 degrees) of 40 objects, leave-one-out, 256 px.

mAP is the revisitop AP (full ranking); "ms/query" is the search and
re-ranking of one query (features extracted beforehand: the extraction
times are printed per collection); "bytes/img" is the inverted file
(``ASMKRetriever.index_nbytes()``) or the global vectors per database image.

``--check-asmk DIR`` compares ``ASMKRetriever`` with the authors' ``asmk``
package (a built copy in DIR, e.g. ``pip install --target DIR asmk``):
same codebook, scores of both on random descriptors, and the package's
kernel against the paper's formula.

Run:  python benchmarks/bench_local.py [--only cluttered|demo|samples|coil]
      [--max-size 768] [--tune] [--check-asmk DIR]
Each run stays under 15 minutes on 2 CPU cores (about 10 with every
collection; the features go through the disk cache ``--cache``).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline

from skretrieval import ConvFeatureExtractor, GeMPooler, NearestNeighborRetriever
from skretrieval.datasets import CLUTTERED_BENCHMARK, load_demo_dataset, make_cluttered_objects
from skretrieval.local import ASMKRetriever, DeepLocalFeatures, LocalFeatures, SIFTExtractor
from skretrieval.metrics import mean_average_precision
from skretrieval.reranking import ORDERS, LocalVerificationReranker, verified_order

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data")).resolve()

#: Chosen on the validation instance of the cluttered benchmark (``--tune``).
ASMK_PARAMS = dict(n_clusters=4096, multiple_assignment=1)
#: The reranker at its defaults (ratio test 0.8, affine, one-to-one matches, NFA <= 1,
#: at least 5 inliers, verified images in the retriever's order).
SV_PARAMS = dict(n_rerank=50)
#: The verification rule before the a contrario test (and the settings measured with it).
OLD_RULE = dict(distinct=False, significance=None, order="inliers", min_inliers=6)
#: The deep local features' full-residual ASMK of the fusion (validation: 0.185 / 0.188 at
#: 1024 / 4096 words, ASMK* 1024 words 0.173).
DEEP_ASMK_PARAMS = dict(n_clusters=4096, multiple_assignment=1)
#: The global + local fusions: weights of the per-query z-scored similarities (GeM
#: cosine, the SIFT ASMK kernel, the deep ASMK kernel), chosen on the validation
#: instance (``--tune``): the earlier pair (GeM weight 1 of 0.25 / 0.5 / 1 / 2:
#: 0.246 / 0.250 / 0.257 / 0.246) and the best of GeM 0 / 0.5 / 1 / 2 x deep
#: 0 / 0.5 / 1 / 2 beside SIFT 1 (0.302).
FUSION_PAIR = {"GeM": 1.0, "SIFT-ASMK": 1.0}
FUSION = {"GeM": 0.5, "SIFT-ASMK": 1.0, "deep-ASMK": 1.0}
TUNE_GRID = [(k, binary, ma) for k in (1024, 4096) for binary in (True, False)
             for ma in (1, 3)]


def _kmeans():
    try:
        import faiss  # noqa: F401
        return "faiss"
    except ImportError:
        return "minibatch"


class Collection:
    """Images, queries (None: leave-one-out) and the mAP of a ranking."""

    def __init__(self, name, images, labels, queries=None, evaluate=None, max_size=768):
        self.name, self.images, self.labels = name, images, np.asarray(labels)
        self.queries, self._evaluate, self.max_size = queries, evaluate, max_size

    def evaluate(self, ind):
        if self._evaluate is not None:
            return self._evaluate(ind)
        rows = np.flatnonzero(self.labels >= 0)
        positives = []
        for q in rows:
            same = np.flatnonzero(self.labels == self.labels[q])
            positives.append(same[same != q])
        return mean_average_precision(np.asarray(ind)[rows], positives)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _sift(c, cache):
    return SIFTExtractor(n_features=2000, max_size=c.max_size, cache=cache, n_jobs=2)


def _features(c, cache):
    """SIFT and deep local features of the database and the queries."""
    sift = _sift(c, cache).fit()
    (db, q), t_sift = _timed(lambda: (sift.transform(c.images),
                                      None if c.queries is None else sift.transform(c.queries)))
    deep = DeepLocalFeatures("mobilenet_v2", layer="block13", max_size=c.max_size,
                             max_features=800, n_components=128, device="cpu", cache=cache)
    (ddb, dq), t_deep = _timed(lambda: (deep.fit_transform(c.images),
                                        None if c.queries is None else deep.transform(c.queries)))
    print(f"[{c.name}] SIFT {t_sift:.0f} s ({db.counts.mean():.0f} per image"
          + ("" if q is None else f", {q.counts.mean():.0f} per query")
          + f"), deep local {t_deep:.0f} s", flush=True)
    return (db, q), (ddb, dq)


def _run(c, name, est, X, Q, rows, ref=None):
    """Fit ``est`` on ``X``, rank every query; one table row."""
    (_, t_fit) = _timed(lambda: est.fit(X, c.labels))
    ind, t_q = _timed(lambda: est.kneighbors(Q, "all", return_distance=False))
    n_q = len(c.images) if Q is None else len(Q)
    m = c.evaluate(ind)
    size = est.index_nbytes() / len(c.images) if hasattr(est, "index_nbytes") else None
    inner = getattr(est, "retriever_", None)
    if size is None and hasattr(inner, "index_nbytes"):
        size = inner.index_nbytes() / len(c.images)
    rows.append((name, m, t_fit, t_q / n_q * 1e3, size))
    delta = "" if ref is None else f" ({(m - ref) * 100:+.1f} vs the re-ranked)"
    print(f"[{c.name}] {name}: mAP {m:.3f}{delta}, fit {t_fit:.1f} s, "
          f"{t_q / n_q * 1e3:.1f} ms/query", flush=True)
    return m


def _sv_rows(c, name, sv, X, Q, rows, ref):
    """Fit the reranker ``sv``; rows of its default rule, of the same verified images
    ordered by inliers, and of the old rule, on the same short list."""
    (_, t_fit) = _timed(lambda: sv.fit(X, c.labels))
    n_rerank = sv.n_rerank
    base, t_s = _timed(lambda: sv.set_params(n_rerank=0).kneighbors(Q, "all",
                                                                     return_distance=False))
    R = min(n_rerank, base.shape[1])
    out = {}
    for rule, params in (("", {"n_rerank": n_rerank}), (" old rule", OLD_RULE)):
        counts, t_v = _timed(lambda: sv.set_params(**params).inliers(Q, base[:, :R]))
        for order in (sorted(ORDERS, reverse=True) if not params.get("order")
                      else (params["order"],)):
            ind = base.copy()
            for j in range(len(ind)):
                ind[j, :R] = base[j, :R][verified_order(counts[j], order)[0]]
            label = rule or ("" if order == "retriever" else f" by {order}")
            m = c.evaluate(ind)
            ms = (t_s + t_v) / len(base) * 1e3
            rows.append((f"{name}{label}", m, t_fit, ms, None))
            out[label] = m
            print(f"[{c.name}] {name}{label}: mAP {m:.3f} ({(m - ref) * 100:+.1f} vs the "
                  f"re-ranked), {ms:.1f} ms/query, verified {np.mean(counts > 0):.3f} of "
                  f"the short lists", flush=True)
    return out


def _gem_pipeline(c, cache):
    return make_pipeline(ConvFeatureExtractor("mobilenet_v2", max_size=c.max_size,
                                              device="cpu", cache=cache),
                         GeMPooler(), NearestNeighborRetriever())


def _zscores(S):
    return (S - S.mean(1, keepdims=True)) / (S.std(1, keepdims=True) + 1e-12)


def fused_ranking(sims, weights, loo):
    """Rankings by ``sum_m weights[m] * z(sims[m])``, each similarity matrix
    z-scored per query (leave-one-out when ``loo``: the query itself last, dropped)."""
    S = sum(w * _zscores(sims[name]) for name, w in weights.items() if w)
    if loo:
        np.fill_diagonal(S, -np.inf)
    order = np.argsort(-S, axis=1, kind="stable")
    return order[:, :-1] if loo else order


def _fusion_name(weights):
    return "fused " + " + ".join(f"{w:g} {n}" for n, w in weights.items() if w)


def evaluate_collection(c, cache, asmk_params=ASMK_PARAMS, sv_params=SV_PARAMS):
    rows = []
    (db, q), (ddb, dq) = _features(c, cache)
    # GeM, and GeM's short list verified with RootSIFT
    gem = _gem_pipeline(c, cache)
    (_, t_fit) = _timed(lambda: gem.fit(c.images, c.labels))
    Qg = None if c.queries is None else gem[:-1].transform(c.queries)
    ind, t_q = _timed(lambda: gem[-1].kneighbors(Qg, "all", return_distance=False))
    n_q = len(c.images) if Qg is None else len(Qg)
    m_gem = c.evaluate(ind)
    rows.append(("GeM", m_gem, t_fit, t_q / n_q * 1e3, gem[-1].X_fit_.nbytes / len(c.images)))
    print(f"[{c.name}] GeM: mAP {m_gem:.3f}", flush=True)
    G = np.asarray(gem[-1].X_fit_)
    sims = {"GeM": (G if Qg is None else Qg) @ G.T}
    sv = LocalVerificationReranker(_gem_pipeline(c, cache), _sift(c, cache), **sv_params)
    _sv_rows(c, "GeM + SV (RootSIFT)", sv, c.images, c.queries, rows, m_gem)
    kmeans = _kmeans()
    for label, binary in (("ASMK*", True), ("ASMK", False)):
        asmk = ASMKRetriever(binary=binary, kmeans=kmeans, **asmk_params)
        m = _run(c, f"SIFT + {label}", asmk, db, q, rows)
        if not binary:
            sims["SIFT-ASMK"] = asmk.similarities(q)
        # the fitted ASMK re-ranked as it is (FrozenEstimator: not fitted again)
        _sv_rows(c, f"SIFT + {label} + SV",
                 LocalVerificationReranker(FrozenEstimator(asmk), **sv_params), db, q, rows, m)
    asmk = ASMKRetriever(binary=True, kmeans=kmeans, **{**asmk_params, "n_clusters": 1024})
    m = _run(c, "deep + ASMK* (1024 words)", asmk, ddb, dq, rows)
    _sv_rows(c, "deep + ASMK* + SV",
             LocalVerificationReranker(FrozenEstimator(asmk), **sv_params), ddb, dq, rows, m)
    asmk = ASMKRetriever(binary=False, kmeans=kmeans, **DEEP_ASMK_PARAMS)
    _run(c, f"deep + ASMK ({DEEP_ASMK_PARAMS['n_clusters']} words)", asmk, ddb, dq, rows)
    sims["deep-ASMK"] = asmk.similarities(dq)
    for weights in (FUSION_PAIR, FUSION):
        ind, t_q = _timed(lambda: fused_ranking(sims, weights, q is None))
        rows.append((_fusion_name(weights), c.evaluate(ind), 0.0, t_q / n_q * 1e3, None))
        print(f"[{c.name}] {rows[-1][0]}: mAP {rows[-1][1]:.3f}", flush=True)
    return rows


def table(c, rows, note):
    out = [note, "", "| method | mAP | fit (s) | ms / query | bytes / image |",
           "|---|---|---|---|---|"]
    for name, m, t_fit, ms, size in rows:
        out.append(f"| {name} | {m:.3f} | {t_fit:.1f} | {ms:.1f} | "
                   + ("" if size is None else f"{size:,.0f}") + " |")
    return "\n".join(out)


def cluttered(args, seed):
    b = make_cluttered_objects(DATA / "coil100", **{**CLUTTERED_BENCHMARK, "random_state": seed})
    return Collection(f"cluttered seed {seed}", b.images, b.labels, b.queries,
                      lambda ind: b.evaluate(ind)["default"]["mAP"], args.max_size)


def tune(args):
    """The ASMK grid on the validation instance (SIFT features)."""
    c = cluttered(args, 1)
    sift = _sift(c, args.cache).fit()
    db, q = sift.transform(c.images), sift.transform(c.queries)
    gem = _gem_pipeline(c, args.cache).fit(c.images, c.labels)
    ind = gem[-1].kneighbors(gem[:-1].transform(c.queries), "all", return_distance=False)
    print(f"[validation] GeM mAP {c.evaluate(ind):.3f}", flush=True)
    for k, binary, ma in TUNE_GRID:
        asmk = ASMKRetriever(n_clusters=k, binary=binary, multiple_assignment=ma,
                             kmeans=_kmeans()).fit(db)
        ind = asmk.kneighbors(q, "all", return_distance=False)
        print(f"[validation] SIFT + {'ASMK*' if binary else 'ASMK'} {k} words, MA {ma}: "
              f"mAP {c.evaluate(ind):.3f}", flush=True)
    asmk = ASMKRetriever(binary=False, kmeans=_kmeans(), **ASMK_PARAMS).fit(db)
    _sv_rows(c, "SIFT + ASMK + SV", LocalVerificationReranker(FrozenEstimator(asmk), **SV_PARAMS),
             db, q, [], c.evaluate(asmk.kneighbors(q, "all", return_distance=False)))
    # the fusion's weights (deep local features: ASMK of full residuals)
    deep = DeepLocalFeatures("mobilenet_v2", layer="block13", max_size=c.max_size,
                             max_features=800, n_components=128, device="cpu", cache=args.cache)
    ddb, dq = deep.fit_transform(c.images), deep.transform(c.queries)
    G = np.asarray(gem[-1].X_fit_)
    sims = {"GeM": gem[:-1].transform(c.queries) @ G.T, "SIFT-ASMK": asmk.similarities(q)}
    for k in (1024, 4096):
        deep_asmk = ASMKRetriever(binary=False, kmeans=_kmeans(),
                                  **{**DEEP_ASMK_PARAMS, "n_clusters": k}).fit(ddb)
        sims["deep-ASMK"] = deep_asmk.similarities(dq)
        print(f"[validation] deep + ASMK {k} words: "
              f"{c.evaluate(fused_ranking(sims, {'deep-ASMK': 1.0}, False)):.3f}", flush=True)
    for wg in (0, 0.5, 1, 2):
        for wd in (0, 0.5, 1, 2):
            w = {"GeM": wg, "SIFT-ASMK": 1.0, "deep-ASMK": wd}
            print(f"[validation] {_fusion_name(w)}: "
                  f"{c.evaluate(fused_ranking(sims, w, False)):.3f}", flush=True)


def demo(args):
    images, labels, _ = load_demo_dataset(max_side=args.max_size)
    return Collection("demo", images, labels, None, None, args.max_size)


def samples():
    out = []
    hol = sorted((DATA / "holidays-sample").glob("*.jpg"))
    if hol:
        out.append(Collection("Holidays sample", [str(p) for p in hol],
                              [int(p.stem) // 100 for p in hol], max_size=768))
    ukb = sorted((DATA / "ukbench-sample").glob("*.jpg"))
    if ukb:
        out.append(Collection("UKBench sample", [str(p) for p in ukb],
                              [int(p.stem[7:]) // 4 for p in ukb], max_size=640))
    return out


def coil():
    paths, labels = [], []
    for obj in range(2, 42):
        for deg in range(0, 360, 30):
            p = DATA / "coil100" / f"obj{obj}__{deg}.png"
            if p.exists():
                paths.append(str(p))
                labels.append(obj)
    return Collection("COIL-100 (40 objects x 12 views)", paths, labels, max_size=256)


def check_asmk(folder):
    """ASMKRetriever against the authors' asmk package (same codebook)."""
    sys.path.insert(0, os.fspath(folder))
    from asmk import codebook as cdb_pkg, functional, index as idx_pkg
    from asmk import inverted_file as ivf_pkg, kernel as kern_pkg

    from skretrieval.local import selective_kernel

    rng = np.random.default_rng(0)
    d = 32
    db = LocalFeatures([(rng.random((n, 4)), rng.standard_normal((n, d)))
                        for n in rng.integers(5, 60, 30)])
    q = LocalFeatures([(rng.random((n, 4)), rng.standard_normal((n, d))) for n in (40, 25, 7)])
    u = np.array([-0.5, 0.0, 0.2, 0.9, 1.0])
    print("selective kernel, paper's formula:", selective_kernel(u, 3, 0).round(6).tolist(),
          "asmk's (kept entries):", functional.asmk_kernel(u, np.arange(5), alpha=3,
                                                             similarity_threshold=0)[1].tolist())
    # asmk's codebook: faiss k-means, 10 iterations, on three hand-made blobs
    centres = np.array([[0, 0], [5, 0], [0, 5]], np.float32)
    blobs = np.concatenate([c + np.array([[0.1, 0], [-0.1, 0], [0, 0.2], [0, -0.2]])
                            for c in centres]).astype(np.float32)
    cdb = cdb_pkg.Codebook(idx_pkg.initialize_index(None), size=3)
    cdb.train(blobs)
    print("asmk codebook of 3 blobs:", np.round(sorted(cdb.centroids.tolist()), 4).tolist())
    for binary in (True, False):
        ours = ASMKRetriever(n_clusters=16, binary=binary).fit(db)
        cdb = cdb_pkg.Codebook(idx_pkg.initialize_index(None), size=16)
        cdb.index(ours.centroids_.copy())
        kern = kern_pkg.ASMKKernel(cdb, binary=binary)
        ivf = ivf_pkg.IVF.initialize_empty(codebook_size=16, use_idf=False)
        _, D, off = db.concatenated()
        ims = np.repeat(np.arange(len(db)), np.diff(off))
        ivf.add(*kern.aggregate(*cdb.quantize(D.astype(np.float32), ims,
                                              multiple_assignment=1)))
        for ma in (1, 3):
            S = ours.set_params(multiple_assignment=ma).similarities(q)
            worst = 0.0
            for j in range(len(q)):
                a, w = kern.aggregate_image(*cdb.quantize(q[j][1], multiple_assignment=ma))
                ranks, scores = ivf.search(a, w, topk=len(db), similarity_func=lambda *x: (
                    kern.similarity(*x, alpha=3, similarity_threshold=0)))
                theirs = np.zeros(len(db))
                theirs[ranks] = scores
                worst = max(worst, float(np.abs(S[j] - theirs).max()))
            print(f"{'ASMK*' if binary else 'ASMK'}, multiple assignment {ma}: largest "
                  f"|ours - asmk| score difference {worst:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("cluttered", "demo", "samples", "coil"))
    ap.add_argument("--max-size", type=int, default=768)
    ap.add_argument("--tune", action="store_true", help="the validation grid only")
    ap.add_argument("--rerank", type=int, default=SV_PARAMS["n_rerank"],
                    help="short list verified per query (default: %(default)s)")
    ap.add_argument("--check-asmk", metavar="DIR")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/skretrieval-bench-local"))
    args = ap.parse_args()
    if args.check_asmk:
        check_asmk(args.check_asmk)
        return
    if args.tune:
        tune(args)
        return
    print(f"load average {os.getloadavg()}", flush=True)
    collections = []
    if args.only in (None, "cluttered"):
        collections.append(cluttered(args, 0))
    if args.only in (None, "demo"):
        collections.append(demo(args))
    if args.only in (None, "samples"):
        collections.extend(samples())
    if args.only in (None, "coil"):
        collections.append(coil())
    tables = []
    for c in collections:
        rows = evaluate_collection(c, args.cache,
                                   sv_params={**SV_PARAMS, "n_rerank": args.rerank})
        n_q = len(c.images) if c.queries is None else len(c.queries)
        tables.append(table(c, rows, f"**{c.name}**: {len(c.images)} database images, {n_q} "
                                     f"queries, max_size {c.max_size}, short list "
                                     f"{args.rerank}."))
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
