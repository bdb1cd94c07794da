"""Backbones of timm and open_clip: ``"timm:<model>"``, ``"open_clip:<arch>/<tag>"``.

* ``backbone="timm:<model name>"`` (extra ``skretrieval[timm]``): any timm
  model whose features are maps (ConvNeXt, EfficientNet, RegNet...: the
  stages of ``feature_info``, names ``"stages.3"`` or ``"stage3"``) or
  tokens (ViT, DeiT, DINOv2 ``vit_small_patch14_dinov2.lvd142m`` and its
  register variants, the CLIP and SigLIP towers of timm, EVA...: the layers
  of :class:`~._tokens.TokenBackbone`, prefix tokens and registers split
  off with ``num_prefix_tokens``), built with ``dynamic_img_size=True`` so
  that any input size works.  Normalisation: the model's pretrained config.
* ``backbone="open_clip:<arch>/<pretrained tag>"`` (extra
  ``skretrieval[open_clip]``, e.g. ``"open_clip:ViT-B-32/laion2b_s34b_b79k"``):
  the image tower of a CLIP model; ViT towers give the token layers (names
  ``"transformer.resblocks.<k>"`` too), normalisation from the tag's config.

**Weights.**  ``weights=None``: random (seed 0, reproducible); a path to a
``.safetensors`` / ``.pth`` / ``.bin`` file: loaded by the library's own
loader (which converts original checkpoints, e.g. Meta's DINOv2 ``.pth``);
``"pretrained"`` (also ``"DEFAULT"`` and the extractor's default
``"IMAGENET1K_V1"``): the weights the name designates, looked up first in
the Hugging Face cache (``$HF_HUB_CACHE``), in torch's hub checkpoints, in
``$SKRETRIEVAL_WEIGHTS_DIR`` (and open_clip's ``~/.cache/clip``), then
downloaded by the library; a failure raises
:class:`~._weightfiles.WeightsNotFoundError` naming the files and places.
Set ``HF_HUB_OFFLINE=1`` on a machine without network: the Hugging Face
client then fails at once instead of retrying.
"""

from __future__ import annotations

import os
import warnings

import torch

from ._tokens import MapBackbone, SequentialBlocksViT, TokenBackbone, interpolate_pos_embed
from ._tokens import map_to_tokens
from ._weightfiles import (file_weights_id, find_file, is_weights_path, not_found,
                           weights_search_dirs)

__all__ = ["HUB_PREFIXES", "build_hub_model", "describe_hub_weights", "hub_family"]

HUB_PREFIXES = ("timm:", "open_clip:")
#: Weights names meaning "the pretrained weights the backbone name designates".
PRETRAINED_NAMES = ("pretrained", "DEFAULT", "IMAGENET1K_V1")


def hub_family(backbone):
    """``"timm"``, ``"open_clip"`` or None (a torchvision name)."""
    if isinstance(backbone, str):
        for prefix in HUB_PREFIXES:
            if backbone.startswith(prefix):
                return prefix[:-1]
    return None


def _import(module, extra):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"backbone {extra}:... needs the {module} package: "
                          f"pip install skretrieval[{extra}] ({exc})") from None


def _check_weights(backbone, weights):
    if weights is None or is_weights_path(weights) or weights in PRETRAINED_NAMES:
        return
    raise ValueError(
        f"unknown weights {weights!r} for backbone {backbone!r}: give None (random), "
        f"'pretrained' (the weights the name designates) or a path to a weights file")


def describe_hub_weights(backbone, weights):
    """A string that identifies the weights (for cache keys and messages)."""
    _check_weights(backbone, weights)
    if weights is None:
        return "random"
    if is_weights_path(weights):
        return file_weights_id(weights)
    return f"{backbone}:pretrained"


