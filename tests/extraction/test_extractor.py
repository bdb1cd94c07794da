"""ConvFeatureExtractor on tiny random networks and on the real MobileNetV2."""

import io
import os
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import get_model
from torchvision.models.feature_extraction import create_feature_extractor

from skretrieval import ConvFeatureExtractor, Crop, FeatureMaps
from skretrieval.extraction._backbones import WeightsNotFoundError, build_model, weights_search_dirs
from skretrieval.extraction._cache import clear_memory_cache, forward_pass_count
from skretrieval.extraction._images import ImageLoadError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _images(n=4, seed=0, sizes=None):
    rng = np.random.default_rng(seed)
    sizes = sizes or [(40 + 7 * i, 64 - 3 * i) for i in range(n)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _reference_maps(model, node, image, longest, mean=MEAN, std=STD):
    """Resize with PIL, normalise and run the torchvision model directly."""
    h, w = image.shape[:2]
    s = longest / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float() / 255
    x = (x - mean) / std
    trunk = create_feature_extractor(model, return_nodes={node: "out"}).eval()
    with torch.no_grad():
        return trunk(x)["out"][0].numpy()


@pytest.fixture(autouse=True)
def _no_resumed_maps():
    """Each test starts without maps left by a transform that failed before."""
    from skretrieval.extraction._cache import RESUME_STORE

    RESUME_STORE.clear()
    yield
    RESUME_STORE.clear()


@pytest.fixture(scope="module")
def resnet18():
    return ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu").fit()


def test_maps_equal_direct_torchvision_computation(resnet18):
    images = _images(3)
    maps = resnet18.transform(images)
    assert isinstance(maps, FeatureMaps) and len(maps) == 3
    model, _, _ = build_model("resnet18", None)
    model.load_state_dict(resnet18.trunk_.state_dict(), strict=False)
    for img, (fmap,) in zip(images, maps):
        ref = _reference_maps(model, "layer4", img, 64)
        assert fmap.dtype == np.float32 and fmap.shape == ref.shape
        np.testing.assert_allclose(fmap, ref, rtol=1e-4, atol=1e-5)


def test_batched_equals_one_at_a_time():
    images = _images(sizes=[(50, 60)] * 5 + [(30, 60)] * 3)
    a = ConvFeatureExtractor("resnet18", weights=None, max_size=64, batch_size=8,
                             device="cpu").fit().transform(images)
    b = ConvFeatureExtractor("resnet18", weights=None, max_size=64, batch_size=1,
                             device="cpu").fit().transform(images)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x[0], y[0], rtol=1e-4, atol=1e-5)


def test_multiscale_shapes_and_order(resnet18):
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=64, scales=(1, 2, 0.5),
                               device="cpu").fit()
    maps = ext.transform(_images(2, sizes=[(64, 32), (32, 64)]))
    assert maps.scales == (1.0, 2.0, 0.5)
    shapes = [tuple(m.shape[1:]) for m in maps[0]]
    assert shapes == [(2, 1), (4, 2), (1, 1)]
    assert [tuple(m.shape[1:]) for m in maps[1]] == [(1, 2), (2, 4), (1, 1)]


@pytest.mark.parametrize(
    "backbone, layer, node, channels",
    [
        ("vgg16", "conv5_3", "features.29", 512),
        ("vgg16", "pool5", "features.30", 512),
        ("vgg16", "conv4_1", "features.18", 512),
        ("vgg16", None, "features.29", 512),
        ("resnet50", "layer3", "layer3", 1024),
        ("resnet50", None, "layer4", 2048),
        ("googlenet", "inception4e", "inception4e", 832),
        ("googlenet", None, "inception5b", 1024),
        ("mobilenet_v2", 14, "features.14", 160),
        ("mobilenet_v2", "block7", "features.7", 64),
        ("mobilenet_v2", None, "features", 1280),
        ("resnet50", "layer2.3.relu_2", "layer2.3.relu_2", 512),
    ],
)
def test_backbones_and_layer_names(backbone, layer, node, channels):
    ext = ConvFeatureExtractor(backbone, weights=None, layer=layer, max_size=96,
                               device="cpu").fit()
    assert ext.layer_node_ == node
    assert ext.n_channels_ == channels
    (fmap,) = ext.transform(_images(1, sizes=[(70, 96)]))[0]
    assert fmap.shape[0] == channels and fmap.ndim == 3


