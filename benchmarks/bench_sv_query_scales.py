"""Spatial verification with queries at the objects' scale (cluttered validation instance).

In ``make_cluttered_objects`` scenes an object spans 25-50 % of the scene,
while a clean query fills its whole image: at the last MobileNetV2 layer
the query's cells see the object 2-4x larger than the scenes' cells do.
This script extracts the queries at smaller scales (``scales=(0.5,)``,
``(0.35,)``, and all three together, each scale pooled and its keypoints
mapped back to scale 1) and compares GeM with five settings of
``SpatialVerificationReranker`` (short list 40).  It runs on the
validation instance (``random_state=1``) of ``benchmarks/bench_rerank.py``,
never on the table's instance.

Run:  python benchmarks/bench_sv_query_scales.py [SEED]
Prints one line per (query scales, method): mAP and ms per query.
"""

import os
import sys
import time
from pathlib import Path

from sklearn.pipeline import make_pipeline

from skretrieval import (ConvFeatureExtractor, GeMPooler, NearestNeighborRetriever,
                         SpatialVerificationReranker)
from skretrieval.datasets import CLUTTERED_BENCHMARK, make_cluttered_objects

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
#: (max_features, min_inliers, residual_threshold, matching)
SETTINGS = [(100, 4, 32.0, "mutual"), (50, 4, 32.0, "ratio"), (100, 6, 32.0, "mutual"),
            (100, 5, 32.0, "ratio"), (50, 5, 16.0, "mutual")]


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    b = make_cluttered_objects(DATA / "coil100",
                               **{**CLUTTERED_BENCHMARK, "random_state": seed})
    cache = os.path.expanduser("~/.cache/skretrieval-bench")
    db = ConvFeatureExtractor("mobilenet_v2", max_size=384, cache=cache).fit().transform(b.images)

    def evaluate(ind):
        return b.evaluate(ind)["default"]["mAP"]

    print(f"load average {os.getloadavg()}")
    for scales in [(1.0,), (0.5,), (0.35,), (1.0, 0.5, 0.35)]:
        q = ConvFeatureExtractor("mobilenet_v2", max_size=384, scales=scales,
                                 cache=cache).fit().transform(b.queries)
        gem = make_pipeline(GeMPooler(), NearestNeighborRetriever()).fit(db, b.labels)
        ind = gem[-1].kneighbors(gem[0].transform(q), "all", return_distance=False)
        print(f"query scales {scales}: GeM mAP {evaluate(ind):.4f}", flush=True)
        for mf, mi, rt, match in SETTINGS:
            sv = SpatialVerificationReranker(GeMPooler(), n_rerank=40, max_features=mf,
                                             min_inliers=mi, residual_threshold=rt,
                                             matching=match).fit(db, b.labels)
            t = time.perf_counter()
            ind = sv.kneighbors(q, "all", return_distance=False)
            ms = (time.perf_counter() - t) / len(q) * 1e3
            print(f"query scales {scales}: SV max_features {mf}, min_inliers {mi}, "
                  f"threshold {rt}, {match}: mAP {evaluate(ind):.4f}, {ms:.1f} ms/query",
                  flush=True)


if __name__ == "__main__":
    main()
