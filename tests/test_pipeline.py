"""End to end: Pipeline, GridSearchCV, persistence, on random and real networks."""

import subprocess
import sys

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from skretrieval import (
    ConvFeatureExtractor,
    GeMPooler,
    NearestNeighborRetriever,
    PCAWhitener,
    RetrievalMAP,
    SPoCPooler,
    clear_memory_cache,
    forward_pass_count,
)


def _toy_collection(n_objects=4, views=4, seed=0):
    """Each object is a random texture; its views are shifted, noisy crops."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for obj in range(n_objects):
        base = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
        for _ in range(views):
            y, x = rng.integers(0, 12, 2)
            view = base[y:y + 72, x:x + 100].astype(int) + rng.integers(-10, 10, (72, 100, 3))
            images.append(np.clip(view, 0, 255).astype(np.uint8))
            labels.append(obj)
    return images, np.array(labels)


def _pipe(**ext):
    params = dict(weights=None, max_size=64, device="cpu")
    params.update(ext)
    return make_pipeline(ConvFeatureExtractor("resnet18", **params), GeMPooler(p=3),
                         PCAWhitener(n_components=8), NearestNeighborRetriever(n_neighbors=5))


def test_pipeline_fit_score_kneighbors_predict():
    images, labels = _toy_collection()
    pipe = _pipe().fit(images, labels)
    score = pipe.score(images[::4], labels[::4])
    assert 0 < score <= 1
    dist, idx = pipe[-1].kneighbors(pipe[:-1].transform(images[:3]))
    assert idx.shape == (3, 5) and np.all(np.diff(dist, axis=1) >= -1e-6)
    # each image is its own nearest neighbour among the database
    np.testing.assert_array_equal(idx[:, 0], [0, 1, 2])
    predicted = pipe[-1].predict(pipe[:-1].transform(images[:2]))
    np.testing.assert_array_equal(predicted[:, 0], labels[:2])
    # a leave-one-out score of the database
    loo = pipe[-1].score(None, None)
    assert 0 < loo <= 1


def _small_grid(pipe):
    """The README's grid, smaller: 2 layers x 2 sizes x 2 dims, 2 folds."""
    return GridSearchCV(
        pipe,
        {"convfeatureextractor__layer": ["layer3", "layer4"],
         "convfeatureextractor__max_size": [48, 64],
         "pcawhitener__n_components": [4, 6]},
        scoring=RetrievalMAP(), cv=StratifiedKFold(2, shuffle=True, random_state=0),
    )


def test_grid_search_reuses_features_through_the_cache():
    clear_memory_cache()
    images, labels = _toy_collection(n_objects=3, views=4)
    grid = _small_grid(_pipe(cache="memory"))
    before = forward_pass_count()
    grid.fit(images, labels)
    passes = forward_pass_count() - before
    # 2 layers x 2 sizes: each image goes through the network once per
    # (layer, size); the n_components axis, the folds and refit cost nothing.
    assert passes == 4 * len(images)
    assert set(grid.cv_results_["mean_test_score"]) and 0 < grid.best_score_ <= 1
    assert grid.best_estimator_.score(images, labels) > 0


def test_grid_search_caches_by_default():
    """The README's grid written without cache=: one pass per (image, size, layer)."""
    clear_memory_cache()
    images, labels = _toy_collection(n_objects=3, views=4)
    grid = _small_grid(_pipe())
    before = forward_pass_count()
    grid.fit(images, labels)
    assert forward_pass_count() - before == 4 * len(images)
    # maps stored on disk stay out of the memory cache: computed again
    ext = clone(grid.best_estimator_[0]).set_params(store="disk").fit()
    before = forward_pass_count()
    ext.transform(images[:3])
    assert forward_pass_count() - before == 3