def test_layer_names_lists_every_accepted_name():
    from skretrieval import layer_names

    names = layer_names("resnet18")
    for name in ("layer3", "layer3.1", "layer3.1.relu_1", "layer4"):
        assert name in names
    assert len(names) == len(set(names))
    ext = ConvFeatureExtractor("resnet18", weights=None, layer="layer3.1", max_size=64,
                               device="cpu").fit()
    assert ext.n_channels_ == 256


def test_cache_layers_fill_the_cache_in_one_pass_and_are_not_saved(tmp_path):
    import joblib

    from skretrieval import forward_pass_count
    from skretrieval.persistence import load_pipeline, save_pipeline

    images = _images(3)
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu",
                               layer="layer3", cache=str(tmp_path / "c"),
                               cache_layers=["layer2", "layer3", "layer4"]).fit()
    assert ext.cache_nodes_ == ("layer2", "layer4")
    before = forward_pass_count()
    maps = ext.transform(images)
    assert forward_pass_count() - before == 3
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 9  # 3 images x 3 layers
    # with another layer, everything comes from the cache
    other = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu",
                                 layer="layer4", cache=str(tmp_path / "c")).fit()
    before = forward_pass_count()
    assert other.transform(images)[0][0].shape[0] == 512
    assert forward_pass_count() == before
    # saved without the multi-layer network; the loaded one computes its layer
    joblib.dump(ext, tmp_path / "ext.joblib")
    save_pipeline(ext, tmp_path / "ext.zip")
    for loaded in (joblib.load(tmp_path / "ext.joblib"), load_pipeline(tmp_path / "ext.zip")):
        assert loaded._multi_trunk is None
        loaded.set_params(cache=None)
        np.testing.assert_allclose(loaded.transform(images)[1][0], maps[1][0], atol=1e-5)
    with pytest.raises(ValueError, match="unknown layer 'layer9'"):
        ConvFeatureExtractor("resnet18", weights=None, cache_layers=["layer9"]).fit()


def test_float16_and_disk_store_match_memory(resnet18, tmp_path):
    images = _images(3)
    ref = resnet18.transform(images)
    for params in ({"dtype": "float16"}, {"store": "disk"}, {"store": str(tmp_path)}):
        ext = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu",
                                   **params).fit()
        maps = ext.transform(images)
        tol = 1e-2 if params.get("dtype") == "float16" else 1e-6
        for a, b in zip(ref, maps):
            assert b[0].dtype == np.float32
            np.testing.assert_allclose(a[0], b[0], rtol=tol, atol=tol)
    if params.get("store") == str(tmp_path):
        assert any(f.startswith("maps-") for f in os.listdir(tmp_path))
    half = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu",
                                dtype="float16").fit().transform(images)
    assert half.nbytes * 2 == ref.nbytes


def test_memory_cache_skips_forward_passes():
    clear_memory_cache()
    images = _images(4)
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=64, scales=(1, 0.5),
                               cache="memory", device="cpu").fit()
    before = forward_pass_count()
    first = ext.transform(images)
    assert forward_pass_count() - before == 8  # 4 images x 2 scales
    second = ext.transform(images[::-1])
    assert forward_pass_count() - before == 8
    np.testing.assert_array_equal(first[0][1], second[3][1])
    # another layer is another key
    ConvFeatureExtractor("resnet18", weights=None, max_size=64, layer="layer3",
                         cache="memory", device="cpu").fit().transform(images)
    assert forward_pass_count() - before == 12


