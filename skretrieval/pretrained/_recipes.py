"""What a checkpoint of each family means: the backbone, its weights, the head, the protocols.

A :class:`Recipe` is read from the checkpoint's dictionary by the function of
its family (:func:`cirtorch_recipe`, :func:`naver_recipe`,
:func:`state_dict_recipe`); :func:`skretrieval.pretrained.load_checkpoint`
turns it into a pipeline.

The layouts, read from the authors' code:

* cirtorch (filipradenovic/cnnimageretrieval-pytorch,
  ``cirtorch/networks/imageretrievalnet.py``, ``examples/test.py``):
  ``{'meta': {architecture, local_whitening, pooling, regional, whitening,
  mean, std, outputdim, [Lw]}, 'state_dict'}``; the state dict holds
  ``features.<i>.*`` (the children of the torchvision model up to its last
  ReLU), ``pool.p`` (GeM) and ``whiten.weight``/``whiten.bias`` (the
  projection of the ``-w`` networks).  Forward: features -> pool -> L2 ->
  [whiten -> L2].  ``meta['Lw'][dataset]['ss'|'ms'] = {'m', 'P'}``: the
  learned whitening applied after, as ``L2(P (x - m))``.
* deep-image-retrieval (naver, ``dirtorch/nets/rmac_resnet.py``,
  ``dirtorch/test_dir.py``): ``{'model_options': {arch, out_dim, pooling,
  gemp, norm_features, without_fc, ...}, 'state_dict', 'preprocess',
  'pca': {dataset: sklearn PCA}}``; torchvision's ResNet names plus
  ``adpool.p`` and ``fc.*``.  Forward: resnet -> GeM -> [L2] -> fc -> L2;
  whitening ``L2((x - mean_) components_^T / explained_variance_^0.25)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..pooling._global import GeMPooler, MACPooler, SPoCPooler
from ._heads import affine_whitener, pca_whitener, projection_whitener
from ._reading import CheckpointFormatError, PickledState, tensor_dict

__all__ = ["CIRTORCH_ARCHITECTURES", "IMAGENET_MEAN", "IMAGENET_STD", "NAVER_ARCHITECTURES",
           "Recipe", "cirtorch_recipe", "naver_recipe", "sniff_torchvision",
           "state_dict_recipe"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: cirtorch's OUTPUT_DIM: the architectures its init_network builds.
CIRTORCH_ARCHITECTURES = {
    "alexnet": 256, "vgg11": 512, "vgg13": 512, "vgg16": 512, "vgg19": 512,
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
    "resnet152": 2048, "densenet121": 1024, "densenet169": 1664, "densenet201": 1920,
    "densenet161": 2208, "squeezenet1_0": 512, "squeezenet1_1": 512,
}
#: deep-image-retrieval's global-pooling ResNets (dirtorch/nets/rmac_resnet.py).
NAVER_ARCHITECTURES = {"resnet18_rmac": "resnet18", "resnet50_rmac": "resnet50",
                       "resnet101_rmac": "resnet101", "resnet152_rmac": "resnet152"}

_RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_DENSENET_CHILDREN = tuple(f"features.{n}" for n in (
    "conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
    "transition2", "denseblock3", "transition3", "denseblock4", "norm5"))
_MS_DOWN = (1.0, 2 ** -0.5, 0.5)  # cirtorch test.py, "[1, 1/2**(1/2), 1/2]"
_MS_UP = (1.0, 2 ** 0.5, 2 ** -0.5)  # cirtorch test_e2e.py, "[1, 2**(1/2), 1/2**(1/2)]"


@dataclass
class Recipe:
    """A checkpoint read: how to build its pipeline.

    ``state`` is the backbone's state dict in torchvision's names (None: the
    file itself is a torchvision state dict); ``post`` maps a preset to the
    whitening applied after the network (None for none).
    """

    family: str
    description: str
    backbone: str
    layer: object
    state: dict | None
    pooler: object
    projection: object = None
    power: float = 1.0
    power_eps: float = 0.0
    scales: dict = field(default_factory=lambda: {"ss": (1.0,), "ms": _MS_DOWN})
    post: dict = field(default_factory=dict)
    whitening_name: str | None = None
    default_preset: str = "ss"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


def _meta_model(backbone):
    """The torchvision model ``backbone`` on the meta device (shapes only, no memory)."""
    from torchvision.models import get_model

    with torch.device("meta"):
        return get_model(backbone, weights=None)


def _placeholder(t):
    """A zero tensor of ``t``'s shape that costs one element on disk."""
    if t.dtype == torch.long and t.ndim == 0:
        return torch.zeros((), dtype=torch.long)
    return torch.zeros(1, dtype=t.dtype).expand(t.shape) if t.ndim else torch.zeros((), dtype=t.dtype)


