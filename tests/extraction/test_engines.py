"""Extraction engines: ONNX Runtime and OpenVINO give torch's maps; recipes, not
engines, are saved; reduced-size JPEG decoding; autocast precision."""

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from skretrieval import ConvFeatureExtractor, GeMPooler, clear_memory_cache, load_image
from skretrieval.extraction import _engines
from skretrieval.extraction._engines import (AUTO_ORDER, ENGINES, EngineError, engine_runner,
                                             resolve_engine)
from skretrieval.extraction._network import clear_networks

ENGINE_NAMES = ["onnxruntime", "openvino"]


def _require(engine):
    pytest.importorskip(ENGINES[engine][0])


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


# odd sizes, a 1-pixel image and a very elongated one
SIZES = [(61, 83), (37, 29), (1, 1), (17, 90)]


def _gem(maps):
    return GeMPooler(p=3).fit_transform(maps)


def _compare(ref, got):
    """Largest absolute and relative (to the largest value) differences, and
    the smallest GeM cosine."""
    abs_diff = max(float(np.abs(a - b).max()) for ra, rb in zip(ref, got)
                   for a, b in zip(ra, rb))
    rel = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
              for ra, rb in zip(ref, got) for a, b in zip(ra, rb))
    cos = float(np.min(np.sum(_gem(ref) * _gem(got), axis=1)))
    return abs_diff, rel, cos


# Three families, cut early and fed small images so that each export takes seconds.
FAMILIES = [("mobilenet_v2", 7, 48), ("resnet18", "layer2", 48),
            ("efficientnet_b0", "features.3", 40)]


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("backbone,layer,max_size", FAMILIES)
def test_engine_maps_equal_torch(engine, backbone, layer, max_size):
    _require(engine)
    images = _images(SIZES)
    kw = dict(weights=None, layer=layer, max_size=max_size, device="cpu", cache=None,
              scales=(1.0, 0.5))
    ref = ConvFeatureExtractor(backbone, engine="torch", **kw).fit().transform(images)
    ext = ConvFeatureExtractor(backbone, engine=engine, **kw).fit()
    assert ext.engine_ == engine
    got = ext.transform(images)
    abs_diff, rel, cos = _compare(ref, got)
    assert [m[0].shape for m in got] == [m[0].shape for m in ref]
    assert rel < 1e-4, (abs_diff, rel)
    assert cos >= 0.9999


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_engine_multi_output_network(engine):
    """cache_layers and CAMs: every output of the exported network is right."""
    _require(engine)
    images = _images(SIZES[:3], seed=1)
    kw = dict(weights=None, layer=14, max_size=40, device="cpu", cams=2,
              cache_layers=[7, 14])
    maps = {}
    for e in ("torch", engine):
        ext = ConvFeatureExtractor("mobilenet_v2", engine=e, cache="memory", **kw).fit()
        clear_memory_cache()
        out = ext.transform(images)
        # the other cache layer, from the cache filled by the same pass
        other = ConvFeatureExtractor("mobilenet_v2", engine=e, cache="memory", weights=None,
                                     layer=7, max_size=40, device="cpu").fit()
        maps[e] = (out, other.transform(images),
                   [out.class_activations(i) for i in range(len(images))])
    for a, b in zip(maps["torch"][:2], maps[engine][:2]):
        assert _compare(a, b)[1] < 1e-4
    for ca, cb in zip(maps["torch"][2], maps[engine][2]):
        np.testing.assert_array_equal(ca.classes, cb.classes)
        for x, y in zip(ca.maps, cb.maps):
            np.testing.assert_allclose(x, y, atol=1e-3)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_engine_on_imagenet_mobilenet(engine, mobilenet_weights):
    _require(engine)
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    images = [np.kron(base, np.ones((s, s, 1), dtype=np.uint8)) for s in (7, 11)]
    images += _images([(97, 131)], seed=4)
    kw = dict(weights=mobilenet_weights, max_size=96, device="cpu", cache=None)
    ref = ConvFeatureExtractor(engine="torch", **kw).fit().transform(images)
    got = ConvFeatureExtractor(engine=engine, **kw).fit().transform(images)
    abs_diff, rel, cos = _compare(ref, got)
    assert rel < 1e-4, (abs_diff, rel)
    assert cos >= 0.9999


