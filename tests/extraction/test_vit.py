"""Transformer backbones: torchvision ViTs, timm and open_clip models as feature maps.

Random weights and tiny configurations only: nothing is downloaded.
"""

import os
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from torchvision.models.vision_transformer import VisionTransformer

from skretrieval import (ConvFeatureExtractor, GeMPooler, MACPooler, NearestNeighborRetriever,
                         PCAWhitener, RetrievalMAP, RetrievalNet, clear_memory_cache,
                         forward_pass_count, layer_names)
from skretrieval.extraction._backbones import WeightsNotFoundError, build_model, resolve_layer
from skretrieval.extraction._engines import EngineError, engine_runner
from skretrieval.extraction._tokens import (TorchvisionViT, interpolate_pos_embed,
                                            map_to_tokens, patch_multiple, tokens_to_map)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMM_TINY = "timm:vit_tiny_patch16_224"


def _tiny_vit(image_size=32, patch=8, layers=3):
    torch.manual_seed(0)
    return VisionTransformer(image_size=image_size, patch_size=patch, num_layers=layers,
                             num_heads=2, hidden_dim=16, mlp_dim=32).eval()


def _images(n=3, shape=(48, 80), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def _block_outputs(blocks, run):
    """The outputs of every module of ``blocks`` while ``run()`` runs."""
    got = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: got.__setitem__(k, o))
             for k, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return got


# ---------------------------------------------------------------------------
# torchvision VisionTransformer
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("size, grid", [((32, 32), (4, 4)), ((48, 80), (6, 10)),
                                        ((45, 83), (6, 10)), ((3, 200), (1, 25))])
def test_map_shapes_square_and_non_square(size, grid):
    trunk = TorchvisionViT(_tiny_vit()).cut(("block0", "block2", "norm", "block1.cls"))
    with torch.no_grad():
        out = trunk(torch.rand(2, 3, *size))
    for node in ("block0", "block2", "norm"):
        assert tuple(out[node].shape) == (2, 16, *grid)
    assert tuple(out["block1.cls"].shape) == (2, 16, 1, 1)
    # the documented rule: each side to the nearest multiple of the patch size
    assert (patch_multiple(size[0], 8) // 8, patch_multiple(size[1], 8) // 8) == grid


def test_tokens_map_tokens_round_trip_equals_the_models_block_outputs():
    vit = _tiny_vit()
    x = torch.rand(2, 3, 32, 32)
    own = _block_outputs(vit.encoder.layers, lambda: vit(x))
    trunk = TorchvisionViT(vit).cut(tuple(f"block{k}" for k in range(3))
                                    + tuple(f"block{k}.cls" for k in range(3)))
    with torch.no_grad():
        out = trunk(x)
    for k in range(3):
        tokens = torch.cat([out[f"block{k}.cls"][:, :, 0, 0][:, None],
                            map_to_tokens(out[f"block{k}"])], dim=1)
        torch.testing.assert_close(tokens, own[k], rtol=1e-5, atol=1e-5)
        # and tokens -> map is the inverse
        torch.testing.assert_close(tokens_to_map(own[k][:, 1:], (4, 4)), out[f"block{k}"],
                                   rtol=1e-5, atol=1e-5)


def test_class_token_equals_the_models():
    vit = _tiny_vit()
    x = torch.rand(2, 3, 32, 32)
    seen = {}
    vit.heads.register_forward_hook(lambda m, i, o: seen.setdefault("cls", i[0]))
    with torch.no_grad():
        vit(x)
        out = TorchvisionViT(vit).cut("norm.cls")(x)["out"]
    torch.testing.assert_close(out[:, :, 0, 0], seen["cls"], rtol=1e-5, atol=1e-5)


def test_position_embeddings_are_kept_at_the_native_grid_and_interpolated_elsewhere():
    pos = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pos, 1, (4, 4)) is pos
    wide = interpolate_pos_embed(pos, 1, (3, 7))
    assert wide.shape == (1, 1 + 21, 8)
    torch.testing.assert_close(wide[:, :1], pos[:, :1])
    # a constant grid stays constant
    flat = torch.cat([pos[:, :1], torch.ones(1, 16, 8)], dim=1)
    torch.testing.assert_close(interpolate_pos_embed(flat, 1, (5, 9))[:, 1:],
                               torch.ones(1, 45, 8))


