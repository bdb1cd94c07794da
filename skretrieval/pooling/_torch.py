"""The torch layers of the poolers: the pooled vector of a batch of maps.

:class:`GeM`, :class:`MAC`, :class:`SPoC` and :class:`RMAC` map an ``(N, C,
H, W)`` batch of feature maps to ``(N, C)`` vectors with the formulas of
:mod:`._functional` (shared with the NumPy poolers), differentiably.  They
live beside the poolers so that the pooler table (:mod:`._registry`) can name
each pooler's layer; :mod:`skretrieval.nn` re-exports them and builds its
:class:`~skretrieval.RetrievalNet` from that table.
"""

from __future__ import annotations

import torch
from torch import nn

from ._functional import cached_region_grid, center_prior, gem, mac, rmac, spoc

__all__ = ["GeM", "MAC", "RMAC", "SPoC"]


class GeM(nn.Module):
    """Generalized-mean pooling with a (learnable) exponent.

    ``f_k = mean(max(x_k, eps) ** p) ** (1 / p)`` over the positions of
    channel ``k`` (Radenović et al.); the same as
    :class:`skretrieval.GeMPooler` with ``normalize=False``.

    Parameters
    ----------
    p : float, default=3.0
        Initial exponent.
    eps : float, default=1e-6
        Clamp of the activations.
    learn_p : bool, default=True
        Make ``p`` a trainable parameter (Radenović et al. learn it).

    Examples
    --------
    >>> import torch
    >>> from skretrieval.nn import GeM
    >>> GeM(p=1.0)(torch.ones(2, 3, 4, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, p=3.0, eps=1e-6, learn_p=True):
        super().__init__()
        value = torch.tensor([float(p)])
        if learn_p:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = float(eps)

    def forward(self, x):
        return gem(x, self.p, self.eps)

    def extra_repr(self):
        return f"p={float(self.p.detach()):.4g}, eps={self.eps}"


class MAC(nn.Module):
    """Global max pooling (MAC), as :class:`skretrieval.MACPooler`."""

    def forward(self, x):
        return mac(x)


class SPoC(nn.Module):
    """Sum pooling with a Gaussian centre prior, as :class:`skretrieval.SPoCPooler`.

    Parameters
    ----------
    center_prior : bool, default=True
        Weight the positions by ``exp(-d^2 / (2 sigma^2))`` with ``sigma =
        min(H, W) / 6`` (the paper's choice); ``False`` sums.
    """

    def __init__(self, center_prior=True):
        super().__init__()
        self.center_prior = bool(center_prior)

    def forward(self, x):
        if not self.center_prior:
            return spoc(x)
        H, W = x.shape[-2:]
        return spoc(x, center_prior(int(H), int(W), like=x))


class RMAC(nn.Module):
    """Regional MAC: L2-normalised MAC of the regions of :func:`region_grid`, summed.

    As :class:`skretrieval.RMACPooler` with ``normalize=False``.

    Parameters
    ----------
    levels : int, default=3
        Number of region levels.
    overlap : float, default=0.4
        Target overlap of consecutive regions.
    """

    def __init__(self, levels=3, overlap=0.4):
        super().__init__()
        self.levels = int(levels)
        self.overlap = float(overlap)

    def forward(self, x):
        H, W = x.shape[-2:]
        boxes = cached_region_grid(int(H), int(W), self.levels, self.overlap)
        return rmac(x, boxes, eps=1e-12)  # the norm floor of F.normalize

    def extra_repr(self):
        return f"levels={self.levels}, overlap={self.overlap}"