def test_auto_picks_the_fastest_installed_engine(monkeypatch):
    monkeypatch.delenv("SKRETRIEVAL_ENGINE", raising=False)
    installed = [e for e in AUTO_ORDER if _engines.engine_available(e)]
    assert resolve_engine("auto", "cpu") == installed[0]
    assert resolve_engine("auto", "cuda") == "torch"
    monkeypatch.setenv("SKRETRIEVAL_ENGINE", "torch")
    assert resolve_engine("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_engine(installed[0] if installed[0] != "torch" else "onnxruntime", "cuda:0")


def test_absent_engine_names_the_extra_and_loaded_models_fall_back(monkeypatch, tmp_path):
    _require("onnxruntime")
    images = _images(SIZES[:2])
    ext = ConvFeatureExtractor("resnet18", weights=None, layer="layer1", max_size=32,
                               device="cpu", engine="onnxruntime", cache=None).fit()
    ref = ext.transform(images)
    blob = pickle.dumps(ext)
    monkeypatch.setitem(ENGINES, "onnxruntime", ("skretrieval_no_such_engine", "onnx"))
    with pytest.raises(ImportError, match=r"pip install skretrieval\[onnx\]"):
        ConvFeatureExtractor("resnet18", weights=None, engine="onnxruntime").fit()
    clear_networks()  # a fresh process: no session built yet
    loaded = pickle.loads(blob)
    with pytest.warns(RuntimeWarning, match="running it with torch"):
        got = loaded.transform(images)
    assert loaded.engine_ == "torch"
    assert _compare(ref, got)[2] >= 0.9999


def test_models_store_recipes_not_engines(tmp_path):
    import joblib

    from skretrieval.persistence import load_pipeline, save_pipeline

    _require("onnxruntime")
    images = _images(SIZES[:2])
    ext = ConvFeatureExtractor("resnet18", weights=None, layer="layer1", max_size=32,
                               device="cpu", engine="onnxruntime", cache=None).fit()
    ref = ext.transform(images)
    assert ext._runners  # the session is a transient attribute
    assert "_runners" in ConvFeatureExtractor._state_spec.transient
    joblib.dump(ext, tmp_path / "ext.joblib")  # an ONNX Runtime session does not pickle
    assert "_runners" not in ext.__getstate__()
    save_pipeline(ext, tmp_path / "ext.zip")
    exports = sorted(Path(_engines.onnx_cache_dir()).glob("*.onnx"))
    assert exports
    for loaded in (joblib.load(tmp_path / "ext.joblib"), load_pipeline(tmp_path / "ext.zip")):
        assert getattr(loaded, "_runners", None) in (None, {})
        got = loaded.transform(images)
        assert loaded.engine_ == "onnxruntime" and loaded._runners
        assert _compare(ref, got)[1] < 1e-4
    # rebuilt from the ONNX cache: no new export
    assert sorted(Path(_engines.onnx_cache_dir()).glob("*.onnx")) == exports


def test_export_failure_names_the_layer(monkeypatch, tmp_path):
    _require("onnxruntime")
    monkeypatch.setenv("SKRETRIEVAL_ONNX_CACHE", str(tmp_path))
    monkeypatch.setattr(_engines, "OPSET", 99)  # an opset no exporter writes
    clear_networks()
    images = _images(SIZES[:1])
    kw = dict(weights=None, layer="layer1", max_size=32, device="cpu", cache=None)
    ext = ConvFeatureExtractor("resnet18", engine="onnxruntime", **kw).fit()
    with pytest.raises(EngineError, match=r"cannot export layer 'layer1' of resnet18"):
        ext.transform(images)
    auto = ConvFeatureExtractor("resnet18", engine="auto", **kw)
    monkeypatch.delenv("SKRETRIEVAL_ENGINE", raising=False)
    auto.fit()
    if auto.engine_ == "torch":
        pytest.skip("no engine installed")
    with pytest.warns(RuntimeWarning, match="cannot export layer 'layer1'.*with torch"):
        auto.transform(images)
    assert auto.engine_ == "torch"
    clear_networks()


def test_failed_export_is_an_engine_error_and_prints_nothing(monkeypatch, tmp_path, capfd):
    """torch's exporter dumps its whole graph on stdout when an operation has no
    ONNX form (antialiased bicubic resizing here, as in DINOv2's position embeddings)."""
    _require("onnxruntime")
    monkeypatch.setenv("SKRETRIEVAL_ONNX_CACHE", str(tmp_path))

    class Antialiased(torch.nn.Module):
        def forward(self, x):
            return {"out": torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bicubic",
                                                           antialias=True)}

    capfd.readouterr()
    with pytest.raises(EngineError, match="cannot export the resizer to ONNX"):
        engine_runner("onnxruntime", Antialiased().eval(), sample_size=32, what="the resizer")
    out = capfd.readouterr()
    assert "graph(" not in out.out and "graph(" not in out.err


