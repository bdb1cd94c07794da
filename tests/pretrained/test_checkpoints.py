"""load_checkpoint on synthetic checkpoints in the authors' layouts, against their forward passes."""

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from sklearn.decomposition import PCA

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _reference as R  # noqa: E402

from skretrieval.persistence import load_pipeline, save_pipeline  # noqa: E402
from skretrieval import Crop  # noqa: E402
from skretrieval.pretrained import (  # noqa: E402
    CheckpointFormatError,
    MultiScaleHead,
    NativeScale,
    load_checkpoint,
    native_size,
    read_recipe,
)

MAX = 64  # longest image side: the reference's inputs are the images as they are
SS, MS = (1.0,), (1.0, 2 ** -0.5, 0.5)
MS_UP = (1.0, 2 ** 0.5, 2 ** -0.5)


def cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_same_descriptors(X, ref):
    assert X.shape == ref.shape
    assert cosines(X, ref).min() >= 0.9999, cosines(X, ref)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return ([rng.integers(0, 256, (MAX, 48, 3), dtype=np.uint8) for _ in range(3)]
            + [rng.integers(0, 256, (40, MAX, 3), dtype=np.uint8)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


def load(path, folder, **kw):
    kw.setdefault("max_size", MAX)
    return load_checkpoint(path, cache=None, cache_dir=folder / "converted", **kw)


# ---------------------------------------------------------------------------
# cirtorch
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cirtorch_gem(folder):
    """retrievalSfM120k-*-gem: GeM with a learned p, Lw stored in meta (ss and ms)."""
    net = R.cirtorch_net("resnet18", pooling="gem", p=2.5, seed=1)
    lw = {"retrieval-SfM-120k": {"ss": R.random_lw(512, 1), "ms": R.random_lw(512, 2)}}
    path = folder / "retrievalSfM120k-resnet18-gem.pth"
    R.save_cirtorch(net, path, Lw=lw)
    return net, lw["retrieval-SfM-120k"], path


@pytest.mark.parametrize("preset", ["ss", "ms"])
def test_cirtorch_gem_with_learned_whitening(cirtorch_gem, folder, images, preset):
    net, lw, path = cirtorch_gem
    pipe, recipe = load(path, folder, preset=preset, return_recipe=True)
    assert recipe.family == "cirtorch" and recipe.whitening_name == "retrieval-SfM-120k"
    step = pipe.steps[1][1]
    assert (step if preset == "ss" else step.pooler).p == pytest.approx(2.5)  # learned p
    scales = SS if preset == "ss" else MS
    assert pipe[0].scales == scales
    # examples/test.py: msp = p (gem, no whitening layer); the ss / ms Lw
    ref = R.cirtorch_descriptors(net, images, scales=scales, msp=2.5, Lw=lw[preset],
                                 max_size=MAX)
    assert_same_descriptors(pipe[:-1].transform(images), ref)


def test_cirtorch_without_stored_whitening(cirtorch_gem, folder, images):
    net, _, path = cirtorch_gem
    pipe = load(path, folder, preset="ss", whitening=None)
    assert [name for name, _ in pipe.steps] == ["extractor", "pooler", "retriever"]
    assert_same_descriptors(pipe[:-1].transform(images), R.cirtorch_descriptors(net, images))
    with pytest.raises(ValueError, match="retrieval-SfM-30k.*retrieval-SfM-120k"):
        load(path, folder, whitening="retrieval-SfM-30k")


def test_cirtorch_whitening_layer(folder, images, tmp_path, preset="ms"):
    """gl18-tl-*-gem-w / rSfM120k-tl-*-gem-w: a whiten layer in the state dict, run
    per scale (single scale, the same layer is the projection step of naver's test)."""
    net = R.cirtorch_net("resnet18", pooling="gem", whitening=True, p=3.2, seed=2)
    path = folder / "gl18-tl-resnet18-gem-w.pth"
    R.save_cirtorch(net, path)
    pipe = load(path, folder, preset=preset)
    # examples/test_e2e.py: [1, 2**(1/2), 1/2**(1/2)], msp = 1
    scales = SS if preset == "ss" else MS_UP
    assert pipe[0].scales == scales
    ref = R.cirtorch_descriptors(net, images, scales=scales, msp=1.0, max_size=MAX)
    X = pipe[:-1].transform(images)
    assert_same_descriptors(X, ref)
    # the multi-scale head (and its frozen projection) in the pickle-free format
    pipe.fit(images, np.arange(len(images)))
    save_pipeline(pipe, tmp_path / "ms.zip")
    with pytest.warns(UserWarning, match="weights"):
        loaded = load_pipeline(tmp_path / "ms.zip")
    assert isinstance(loaded.steps[1][1], MultiScaleHead)
    np.testing.assert_allclose(loaded[:-1].transform(images), X, atol=1e-6)


def test_cirtorch_alexnet_mac(folder):
    """features.<i> of a vgg-like network (the last max pooling dropped), MAC."""
    net = R.cirtorch_net("alexnet", pooling="mac", seed=3)
    path = folder / "alexnet-mac.pth"
    R.save_cirtorch(net, path)
    pipe = load(path, folder, max_size=96, preset="auto")
    assert pipe[0].layer_node_ == "features.11"
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (96, 80, 3), dtype=np.uint8) for _ in range(2)]
    # auto is cirtorch's multi-scale protocol (msp 1 for MAC)
    ref = R.cirtorch_descriptors(net, images, scales=MS, msp=1.0, max_size=96)
    assert_same_descriptors(pipe[:-1].transform(images), ref)