def test_disk_cache_shared(tmp_path):
    images = _images(3)
    kw = dict(weights=None, max_size=64, cache=str(tmp_path / "c"), device="cpu")
    a = ConvFeatureExtractor("resnet18", **kw).fit().transform(images)
    before = forward_pass_count()
    b = ConvFeatureExtractor("resnet18", **kw).fit().transform(images)
    assert forward_pass_count() == before
    np.testing.assert_array_equal(a[2][0], b[2][0])


def test_disk_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path, monkeypatch):
    import os
    import time

    from skretrieval.extraction._cache import get_cache

    cache = get_cache(str(tmp_path / "bounded"))
    arr = np.zeros((32, 32), np.float32)  # 4 kB (+ the .npy header)
    size = 4096 + 128
    monkeypatch.setenv("SKRETRIEVAL_DISK_CACHE_BYTES", str(4 * size))
    for i in range(4):
        cache.put(f"{i:02d}key", arr + i)
        past = time.time() - 100 + i  # distinct, increasing modification times
        os.utime(cache._path(f"{i:02d}key"), (past, past))
    assert cache.get("00key") is not None  # a hit: 00 becomes the most recent
    cache.put("04key", arr + 4)  # over the budget: evict the oldest down to 90%
    assert cache.nbytes <= 4 * size
    assert cache.get("01key") is None and cache.get("02key") is None
    np.testing.assert_array_equal(cache.get("00key"), arr)
    np.testing.assert_array_equal(cache.get("04key"), arr + 4)


def test_crop_is_cut_before_resizing(resnet18):
    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    via_crop = resnet18.transform([Crop(big, (100, 50, 260, 170))])[0][0]
    manual = resnet18.transform([big[50:170, 100:260]])[0][0]
    np.testing.assert_array_equal(via_crop, manual)


def test_paths_pil_and_arrays_agree(resnet18, tmp_path):
    img = _images(1)[0]
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    maps = resnet18.transform([img, str(path), path, Image.fromarray(img)])
    for m in maps:
        np.testing.assert_array_equal(m[0], maps[0][0])


def test_pickle_stores_state_not_module_and_round_trips(resnet18, tmp_path):
    images = _images(2)
    ref = resnet18.transform(images)
    state = resnet18.__getstate__()
    assert state["trunk_"] is None
    assert all(isinstance(v, np.ndarray) for v in state["_trunk_state"].values())
    blob = pickle.dumps(resnet18)
    assert b"torch.nn" not in blob
    path = tmp_path / "ext.joblib"
    joblib.dump((resnet18, images), path)
    code = (
        "import joblib, numpy as np, sys; ext, images = joblib.load(sys.argv[1]);"
        "np.save(sys.argv[2], ext.transform(images)[1][0])"
    )
    out = tmp_path / "out.npy"
    subprocess.run([sys.executable, "-c", code, str(path), str(out)], check=True)
    np.testing.assert_allclose(np.load(out), ref[1][0], rtol=1e-5, atol=1e-6)


def test_state_dict_file_weights(tmp_path):
    model = get_model("resnet18", weights=None)
    torch.nn.init.normal_(model.conv1.weight)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, path)  # a training checkpoint
    ext = ConvFeatureExtractor("resnet18", weights=str(path), max_size=64, device="cpu").fit()
    img = _images(1)[0]
    ref = _reference_maps(model.eval(), "layer4", img, 64)
    # normal(0, 1) filters give activations in the hundreds: float32 sums
    # taken in another order differ by ~1e-6 of that scale
    np.testing.assert_allclose(ext.transform([img])[0][0], ref, rtol=1e-4,
                               atol=1e-5 * np.abs(ref).max())


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

def test_unknown_backbone_and_layer():
    with pytest.raises(ValueError, match="unknown backbone 'resnet5'"):
        ConvFeatureExtractor("resnet5", weights=None).fit()
    with pytest.raises(ValueError, match=r"unknown layer 'layer5'.*layer_names"):
        ConvFeatureExtractor("resnet18", weights=None, layer="layer5").fit()
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9'"):
        ConvFeatureExtractor("resnet18", weights="IMAGENET9").fit()
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        ConvFeatureExtractor("resnet18", weights="/no/such/file.pth").fit()