def test_torchvision_vit_layers_listed_resolved_and_extracted():
    names = layer_names("vit_b_32")
    assert names[:2] == ["block0", "block1"] and "norm.cls" in names
    assert "encoder_layer_11" in names and "encoder_layer_11.cls" in names
    model, mean, std = build_model("vit_b_32", None)
    assert resolve_layer("vit_b_32", model, None) == ("norm", "norm")
    assert resolve_layer("vit_b_32", model, "encoder_layer_11.cls")[0] == "block11.cls"
    assert resolve_layer("vit_b_32", model, -1)[0] == "block11"
    with pytest.raises(ValueError, match="unknown layer 'encoder_layer_12'"):
        resolve_layer("vit_b_32", model, "encoder_layer_12")
    ext = ConvFeatureExtractor("vit_b_32", weights=None, layer="encoder_layer_5", max_size=64,
                               device="cpu").fit()
    maps = ext.transform(_images(2))
    assert maps[0][0].shape == (768, 1, 2)  # 40 x 64 -> 32 x 64 -> 1 x 2 cells of 32 px
    assert ext.stride_ == 32 and ext.n_channels_ == 768 and not ext.fully_connected_


@pytest.mark.slow  # writes the 350 MB of vit_b_32
def test_torchvision_vit_weights_file(tmp_path):
    model, _, _ = build_model("vit_b_32", None)
    state = {k: v + 0.01 for k, v in model.model.state_dict().items()}
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    loaded, _, _ = build_model("vit_b_32", str(path))
    torch.testing.assert_close(loaded.model.conv_proj.weight, state["conv_proj.weight"])
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "vit.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded, _, _ = build_model("vit_b_32", str(path))
    torch.testing.assert_close(loaded.model.encoder.ln.bias, state["encoder.ln.bias"])


def test_no_class_activation_maps_for_transformers():
    with pytest.raises(ValueError, match="no class activation maps"):
        ConvFeatureExtractor("vit_b_32", weights=None, cams=2, device="cpu").fit()


