"""The results report: every pooler, raw and PCA-whitened, on every benchmark here.

MobileNetV2 with the official torchvision ImageNet weights (the only real
backbone available offline on the project's machines), last convolutional
layer, on the benchmarks of ``../shared/data`` (or ``$SKRETRIEVAL_SHARED_DATA``),
each with its standard protocol (:mod:`skretrieval.datasets`):

* COIL-100 and COIL-20, leave-one-out (every view queries all the others);
* the UKBench sample (10 photos): N-S score (query counted) and mAP;
* the INRIA Holidays sample (3 photos, 1 query): mAP.

Whitening (:class:`skretrieval.PCAWhitener`) is never learned on the
evaluated images: on COIL-20 for COIL-100, on COIL-100 for everything else.

Run:  python benchmarks/report.py [--out docs/results.md]

It writes a Markdown report (table, wall time, the command) and prints it.
Feature maps are cached on disk (``--cache``), so a rerun takes seconds.
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from skretrieval import (
    ConvFeatureExtractor,
    CroWPooler,
    GeMPooler,
    MACPooler,
    PCAWhitener,
    RMACPooler,
    SPoCPooler,
)
from skretrieval.datasets import load_dataset
from skretrieval.datasets import evaluate_descriptors

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))

POOLERS = {
    "SPoC": SPoCPooler(),
    "MAC": MACPooler(),
    "GeM (p=3)": GeMPooler(p=3),
    "R-MAC": RMACPooler(),
    "CroW": CroWPooler(),
}

# name, folder, kind of images, where its whitening is learned
BENCHMARKS = [
    ("coil100", "coil100", "objects", "coil20"),
    ("coil20", "coil20", "objects", "coil100"),
    ("ukbench", "ukbench-sample", "photos", "coil100"),
    ("holidays", "holidays-sample", "photos", "coil100"),
]


def load(name, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the samples are knowingly incomplete
        return load_dataset(name, DATA / folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-size-objects", type=int, default=128,
                        help="max_size for COIL (its native 128 px)")
    parser.add_argument("--max-size-photos", type=int, default=512,
                        help="max_size for the UKBench and Holidays photos")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/skretrieval-report"))
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"shared data not found at {DATA}")
    os.makedirs(args.cache, exist_ok=True)
    t_start = time.perf_counter()

    extractors = {
        kind: ConvFeatureExtractor("mobilenet_v2", weights="IMAGENET1K_V1", max_size=size,
                                   device="cpu", cache=args.cache, verbose=1).fit()
        for kind, size in (("objects", args.max_size_objects),
                           ("photos", args.max_size_photos))
    }
    benches, maps = {}, {}
    for name, folder, kind, _ in BENCHMARKS:
        if not (DATA / folder).is_dir():
            print(f"skipping {name}: {DATA / folder} not found", file=sys.stderr)
            continue
        benches[name] = load(name, folder)
        # COIL-100 is also the whitening set of the photos: describe it at
        # the photos' size too would change nothing (pooled, 1,280-D), so
        # its object-size maps are used for every whitening.
        maps[name] = extractors[kind].transform(benches[name].images)
    t_extract = time.perf_counter() - t_start

    rows = []  # (pooler, variant, {column: value})
    pool_seconds = {}
    for pname, pooler in POOLERS.items():
        t = time.perf_counter()
        X = {name: np.asarray(pooler.transform(m), dtype=np.float32) for name, m in maps.items()}
        pool_seconds[pname] = time.perf_counter() - t
        variants = [("raw", None)] + [(f"PCA-w {d}", d) for d in args.dims]
        for vname, d in variants:
            cells = {}
            for name, _, _, wname in BENCHMARKS:
                if name not in X:
                    continue
                whitener = X_w = None
                if d is not None:
                    if wname not in X:
                        continue
                    X_w = X[wname]
                    whitener = PCAWhitener(n_components=min(d, X_w.shape[0] - 1),
                                           random_state=0)
                report = evaluate_descriptors(benches[name], X[name], whitener=whitener,
                                              whitening_descriptors=X_w,
                                              whitening_name=wname)
                res = report.results["default"]
                cells[name] = res["mAP"]
                if "N-S" in res:
                    cells["ukbench N-S"] = res["N-S"]
            rows.append((pname, vname, cells))
    wall = time.perf_counter() - t_start

    columns = [("coil100", "COIL-100 mAP"), ("coil20", "COIL-20 mAP"),
               ("ukbench N-S", "UKB N-S"), ("ukbench", "UKB mAP"),
               ("holidays", "Holidays mAP")]
    columns = [c for c in columns if any(c[0] in cells for _, _, cells in rows)]
    lines = ["| pooler | variant | " + " | ".join(h for _, h in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    best = {}
    for key, _ in columns:
        values = [cells[key] for _, _, cells in rows if key in cells]
        if len(set(values)) > 1:  # a column where every row ties has no best
            best[key] = max(values)
    for pname, vname, cells in rows:
        out = []
        for key, _ in columns:
            v = cells.get(key)
            text = "" if v is None else (f"{v:.2f}" if key == "ukbench N-S" else f"{v:.3f}")
            out.append(f"**{text}**" if v is not None and v == best.get(key) else text)
        lines.append(f"| {pname} | {vname} | " + " | ".join(out) + " |")

    sizes = ", ".join(f"{name} {b.n_images} images / {b.n_queries} queries"
                      for name, b in benches.items())
    report = "\n".join([
        "MobileNetV2 (torchvision `IMAGENET1K_V1`), last convolutional layer (1,280 channels), "
        f"max_size {args.max_size_objects} for COIL, {args.max_size_photos} for the photos. "
        "PCA-w d: `PCAWhitener(n_components=d)` learned on COIL-20 for COIL-100 and on "
        "COIL-100 for the others, never on the evaluated images. Best of each column in bold.",
        "",
        *lines,
        "",
        f"Benchmarks: {sizes}.",
        f"Wall time {wall:.0f} s on {os.cpu_count()} CPU cores (torch {torch.__version__}): "
        f"feature maps {t_extract:.0f} s "
        f"({'from the disk cache' if t_extract < 60 else 'extracted'}), pooling "
        + ", ".join(f"{p} {s:.1f} s" for p, s in pool_seconds.items()) + ".",
        "",
        "Reproduce: `python benchmarks/report.py --out docs/results_table.md` "
        "(needs `../shared/data` and the MobileNetV2 weights, see the README).",
    ])
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