def test_missing_official_weights_name_the_file(monkeypatch, tmp_path):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"resnet18-f37072fd\.pth.*is in none of"):
        ConvFeatureExtractor("resnet18", weights="IMAGENET1K_V1").fit()


def test_empty_and_wrong_collections(resnet18):
    with pytest.raises(ValueError, match="empty"):
        resnet18.transform([])
    with pytest.raises(ValueError, match="empty"):
        ConvFeatureExtractor("resnet18", weights=None).fit([])
    with pytest.raises(TypeError, match="wrap it in a list"):
        resnet18.transform("a.jpg")
    for single in (b"\xff\xd8", io.BytesIO(b"\xff\xd8")):  # one encoded image
        with pytest.raises(TypeError, match="single .*wrap it in a list"):
            resnet18.transform(single)
    with pytest.raises(TypeError, match="pooler"):
        resnet18.transform(FeatureMaps())


def test_bad_file_in_batch_is_named(resnet18, tmp_path):
    good = _images(3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match=r"image 2.*broken\.jpg"):
        resnet18.transform(good[:2] + [str(bad)] + good[2:])


def test_too_small_for_the_network_is_named():
    ext = ConvFeatureExtractor("vgg16", weights=None, layer="pool5", max_size=64,
                               device="cpu").fit()
    assert ext.min_input_size_ == 32
    thin = np.zeros((3, 200, 3), dtype=np.uint8)  # 1 x 64 after resizing
    with pytest.raises(ValueError, match=r"image 1 .*needs at least 32 px"):
        ext.transform([np.zeros((64, 64, 3), np.uint8), thin])
    # a 1x1 image is upsampled to max_size and works
    (fmap,) = ext.transform([np.full((1, 1, 3), 200, np.uint8)])[0]
    assert fmap.shape == (512, 2, 2)


def test_not_fitted():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ConvFeatureExtractor(weights=None).transform(_images(1))


# ----------------------------------------------------------------------------
# The real MobileNetV2 ImageNet weights (offline)
# ----------------------------------------------------------------------------

def _have_mobilenet_weights():
    return any(os.path.isfile(os.path.join(d, "mobilenet_v2-b0353104.pth"))
               for d in weights_search_dirs())


real_weights = pytest.mark.skipif(not _have_mobilenet_weights(),
                                  reason="mobilenet_v2-b0353104.pth not installed")