# ---------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------
def test_timm_blocks_and_class_token_equal_the_models_at_any_size():
    pytest.importorskip("timm")
    model, mean, std = build_model(TIMM_TINY, None)
    assert (mean, std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # its pretrained config
    timm_model = model.model
    x = torch.rand(1, 3, 48, 80)  # not the 224 x 224 it was made for
    own = _block_outputs(timm_model.blocks, lambda: timm_model.forward_features(x))
    with torch.no_grad():
        features = timm_model.forward_features(x)
        out = model.cut(("block4", "block11", "norm", "norm.cls"))(x)
    for k, node in ((4, "block4"), (11, "block11")):
        torch.testing.assert_close(map_to_tokens(out[node]), own[k][:, 1:], rtol=1e-5,
                                   atol=1e-5)
    torch.testing.assert_close(out["norm.cls"][:, :, 0, 0], features[:, 0], rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(map_to_tokens(out["norm"]), features[:, 1:], rtol=1e-5,
                               atol=1e-5)
    assert out["norm"].shape == (1, 192, 3, 5)


def test_engines_run_a_vit_or_auto_falls_back_to_torch_saying_why(monkeypatch, tmp_path):
    """A ViT through the engine layer: ONNX Runtime gives torch's maps, or
    ``engine="auto"`` warns why it cannot and runs torch (an explicit engine raises)."""
    pytest.importorskip("timm")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SKRETRIEVAL_ONNX_CACHE", str(tmp_path))
    monkeypatch.delenv("SKRETRIEVAL_ENGINE", raising=False)
    images = _images(2, (40, 72)) + _images(1, (64, 48), seed=1)
    kw = dict(weights=None, layer="block2", max_size=64, device="cpu", cache=None)
    ref = ConvFeatureExtractor(TIMM_TINY, engine="torch", **kw).fit().transform(images)
    auto = ConvFeatureExtractor(TIMM_TINY, engine="auto", **kw).fit()
    assert auto.engine_ == "onnxruntime"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = auto.transform(images)
    told = [str(w.message) for w in caught if "running it with torch" in str(w.message)]
    if auto.engine_ == "torch":
        assert told and "layer 'block2' of timm:vit_tiny_patch16_224" in told[0]
        with pytest.raises(EngineError, match="block2"):
            ConvFeatureExtractor(TIMM_TINY, engine="onnxruntime", **kw).fit().transform(images)
    else:
        assert not told
    for a, b in zip(maps, ref):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-3, atol=1e-3 * np.abs(b[0]).max())


@pytest.mark.parametrize("batch_first", [True, False])
def test_torchvision_vit_exports_with_dynamic_sizes(monkeypatch, tmp_path, batch_first):
    """One ONNX export serves every input size and batch (the trace records the
    patch-multiple resize, the position-embedding grid and the attention's
    sequence length), equal to torch's maps."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SKRETRIEVAL_ONNX_CACHE", str(tmp_path))
    vit = _tiny_vit()
    for layer in vit.encoder.layers:  # open_clip's towers may keep (L, N, E) sequences
        layer.self_attention.batch_first = batch_first
    if not batch_first:
        class SeqFirst(TorchvisionViT):
            def run_block(self, block, tokens):
                return block(tokens.transpose(0, 1)).transpose(0, 1)
        backbone = SeqFirst(vit)
    else:
        backbone = TorchvisionViT(vit)
    trunk = backbone.cut(("block1", "norm", "norm.cls"))
    runner = engine_runner("onnxruntime", trunk, sample_size=32, what="the tiny ViT")
    assert runner is not trunk
    for shape in [(32, 32), (45, 83), (64, 40), (8, 8), (3, 200)]:
        x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = trunk(x)
        got = runner(x)
        for name, w in want.items():
            assert got[name].shape == w.shape
            torch.testing.assert_close(got[name], w, rtol=1e-4, atol=1e-4)


def test_cuts_of_one_vit_get_their_own_exports(monkeypatch, tmp_path):
    """The ONNX cache is keyed by what a cut computes: "norm" and "norm.cls" share
    every weight and output name, not their graph."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SKRETRIEVAL_ONNX_CACHE", str(tmp_path))
    backbone = TorchvisionViT(_tiny_vit())
    x = torch.rand(1, 3, 32, 48)
    for node, shape in (("norm", (1, 16, 4, 6)), ("norm.cls", (1, 16, 1, 1))):
        runner = engine_runner("onnxruntime", backbone.cut(node), sample_size=32)
        assert tuple(runner(x)["out"].shape) == shape
    assert len(list(tmp_path.glob("*.onnx"))) == 2


def test_timm_registers_are_split_off():
    pytest.importorskip("timm")
    import timm

    # DINOv2 with 4 registers, shrunk to 2 blocks of width 48
    name = "vit_small_patch14_reg4_dinov2"
    torch.manual_seed(0)
    vit = timm.create_model(name, pretrained=False, dynamic_img_size=True, depth=2,
                            embed_dim=48, num_heads=2, img_size=56).eval()
    from skretrieval.extraction._hubs import TimmViT

    wrapped = TimmViT(vit, name)
    assert wrapped.n_prefix == 5 and wrapped.patch_size == (14, 14)
    x = torch.rand(1, 3, 42, 70)
    with torch.no_grad():
        features = vit.forward_features(x)
        out = wrapped.cut(("norm", "norm.cls"))(x)
    assert out["norm"].shape == (1, 48, 3, 5)
    torch.testing.assert_close(map_to_tokens(out["norm"]), features[:, 5:], rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(out["norm.cls"][:, :, 0, 0], features[:, 0], rtol=1e-5,
                               atol=1e-5)


def test_timm_convolutional_models_give_their_stages():
    pytest.importorskip("timm")
    ext = ConvFeatureExtractor("timm:convnext_atto", weights=None, max_size=64,
                               device="cpu").fit()
    assert ext.layer_node_ == "stages.3"
    assert ext.transform(_images(1))[0][0].shape == (320, 1, 2)
    assert layer_names("timm:convnext_atto")[:4] == [f"stages.{k}" for k in range(4)]
    ext2 = ConvFeatureExtractor("timm:convnext_atto", weights=None, layer="stage1",
                                max_size=64, device="cpu").fit()
    assert ext2.transform(_images(1))[0][0].shape == (80, 4, 8)  # 38 x 64 px


def test_block_grid_from_one_pass_per_image_and_size():
    """GridSearchCV over blocks and sizes: one forward pass per image and size."""
    pytest.importorskip("timm")
    clear_memory_cache()
    rng = np.random.default_rng(0)
    images, labels = [], []
    for obj in range(3):
        base = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        for _ in range(4):
            noisy = base.astype(int) + rng.integers(-10, 10, base.shape)
            images.append(np.clip(noisy, 0, 255).astype(np.uint8))
            labels.append(obj)
    layers = ["blocks.3", "blocks.7", "norm.cls"]
    pipe = make_pipeline(
        ConvFeatureExtractor(TIMM_TINY, weights=None, max_size=64, device="cpu",
                             cache="memory", cache_layers=layers),
        MACPooler(), PCAWhitener(n_components=4), NearestNeighborRetriever(n_neighbors=5))
    grid = GridSearchCV(pipe, {"convfeatureextractor__layer": layers,
                               "convfeatureextractor__max_size": [48, 64]},
                        scoring=RetrievalMAP(), cv=StratifiedKFold(2, shuffle=True,
                                                                   random_state=0))
    before = forward_pass_count()
    grid.fit(images, labels)
    assert forward_pass_count() - before == 2 * len(images)
    assert len(grid.cv_results_["params"]) == 6 and 0 < grid.best_score_ <= 1
    # the cached maps are those the layer computes on its own
    solo = ConvFeatureExtractor(TIMM_TINY, weights=None, max_size=48, device="cpu",
                                layer="blocks.7").fit()
    cached = pipe[0].set_params(layer="blocks.7", max_size=48).fit()
    before = forward_pass_count()
    got = cached.transform(images[:2])
    assert forward_pass_count() == before
    for a, b in zip(solo.transform(images[:2]), got):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-4)