# ---------------------------------------------------------------------------
# naver deep-image-retrieval
# ---------------------------------------------------------------------------
class OldPCA:
    """Pickled as scikit-learn < 0.22 named PCA: ``sklearn.decomposition.pca.PCA``."""


OldPCA.__module__, OldPCA.__qualname__, OldPCA.__name__ = (
    "sklearn.decomposition.pca", "PCA", "PCA")


@pytest.fixture(scope="module")
def naver(folder, images):
    net = R.ResNetRMAC("resnet18", out_dim=128, seed=4)
    rng = np.random.default_rng(2)
    center = R.naver_descriptors(net, images).mean(axis=0)
    pca = PCA(n_components=16, whiten=True).fit(center + 0.05 * rng.standard_normal((40, 128)))
    path = folder / "Resnet18-AP-GeM.pt"
    module = type(sys)("sklearn.decomposition.pca")
    module.PCA = OldPCA
    old = OldPCA.__new__(OldPCA)
    old.__dict__.update(pca.__dict__)
    sys.modules["sklearn.decomposition.pca"] = module
    try:
        R.save_naver(net, path, out_dim=128, pca=old)
    finally:
        sys.modules.pop("sklearn.decomposition.pca")
    return net, pca, path


@pytest.mark.parametrize("preset", ["ss", "ms"])
def test_naver_gem_fc_pca(naver, folder, images, preset):
    net, pca, path = naver
    pipe, recipe = load(path, folder, preset=preset, return_recipe=True)
    assert recipe.family == "naver" and recipe.whitening_name == "Landmarks_clean"
    scales = SS if preset == "ss" else MS
    ref = R.naver_descriptors(net, images, scales=scales, max_size=MAX, pca=pca, whitenp=0.25)
    assert_same_descriptors(pipe[:-1].transform(images), ref)
    if preset == "ms":
        assert isinstance(pipe.steps[1][1], MultiScaleHead) and pipe.steps[1][1].power == 3


def test_naver_defaults_to_single_scale_and_current_pca(folder, images):
    net = R.ResNetRMAC("resnet18", out_dim=64, norm_features=True, seed=5)
    pca = PCA(n_components=8, whiten=True).fit(np.random.default_rng(3).standard_normal((20, 64)))
    path = folder / "norm-features.pt"
    R.save_naver(net, path, out_dim=64, pca=pca, module_prefix=False)  # sklearn's own PCA
    pipe = load(path, folder)
    assert pipe[0].scales == SS
    ref = R.naver_descriptors(net, images, pca=pca, whitenp=0.25)
    assert_same_descriptors(pipe[:-1].transform(images), ref)


# ---------------------------------------------------------------------------
# plain state dicts
# ---------------------------------------------------------------------------
def test_plain_torchvision_state_dict(folder, images):
    model = R.randomise(torchvision.models.resnet18(weights=None), 6).eval()
    path = folder / "resnet18-plain.pth"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    pipe, recipe = load(path, folder, preset="ss", return_recipe=True)
    assert recipe.backbone == "resnet18"
    trunk = torch.nn.Sequential(*list(model.children())[:-2])
    with torch.no_grad():
        ref = torch.cat([R.l2n(R.GeM(p=3)(trunk(R.to_input(a)))).flatten(1) for a in images])
    assert_same_descriptors(pipe[:-1].transform(images), ref.numpy())


def test_plain_timm_state_dict(folder, images):
    timm = pytest.importorskip("timm")
    model = R.randomise(timm.create_model("resnet18", pretrained=False), 8).eval()
    path = folder / "timm-resnet18.pth"
    torch.save(model.state_dict(), path)
    pipe = load(path, folder, backbone="timm:resnet18", preset="ss")
    assert pipe[0].backbone == "timm:resnet18" and pipe[0].weights == str(path)
    with torch.no_grad():
        ref = torch.cat([R.l2n(R.GeM(p=3)(model.forward_features(R.to_input(a)))).flatten(1)
                         for a in images])
    assert_same_descriptors(pipe[:-1].transform(images), ref.numpy())