@real_weights
@pytest.mark.slow
def test_real_mobilenet_weights_classify_a_cat_and_match_features():
    skimage_data = pytest.importorskip("skimage.data")
    cat = skimage_data.chelsea()
    model, mean, std = build_model("mobilenet_v2", "IMAGENET1K_V1")
    x = torch.from_numpy(np.array(Image.fromarray(cat).resize((224, 224)))).permute(2, 0, 1)
    x = ((x[None].float() / 255) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = model(x).topk(5).indices[0].tolist()
    assert any(281 <= c <= 293 for c in top5)  # ImageNet cat classes
    ext = ConvFeatureExtractor("mobilenet_v2", max_size=224, device="cpu").fit()
    ref = _reference_maps(model, "features", cat, 224)
    np.testing.assert_allclose(ext.transform([cat])[0][0], ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------
# One bad image: named by its position, never losing the work on the others
# ----------------------------------------------------------------------------

def _jpeg_bytes(seed=0, size=(48, 40)):
    import io

    rng = np.random.default_rng(seed)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
                        .resize(size, Image.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _garbled(data):
    """``data`` with the middle of its scan overwritten (header intact, no 0xFF
    written): Pillow decodes it without an error, to wrong pixels."""
    start = data.index(b"\xff\xda") + 2
    start += int.from_bytes(data[start:start + 2], "big")
    end = data.rindex(b"\xff\xd9")
    at = (start + end) // 2 - 20
    while data[at - 1] == 0xFF:
        at += 1
    noise = np.random.default_rng(1).integers(0, 255, 40, dtype=np.uint8).tobytes()
    return data[:at] + noise + data[at + 40:]


@pytest.fixture
def bad_jpeg(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(_garbled(_jpeg_bytes()))
    with Image.open(path) as im:
        im.load()  # Pillow alone sees nothing wrong
    return path


def _fix(path):
    path.write_bytes(_jpeg_bytes())
    os.utime(path, ns=(1, 1))  # another key, even within the mtime resolution


def test_bad_image_is_named_by_position_and_the_others_are_not_recomputed(bad_jpeg):
    X = _images(sizes=[(40, 48)] * 70)
    X[63] = str(bad_jpeg)
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu",
                               cache=None).fit()
    before = forward_pass_count()
    with pytest.raises(ImageLoadError) as info:
        ext.transform(X)
    err = info.value
    message = str(err)
    assert message.startswith(f"image 63 of 70 ('{bad_jpeg}'): corrupt JPEG data")
    assert "check_images" in message and "next transform" in message
    assert (err.index, err.path) == (63, str(bad_jpeg))
    assert err.reason.startswith("corrupt JPEG data")
    assert forward_pass_count() - before == 63  # the chunk of 64 minus the bad one
    _fix(bad_jpeg)
    before = forward_pass_count()
    maps = ext.transform(X)
    assert len(maps) == 70
    assert forward_pass_count() - before == 7  # the fixed one and the 6 never reached
    fresh = ConvFeatureExtractor("resnet18", weights=None, max_size=32,
                                 device="cpu", cache=None).fit().transform([X[0], X[63], X[69]])
    for a, b in zip((maps[0], maps[63], maps[69]), fresh):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    # the maps kept were released by the call that used them
    before = forward_pass_count()
    ext.transform(X[:3])
    assert forward_pass_count() - before == 3


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_removing_the_bad_image_reuses_the_maps_of_the_others(bad_jpeg, store):
    good = _images(5)
    X = good[:2] + [str(bad_jpeg)] + good[2:]
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu",
                               store=store, cache=None).fit()
    with pytest.raises(ImageLoadError, match=r"^image 2 of 6 .*maps of the 5 images"):
        ext.transform(X)
    other = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu",
                                 cache=None).fit()
    before = forward_pass_count()
    maps = other.transform(good)  # another extractor with the same settings
    assert forward_pass_count() == before and len(maps) == 5
    # other settings, other maps: nothing reused
    before = forward_pass_count()
    ConvFeatureExtractor("resnet18", weights=None, max_size=40, device="cpu", cache=None).fit() \
        .transform(good[:2])
    assert forward_pass_count() - before == 2


def test_with_a_cache_the_maps_done_are_in_the_cache(bad_jpeg):
    clear_memory_cache()
    good = _images(4)
    X = good[:3] + [str(bad_jpeg)] + good[3:]
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu",
                               cache="memory").fit()
    with pytest.raises(ImageLoadError, match="kept in the cache"):
        ext.transform(X)
    before = forward_pass_count()
    ext.transform(good)
    assert forward_pass_count() == before


def test_missing_file_and_too_small_image_with_a_cache_are_load_errors(tmp_path):
    ext = ConvFeatureExtractor("vgg16", weights=None, layer="pool5", max_size=64,
                               device="cpu", cache="memory").fit()
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError, match=r"^image 1 of 2 .*missing\.jpg'\): file not"):
        ext.transform([np.zeros((64, 64, 3), np.uint8), missing])
    with pytest.raises(ImageLoadError, match=r"^image 0 of 1 .*needs at least 32 px") as info:
        ext.transform([np.zeros((3, 200, 3), np.uint8)])
    assert info.value.index == 0 and info.value.path is None


