"""Regional and weighted poolings: R-MAC (with :func:`region_grid`) and CroW.

* :class:`RMACPooler` -- regional maximum activations of convolutions
  (Tolias et al., 2016), over the regions of :func:`region_grid`;
* :class:`CroWPooler` -- cross-dimensional weighting (Kalantidis et al.,
  2016).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, Options

from ..extraction._maps import check_maps, iter_maps
from ._base import BasePooler, check_image, fill_doc
from ._functional import cached_region_grid, region_grid, regional_mac

__all__ = ["CroWPooler", "RMACPooler", "region_grid"]

# The small constant of the CroW channel weights (Kalantidis et al., eq. 5).
_CROW_EPS = 1e-6


# ---------------------------------------------------------------------------
# R-MAC
# ---------------------------------------------------------------------------
@fill_doc
class RMACPooler(BasePooler):
    """Regional maximum activations of convolutions (R-MAC).

    Square regions are sampled at ``levels`` scales over the map (see
    :func:`region_grid`), the MAC vector of each region is computed and
    L2-normalised, the regional vectors are summed, and the sum is
    L2-normalised [Tolias2016]_.

    Parameters
    ----------
    levels : int, default=3
        Number of region levels ``L``; level ``l`` has regions of side
        ``2 * min(H, W) / (l + 1)``.
    overlap : float, default=0.4
        Target overlap of consecutive regions, in ``[0, 1)``.
%(common_params)s
    Attributes
    ----------
%(common_attrs)s
    See Also
    --------
    region_grid : The regions of a map.
    MACPooler : Max pooling over the whole map.
    skretrieval.PCAWhitener : Whitening of descriptors (or, fitted on the
        output of :meth:`transform_regions`, of regional vectors).

    Notes
    -----
    In the paper each regional vector is L2-normalised, PCA-whitened and
    L2-normalised again before the sum.  This transformer,
    being stateless, sums the L2-normalised regional vectors without
    whitening.  To reproduce the full method, get the regional vectors with
    :meth:`transform_regions`, fit a :class:`~skretrieval.PCAWhitener` on
    ``np.vstack(regions)``, whiten and L2-normalise each image's regions, sum
    them and L2-normalise.

    The regional L2-normalisation is part of the R-MAC definition and is
    applied whatever ``normalize``; ``normalize`` controls the per-scale and
    final normalisations.  Regions that fall on an all-zero part of the map
    have zero MAC vectors and contribute nothing.

    References
    ----------
    .. [Tolias2016] G. Tolias, R. Sicre and H. Jégou, "Particular object
       retrieval with integral max-pooling of CNN activations", International
       Conference on Learning Representations (ICLR), 2016.
%(common_refs)s
    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import RMACPooler
    >>> rng = np.random.default_rng(0)
    >>> maps = rng.random((2, 8, 6, 10), dtype=np.float32)
    >>> RMACPooler(levels=3).fit_transform(maps).shape
    (2, 8)
    >>> regions, boxes = RMACPooler().transform_regions(maps)
    >>> regions[0].shape, boxes[0].shape  # (scale, y0, x0, y1, x1) per region
    ((20, 8), (20, 5))
    """

    _parameter_constraints: dict = {
        **BasePooler._parameter_constraints,
        "levels": [Interval(Integral, 1, None, closed="left")],
        "overlap": [Interval(Real, 0, 1, closed="left")],
    }

    def __init__(
        self, *, levels=3, overlap=0.4, normalize=True, scale_combination="sum"
    ):
        self.levels = levels
        self.overlap = overlap
        self.normalize = normalize
        self.scale_combination = scale_combination

    def _regions_map(self, x):
        """L2-normalised regional MAC vectors ``(R, C)`` and boxes ``(R, 4)``."""
        _, H, W = x.shape
        boxes = cached_region_grid(H, W, int(self.levels), float(self.overlap))
        return regional_mac(x, boxes, dtype=np.float64), boxes

    def _pool_map(self, x):
        return self._regions_map(x)[0].sum(axis=0)

    def transform_regions(self, X):
        """Regional MAC vectors of each image, for instance to learn whitening.

        Parameters
        ----------
        X : FeatureMaps, ndarray of shape (n_images, C, H, W) or list
            Feature maps, as for :meth:`transform`.

        Returns
        -------
        regions : list of ndarray of shape (n_regions_i, C), dtype=float32
            Per image, the L2-normalised MAC vector of every region of every
            scale (scale by scale, regions in :func:`region_grid` order).
        boxes : list of ndarray of shape (n_regions_i, 5), dtype=intp
            Per image, the matching ``(scale, y0, x0, y1, x1)`` rows: the
            scale index and the box in that scale's map (exclusive ends).
        """
        self._validate_params()
        check_maps(X)
        n_channels = getattr(self, "n_channels_", None)
        regions, boxes = [], []
        for i, maps in enumerate(iter_maps(X)):
            if n_channels is None:
                n_channels = maps[0].shape[0]
            check_image(maps, i, n_channels)
            vecs, bxs = [], []
            for s, x in enumerate(maps):
                v, b = self._regions_map(x)
                vecs.append(v.astype(np.float32))
                bxs.append(np.column_stack([np.full(len(b), s, dtype=np.intp), b]))
            regions.append(np.concatenate(vecs))
            boxes.append(np.concatenate(bxs))
        return regions, boxes


# ---------------------------------------------------------------------------
# CroW
# ---------------------------------------------------------------------------
@fill_doc
class CroWPooler(BasePooler):
    """Cross-dimensional weighting (CroW) and sum pooling.

    The activations are weighted by a spatial weight ``S`` and a channel
    weight ``Omega`` and summed over positions [Kalantidis2016]_:

    .. math::

        Z_{ij} = \\sum_k x_{kij}, \\qquad
        S_{ij} = \\left(\\frac{Z_{ij}}{\\|Z\\|_a}\\right)^{1/b}, \\qquad
        \\|Z\\|_a = \\Big(\\sum_{m,n} Z_{mn}^a\\Big)^{1/a},

    .. math::

        Q_k = \\frac{|\\{(i, j): x_{kij} \\neq 0\\}|}{H W}, \\qquad
        \\Omega_k = \\log\\frac{K\\epsilon + \\sum_h Q_h}{\\epsilon + Q_k},
        \\qquad
        f_k = \\Omega_k \\sum_{i,j} S_{ij} x_{kij},

    with ``K`` the number of channels and ``epsilon = 1e-6``; ``f`` is then
    L2-normalised.

    Parameters
    ----------
    spatial_a : float, default=2
        Norm ``a`` of the spatial normalisation (``> 0``; ``np.inf`` for the
        max norm).  The paper uses ``a=2``.
    spatial_b : float, default=2
        Power ``1/b`` applied to the normalised spatial responses (``> 0``).
        The paper uses ``b=2``.
    channel_weighting : bool, default=True
        Apply the idf-like channel weights ``Omega``; ``False`` keeps only the
        spatial weighting.