# ---------------------------------------------------------------------------
# end to end and errors
# ---------------------------------------------------------------------------
def test_pipeline_indexes_searches_and_saves(cirtorch_gem, folder, images, tmp_path):
    pipe = load(cirtorch_gem[2], folder, preset="ss")
    pipe.fit(images, np.arange(len(images)))
    X = pipe[:-1].transform(images)
    dist, ind = pipe[-1].kneighbors(X, n_neighbors=1)
    np.testing.assert_array_equal(ind[:, 0], np.arange(len(images)))
    # refitting keeps the stored whitening (frozen)
    assert_same_descriptors(pipe.fit(images[:2], [0, 1])[:-1].transform(images), X)
    # the pickle-free format keeps every step (the network in the file)
    save_pipeline(pipe, tmp_path / "model.zip")
    with pytest.warns(UserWarning, match="weights"):
        loaded = load_pipeline(tmp_path / "model.zip")
    np.testing.assert_allclose(loaded[:-1].transform(images), X, atol=1e-6)


def test_native_scale_keeps_crops_at_their_image_scale(cirtorch_gem, folder):
    """cirtorch's ImagesFromList: a crop scaled by its image's factor, nothing enlarged."""
    net, _, path = cirtorch_gem
    pipe = load(path, folder, preset="ss", whitening=None)
    rng = np.random.default_rng(5)
    full = rng.integers(0, 256, (MAX, 48, 3), dtype=np.uint8)  # its factor is 1
    small = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (2 * MAX, 96, 3), dtype=np.uint8)
    crop = Crop(full, box=(8.5, 4, 40, 36.2))  # 32 x 33 px after rounding
    assert native_size(crop, MAX) == 33 and native_size(small, MAX) == 40
    assert native_size(large, MAX) == MAX
    X = NativeScale(pipe[:-1]).transform([crop, small, large])
    ref = R.cirtorch_descriptors(net, [full[4:37, 8:40], small, R.pil_scaled(large, MAX)])
    assert_same_descriptors(X, ref)
    assert pipe[0].max_size == MAX  # the pipeline itself is unchanged


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("content, words", [
    (b"not a checkpoint at all", ["is not a torch checkpoint"]),
    ({"epoch": 3, "optimizer": {}}, ["no checkpoint format", "'epoch'", "'optimizer'"]),
    ({"meta": {"architecture": "resnet18"}, "state_dict": {}},
     ["cirtorch", "lacks ['pooling']"]),
    ({"model_options": {"out_dim": 3}, "state_dict": {}}, ["deep-image-retrieval", "'arch'"]),
    ({"meta": {"architecture": "resnet18", "pooling": "gem", "regional": True},
      "state_dict": {"features.0.weight": torch.zeros(1)}}, ["regional pooling"]),
    ({"meta": {"architecture": "inception_v3", "pooling": "gem"}, "state_dict": {}},
     ["'inception_v3'", "resnet101"]),
    ({"model_options": {"arch": "resnet101_fpn_rmac"}, "state_dict": {}}, ["FPN"]),
    ({"conv.weight": torch.zeros(2, 3), "head.bias": torch.zeros(2)},
     ["state dict of 2 tensors", "backbone="]),
])
def test_unknown_or_unsupported_files_are_named(folder, content, words):
    path = folder / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointFormatError) as info:
        read_recipe(path)
    for word in words:
        assert word in str(info.value)
    assert "bad.pth" in str(info.value)


def test_pickled_code_is_refused_not_run(folder, capsys):
    path = folder / "payload.pth"
    torch.save({"meta": {"architecture": "resnet18", "pooling": "gem"},
                "state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(CheckpointFormatError, match="builtins.print|print"):
        read_recipe(path)
    assert "unpickled!" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        read_recipe(folder / "missing.pth")


def test_missing_gem_p_and_stray_keys(cirtorch_gem, folder):
    state = dict(R.cirtorch_net("resnet18", seed=1).state_dict())
    meta = {"architecture": "resnet18", "pooling": "gem"}
    path = folder / "bad-gem.pth"
    torch.save({"meta": meta, "state_dict": {k: v for k, v in state.items() if k != "pool.p"}},
               path)
    with pytest.raises(CheckpointFormatError, match="'pool.p'"):
        read_recipe(path)
    torch.save({"meta": meta, "state_dict": {**state, "extra.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointFormatError, match="extra.weight"):
        read_recipe(path)
    pickle.dumps(meta)  # plain data only
