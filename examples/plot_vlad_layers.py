"""
=====================================================================
Ng et al.: VLAD of intermediate layers, per layer and input scale
=====================================================================

Ng, Yang & Davis (CVPR-W 2015) encode the local features of a convolutional
layer with VLAD, compress them to 128 dimensions by PCA-whitening, and
observe that (i) intermediate layers beat the last one for instance
retrieval, and (ii) the best layer depends on the input scale (their
Figure 2: mAP per layer, one line per scale).

This example reruns that experiment with MobileNetV2 (ImageNet weights):

* layers: the outputs of blocks 7, 10, 13, 14, 16 and 17 (64 to 320
  channels) -- and, as the baseline, SPoC and GeM of the last convolutional
  layer (1,280 channels), the pooled descriptors of the literature;
* input scales: longest side 128 px (COIL's native size) and 256 px;
* VLAD: :class:`~skretrieval.VLADEncoder` with 32 words and
  intra-normalisation, then ``PCAWhitener(n_components=128)``;
* protocol: the vocabulary and the whitening are learned on COIL-100
  objects 1-50 and the leave-one-out mAP is measured on objects 51-100
  (3,584 views, each querying the 3,583 others): never on the evaluated
  images, but on the same kind of images, as the literature learns on
  Paris6k for Oxford5k.  (Learned on COIL-20 instead, whose objects are
  grey, the 128 principal directions miss the colour variations of COIL-100:
  measured on block 16 at 128 px with 16 words, PCA-w 128 learned on COIL-20
  scored 0.617 against 0.776 for the raw VLAD; a plain PCA 0.627.)

All the layers of one scale come out of a *single* forward pass per image:
the extractor's ``cache_layers`` fills a disk cache with every layer, and
the extractors of the other layers read it.

Needs ``../shared/data`` (COIL-100; set
``SKRETRIEVAL_SHARED_DATA`` to point elsewhere).  Takes about 10 minutes on
a 2-core CPU the first time (the feature maps are then cached in
``~/.cache/skretrieval/examples``; set ``SKRETRIEVAL_EXAMPLE_CACHE``).
"""

# %%
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from skretrieval import ConvFeatureExtractor, GeMPooler, PCAWhitener, SPoCPooler, VLADEncoder
from skretrieval.datasets import load_dataset
from skretrieval.datasets import evaluate_descriptors

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA")
            or Path(__file__).resolve().parents[2] / "shared" / "data")
CACHE = os.path.expanduser(os.environ.get("SKRETRIEVAL_EXAMPLE_CACHE",
                                          "~/.cache/skretrieval/examples"))
LAYERS = ["block7", "block10", "block13", "block14", "block16", "block17"]
SIZES = [128, 256]
N_WORDS, N_DIMS = 32, 128

if not (DATA / "coil100").is_dir():
    sys.exit(f"this example needs COIL-100 in {DATA}")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # COIL-100 here lacks 32 of its 7,200 views
    coil100 = load_dataset("coil100", DATA / "coil100")
learn = coil100.subset(coil100.labels <= 50, name="coil100 objects 1-50")
evaluated = coil100.subset(coil100.labels > 50, name="coil100 objects 51-100")
t_start = time.perf_counter()


def maps(layer, size, images):
    """Feature maps of one layer; the first call of a size computes them all."""
    ext = ConvFeatureExtractor("mobilenet_v2", layer=layer, max_size=size, device="cpu",
                               cache=CACHE, cache_layers=LAYERS + ["features"],
                               store="disk", dtype="float16")
    return ext.fit().transform(images)