def test_on_error_skip_leaves_bad_images_out_and_reports_them(bad_jpeg, tmp_path):
    good = _images(4)
    missing = tmp_path / "missing.png"
    X = [good[0], str(bad_jpeg), good[1], good[2], missing, good[3]]
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu",
                               on_error="skip").fit()
    assert ext.skipped_ == []
    with pytest.warns(UserWarning, match=r"left out 2 of 6 images") as record:
        maps = ext.transform(X)
    assert len(record) == 1
    text = str(record[0].message)
    assert str(bad_jpeg) in text and str(missing) in text
    assert len(maps) == 4
    assert [i for i, _ in ext.skipped_] == [1, 4]
    assert ext.skipped_[0][1].startswith(f"image 1 of 6 ('{bad_jpeg}'): corrupt JPEG data")
    assert "file not found" in ext.skipped_[1][1]
    ref = ConvFeatureExtractor("resnet18", weights=None, max_size=32,
                               device="cpu").fit().transform(good)
    for a, b in zip(maps, ref):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    labels = np.delete(np.arange(6), [i for i, _ in ext.skipped_])
    assert labels.tolist() == [0, 2, 3, 5]
    # the report is the last transform's
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ext.transform(good)) == 4
    assert ext.skipped_ == []
    # unsupported items are not bad images: they always raise
    with pytest.raises(TypeError, match="unsupported input"):
        ext.transform([good[0], None])


def test_on_error_skip_with_labels_refuses_to_misalign_y(bad_jpeg):
    from sklearn.pipeline import make_pipeline

    from skretrieval import GeMPooler, NearestNeighborRetriever

    good = _images(3)
    X = [good[0], str(bad_jpeg), good[1], good[2]]
    y = [0, 1, 0, 1]
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu",
                               on_error="skip")
    pipe = make_pipeline(ext, GeMPooler(), NearestNeighborRetriever(n_neighbors=2))
    with pytest.warns(UserWarning, match="left out 1"):
        with pytest.raises(ValueError, match=r"positions 1\) but y was given.*check_images"):
            pipe.fit(X, y)
    # filtering X and y as told: the maps extracted are reused
    before = forward_pass_count()
    pipe.fit([X[i] for i in (0, 2, 3)], [y[i] for i in (0, 2, 3)])
    assert forward_pass_count() == before
    # without labels the extractor alone keeps the rows it can
    with pytest.warns(UserWarning, match="left out 1"):
        assert len(ext.fit_transform(X)) == 3


def test_on_error_skip_is_refused_with_the_dask_backend(monkeypatch):
    from skretrieval.extraction import _distributed

    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu",
                               on_error="skip").fit()
    monkeypatch.setattr(_distributed, "distributed_backend", lambda: object())
    with pytest.raises(ValueError, match="not supported with the dask backend.*check_images"):
        ext.transform(_images(1))


def test_strict_false_accepts_a_garbled_jpeg(bad_jpeg):
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=32, device="cpu",
                               strict=False, cache=None).fit()
    assert len(ext.transform([str(bad_jpeg)])) == 1
    with pytest.raises(ImageLoadError, match="corrupt JPEG data"):
        ext.set_params(strict=True).transform([str(bad_jpeg)])


def test_new_parameters_are_validated():
    from sklearn.utils._param_validation import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="on_error"):
        ConvFeatureExtractor("resnet18", weights=None, on_error="ignore").fit()
    with pytest.raises(InvalidParameterError, match="strict"):
        ConvFeatureExtractor("resnet18", weights=None, strict="yes").fit()


@pytest.mark.parametrize("scales", [(float("inf"),), (1.0, float("nan")), (0,), (-1,),
                                    (1e308,), ()])
def test_scales_must_be_finite_and_positive(scales):
    from sklearn.utils._param_validation import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=r"'scales' parameter.*finite positive"
                                                    r"|'scales' parameter.*non-empty"):
        ConvFeatureExtractor("resnet18", weights=None, scales=scales).fit()


def test_scales_set_after_fit_are_checked_by_transform(resnet18):
    from sklearn.base import clone

    ext = clone(resnet18).fit()
    ext.set_params(scales=(float("inf"),))
    with pytest.raises(ValueError, match="'scales' parameter"):
        ext.transform(_images(1))
