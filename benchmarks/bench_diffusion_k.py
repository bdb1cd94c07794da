"""Diffusion's graph size k on a sparse COIL-100 subset (issue 18).

The subset of ``benchmarks/bench_rerank.py --only coil``: every 8th view
(896 images, 9 views of each of the 100 objects), MobileNetV2 ImageNet at
max_size 128, GeM; leave-one-out mAP of ``DiffusionRetriever(k=...)`` on the
plain search and on alpha-DBA (k = 6), and the time per query of the full
ranking the mAP needs.

Run:  python benchmarks/bench_diffusion_k.py
Prints a Markdown table; asserts nothing.
"""

import os
import time
from pathlib import Path

import numpy as np

from skretrieval import (ConvFeatureExtractor, DiffusionRetriever, GeMPooler,
                         NearestNeighborRetriever, QueryExpansionRetriever)
from skretrieval.datasets import load_coil

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def main():
    coil = load_coil(DATA / "coil100", name="coil100")
    keep = np.arange(len(coil.images)) % 8 == 0
    images = [im for im, k in zip(coil.images, keep) if k]
    y = np.asarray(coil.labels)[keep]
    ext = ConvFeatureExtractor("mobilenet_v2", max_size=128,
                               cache=os.path.expanduser("~/.cache/skretrieval-bench")).fit()
    X = GeMPooler().fit_transform(ext.transform(images))
    print(f"{len(X)} images, {len(set(y))} objects; load average {os.getloadavg()}")
    print("| method | mAP | ms / query |\n|---|---|---|")
    for name, base in (("", NearestNeighborRetriever()),
                       ("alpha-DBA6 + ", QueryExpansionRetriever(dba_k=6, dba_alpha=3.0))):
        for k in (3, 5, 10, 20, 50):
            d = DiffusionRetriever(base, k=k).fit(X, y)
            t = time.perf_counter()
            m = d.score(None, None)
            ms = (time.perf_counter() - t) / len(X) * 1e3
            print(f"| GeM + {name}diffusion (k={k}) | {m:.3f} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