def _complete(backbone, state, what):
    """``state`` checked against torchvision's ``backbone``; the keys it lacks
    beyond the network's trunk (the classifier) filled with zeros."""
    reference = _meta_model(backbone).state_dict()
    unexpected = [k for k in state if k not in reference]
    bad = [k for k in state if k in reference and tuple(state[k].shape) != tuple(reference[k].shape)]
    if unexpected or bad:
        detail = (f"keys {unexpected[:5]} unknown to torchvision's {backbone}" if unexpected
                  else f"shapes of {bad[:5]} differ from torchvision's {backbone} "
                       f"({[tuple(state[k].shape) for k in bad[:3]]} vs "
                       f"{[tuple(reference[k].shape) for k in bad[:3]]})")
        raise CheckpointFormatError(f"{what}: {detail}")
    out = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    for k, ref in reference.items():
        if k not in out:
            out[k] = _placeholder(ref)
    return out


def _check_normalisation(mean, std, what):
    mean = tuple(float(v) for v in np.asarray(mean, dtype=float).ravel())
    std = tuple(float(v) for v in np.asarray(std, dtype=float).ravel())
    if not (np.allclose(mean, IMAGENET_MEAN, atol=1e-4) and np.allclose(std, IMAGENET_STD, atol=1e-4)):
        raise CheckpointFormatError(
            f"{what}: input normalisation mean={mean}, std={std} is not ImageNet's "
            f"({IMAGENET_MEAN}, {IMAGENET_STD}), the one ConvFeatureExtractor applies "
            "to weight files; such a checkpoint is not supported")
    return mean, std


