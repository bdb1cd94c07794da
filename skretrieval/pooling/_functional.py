"""One definition of each pooling, for NumPy arrays and torch tensors.

The NumPy poolers (:class:`~skretrieval.GeMPooler`, ...) and the torch layers
of :mod:`skretrieval.nn` (``GeM``, ``MAC``, ``SPoC``, ``RMAC``) call these
functions.  They are written against the array API (through the
``array_api_compat`` copy that scikit-learn ships), so the same code runs on
a ``(C, H, W)`` NumPy map and on an ``(N, C, H, W)`` torch batch, with
autograd: every function reduces the last two (spatial) axes.

``dtype`` is the floating type the reductions are accumulated in and
returned in (``None``: the dtype of ``x``).  The NumPy poolers accumulate in
float64 on float32 maps; the torch layers keep the dtype of their input.
The normalisations and multi-scale combination of the poolers live in
:mod:`._base`.

This module imports neither torch nor the estimators, so both sides can
import it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from numbers import Integral, Real

import numpy as np
from sklearn.externals.array_api_compat import array_namespace
from sklearn.externals.array_api_compat import device as array_device

__all__ = [
    "cached_region_grid",
    "center_prior",
    "gem",
    "mac",
    "regional_mac",
    "region_grid",
    "rmac",
    "spoc",
]

_SPATIAL = (-2, -1)


def _normalize(v, xp, eps=0.0):
    """``v`` L2-normalised along its last axis, the norm floored at ``eps``.

    ``eps=0``: an all-zero vector stays zero (as ``l2_normalize``);
    ``eps > 0``: ``v / max(||v||, eps)`` (as ``torch.nn.functional.normalize``).
    """
    norm = xp.linalg.vector_norm(v, axis=-1, keepdims=True)
    if eps > 0:
        return v / xp.clip(norm, min=eps)
    return v / xp.where(norm > 0, norm, xp.ones_like(norm))


# ---------------------------------------------------------------------------
# global poolings
# ---------------------------------------------------------------------------
def mac(x):
    """Global max pooling: the maximum of each channel over the positions.

    Examples
    --------
    >>> import numpy as np
    >>> mac(np.arange(8.0).reshape(2, 2, 2)).tolist()
    [3.0, 7.0]
    """
    xp = array_namespace(x)
    return xp.max(x, axis=_SPATIAL)


def gem(x, p, eps=1e-6, *, dtype=None):
    """Generalized mean ``mean(max(x, eps) ** p) ** (1 / p)`` of each channel.

    The power mean is computed relative to the channel's maximum ``m``, as
    ``m * mean((max(x, eps) / m) ** p) ** (1 / p)``, so that a large ``p``
    neither overflows nor loses the maximum; ``p=inf`` gives ``max(m, eps)``.
    ``p`` is a number or a (learnable) tensor broadcasting against the
    ``(..., C)`` result.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    >>> float(gem(x, 1.0)[0]), float(gem(x, np.inf)[0])
    (2.5, 4.0)
    """
    xp = array_namespace(x)
    m = xp.clip(xp.max(x, axis=_SPATIAL, keepdims=True), min=eps)
    if isinstance(p, Real) and math.isinf(p):
        m = m[..., 0, 0]
        return m if dtype is None else xp.astype(m, dtype)
    safe_m = xp.where(m > 0, m, xp.ones_like(m))  # m == 0 only when eps == 0
    # x / m lies in [0, 1]: its powers can underflow (harmlessly), never overflow
    z = xp.clip(x, min=eps) / safe_m
    n_positions = x.shape[-2] * x.shape[-1]
    mean = xp.sum(z**p, axis=_SPATIAL, dtype=dtype) / n_positions
    return m[..., 0, 0] * mean ** (1.0 / p)


def center_prior(H, W, sigma=None, *, like=None, dtype=None):
    """The ``(H, W)`` Gaussian centre prior of SPoC (Babenko & Lempitsky).

    ``exp(-((y - H/2)^2 + (x - W/2)^2) / (2 s^2))`` at the cell centres
    ``(i + 0.5, j + 0.5)``, with ``s = sigma * min(H, W) / 2`` (``sigma``
    None: 1/3, the paper's choice).  The prior is an array of the namespace
    and device of ``like`` (NumPy when None), of ``dtype`` (default: the dtype
    of ``like``, float64 for NumPy).
    """
    xp = np if like is None else array_namespace(like)
    device = None if like is None else array_device(like)
    if dtype is None:
        dtype = xp.float64 if like is None else like.dtype
    fraction = 1.0 / 3.0 if sigma is None else float(sigma)
    s = fraction * min(H, W) / 2.0
    dy = xp.arange(H, dtype=dtype, device=device) + 0.5 - H / 2.0
    dx = xp.arange(W, dtype=dtype, device=device) + 0.5 - W / 2.0
    wy = xp.exp(-(dy**2) / (2.0 * s**2))
    wx = xp.exp(-(dx**2) / (2.0 * s**2))
    # separable: exp(-(a + b)) = exp(-a) exp(-b)
    return xp.reshape(wy, (-1, 1)) * xp.reshape(wx, (1, -1))


def spoc(x, weights=None, *, dtype=None):
    """Sum pooling of each channel, the positions weighted by ``weights``.

    ``weights`` is an ``(H, W)`` array (see :func:`center_prior`) or None for
    plain sum pooling.  With float64 weights on float32 NumPy maps the
    products and the sum are float64.
    """
    xp = array_namespace(x)
    if weights is not None:
        x = x * weights
    return xp.sum(x, axis=_SPATIAL, dtype=dtype)


# ---------------------------------------------------------------------------
# regional poolings
# ---------------------------------------------------------------------------
def regional_mac(x, regions, *, dtype=None, eps=0.0):
    """L2-normalised MAC vectors of the ``regions`` of ``x``: ``(..., R, C)``.

    ``regions`` are ``(y0, x0, y1, x1)`` boxes with exclusive ends (rows of
    :func:`region_grid`).  The norms are floored at ``eps``: with ``eps=0``
    (the NumPy poolers) a region whose maxima are all zero gives a zero
    vector; the torch layers use ``1e-12``, as
    ``torch.nn.functional.normalize``, whose gradient stays finite there.
    """
    xp = array_namespace(x)
    if hasattr(regions, "tolist"):
        regions = regions.tolist()
    vecs = xp.stack(
        [xp.max(x[..., y0:y1, x0:x1], axis=_SPATIAL) for y0, x0, y1, x1 in regions],
        axis=-2,
    )
    if dtype is not None:
        vecs = xp.astype(vecs, dtype)
    return _normalize(vecs, xp, eps)


def rmac(x, regions, *, dtype=None, eps=0.0):
    """R-MAC: the sum of the L2-normalised regional MAC vectors (Tolias et al.).

    ``regions`` and ``eps`` as for :func:`regional_mac`.
    """
    xp = array_namespace(x)
    return xp.sum(regional_mac(x, regions, dtype=dtype, eps=eps), axis=-2)


def _region_starts(length, side, n):
    """Start offsets of ``n`` windows of ``side`` spread uniformly over ``length``.

    ``floor(i * (length - side) / (n - 1))`` in exact integer arithmetic, so
    the first window starts at 0 and the last one ends at ``length``;
    repeated offsets (a map too small for ``n`` windows) are kept once.
    """
    if n == 1:
        return np.zeros(1, dtype=np.intp)
    i = np.arange(n, dtype=np.intp)
    return np.unique((i * (length - side)) // (n - 1))


def region_grid(H, W, levels=3, overlap=0.4):
    """Square regions of the R-MAC grid of Tolias, Sicre & Jégou (2016).

    At level ``l`` (``l = 1, ..., levels``) the regions are squares of side
    ``max(1, floor(2 * min(H, W) / (l + 1)))`` cells: at level 1 a square as
    large as the map's shorter side.  Along the shorter side ``l`` regions are
    placed uniformly (the first touching the start, the last the end of the
    side); along the longer side ``l + m - 1`` regions, where ``m``, the
    number of level-1 regions along the longer side, is chosen so that the
    overlap of consecutive level-1 regions is as close as possible to
    ``overlap`` (40% in the paper).  A square map thus gets ``l * l`` regions
    at level ``l`` (``1 + 4 + 9`` for three levels).

    Parameters
    ----------
    H, W : int
        Height and width of the feature map, at least 1.
    levels : int, default=3
        Number of levels ``L``.
    overlap : float, default=0.4
        Target overlap of consecutive regions, in ``[0, 1)``.

    Returns
    -------
    boxes : ndarray of shape (n_regions, 4), dtype=intp
        Boxes ``(y0, x0, y1, x1)`` with exclusive ends: region ``r`` is
        ``x[:, y0:y1, x0:x1]``.  Level by level, row-major within a level.
        Every box lies inside the map and their union covers it.

    Notes
    -----
    Like the authors' implementation, ``m`` is searched among ``m >= 2`` for
    non-square maps (a single region cannot cover the longer side) and ``m =
    1`` for square maps; the search also starts at the smallest ``m`` for
    which consecutive level-1 regions at least touch, so that the level-1
    regions always cover the map, and goes beyond the authors' upper bound of
    7 when a very elongated map needs it.  Ties go to the smaller ``m``.

    On maps too small for a level (side ``2 * min(H, W) / (l + 1) < 1``, or
    more regions than positions) the regions degenerate to single cells or
    repeat; repeated boxes are returned once, so the count can be smaller
    than ``sum_l l * (l + m - 1)``: a ``1 x 1`` map has one region, a
    ``1 x N`` map one region per cell.

    Examples
    --------
    >>> from skretrieval.pooling import region_grid
    >>> len(region_grid(10, 10, levels=3))
    14
    >>> region_grid(10, 10, levels=1).tolist()
    [[0, 0, 10, 10]]
    """
    for name, value in (("H", H), ("W", W), ("levels", levels)):
        if not isinstance(value, (Integral, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not isinstance(overlap, Real) or not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a float in [0, 1), got {overlap!r}")
    return cached_region_grid(int(H), int(W), int(levels), float(overlap)).copy()


@lru_cache(maxsize=256)
def cached_region_grid(H, W, levels, overlap):
    """Cached :func:`region_grid` (validated arguments); read-only result."""
    short, long_ = min(H, W), max(H, W)

    if long_ == short:
        extra = 0
    else:
        # Level-1 regions have side `short`; with k of them along the long
        # side their start offsets are b = (long - short) / (k - 1) apart and
        # consecutive regions overlap by a fraction 1 - b / short.
        k_min = max(2, -(-(long_ - short) // short) + 1)  # b <= short
        k_max = max(7, k_min, math.ceil((long_ - short) / (short * (1 - overlap))) + 2)
        ks = np.arange(k_min, k_max + 1)
        achieved = 1.0 - (long_ - short) / (ks - 1) / short
        extra = int(ks[np.argmin(np.abs(achieved - overlap))]) - 1

    boxes = []
    seen = set()
    for level in range(1, levels + 1):
        side = max(1, (2 * short) // (level + 1))
        along_short = _region_starts(short, side, level)
        along_long = _region_starts(long_, side, level + extra)
        if H <= W:
            ys, xs = along_short, along_long
        else:
            ys, xs = along_long, along_short
        for y0 in ys.tolist():
            for x0 in xs.tolist():
                box = (y0, x0, y0 + side, x0 + side)
                if box not in seen:
                    seen.add(box)
                    boxes.append(box)
    grid = np.asarray(boxes, dtype=np.intp).reshape(-1, 4)
    grid.flags.writeable = False
    return grid