@pytest.mark.parametrize("cache", ["memory", "directory"])
def test_layer_and_scale_grid_runs_the_network_once_per_image_and_scale(cache, tmp_path):
    """3 layers x 2 scales x 3 dims, 3-fold CV: at most N passes per scale."""
    clear_memory_cache()
    images, labels = _toy_collection(n_objects=3, views=4)
    layers = ["layer2", "layer3", "layer4"]
    pipe = _pipe(cache="memory" if cache == "memory" else str(tmp_path / "cache"),
                 cache_layers=layers)
    grid = GridSearchCV(
        pipe,
        {"convfeatureextractor__layer": layers,
         "convfeatureextractor__scales": [(1.0,), (0.75,)],
         "pcawhitener__n_components": [2, 4, 6]},
        scoring=RetrievalMAP(), cv=StratifiedKFold(3, shuffle=True, random_state=0),
    )
    before = forward_pass_count()
    grid.fit(images, labels)
    assert forward_pass_count() - before == 2 * len(images)
    assert len(grid.cv_results_["params"]) == 18
    # the maps taken from the cache are those the layer computes on its own
    solo = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu",
                                layer="layer2", scales=(0.75,)).fit()
    cached = clone(pipe[0]).set_params(layer="layer2", scales=(0.75,)).fit()
    before = forward_pass_count()
    got = cached.transform(images[:3])
    assert forward_pass_count() == before
    for a, b in zip(solo.transform(images[:3]), got):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)


def test_cache_layers_in_parallel_grid_search(tmp_path):
    """Workers of GridSearchCV(n_jobs=2) share a directory cache."""
    images, labels = _toy_collection(n_objects=2, views=3)
    layers = ["layer3", "layer4"]
    cache = tmp_path / "cache"
    pipe = _pipe(cache=str(cache), cache_layers=layers)
    grid = GridSearchCV(pipe, {"convfeatureextractor__layer": layers,
                               "pcawhitener__n_components": [2, 3]},
                        scoring=RetrievalMAP(), cv=StratifiedKFold(2), n_jobs=2)
    grid.fit(images, labels)
    files = list(cache.rglob("*.npy"))
    # one map per image and layer (2 layers): filled once, whoever ran first
    assert len(files) == 2 * len(images)
    assert not list(cache.rglob("*.tmp"))
    assert 0 < grid.best_score_ <= 1


def test_grid_search_without_cache_recomputes():
    images, labels = _toy_collection(n_objects=2, views=4)
    grid = GridSearchCV(_pipe(cache=None), {"pcawhitener__n_components": [2, 3]},
                        scoring=RetrievalMAP(), cv=StratifiedKFold(2))
    before = forward_pass_count()
    grid.fit(images, labels)
    # 2 candidates x 2 folds x (train + test) + refit
    assert forward_pass_count() - before == 2 * 2 * len(images) + len(images)


def test_joblib_round_trip_in_a_fresh_process(tmp_path):
    images, labels = _toy_collection()
    pipe = _pipe().fit(images, labels)
    _, expected = pipe[-1].kneighbors(pipe[:-1].transform(images[:5]), n_neighbors="all")
    path = tmp_path / "retriever.joblib"
    joblib.dump(pipe, path)
    np.save(tmp_path / "queries.npy", np.stack(images[:5]))
    code = (
        "import joblib, numpy as np, sys\n"
        "pipe = joblib.load(sys.argv[1])\n"
        "q = list(np.load(sys.argv[2]))\n"
        "_, idx = pipe[-1].kneighbors(pipe[:-1].transform(q), n_neighbors='all')\n"
        "np.save(sys.argv[3], idx)\n"
    )
    out = tmp_path / "idx.npy"
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "queries.npy"),
                    str(out)], check=True)
    np.testing.assert_array_equal(np.load(out), expected)


def test_clone_and_params():
    pipe = _pipe()
    params = pipe.get_params()
    assert params["convfeatureextractor__backbone"] == "resnet18"
    cloned = clone(pipe).set_params(convfeatureextractor__layer="layer3")
    assert cloned[0].layer == "layer3" and pipe[0].layer is None


@pytest.mark.slow
def test_real_mobilenet_on_coil100(coil100_subset, mobilenet_weights):
    paths, labels = coil100_subset
    pipe = make_pipeline(
        ConvFeatureExtractor("mobilenet_v2", weights=mobilenet_weights, max_size=128,
                             device="cpu"),
        SPoCPooler(), NearestNeighborRetriever())
    pipe.fit(paths, labels)
    loo = pipe[-1].score(None, None)
    # 12 objects x 8 views 45 degrees apart: ImageNet features recognise them
    assert loo > 0.6, loo
    # and much better than a randomly initialised network
    rand = clone(pipe).set_params(convfeatureextractor__weights=None).fit(paths, labels)
    assert loo > rand[-1].score(None, None) + 0.15
