"""make_cluttered_objects: determinism, shapes and labels, the object really in its scenes."""

import numpy as np
import pytest
from PIL import Image

from skretrieval.datasets import (
    CLUTTERED_BENCHMARK,
    DatasetError,
    make_cluttered_objects,
    segment_object,
)

pytest.importorskip("skimage")

SMALL = dict(n_objects=3, n_scenes_per_object=2, n_distractors=2, image_size=128)


@pytest.fixture(scope="module")
def coil(shared_data):
    root = shared_data / "coil100"
    if not root.is_dir():
        pytest.skip(f"COIL-100 not found at {root}")
    return root


def test_same_seed_same_benchmark_other_seed_other(coil):
    a = make_cluttered_objects(coil, **SMALL, random_state=3)
    b = make_cluttered_objects(coil, **SMALL, random_state=3)
    c = make_cluttered_objects(coil, **SMALL, random_state=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    assert all(np.array_equal(x, y) for x, y in zip(a.queries, b.queries))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not all(np.array_equal(x, y) for x, y in zip(a.images, c.images))


def test_shapes_labels_and_ground_truth(coil):
    folders = [p for p in (coil.parent / "holidays-sample", coil.parent / "ukbench-sample")
               if p.is_dir()]
    bench = make_cluttered_objects(coil, **SMALL, query="cluttered", random_state=0,
                                   background_folders=folders)
    assert bench.n_images == 3 * 2 + 2 and bench.n_queries == 3
    assert all(im.shape == (128, 128, 3) and im.dtype == np.uint8 for im in bench.images)
    assert all(q.shape == (128, 128, 3) for q in bench.queries)
    assert (bench.labels == -1).sum() == 2
    for q, k in enumerate(bench.query_labels):
        np.testing.assert_array_equal(bench.ground_truth["default"].positives[q],
                                      np.flatnonzero(bench.labels == k))
        assert (bench.labels == k).sum() == 2
    images, labels, queries, qlabels = make_cluttered_objects(
        coil, **SMALL, as_arrays=True, query="cluttered", background_folders=folders,
        random_state=0)
    assert len(images) == 8 and len(queries) == 3
    np.testing.assert_array_equal(qlabels, bench.query_labels)
    # the rankings of a perfect system score 1
    perfect = [np.argsort(bench.labels != k, kind="stable") for k in bench.query_labels]
    assert bench.evaluate(perfect)["default"]["mAP"] == 1.0


def test_the_object_is_in_its_scenes(coil):
    bench = make_cluttered_objects(coil, n_objects=2, n_scenes_per_object=3, n_distractors=2,
                                   image_size=192, occlusion=(0.2, 0.4), return_masks=True,
                                   random_state=1)
    for scene, info, mask in zip(bench.images, bench.info["scenes"], bench.info["masks"]):
        if info["object"] == -1:
            assert mask is None
            continue
        full = info["area"] / (1 - info["occlusion"])   # the pasted object's area
        assert mask.sum() == info["area"] > 0
        assert full >= 0.3 * (info["side"] ** 2) * 0.3   # a sizeable object was pasted
        assert 0.0 <= info["occlusion"] <= 0.7            # partly hidden, not gone
        y0, x0, y1, x1 = info["box"]
        assert mask[y0:y1, x0:x1].sum() == mask.sum()
        # the visible pixels carry the object's colours: segmented as object on black
        patch = np.where(mask[..., None], scene, 0).astype(np.uint8)
        assert segment_object(patch).sum() >= 0.5 * mask.sum()
    # and an object of the COIL view is found by its segmentation mask
    view = np.asarray(Image.open(coil / "obj1__0.png").convert("RGB"))
    m = segment_object(view)
    assert 0.05 < m.mean() < 0.9 and not m[0, 0]


def test_parameter_errors(coil, tmp_path):
    with pytest.raises(ValueError, match="n_objects"):
        make_cluttered_objects(coil, n_objects=0)
    with pytest.raises(ValueError, match="n_objects must be below"):
        make_cluttered_objects(coil, n_objects=100)
    with pytest.raises(ValueError, match="occlusion"):
        make_cluttered_objects(coil, occlusion=(0.5, 0.2))
    with pytest.raises(ValueError, match="scale"):
        make_cluttered_objects(coil, scale=(0.5, 2.0))
    with pytest.raises(ValueError, match="image_size"):
        make_cluttered_objects(coil, image_size=(32, 32))
    with pytest.raises(ValueError, match="query"):
        make_cluttered_objects(coil, query="noisy")
    with pytest.raises(DatasetError, match="no image named"):
        make_cluttered_objects(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        make_cluttered_objects(tmp_path / "absent")
    assert CLUTTERED_BENCHMARK["random_state"] == 0