def build_hub_model(backbone, weights=None):
    """``(model, mean, std)`` for a ``timm:`` or ``open_clip:`` backbone, in eval
    mode, frozen; ``model`` is a :class:`~._tokens.MapBackbone`."""
    _check_weights(backbone, weights)
    name = backbone.split(":", 1)[1]
    if not name:
        raise ValueError(f"backbone {backbone!r} names no model")
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(0)
        if hub_family(backbone) == "timm":
            model, mean, std = _build_timm(name, weights)
        else:
            model, mean, std = _build_open_clip(name, weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tuple(float(v) for v in mean), tuple(float(v) for v in std)


# --------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------

def _hf_cached(repo, filenames):
    """The first of ``filenames`` of Hugging Face repo ``repo`` in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None, []
    repo = repo.rstrip("/")
    for filename in filenames:
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str) and os.path.isfile(path):
            return path, []
    from huggingface_hub import constants
    return None, [f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {repo})"]


def _local_weights(names, repo, repo_files, extra_dirs=()):
    """A local copy of pretrained weights: ``(path or None, places searched)``."""
    searched = []
    if repo:
        path, where = _hf_cached(repo, repo_files)
        if path:
            return path, []
        searched += where
    dirs = weights_search_dirs() + [d for d in extra_dirs if d]
    names = [n for n in names if n]
    if repo:
        names += [os.path.join(repo.rstrip("/"), f) for f in repo_files]
    path = find_file(names, dirs)
    return path, searched + dirs


def _create_timm(timm, name, **kwargs):
    try:  # token models: any input size
        return timm.create_model(name, dynamic_img_size=True, **kwargs)
    except TypeError:  # convolutional models do not take the argument
        return timm.create_model(name, **kwargs)


def _build_timm(name, weights):
    timm = _import("timm", "timm")
    if weights is None:
        model = _create_timm(timm, name, pretrained=False)
    elif is_weights_path(weights):
        file_weights_id(weights)  # exists
        model = _create_timm(timm, name, pretrained=True,
                             pretrained_cfg_overlay={"file": os.fspath(weights)})
    else:
        model = _timm_pretrained(timm, name)
    cfg = model.pretrained_cfg
    mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    if _is_token_model(model):
        return TimmViT(model, name), mean, std
    if not getattr(model, "feature_info", None) or not hasattr(model, "forward_intermediates"):
        raise ValueError(f"timm model {name!r} gives neither maps nor tokens that "
                         "skretrieval can cut (no feature_info / forward_intermediates)")
    return TimmMaps(model, name), mean, std


def _timm_pretrained(timm, name):
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models(pretrained=True)")
    url = getattr(cfg, "url", "") or ""
    names = [os.path.basename(url), f"{name}.safetensors", f"{name}.pth"]
    repo = getattr(cfg, "hf_hub_id", None)
    path, searched = _local_weights(names, repo, ["model.safetensors", "pytorch_model.bin"])
    if path is not None:
        return _create_timm(timm, name, pretrained=True, pretrained_cfg_overlay={"file": path})
    try:
        return _create_timm(timm, name, pretrained=True)
    except Exception as exc:  # no network, HTTP error...
        raise not_found(f"of timm model {name!r}", [n for n in names if n] + (
            [f"{repo}/model.safetensors"] if repo else []), searched, exc,
            " Offline, set HF_HUB_OFFLINE=1 to fail at once.") from exc


def _is_token_model(model):
    return (hasattr(model, "patch_embed") and hasattr(model, "blocks")
            and hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_intermediates"))


class TimmViT(TokenBackbone):
    """A timm token model (ViT, DeiT, DINOv2, EVA, CLIP / SigLIP towers...);
    blocks and prefix tokens come from its ``forward_intermediates``."""

    family = "timm"

    def __init__(self, model, name):
        super().__init__()
        self.model, self.name = model, name
        patch = model.patch_embed.patch_size
        self.patch_size = tuple(patch) if isinstance(patch, (tuple, list)) else (patch,) * 2
        self.n_blocks = len(model.blocks)
        self.n_prefix = int(model.num_prefix_tokens)
        has_cls = getattr(model, "cls_token", None) is not None and self.n_prefix > 0
        self.cls_index = 0 if has_cls else None
        self.aliases = {f"blocks.{k}": f"block{k}" for k in range(self.n_blocks)}

    def intermediates(self, x, indices):
        out = self.model.forward_intermediates(
            x, indices=list(indices), return_prefix_tokens=self.n_prefix > 0, norm=False,
            stop_early=True, intermediates_only=True)
        if self.n_prefix == 0:
            out = [(m, m.new_zeros(m.shape[0], 0, m.shape[1])) for m in out]
        return dict(zip(indices, out))

    def final_norm(self, tokens):
        return self.model.norm(tokens)

    def prune(self, depth, keep_norm):
        self.model.prune_intermediate_layers(list(range(depth)), prune_norm=not keep_norm,
                                             prune_head=True)


class TimmMaps(MapBackbone):
    """A timm model whose features are maps: the stages of its ``feature_info``
    (names ``"stages.<k>"`` as timm gives them, or ``"stage<k>"``, or ``k``),
    by default the last one, cut with ``forward_intermediates``."""

    family = "timm"

    def __init__(self, model, name):
        super().__init__()
        self.model, self.name = model, name
        self.stages = [info["module"] for info in model.feature_info]

    def layer_names(self):
        return list(self.stages) + [f"stage{k}" for k in range(len(self.stages))]

    def resolve(self, layer, backbone="this backbone"):
        if layer is None:
            return self.stages[-1], self.stages[-1]
        key = str(layer)
        if key in self.stages:
            return key, key
        index = key[len("stage"):] if key.startswith("stage") else key
        try:
            return self.stages[int(index)], key
        except (ValueError, IndexError):
            raise self.unknown_layer(layer, backbone) from None

    def cut(self, nodes, cam_node=None):
        if cam_node is not None:
            self.cam_head(f"timm:{self.name}")
        return_nodes = {n: n for n in nodes} if isinstance(nodes, tuple) else {nodes: "out"}
        indices = sorted(self.stages.index(n) for n in return_nodes)
        import copy
        model = copy.deepcopy(self.model)
        model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
        return TimmMapsTrunk(model, return_nodes, [self.stages[i] for i in indices],
                             indices).eval()


class TimmMapsTrunk(torch.nn.Module):
    """A timm map model cut at some stages: ``{name: (N, C, h, w)}``."""

    def __init__(self, model, return_nodes, stages, indices):
        super().__init__()
        self.model = model
        self.return_nodes, self.stages, self.indices = dict(return_nodes), stages, indices

    def extra_repr(self):  # in the network's digest, the key of its ONNX export
        return f"return_nodes={self.return_nodes!r}, indices={self.indices!r}"

    def forward(self, x):
        maps = self.model.forward_intermediates(x, indices=self.indices, stop_early=True,
                                                intermediates_only=True)
        found = dict(zip(self.stages, maps))
        return {name: found[node] for node, name in self.return_nodes.items()}


# --------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------

def _build_open_clip(name, weights):
    open_clip = _import("open_clip", "open_clip")
    arch, _, tag = name.partition("/")
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r}; see "
                         "open_clip.list_models()")
    if weights is None:
        pretrained = None
    elif is_weights_path(weights):
        file_weights_id(weights)
        pretrained = os.fspath(weights)
    else:
        pretrained = _open_clip_file(open_clip, arch, tag)
    try:
        model = open_clip.create_model(arch, pretrained=pretrained)
    except RuntimeError as exc:
        if pretrained is None or os.path.isfile(pretrained):
            raise
        raise not_found(f"{tag!r} of open_clip {arch!r}", [tag], [], exc) from exc
    visual = model.visual
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    if tag:
        cfg.update({k: v for k, v in open_clip.get_pretrained_cfg(arch, tag).items()
                    if k in ("mean", "std")})
    mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    if hasattr(visual, "conv1") and hasattr(visual, "class_embedding"):
        return OpenClipViT(visual, name), mean, std
    raise ValueError(f"open_clip tower {arch!r} ({type(visual).__name__}) is not a ViT; "
                     "use its timm or torchvision counterpart for convolutional towers")


def _open_clip_file(open_clip, arch, tag):
    """A local file of the pretrained weights ``tag`` of ``arch``, else ``tag``
    itself (open_clip then downloads it)."""
    if not tag:
        raise ValueError(f"pretrained weights need a tag: 'open_clip:{arch}/<tag>', "
                         f"one of {open_clip.list_pretrained_tags_by_model(arch)}")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise ValueError(f"unknown tag {tag!r} for open_clip {arch!r}; known: "
                         f"{open_clip.list_pretrained_tags_by_model(arch)}")
    url = cfg.get("url") or ""
    repo = cfg.get("hf_hub") or None
    files = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    path, searched = _local_weights([os.path.basename(url)], repo, files,
                                    [os.path.expanduser("~/.cache/clip")])
    if path is not None:
        return path
    try:
        return open_clip.download_pretrained(cfg)
    except Exception as exc:
        raise not_found(f"{tag!r} of open_clip {arch!r}",
                        [os.path.basename(url) or f"{repo}{files[0]}"], searched, exc,
                        " Offline, set HF_HUB_OFFLINE=1 to fail at once.") from exc


class OpenClipViT(SequentialBlocksViT):
    """The ViT image tower of an open_clip model (``model.visual``).

    Its own names: ``"transformer.resblocks.<k>"`` for block ``k``,
    ``"ln_post"`` for the final norm (before the projection to the joint
    embedding space).
    """

    family = "open_clip"

    def __init__(self, visual, name):
        super().__init__()
        self.model, self.name = visual, name
        patch = visual.patch_size
        self.patch_size = tuple(patch) if isinstance(patch, (tuple, list)) else (patch,) * 2
        self.n_blocks = len(visual.transformer.resblocks)
        self.n_prefix, self.cls_index = 1, 0
        self.aliases = {f"transformer.resblocks.{k}": f"block{k}"
                        for k in range(self.n_blocks)}
        self.aliases["ln_post"] = "norm"

    def embed(self, x):
        v = self.model
        x = v.conv1(x)
        grid = tuple(x.shape[-2:])
        x = map_to_tokens(x)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_pos_embed(v.positional_embedding, 1, grid).to(x.dtype)
        return v.ln_pre(v.patch_dropout(x)), grid

    def blocks(self):
        return self.model.transformer.resblocks

    def run_block(self, block, tokens):
        if getattr(self.model.transformer, "batch_first", True):
            return block(tokens)
        return block(tokens.transpose(0, 1)).transpose(0, 1)

    def final_norm(self, tokens):
        return self.model.ln_post(tokens)

    def prune(self, depth, keep_norm):
        t = self.model.transformer
        t.resblocks = torch.nn.ModuleList(list(t.resblocks)[:depth])
        self.model.proj = None
        for attr in ("attn_pool", "attn_pool_contrastive"):
            if getattr(self.model, attr, None) is not None:
                setattr(self.model, attr, None)
        if not keep_norm:
            self.model.ln_post = torch.nn.Identity()