def test_timm_persistence_is_a_recipe(tmp_path):
    pytest.importorskip("timm")
    from skretrieval.persistence import load_pipeline, save_pipeline

    images = _images(4)
    pipe = make_pipeline(ConvFeatureExtractor(TIMM_TINY, weights=None, layer="blocks.5",
                                              max_size=64, device="cpu"),
                         GeMPooler(), NearestNeighborRetriever(n_neighbors=2))
    pipe.fit(images, [0, 0, 1, 1])
    expected = pipe[:-1].transform(images)
    blob = pickle.dumps(pipe[0])
    assert b"TokenTrunk" not in blob and b"VisionTransformer" not in blob
    joblib.dump(pipe, tmp_path / "p.joblib")
    np.testing.assert_allclose(joblib.load(tmp_path / "p.joblib")[:-1].transform(images),
                               expected, rtol=1e-5, atol=1e-6)
    save_pipeline(pipe, tmp_path / "saved")
    loaded = load_pipeline(tmp_path / "saved")
    np.testing.assert_allclose(loaded[:-1].transform(images), expected, rtol=1e-5, atol=1e-6)


def test_timm_weights_file_and_offline_failure(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    import huggingface_hub.constants
    from safetensors.torch import save_file

    model, _, _ = build_model(TIMM_TINY, None)
    state = {k: (v + 0.5).contiguous() for k, v in model.model.state_dict().items()}
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    ext = ConvFeatureExtractor(TIMM_TINY, weights=str(path), layer="block1", max_size=32,
                               device="cpu").fit()
    torch.testing.assert_close(ext.trunk_.backbone.model.blocks[0].norm1.weight,
                               state["blocks.0.norm1.weight"])
    # pretrained weights absent from every local place, and no network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SKRETRIEVAL_WEIGHTS_DIR", str(tmp_path / "nothing"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError) as err:
        build_model(TIMM_TINY, "pretrained")
    message = str(err.value)
    assert "model.safetensors" in message and str(tmp_path / "nothing") in message
    assert "Hugging Face cache" in message
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET1K_V2'"):
        build_model(TIMM_TINY, "IMAGENET1K_V2")


def test_timm_vit_fine_tuned_with_a_gem_head():
    pytest.importorskip("timm")
    from skretrieval import RetrievalNetTrainer

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(8)]
    labels = np.repeat([0, 1], 4)
    net = RetrievalNet(TIMM_TINY, None, layer="blocks.2", pooling="gem")
    assert net(torch.rand(2, 3, 32, 48)).shape == (2, 192)
    trainer = RetrievalNetTrainer(TIMM_TINY, weights=None, layer="blocks.2", image_size=32,
                                  batch_size=8, images_per_label=4, n_negatives=1,
                                  n_epochs=1, learning_rate=1e-3, random_state=0)
    trainer.fit(images, labels)
    before = [p.clone() for p in net.trunk.parameters()][:3]
    after = list(trainer.network_.trunk.parameters())[:3]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # it trained
    d = trainer.transform(images)
    assert d.shape == (8, 192)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, rtol=1e-5)
    d2 = pickle.loads(pickle.dumps(trainer)).transform(images)
    np.testing.assert_allclose(d2, d, rtol=1e-4, atol=1e-5)