def _array(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _pick(available, requested, default, what, path):
    """The whitening named ``requested`` ("auto": ``default`` or the only one)."""
    if requested is None or requested is False or not available:
        if requested not in (None, False, "auto"):
            raise ValueError(f"{path!r}: no stored whitening {requested!r}: the checkpoint "
                             f"holds {what} {sorted(available) if available else 'none'}")
        return None
    if requested == "auto":
        if default in available:
            return default
        if len(available) == 1:
            return next(iter(available))
        raise ValueError(f"{path!r} holds several {what} {sorted(available)}: choose one "
                         "with whitening=NAME (or None)")
    if requested not in available:
        raise ValueError(f"{path!r}: no stored whitening {requested!r}; available "
                         f"{what}: {sorted(available)}")
    return requested


# ---------------------------------------------------------------------------
# cirtorch
# ---------------------------------------------------------------------------
def _cirtorch_children(arch):
    """(names of the children of cirtorch's ``features``, the layer node)."""
    if arch.startswith("resnet"):
        return _RESNET_CHILDREN, "layer4"
    if arch.startswith("densenet"):
        return _DENSENET_CHILDREN, "relu"  # cirtorch appends a ReLU; torchvision's forward too
    n = len(_meta_model(arch).features)
    if arch.startswith("squeezenet"):
        return tuple(f"features.{i}" for i in range(n)), f"features.{n - 1}"
    # alexnet, vgg: every child but the last max pooling
    return tuple(f"features.{i}" for i in range(n - 1)), f"features.{n - 2}"


def cirtorch_recipe(ckpt, path, *, whitening="auto"):
    """The :class:`Recipe` of a cirtorch checkpoint."""
    meta, state = ckpt["meta"], tensor_dict(ckpt["state_dict"]) or {}
    arch, pooling = meta["architecture"], meta["pooling"]
    what = f"{path!r} (cirtorch {arch}-{pooling})"
    if arch not in CIRTORCH_ARCHITECTURES:
        raise CheckpointFormatError(f"{what}: architecture {arch!r} is not one cirtorch "
                                    f"builds ({', '.join(CIRTORCH_ARCHITECTURES)})")
    for flag in ("local_whitening", "regional"):
        if meta.get(flag):
            raise CheckpointFormatError(
                f"{what}: meta[{flag!r}] is set; networks with "
                f"{'local whitening' if flag == 'local_whitening' else 'regional pooling (Rpool)'} "
                "are not supported")
    mean, std = _check_normalisation(meta.get("mean", IMAGENET_MEAN),
                                     meta.get("std", IMAGENET_STD), what)
    children, layer = _cirtorch_children(arch)
    backbone, rest = {}, {}
    for key, value in state.items():
        head, _, tail = key.partition(".")
        if head == "features":
            index, _, name = tail.partition(".")
            if not index.isdigit() or int(index) >= len(children):
                raise CheckpointFormatError(f"{what}: state dict key {key!r} is not in "
                                            f"the {len(children)} feature layers of {arch}")
            backbone[f"{children[int(index)]}.{name}"] = value
        else:
            rest[key] = value
    if not backbone:
        raise CheckpointFormatError(f"{what}: the state dict has no 'features.*' keys; "
                                    f"found {sorted(state)[:8]}")
    p = None
    if pooling == "gem":
        p_t = rest.pop("pool.p", None)
        if p_t is None or p_t.numel() != 1:
            raise CheckpointFormatError(f"{what}: GeM pooling needs a scalar 'pool.p'; found "
                                        f"{None if p_t is None else tuple(p_t.shape)}")
        p = float(p_t.reshape(()))
        pooler = GeMPooler(p=p, eps=1e-6)
    elif pooling == "mac":
        pooler = MACPooler()
    elif pooling == "spoc":
        pooler = SPoCPooler(center_prior=False)
    else:
        raise CheckpointFormatError(f"{what}: pooling {pooling!r} is not supported "
                                    "(gem, mac and spoc are)")
    projection = None
    if meta.get("whitening"):
        if "whiten.weight" not in rest:
            raise CheckpointFormatError(f"{what}: meta['whitening'] is set but the state "
                                        "dict has no 'whiten.weight'")
        projection = affine_whitener(_array(rest.pop("whiten.weight")),
                                     _array(rest.pop("whiten.bias", None))
                                     if "whiten.bias" in rest else None,
                                     what=f"{what}: the whiten layer")
    if rest:
        raise CheckpointFormatError(f"{what}: unexpected state dict keys {sorted(rest)[:8]}")
    # examples/test.py: msp = GeM p for gem networks without regional pooling
    # nor whitening layer, 1 otherwise
    power = p if (pooling == "gem" and projection is None) else 1.0
    lw = meta.get("Lw") if isinstance(meta.get("Lw"), dict) else {}
    name = _pick(lw, whitening, "retrieval-SfM-120k", "learned whitenings (meta['Lw'])", path)
    post = {}
    if name is not None:
        for preset in ("ss", "ms"):
            entry = lw[name].get(preset) if isinstance(lw[name], dict) else None
            if isinstance(entry, dict) and "m" in entry and "P" in entry:
                post[preset] = projection_whitener(_array(entry["m"]), _array(entry["P"]))
        if not post:
            raise CheckpointFormatError(f"{what}: meta['Lw'][{name!r}] holds no "
                                        f"{{'m', 'P'}} entry; found {sorted(lw[name])}")
    scales = {"ss": (1.0,), "ms": _MS_UP if projection is not None else _MS_DOWN}
    desc = (f"cirtorch {arch}-{pooling}" + (f" p={p:.4f}" if p is not None else "")
            + (" + whiten layer" if projection is not None else ""))
    return Recipe(family="cirtorch", description=desc, backbone=arch, layer=layer,
                  state=_complete(arch, backbone, what), pooler=pooler,
                  projection=projection, power=power, power_eps=0.0, scales=scales,
                  post=post, whitening_name=name, default_preset="ms", mean=mean, std=std)


# ---------------------------------------------------------------------------
# naver deep-image-retrieval
# ---------------------------------------------------------------------------
def _pca_state(obj, what):
    state = obj.state if isinstance(obj, PickledState) else getattr(obj, "__dict__", None)
    if not isinstance(state, dict) or not all(
            k in state for k in ("mean_", "components_", "explained_variance_")):
        raise CheckpointFormatError(f"{what}: the stored PCA has no mean_, components_ "
                                    f"and explained_variance_ (found {sorted(state or {})[:8]})")
    return state


def naver_recipe(ckpt, path, *, whitening="auto", whiten_power=0.25, whiten_dims=None):
    """The :class:`Recipe` of a deep-image-retrieval checkpoint."""
    opts = ckpt["model_options"]
    arch = opts["arch"]
    what = f"{path!r} (deep-image-retrieval {arch})"
    if arch not in NAVER_ARCHITECTURES:
        raise CheckpointFormatError(
            f"{what}: architecture {arch!r} is not supported (the global-pooling "
            f"ResNets are: {', '.join(NAVER_ARCHITECTURES)}; not the FPN variants)")
    if opts.get("center_bias", 0):
        raise CheckpointFormatError(f"{what}: center_bias={opts['center_bias']} is not supported")
    backbone_name = NAVER_ARCHITECTURES[arch]
    pre = ckpt.get("preprocess") if isinstance(ckpt.get("preprocess"), dict) else {}
    mean, std = _check_normalisation(pre.get("mean", IMAGENET_MEAN),
                                     pre.get("std", IMAGENET_STD), what)
    state = tensor_dict(ckpt["state_dict"]) or {}
    rest = {k: state.pop(k) for k in ("adpool.p", "fc.weight", "fc.bias") if k in state}
    norm = bool(opts.get("norm_features", False))
    without_fc = bool(opts.get("without_fc", False))
    pooling = opts.get("pooling", "gem")
    p = None
    if pooling.startswith("gem"):
        p = float(rest["adpool.p"].reshape(())) if "adpool.p" in rest else float(opts.get("gemp", 3))
        pooler = GeMPooler(p=p, eps=1e-6, normalize=norm or without_fc)
    elif pooling == "max":
        pooler = MACPooler(normalize=norm or without_fc)
    elif pooling == "avg":
        pooler = SPoCPooler(center_prior=False, normalize=norm or without_fc)
    else:
        raise CheckpointFormatError(f"{what}: pooling {pooling!r} is not supported")
    projection = None
    if not without_fc:
        if "fc.weight" not in rest:
            raise CheckpointFormatError(f"{what}: the state dict has no 'fc.weight' "
                                        "(and model_options say without_fc=False)")
        projection = affine_whitener(_array(rest["fc.weight"]), _array(rest.get("fc.bias")),
                                     l2_before=norm, what=f"{what}: the fc layer")
    pcas = ckpt.get("pca") if isinstance(ckpt.get("pca"), dict) else {}
    name = _pick(pcas, whitening, "Landmarks_clean", "PCA whitenings ('pca')", path)
    post = {}
    if name is not None:
        st = _pca_state(pcas[name], f"{what}: pca[{name!r}]")
        k = whiten_dims
        comps = _array(st["components_"])[:k]
        white = pca_whitener(_array(st["mean_"]), comps, _array(st["explained_variance_"])[:k],
                             power=whiten_power, whiten=bool(st.get("whiten", True)),
                             n_samples=st.get("n_samples_"))
        post = {"ss": white, "ms": white}
    desc = (f"deep-image-retrieval {arch} {pooling}" + (f" p={p:.4f}" if p is not None else "")
            + ("" if without_fc else f" + fc {tuple(rest['fc.weight'].shape)}"))
    # test_dir.py: --pooling gem --gemp 3 over the transforms (scales)
    return Recipe(family="naver", description=desc, backbone=backbone_name, layer="layer4",
                  state=_complete(backbone_name, state, what), pooler=pooler,
                  projection=projection, power=float(opts.get("gemp", 3)), power_eps=1e-6,
                  scales={"ss": (1.0,), "ms": _MS_DOWN}, post=post, whitening_name=name,
                  default_preset="ss", mean=mean, std=std)


# ---------------------------------------------------------------------------
# plain torchvision state dicts
# ---------------------------------------------------------------------------
_RESNETS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
            ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101",
            ((3, 8, 36, 3), True): "resnet152"}