def test_engine_runner_is_generic_and_built_once():
    """Any module mapping a batch to named outputs; one session per process."""
    _require("onnxruntime")

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)

        def forward(self, x):
            y = self.conv(x)
            return {"maps": y, "vector": y.mean((2, 3))}

    torch.manual_seed(0)
    net = Two().eval()
    runner = engine_runner("onnxruntime", net, sample_size=32)
    assert engine_runner("onnxruntime", net, sample_size=32) is runner
    x = torch.rand(2, 3, 45, 23)
    out = runner(x)
    with torch.inference_mode():
        ref = net(x)
    for k in ("maps", "vector"):
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-5)
    assert engine_runner("torch", net) is net


def test_bfloat16_autocast_keeps_descriptors():
    images = _images(SIZES[:3])
    kw = dict(weights=None, layer="layer2", max_size=48, device="cpu", cache=None)
    ref = ConvFeatureExtractor("resnet18", **kw).fit().transform(images)
    ext = ConvFeatureExtractor("resnet18", precision="bfloat16", **kw).fit()
    assert ext.engine_ == "torch"
    got = ext.transform(images)
    assert _compare(ref, got)[2] > 0.99
    assert ext._recipe() != ConvFeatureExtractor("resnet18", **kw).fit()._recipe()
    with pytest.raises(ValueError, match="autocast"):
        ConvFeatureExtractor("resnet18", precision="float16", engine="openvino", **kw).fit()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float16_path():
    images = _images(SIZES)
    kw = dict(weights=None, layer="layer2", max_size=64, cache=None)
    ref = ConvFeatureExtractor("resnet18", device="cpu", **kw).fit().transform(images)
    ext = ConvFeatureExtractor("resnet18", device="cuda", precision="float16", **kw).fit()
    assert ext.engine_ == "torch"
    assert _compare(ref, ext.transform(images))[2] > 0.999


def _holidays_photo(shared_data):
    folder = shared_data / "holidays-sample"
    photos = sorted(folder.rglob("*.jpg")) if folder.is_dir() else []
    if not photos:
        pytest.skip("no Holidays sample photos")
    return photos[0]


def test_large_jpeg_decoded_at_reduced_scale(shared_data, tmp_path):
    from PIL import Image

    photo = _holidays_photo(shared_data)
    full = load_image(photo)
    reduced = load_image(photo, reduce_to=512)
    longest = max(full.shape[:2])
    assert longest >= 2048  # full-resolution camera photos
    assert 512 <= max(reduced.shape[:2]) < 1024
    assert reduced.shape[0] / reduced.shape[1] == pytest.approx(full.shape[0] / full.shape[1],
                                                                rel=0.01)
    assert max(load_image(photo, reduce_to=longest // 2 + 1).shape[:2]) == longest
    # a PNG is decoded at full size
    Image.fromarray(full[:1200, :1600]).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", reduce_to=100).shape == (1200, 1600, 3)


def test_reduced_decoding_keeps_descriptors_and_strict_check(shared_data, mobilenet_weights,
                                                            tmp_path):
    from skretrieval import ImageLoadError

    photo = _holidays_photo(shared_data)
    ext = ConvFeatureExtractor(weights=mobilenet_weights, max_size=256, device="cpu",
                               cache=None).fit()
    reduced = ext.transform([str(photo)])
    full = ext.transform([load_image(photo)])  # an array: decoded at full size
    assert float(np.sum(_gem(reduced) * _gem(full))) > 0.99
    # a corrupt copy is still refused by the strict check
    data = bytearray(photo.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes(2000)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageLoadError, match="corrupt JPEG"):
            load_image(bad, reduce_to=256)
