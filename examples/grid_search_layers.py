"""
===================================================================
Choosing the layer, the image size and the whitening by grid search
===================================================================

A retrieval system built from a pretrained CNN has few parameters, but they
matter: which layer the feature maps come from, at which resolution the
images are fed, and how many whitened dimensions are kept.  Because every
step of :mod:`skretrieval` is a scikit-learn estimator, they can be tuned with
:class:`~sklearn.model_selection.GridSearchCV`.

**Cross-validation for retrieval.**  In each split the *training* fold is the
database (the pipeline is fitted on it: the whitening is learned on it and the
retriever stores it) and the *test* fold supplies the queries;
:class:`~skretrieval.RetrievalMAP` scores the mean average precision of the
test images against the database, an item being relevant when it has the
query's label.  Every object must therefore have images on both sides:
:class:`~sklearn.model_selection.StratifiedKFold` keeps the proportion of
each label in every fold.  (A :class:`~sklearn.model_selection.GroupKFold`
over objects would put all the images of an object on the query side, with no
relevant item in the database: such queries are skipped with an
``UndefinedMetricWarning`` and the fold scores ``nan``.)

**The feature cache.**  Every candidate clones and refits the extractor, and
scoring transforms the test fold again.  With ``cache="memory"`` the feature
maps are keyed by image, network, weights, layer and input size, so each image
goes through the network once per (layer, ``max_size``) pair; the
``n_components`` axis, the folds and the final refit reuse the maps.
:func:`skretrieval.forward_pass_count` measures it.

The data are a COIL-100 subset (30 objects x 12 views) from
``../shared/data`` (or ``$SKRETRIEVAL_SHARED_DATA``); without it the example
falls back to the scenes of the embedded demo collection
(:func:`skretrieval.datasets.load_demo_dataset`).  The network is MobileNetV2
with its ImageNet weights (``weights="IMAGENET1K_V1"``).
"""

# %%
# Data
# ----
import os
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from skretrieval import (
    ConvFeatureExtractor,
    GeMPooler,
    NearestNeighborRetriever,
    PCAWhitener,
    RetrievalMAP,
    clear_memory_cache,
    forward_pass_count,
)

t_start = time.perf_counter()

SHARED_DATA = Path(
    os.environ.get("SKRETRIEVAL_SHARED_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def coil100_subset(root, n_objects=30, step=30):
    """Paths and labels of ``n_objects`` COIL-100 objects, one view every
    ``step`` degrees; objects with a missing view (and obj1, stored at
    32 x 32 pixels) are skipped."""
    paths, labels = [], []
    obj = 2
    while len(set(labels)) < n_objects and obj <= 100:
        views = [root / f"obj{obj}__{deg}.png" for deg in range(0, 360, step)]
        if all(p.is_file() for p in views):
            paths += [str(p) for p in views]
            labels += [obj] * len(views)
        obj += 1
    return paths, np.asarray(labels)


if (SHARED_DATA / "coil100").is_dir():
    source = "COIL-100 subset (shared data)"
    images, labels = coil100_subset(SHARED_DATA / "coil100")
    n_components = [32, 64]
else:
    from skretrieval.datasets import load_demo_dataset

    source = "embedded demo collection (shared data not found)"
    images, labels, _ = load_demo_dataset()
    # the scenes only: the distractors (label -1) are relevant to nothing
    images = [im for im, y in zip(images, labels) if y >= 0]
    labels = labels[labels >= 0]
    n_components = [16, 24]  # fewer than the images of a training fold
print(
    f"data: {source}: {len(images)} images of {len(np.unique(labels))} objects"
)

# %%
# The pipeline and the grid
# -------------------------
pipe = make_pipeline(
    ConvFeatureExtractor(
        "mobilenet_v2", weights="IMAGENET1K_V1", cache="memory", device="cpu"
    ),
    GeMPooler(p=3),
    PCAWhitener(random_state=0),  # seeds the randomized PCA solver
    NearestNeighborRetriever(),
)
param_grid = {
    # MobileNetV2 blocks: 13 (96 channels, stride 16), 16 (160 channels,
    # stride 32) and 18 (the last 1x1 convolution, 1280 channels)
    "convfeatureextractor__layer": [13, 16, 18],
    "convfeatureextractor__max_size": [96, 128],
    "pcawhitener__n_components": n_components,
}
cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
grid = GridSearchCV(pipe, param_grid, scoring=RetrievalMAP(), cv=cv)

# %%
# Search, counting the forward passes
# -----------------------------------
clear_memory_cache()
before = forward_pass_count()
grid.fit(images, labels)
passes = forward_pass_count() - before

n_images = len(images)
n_candidates = len(grid.cv_results_["params"])
n_network_settings = len(param_grid["convfeatureextractor__layer"]) * len(
    param_grid["convfeatureextractor__max_size"]
)
# without a cache: every candidate transforms the training fold (fit) and the
# test fold (score) of every split, i.e. all the images once per split, and
# the refit transforms all the images once more
without_cache = n_candidates * cv.get_n_splits() * n_images + n_images
print(
    f"{n_candidates} candidates x {cv.get_n_splits()} folds: {passes} forward "
    f"passes with cache='memory' (= {n_network_settings} (layer, max_size) "
    f"settings x {n_images} images)"
)
print(
    f"without a cache it would be {without_cache} (= {n_candidates} x "
    f"{cv.get_n_splits()} x {n_images} + {n_images} for the refit)"
)

# %%
# Results
# -------
results = grid.cv_results_
order = np.argsort(results["rank_test_score"], kind="stable")
print()
print(f"{'layer':>5} {'max_size':>8} {'n_comp':>6}  {'mAP':>5} {'(std)':>7}")
for i in order:
    params = results["params"][i]
    print(
        f"{params['convfeatureextractor__layer']:>5} "
        f"{params['convfeatureextractor__max_size']:>8} "
        f"{params['pcawhitener__n_components']:>6}  "
        f"{results['mean_test_score'][i]:.3f} "
        f"({results['std_test_score'][i]:.3f})"
    )
print()
print(f"best parameters: {grid.best_params_}")
print(f"best cross-validated mAP: {grid.best_score_:.3f}")
print(f"wall time: {time.perf_counter() - t_start:.1f} s")
