"""Fine-tuning MobileNetV2 + GeM on COIL-100: AP loss and triplet loss vs off the shelf.

Objects 1-50 of COIL-100 train (of which a random fifth of the objects is held
out to pick the best epoch), objects 51-100 are the test: leave-one-out mAP
over their views (every view queries all the other test views), so the test
objects are never seen in training.

* baseline: ``ConvFeatureExtractor(mobilenet_v2, IMAGENET1K_V1)`` at
  ``--size`` px, ``GeMPooler(p=3)``, raw and ``PCAWhitener`` learned on the
  training objects (the usual off-the-shelf GeM + PCA-w);
* ``RetrievalNetTrainer`` from the same ImageNet network, GeM (learnable p),
  with the listwise AP loss, the triplet loss (hard negatives mined every
  epoch), and optionally the classification loss (Neural Codes); each
  fine-tuned network is evaluated raw and followed by a ``PCAWhitener``
  learned on the training objects.

Run:  python benchmarks/bench_finetune.py [--device cuda] [--out results.json]

Needs ``../shared/data/coil100`` (or ``$SKRETRIEVAL_SHARED_DATA``) and the
MobileNetV2 ImageNet weights (see the README).  The baseline descriptors are
cached in ``--cache``.  Prints a Markdown table and the wall times.
"""

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from skretrieval import (
    ConvFeatureExtractor,
    GeMPooler,
    NearestNeighborRetriever,
    PCAWhitener,
    RetrievalNetTrainer,
)
from skretrieval.datasets import load_coil

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def loo_map(X, y):
    """Leave-one-out label mAP (Oxford AP), every image a query."""
    return float(NearestNeighborRetriever(metric="inner_product").fit(X, y).score(None, None))


def evaluate(train_desc, test_desc, y_test, dims):
    out = {"raw": loo_map(test_desc, y_test)}
    for d in dims:
        w = PCAWhitener(n_components=d, random_state=0).fit(train_desc)
        out[f"pcaw{d}"] = loo_map(w.transform(test_desc), y_test)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(DATA / "coil100"))
    parser.add_argument("--size", type=int, default=64, help="training and test image size")
    parser.add_argument("--methods", default="ap,triplet",
                        help="comma-separated losses among ap, tie_aware_ap, triplet, "
                             "contrastive, classification")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per epoch (default: one pass over the training images)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--dims", type=int, nargs="*", default=[128, 256])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/skretrieval-finetune"))
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--verbose", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (on a CPU shared with other jobs, 1 thread or "
                             "OMP_WAIT_POLICY=PASSIVE avoids threads spinning in wait)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this copy lacks 32 of the 7,200 views
        bench = load_coil(args.root, name="coil100")
    paths, labels = np.array(bench.images), np.asarray(bench.labels)
    train = labels <= 50
    X_train, y_train = list(paths[train]), labels[train]
    X_test, y_test = list(paths[~train]), labels[~train]
    print(f"COIL-100: {len(X_train)} training views (objects 1-50), {len(X_test)} test "
          f"views (objects 51-100); {torch.get_num_threads()} torch threads "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), device "
          f"{args.device}", flush=True)
    results = {"size": args.size, "epochs": args.epochs, "lr": args.lr,
               "device": args.device, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "methods": {}}

    # -- off the shelf ------------------------------------------------------
    os.makedirs(args.cache, exist_ok=True)
    cache = Path(args.cache) / f"baseline_gem_mobilenet_v2_{args.size}.npz"
    t0 = time.perf_counter()
    if cache.exists():
        z = np.load(cache)
        D_train, D_test = z["train"], z["test"]
    else:
        ext = ConvFeatureExtractor("mobilenet_v2", weights="IMAGENET1K_V1",
                                   max_size=args.size, device=args.device)
        gem = GeMPooler(p=3)
        D_train = gem.fit_transform(ext.fit_transform(X_train))
        D_test = gem.transform(ext.transform(X_test))
        np.savez(cache, train=D_train, test=D_test)
    t_base = time.perf_counter() - t0
    results["methods"]["baseline"] = dict(evaluate(D_train, D_test, y_test, args.dims),
                                          train_seconds=0.0, describe_seconds=t_base)
    print("off the shelf:", results["methods"]["baseline"], flush=True)

    # -- fine-tuned -----------------------------------------------------------
    for method in [m for m in args.methods.split(",") if m]:
        trainer = RetrievalNetTrainer(
            "mobilenet_v2", weights="IMAGENET1K_V1", pooling="gem", loss=method,
            image_size=args.size, batch_size=args.batch_size, images_per_label=8,
            n_negatives=5, crop_scale=(0.5, 1.0), learning_rate=args.lr,
            weight_decay=1e-4, n_epochs=args.epochs, steps_per_epoch=args.steps,
            validation_fraction=0.2, keep_best=True, device=args.device,
            random_state=args.seed, verbose=args.verbose)
        t0 = time.perf_counter()
        trainer.fit(X_train, y_train)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        F_train = trainer.transform(X_train)
        F_test = trainer.transform(X_test)
        t_desc = time.perf_counter() - t0
        res = evaluate(F_train, F_test, y_test, args.dims)
        res.update(train_seconds=t_train, describe_seconds=t_desc,
                   best_epoch=trainer.best_epoch_, p=trainer.history_[-1]["p"],
                   history=trainer.history_)
        results["methods"][method] = res
        print(f"{method}:", {k: v for k, v in res.items() if k != "history"}, flush=True)

    results["wall_seconds"] = time.perf_counter() - t_start
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    # -- the table ------------------------------------------------------------
    names = {"baseline": "off-the-shelf GeM (p=3)", "ap": "fine-tuned, AP loss",
             "tie_aware_ap": "fine-tuned, tie-aware AP loss",
             "triplet": "fine-tuned, triplet loss", "contrastive": "fine-tuned, contrastive loss",
             "classification": "fine-tuned, classification (Neural Codes)"}
    cols = ["raw"] + [f"pcaw{d}" for d in args.dims]
    print()
    print("| method | " + " | ".join(["raw 1280-D"] + [f"PCA-w {d}" for d in args.dims])
          + " | training time | best epoch |")
    print("|---" * (len(cols) + 3) + "|")
    base = results["methods"]["baseline"]
    for name, res in results["methods"].items():
        cells = []
        for c in cols:
            gain = "" if name == "baseline" else f" ({res[c] - base[c]:+.3f})"
            cells.append(f"{res[c]:.3f}{gain}")
        t = "-" if name == "baseline" else f"{res['train_seconds']:.0f} s"
        best = res.get("best_epoch", "-")
        print(f"| {names.get(name, name)} | " + " | ".join(cells) + f" | {t} | {best} |")
    print(f"\nwall time {results['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