%(common_params)s
    Attributes
    ----------
%(common_attrs)s
    See Also
    --------
    SPoCPooler : Sum pooling with a fixed (centre) spatial prior.
    skretrieval.PCAWhitener : The paper's descriptor is CroW followed by
        PCA-whitening and a second L2-normalisation: append a
        :class:`~skretrieval.PCAWhitener` to the pipeline.

    Notes
    -----
    CroW assumes rectified (non-negative) activations.  Negative aggregated
    responses ``Z_ij`` are clipped to zero before the spatial weighting so
    that fractional powers stay defined.  ``Q_k`` counts the non-zero
    activations of channel ``k``.  A map whose aggregated response is zero
    everywhere (an all-zero map) gives a zero descriptor.

    References
    ----------
    .. [Kalantidis2016] Y. Kalantidis, C. Mellina and S. Osindero,
       "Cross-dimensional weighting for aggregated deep convolutional
       features", European Conference on Computer Vision (ECCV) Workshops,
       pp. 685-701, 2016.
%(common_refs)s
    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import CroWPooler
    >>> rng = np.random.default_rng(0)
    >>> maps = np.maximum(rng.standard_normal((3, 16, 7, 9)), 0)  # ReLU-like
    >>> CroWPooler().fit_transform(maps).shape
    (3, 16)
    """

    _parameter_constraints: dict = {
        **BasePooler._parameter_constraints,
        "spatial_a": [
            Interval(Real, 0, None, closed="neither"),
            Options(Real, {np.inf}),
        ],
        "spatial_b": [Interval(Real, 0, None, closed="neither")],
        "channel_weighting": ["boolean"],
    }

    def __init__(
        self,
        *,
        spatial_a=2,
        spatial_b=2,
        channel_weighting=True,
        normalize=True,
        scale_combination="sum",
    ):
        self.spatial_a = spatial_a
        self.spatial_b = spatial_b
        self.channel_weighting = channel_weighting
        self.normalize = normalize
        self.scale_combination = scale_combination

    def _spatial_weights(self, flat):
        """``S`` of the ``(C, H*W)`` activations, as a ``(H*W,)`` vector."""
        Z = np.maximum(flat.sum(axis=0, dtype=np.float64), 0.0)
        z_max = Z.max()
        if not z_max > 0:
            return np.zeros_like(Z)
        Z /= z_max  # scale out before powering: ||Z||_a is homogeneous
        norm = np.linalg.norm(Z, ord=float(self.spatial_a))
        return np.power(Z / norm, 1.0 / float(self.spatial_b))

    @staticmethod
    def _channel_weights(flat):
        """``Omega`` of the ``(C, H*W)`` activations, as a ``(C,)`` vector."""
        C, n_pos = flat.shape
        Q = np.count_nonzero(flat, axis=1) / n_pos
        return np.log((C * _CROW_EPS + Q.sum()) / (_CROW_EPS + Q))

    def _pool_map(self, x):
        C = x.shape[0]
        flat = x.reshape(C, -1)
        S = self._spatial_weights(flat)
        vec = np.einsum("cp,p->c", flat, S)  # accumulated in float64
        if self.channel_weighting:
            vec *= self._channel_weights(flat)
        return vec