_VGG = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}
_DENSENETS = {(6, 12, 24, 16): "densenet121", (6, 12, 32, 32): "densenet169",
              (6, 12, 48, 32): "densenet201", (6, 12, 36, 24): "densenet161"}


def _blocks(state, prefix, n):
    return tuple(len({k.split(".")[1] for k in state if k.startswith(f"{prefix}{i}.")})
                 for i in range(1, n + 1))


def sniff_torchvision(state):
    """The torchvision architecture of a state dict, or None."""
    keys = set(state)
    if {"conv1.weight", "fc.weight"} <= keys and any(k.startswith("layer4.") for k in keys):
        depth = _blocks(state, "layer", 4)
        bottleneck = "layer1.0.conv3.weight" in keys
        name = _RESNETS.get((depth, bottleneck))
        width = state["layer1.0.conv1.weight"].shape[0] if "layer1.0.conv1.weight" in keys else 0
        return name if width == 64 else None
    if any(k.startswith("features.denseblock") for k in keys):
        layers = tuple(len({k.split(".")[2] for k in keys
                            if k.startswith(f"features.denseblock{i}.")}) for i in range(1, 5))
        return _DENSENETS.get(layers)
    convs = sorted(int(k.split(".")[1]) for k in keys
                   if k.startswith("features.") and k.endswith(".weight")
                   and k.split(".")[1].isdigit() and state[k].ndim == 4)
    if convs and "classifier.6.weight" in keys:
        if tuple(state[f"features.{convs[0]}.weight"].shape) == (64, 3, 11, 11):
            return "alexnet"
        name = _VGG.get(len(convs))
        if name and any(k.endswith("running_mean") for k in keys):
            name += "_bn"
        return name
    if "classifier.1.weight" in keys and "features.18.0.weight" in keys:
        return "mobilenet_v2"
    return None