# %%
# VLAD of every layer at every scale, PCA-whitened to 128 dims
# ----------------------------------------------------------------
results, raw = {}, {}
for size in SIZES:
    for layer in LAYERS:
        t = time.perf_counter()
        vlad = VLADEncoder(n_clusters=N_WORDS, max_descriptors=50_000, random_state=0)
        maps_learn = maps(layer, size, learn.images)
        X_learn = vlad.fit(maps_learn).transform(maps_learn)  # vocabulary: objects 1-50
        X_eval = vlad.transform(maps(layer, size, evaluated.images))
        report = evaluate_descriptors(
            evaluated, X_eval, whitener=PCAWhitener(n_components=N_DIMS, random_state=0),
            whitening_descriptors=X_learn, whitening_name=learn.name)
        results[layer, size] = report.results["default"]["mAP"]
        raw[layer, size] = evaluate_descriptors(evaluated, X_eval).results["default"]["mAP"]
        print(f"max_size {size:>3}  {layer:<8} VLAD {vlad.cluster_centers_.shape[1]:>4} ch "
              f"x {N_WORDS} words = {X_eval.shape[1]:>5} dims: mAP {raw[layer, size]:.3f}; "
              f"PCA-w {N_DIMS}: {results[layer, size]:.3f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)

# %%
# The baselines: SPoC and GeM of the last convolutional layer
# ----------------------------------------------------------------
baselines = {}
for size in SIZES:
    for name, pooler in (("SPoC", SPoCPooler()), ("GeM", GeMPooler(p=3))):
        X_learn = pooler.transform(maps("features", size, learn.images))
        X_eval = pooler.transform(maps("features", size, evaluated.images))
        for dims, whitener in ((1280, None),
                               (N_DIMS, PCAWhitener(n_components=N_DIMS, random_state=0))):
            report = evaluate_descriptors(
                evaluated, X_eval, whitener=whitener,
                whitening_descriptors=None if whitener is None else X_learn,
                whitening_name=learn.name)
            baselines[name, size, dims] = report.results["default"]["mAP"]
            print(f"max_size {size:>3}  last layer {name:<4} "
                  f"{'raw 1280' if whitener is None else f'PCA-w {dims}'}: "
                  f"mAP {baselines[name, size, dims]:.3f}", flush=True)
print(f"total {time.perf_counter() - t_start:.0f} s")

# %%
# The table and the figure (Ng et al.'s Figure 2)
# ----------------------------------------------------------------
print("\n| descriptor | " + " | ".join(f"max_size {s}" for s in SIZES) + " |")
print("|---|" + "---|" * len(SIZES))
for layer in LAYERS:
    print(f"| {layer} VLAD-{N_WORDS} raw / PCA-w {N_DIMS} | "
          + " | ".join(f"{raw[layer, s]:.3f} / {results[layer, s]:.3f}" for s in SIZES) + " |")
for name in ("SPoC", "GeM"):
    for dims in (1280, N_DIMS):
        label = "raw" if dims == 1280 else f"PCA-w {dims}"
        print(f"| last layer {name} {label} | "
              + " | ".join(f"{baselines[name, s, dims]:.3f}" for s in SIZES) + " |")
best = max(results, key=results.get)
print(f"\nbest: {best[0]} at max_size {best[1]}, mAP {results[best]:.3f}; best last-layer "
      f"baseline at 128 dims: {max(baselines[n, s, N_DIMS] for n in ('SPoC', 'GeM') for s in SIZES):.3f}")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("matplotlib is not installed: no figure (pip install skretrieval[demo])")
fig, ax = plt.subplots(figsize=(10, 4))
x = np.arange(len(LAYERS))
for size, marker in zip(SIZES, "os"):
    line, = ax.plot(x, [results[layer, size] for layer in LAYERS], marker=marker,
                    label=f"VLAD-{N_WORDS}, PCA-w {N_DIMS}, max_size {size}")
    ax.plot(x, [raw[layer, size] for layer in LAYERS], marker=marker, linestyle=":",
            color=line.get_color(), alpha=0.6, label=f"VLAD-{N_WORDS} raw, max_size {size}")
for (name, style) in (("SPoC", ":"), ("GeM", "--")):
    ax.axhline(max(baselines[name, s, N_DIMS] for s in SIZES), color="grey", linestyle=style,
               label=f"last layer {name}, PCA-w {N_DIMS} (best size)")
ax.set_xticks(x, LAYERS)
ax.set_xlabel("MobileNetV2 layer")
ax.set_ylabel("mAP, COIL-100 objects 51-100")
ax.set_title("VLAD of intermediate layers (Ng et al. 2015, Fig. 2)")
ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
fig.tight_layout()
out = os.environ.get("SKRETRIEVAL_EXAMPLE_FIGURE", "vlad_layers.png")
fig.savefig(out, dpi=100)
print(f"figure: {out}")
