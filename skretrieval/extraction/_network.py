"""The home of the torch network: devices, cut backbones, one cache, rebuilding.

Every estimator that runs a network (the extractor, the trainer, a model
loaded from a file, the workers of a dask cluster) gets it from here:

* :func:`resolve_device` turns a ``device`` parameter into a torch device
  string, and :func:`fallback_device` replaces a fitted device absent from
  this machine by the CPU, with a warning;
* :func:`cut_network` cuts a backbone at one or several graph nodes (the
  layer, the ``cache_layers``, the CAM head) and :func:`place` moves it to a
  device; :func:`backbone_network` does both for a backbone loaded by
  :func:`~skretrieval.extraction._backbones.load_backbone`;
* :func:`shared` is the one process-wide, thread-safe cache of built
  networks, keyed by their recipe (backbone, weights id, nodes, device...);
* :func:`state_arrays` and :func:`load_state` turn a network into a numpy
  state dict (what pickles and ``save_pipeline`` store) and back, and
  :func:`network_from_state` rebuilds a cut backbone from one;
* :func:`probed` measures a network once per recipe (its geometry);
* :func:`network_token` names a network object, so that the workers of a
  cluster rebuild it once and reuse it.
"""

from __future__ import annotations

import copy
import threading
import uuid
import warnings
import weakref
from collections import OrderedDict

import numpy as np
import torch

from ._backbones import build_model, load_backbone
from ._tokens import MapBackbone

__all__ = [
    "backbone_network",
    "cut_network",
    "fallback_device",
    "load_state",
    "network_from_state",
    "network_token",
    "place",
    "probed",
    "resolve_device",
    "shared",
    "smallest_input",
    "state_arrays",
]

#: Networks kept by :func:`shared` (least recently used dropped first).
CACHE_SIZE = 12
_NETWORKS: "OrderedDict[tuple, object]" = OrderedDict()
_LOCK = threading.Lock()
_TOKENS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PROBED: dict = {}


def resolve_device(device):
    """The torch device string for a ``device`` parameter.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA if available, else Apple's MPS, else the CPU) or any
        torch device name (``"cpu"``, ``"cuda:1"``...).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If CUDA is asked for and not available.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available():
            return "mps"
        return "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return str(dev)


def _mps_available():
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def fallback_device(device, owner, *, stacklevel=2):
    """``device`` if this machine has it, else ``"cpu"`` with a RuntimeWarning.

    Parameters
    ----------
    device : str
        The fitted device (``device_``).
    owner : str
        What was fitted there, for the warning ("extractor", "trainer").
    stacklevel : int, default=2
        Of the warning, as seen from the caller.

    Returns
    -------
    str
    """
    device = str(device)
    absent = ((device.startswith("cuda") and not torch.cuda.is_available())
              or (device.startswith("mps") and not _mps_available()))
    if not absent:
        return device
    warnings.warn(f"this {owner} was fitted on {device!r}, which is not available here; "
                  "running on CPU", RuntimeWarning, stacklevel=stacklevel + 1)
    return "cpu"


def shared(key, build):
    """The network of recipe ``key``, built by ``build()`` once per process.

    One least-recently-used cache of :data:`CACHE_SIZE` networks serves the
    whole process (extractors, retrieval networks, dask workers); a network
    is built outside the lock, and when two threads build the same recipe at
    once the first one stored is the one both get.
    """
    with _LOCK:
        if key in _NETWORKS:
            _NETWORKS.move_to_end(key)
            return _NETWORKS[key]
    built = build()
    with _LOCK:
        net = _NETWORKS.setdefault(key, built)
        _NETWORKS.move_to_end(key)
        while len(_NETWORKS) > CACHE_SIZE:
            _NETWORKS.popitem(last=False)
    return net


def clear_networks():
    """Empty the cache of :func:`shared`."""
    with _LOCK:
        _NETWORKS.clear()


def probed(key, probe):
    """What ``probe()`` (run in inference mode) measures of the network of
    recipe ``key`` (its geometry...), measured once per process."""
    with _LOCK:
        if key in _PROBED:
            return _PROBED[key]
    with torch.inference_mode():
        value = probe()
    with _LOCK:
        return _PROBED.setdefault(key, value)


def network_token(net):
    """A token naming the network object ``net`` for as long as it lives."""
    with _LOCK:
        token = _TOKENS.get(net)
        if token is None:
            token = _TOKENS[net] = uuid.uuid4().hex
    return token


def cut_network(model, nodes, cam_node=None):
    """``model`` cut at graph node(s) ``nodes``, in eval mode.

    Parameters
    ----------
    model : torch.nn.Module
        The whole backbone (left untouched: the cut network owns a copy).
    nodes : str or tuple of str
        One node (output ``"out"``) or several (outputs named by their nodes).
    cam_node : str or None
        A node also returned, as output ``"cam"``.

    Returns
    -------
    torch.nn.Module
        Returns a dict of tensors.
    """
    from torchvision.models.feature_extraction import create_feature_extractor

    if isinstance(model, MapBackbone):  # transformers, timm, open_clip: cut themselves
        return model.cut(nodes, cam_node).eval()
    return_nodes = {n: n for n in nodes} if isinstance(nodes, tuple) else {nodes: "out"}
    if cam_node is not None:
        return_nodes[cam_node] = "cam"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net = create_feature_extractor(model, return_nodes=return_nodes)
    # The graph module shares its submodules with ``model`` (which the
    # backbone cache hands to others): own copy, so that moving or training
    # it leaves the shared model alone.
    return copy.deepcopy(net).eval()


def place(net, device, channels_last=False):
    """``net`` on ``device`` (in channels-last memory format if asked)."""
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net.to(device)


def backbone_network(backbone, weights_id, nodes, *, cam_node=None, device="cpu",
                     channels_last=False, model=None, weights=None):
    """The backbone cut at ``nodes`` on ``device``, shared by the process.

    Keyed by ``(backbone, weights_id, nodes, cam_node, device,
    channels_last)``; ``model`` is the loaded backbone when the caller has
    it, else it is loaded from ``weights`` by ``load_backbone``.
    """
    key = ("cut", backbone, weights_id, nodes, cam_node, str(device), bool(channels_last))

    def build():
        whole = model if model is not None else load_backbone(backbone, weights)[0]
        return place(cut_network(whole, nodes, cam_node), device, channels_last)

    return shared(key, build)


def state_arrays(net):
    """The state dict of ``net`` as numpy arrays (what pickles store)."""
    return {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def load_state(net, state, device, channels_last=False):
    """``net`` with the numpy state dict ``state``, frozen, in eval mode, on ``device``."""
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return place(net, device, channels_last)


def network_from_state(backbone, nodes, state, *, cam_node=None, device="cpu",
                       channels_last=False):
    """A cut backbone rebuilt from its numpy state dict (after unpickling).

    The architecture comes from torchvision (random weights drawn without
    touching the global random state), the weights from ``state``.
    """
    model, _, _ = build_model(backbone, None)
    return load_state(cut_network(model, nodes, cam_node), state, device, channels_last)


def smallest_input(forward, start, device):
    """Smallest square input side (>= ``start``) that ``forward`` accepts."""
    size = max(1, int(start))

    def ok(side):
        try:
            forward(torch.zeros(1, 3, side, side, device=device))
            return True
        except RuntimeError:
            return False

    if ok(size):
        return size
    lo = size
    while size < 4096 and not ok(size):
        lo, size = size, size * 2
    for s in range(lo + 1, size):  # refine between the last failure and success
        if ok(s):
            return s
    return size