def state_dict_recipe(obj, path, *, backbone=None, p=3.0):
    """The :class:`Recipe` of a plain state dict (a torchvision, timm or open_clip file)."""
    state = tensor_dict(obj)
    name = backbone or sniff_torchvision(state)
    if name is None:
        keys = sorted(state)
        raise CheckpointFormatError(
            f"{path!r} is a state dict of {len(keys)} tensors (keys {keys[:6]}...) of no "
            "torchvision architecture skretrieval recognises (resnet18-152, vgg, alexnet, "
            "densenet, mobilenet_v2); pass backbone='<torchvision name>', "
            "'timm:<model>' or 'open_clip:<arch>/<tag>'")
    plain = all(isinstance(v, torch.Tensor) for v in obj.values())
    if ":" in name:  # timm / open_clip read the file themselves
        if not plain:
            raise CheckpointFormatError(f"{path!r}: {name} reads plain state-dict files; "
                                        "this one wraps it: save the state dict alone")
        converted = None
    elif plain or isinstance(obj.get("state_dict"), dict):
        converted = None  # ConvFeatureExtractor reads it (and drops a 'module.' prefix)
    else:
        converted = _complete(name, state, f"{path!r}")
    return Recipe(family="state_dict", description=f"{name} state dict, GeM p={p:g}",
                  backbone=name, layer=None, state=converted, pooler=GeMPooler(p=p))