def test_cli_backbone_option(tmp_path, capsys):
    pytest.importorskip("timm")
    from PIL import Image

    from skretrieval.cli import main

    folder = tmp_path / "db"
    folder.mkdir()
    for i, img in enumerate(_images(4)):
        Image.fromarray(img).save(folder / f"{i}.png")
    out = tmp_path / "index.joblib"
    assert main(["index", str(folder), "-o", str(out), "--backbone", TIMM_TINY, "--weights",
                 "none", "--layer", "norm.cls", "--pooler", "mac", "--max-size", "32",
                 "--device", "cpu"]) == 0
    assert "192 dimensions" in capsys.readouterr().out


def test_missing_extra_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match=r"skretrieval\[open_clip\]"):
        build_model("open_clip:ViT-B-32", None)


# ---------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    import json

    path = tmp_path_factory.mktemp("clipcfg") / "skr-tiny-vit.json"
    path.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                       "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                     "layers": 1}}))
    open_clip.add_model_config(path)
    return "open_clip:skr-tiny-vit"


def test_open_clip_tower_maps_and_class_token(tiny_clip, tmp_path):
    model, mean, std = build_model(tiny_clip, None)
    assert mean[0] == pytest.approx(0.48145466)
    visual = model.model
    x = torch.rand(2, 3, 32, 32)
    own = _block_outputs(visual.transformer.resblocks, lambda: visual(x))
    with torch.no_grad():
        embedding = visual(x)
        out = model.cut(("block0", "block1.cls", "norm.cls"))(x)
    torch.testing.assert_close(map_to_tokens(out["block0"]), own[0][:, 1:], rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(out["block1.cls"][:, :, 0, 0], own[1][:, 0], rtol=1e-5,
                               atol=1e-5)
    # the CLIP embedding is the normalised class token, projected
    torch.testing.assert_close(out["norm.cls"][:, :, 0, 0] @ visual.proj, embedding,
                               rtol=1e-5, atol=1e-5)
    assert "transformer.resblocks.1" in layer_names(tiny_clip)
    ext = ConvFeatureExtractor(tiny_clip, weights=None, layer="transformer.resblocks.1",
                               max_size=64, device="cpu").fit()
    assert ext.transform(_images(1))[0][0].shape == (32, 5, 8)
    # a local weights file of the whole CLIP model
    import open_clip

    clip = open_clip.create_model("skr-tiny-vit")
    state = {k: v + 0.25 for k, v in clip.state_dict().items()}
    torch.save(state, tmp_path / "clip.pth")
    loaded, _, _ = build_model(tiny_clip, str(tmp_path / "clip.pth"))
    torch.testing.assert_close(loaded.model.conv1.weight, state["visual.conv1.weight"])
    with pytest.raises(ValueError, match="need a tag"):
        build_model(tiny_clip, "pretrained")


def test_open_clip_tower_runs_on_onnx_runtime(tiny_clip, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SKRETRIEVAL_ONNX_CACHE", str(tmp_path))
    images = _images(2, (40, 72)) + _images(1, (64, 48), seed=1)
    kw = dict(weights=None, layer="block1", max_size=64, device="cpu", cache=None)
    ref = ConvFeatureExtractor(tiny_clip, engine="torch", **kw).fit().transform(images)
    ext = ConvFeatureExtractor(tiny_clip, engine="onnxruntime", **kw).fit()
    maps = ext.transform(images)
    assert ext.engine_ == "onnxruntime"
    for a, b in zip(maps, ref):
        assert a[0].shape == b[0].shape
        np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-4 * np.abs(b[0]).max())


def test_weights_file_missing_is_named():
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        ConvFeatureExtractor(TIMM_TINY, weights=os.path.join("no", "such.safetensors")).fit()
