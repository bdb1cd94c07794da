"""Trainable retrieval networks: CNN trunk -> pooling -> projection -> L2.

The torch counterparts of the NumPy poolers of :mod:`skretrieval.pooling`
(the same functions of :mod:`skretrieval.pooling._functional`, checked
against the poolers in ``tests/nn/test_trainer.py``; defined in
:mod:`skretrieval.pooling._torch` and named by the pooler table, whose rows
with a torch layer are :data:`POOLINGS`), and the network that
:class:`skretrieval.RetrievalNetTrainer` trains:

* :class:`GeM` -- generalized mean with a learnable exponent ``p``
  (Radenović et al., TPAMI 2018);
* :class:`MAC` -- global max pooling;
* :class:`SPoC` -- sum pooling with the Gaussian centre prior of Babenko &
  Lempitsky (ICCV 2015);
* :class:`RMAC` -- regional MAC over the grid of :func:`region_grid`
  (Tolias et al., ICLR 2016; trained end to end by Gordo et al.);
* :class:`RetrievalNet` -- a torchvision backbone cut at a layer, one of
  these poolings, an optional fully-connected projection (initialised from a
  PCA-whitening with :meth:`RetrievalNet.init_projection`) and
  L2-normalisation.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..extraction._backbones import describe_weights, load_backbone, resolve_layer
from ..extraction._network import cut_network, shared
from ..pooling._registry import POOLERS
from ..utils._tables import TableNames
from ..pooling._torch import GeM, MAC, RMAC, SPoC

__all__ = ["GeM", "MAC", "POOLINGS", "RMAC", "RetrievalNet", "SPoC", "make_pooling"]


#: The ``pooling`` values of :class:`RetrievalNet`: the rows of the pooler
#: table (:data:`skretrieval.pooling._registry.POOLERS`) that have a torch
#: layer, read when used.
POOLINGS = TableNames(POOLERS, "layer")


def make_pooling(name, *, p=3.0, learn_p=True):
    """The pooling layer called ``name`` (one of :data:`POOLINGS`).

    Parameters
    ----------
    name : str
        A pooler of the pooler table that has a torch layer.
    p : float, default=3.0
        Initial exponent (for the layers that take it: GeM).
    learn_p : bool, default=True
        Train the exponent.

    Returns
    -------
    layer : torch.nn.Module

    Examples
    --------
    >>> from skretrieval.nn import make_pooling
    >>> make_pooling("gem", p=2.0)
    GeM(p=2, eps=1e-06)
    """
    spec = POOLERS.get(name) if isinstance(name, str) else None
    if spec is None or spec.layer is None:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {name!r}")
    return spec.make_layer(p=p, learn_p=learn_p)


def _trunk_template(backbone, weights, layer):
    """``(trunk, node, name, n_channels, mean, std)`` of a backbone cut at a layer.

    Cutting (tracing) and probing a network takes seconds; the result is kept
    in the process-wide cache of networks (:func:`skretrieval.extraction.
    _network.shared`) and every :class:`RetrievalNet` deep-copies it.
    """

    def build():
        model, mean, std = load_backbone(backbone, weights)
        node, name = resolve_layer(backbone, model, layer)
        trunk = cut_network(model, node)
        with torch.no_grad():
            maps = trunk(torch.zeros(1, 3, 128, 128))["out"]
        if maps.ndim != 4:
            raise ValueError(f"layer {name!r} of {backbone} outputs a tensor of shape "
                             f"{tuple(maps.shape)}, not a C x H x W map; choose a "
                             "convolutional layer")
        return trunk, node, name, int(maps.shape[1]), tuple(mean), tuple(std)

    return shared(("template", backbone, describe_weights(backbone, weights), repr(layer)),
                  build)


class RetrievalNet(nn.Module):
    """A retrieval network: CNN trunk, pooling, optional projection, L2.

    ``forward(x)`` takes a batch of RGB images with values in ``[0, 1]``
    (``(N, 3, H, W)`` floats; any size the trunk accepts), normalises it as
    the backbone's weights expect, runs the trunk up to ``layer``, pools each
    map into a vector, L2-normalises it, applies the projection when there is
    one and L2-normalises again: ``(N, dim)`` unit descriptors.

    Parameters
    ----------
    backbone : str, default="resnet18"
        A torchvision classification model name (``"vit_b_16"`` too),
        ``"timm:<model>"`` or ``"open_clip:<arch>/<tag>"``.
    weights : str, path or None, default=None
        Its weights, as for :class:`skretrieval.ConvFeatureExtractor`
        (``"IMAGENET1K_V1"``, a state-dict file, or None for random weights).
    layer : str, int or None, default=None
        Where to cut the backbone (None: its last convolutional layer); see
        :class:`skretrieval.ConvFeatureExtractor`.
    pooling : {"gem", "mac", "spoc", "rmac"}, default="gem"
        Pooling of the maps: a pooler of :data:`POOLINGS` (the pooler table's
        rows with a torch layer).
    p : float, default=3.0
        Initial GeM exponent (``pooling="gem"`` only).
    learn_p : bool, default=True
        Train the GeM exponent.
    dim : int or None, default=None
        Output dimension of a fully-connected projection (with bias) after the
        pooling, as the whitening layer of Gordo et al. and Radenović et al.;
        None for no projection (the descriptor has the trunk's channels).

    Attributes
    ----------
    trunk : torch.nn.Module
        The backbone cut at the layer (returns ``{"out": maps}``).
    pool : torch.nn.Module
        The pooling layer.
    projection : torch.nn.Linear or None
        The projection.
    n_channels : int
        Channels of the trunk's maps.
    out_dim : int
        Dimension of the descriptors.
    mean, std : torch.Tensor
        Input normalisation (buffers).

    Examples
    --------
    >>> import torch
    >>> from skretrieval import RetrievalNet
    >>> net = RetrievalNet("resnet18", weights=None, pooling="gem", dim=64).eval()
    >>> d = net(torch.rand(2, 3, 64, 64))
    >>> d.shape, bool(torch.allclose(d.norm(dim=1), torch.ones(2)))
    (torch.Size([2, 64]), True)
    """

    def __init__(self, backbone="resnet18", weights=None, *, layer=None, pooling="gem",
                 p=3.0, learn_p=True, dim=None):
        super().__init__()
        template, node, name, n_channels, mean, std = _trunk_template(
            backbone, weights, layer)
        self.backbone, self.layer_node = backbone, node
        self.trunk = copy.deepcopy(template).eval()
        for param in self.trunk.parameters():
            param.requires_grad_(True)
        self.pool = make_pooling(pooling, p=p, learn_p=learn_p)
        self.pooling = pooling
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.n_channels = n_channels
        if dim is not None:
            dim = int(dim)
            if dim < 1:
                raise ValueError(f"dim must be a positive integer or None, got {dim}")
            self.projection = nn.Linear(self.n_channels, dim)
        else:
            self.projection = None
        self.out_dim = dim if dim is not None else self.n_channels

    def maps(self, x):
        """The trunk's feature maps of images ``x`` in ``[0, 1]``."""
        return self.trunk((x - self.mean) / self.std)["out"]

    def pooled(self, x):
        """L2-normalised pooled vectors (before the projection)."""
        return F.normalize(self.pool(self.maps(x)), dim=-1)

    def forward(self, x):
        v = self.pooled(x)
        if self.projection is not None:
            v = F.normalize(self.projection(v), dim=-1)
        return v

    @torch.no_grad()
    def init_projection(self, components, mean, scale=None):
        """Set the projection to a (PCA-)whitening of the pooled vectors.

        The projection becomes ``x -> diag(scale) @ components @ (x - mean)``,
        the map of a fitted :class:`skretrieval.PCAWhitener` (pass its
        ``components_``, ``mean_`` and ``scale_``), as Gordo et al. and
        Radenović et al. initialise their whitening layer.

        Parameters
        ----------
        components : array-like of shape (dim, n_channels)
        mean : array-like of shape (n_channels,)
        scale : array-like of shape (dim,) or None
            Per-component factors (None: ones).

        Returns
        -------
        self : RetrievalNet
        """
        if self.projection is None:
            raise ValueError("this network has no projection (dim=None)")
        W = np.asarray(components, dtype=np.float64)
        if W.shape != (self.out_dim, self.n_channels):
            raise ValueError(f"components must have shape {(self.out_dim, self.n_channels)}, "
                             f"got {W.shape}")
        if scale is not None:
            W = W * np.asarray(scale, dtype=np.float64)[:, None]
        b = -W @ np.asarray(mean, dtype=np.float64)
        weight = self.projection.weight
        self.projection.weight.copy_(torch.as_tensor(W, dtype=weight.dtype))
        self.projection.bias.copy_(torch.as_tensor(b, dtype=weight.dtype))
        return self

    def extra_repr(self):
        return f"backbone={self.backbone!r}, layer={self.layer_node!r}, out_dim={self.out_dim}"
