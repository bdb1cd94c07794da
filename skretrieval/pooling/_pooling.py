"""Pooling of convolutional feature maps into global image descriptors.

The poolers turn the ragged per-image, per-scale ``(C, H, W)`` feature maps
produced by :class:`~skretrieval.ConvFeatureExtractor` (see
:class:`~skretrieval.FeatureMaps`) into one ``C``-dimensional float32
descriptor per image:

* :class:`SPoCPooler` -- sum pooling with a Gaussian centre prior
  (Babenko & Lempitsky, 2015);
* :class:`MACPooler` -- global max pooling (Tolias et al., 2016;
  Razavian et al., 2016);
* :class:`GeMPooler` -- generalized mean pooling (Radenović et al., 2018);
* :class:`RMACPooler` -- regional maximum activations of convolutions
  (Tolias et al., 2016), with the public helper :func:`region_grid`;
* :class:`CroWPooler` -- cross-dimensional weighting (Kalantidis et al.,
  2016).

They are stateless: ``transform`` works without ``fit`` (their
``requires_fit`` tag is ``False``), so they can sit unfitted at the head of a
:class:`~sklearn.pipeline.Pipeline`.  ``fit`` only validates the maps and
records the number of channels, which :meth:`get_feature_names_out` (and
hence ``set_output(transform="pandas")``) needs.

Images are processed one at a time, so a disk-backed
:class:`~skretrieval.FeatureMaps` is never loaded whole; the work on each
image is vectorised with NumPy (float32 arithmetic on the maps, float64
reductions and normalisations).
"""

from __future__ import annotations

import math
from functools import lru_cache
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..utils._arrays import l2_normalize
from ..extraction._maps import FeatureMaps, check_maps, iter_maps
from ..utils._state import Attr, StateSpec

__all__ = [
    "CroWPooler",
    "GeMPooler",
    "MACPooler",
    "RMACPooler",
    "SPoCPooler",
    "region_grid",
]

# The small constant of the CroW channel weights (Kalantidis et al., eq. 5).
_CROW_EPS = 1e-6


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _inspect_maps(X):
    """Validate ``X`` cheaply and return ``(n_channels, n_scales)``.

    A :class:`FeatureMaps` and a 4-D array are described by their metadata
    (nothing is read from disk); the items of a list are checked one by one.
    """
    check_maps(X)
    if isinstance(X, FeatureMaps):
        return int(X.n_channels), len(X.scales)
    if isinstance(X, np.ndarray):  # 4-D, checked by check_maps
        return int(X.shape[1]), 1
    n_channels = n_scales = None
    for i, maps in enumerate(iter_maps(X)):
        if n_scales is None:
            n_channels, n_scales = maps[0].shape[0], len(maps)
        elif len(maps) != n_scales:
            raise ValueError(
                f"image {i} has feature maps at {len(maps)} scales, but image 0 "
                f"has {n_scales}; every image must have the same number of scales"
            )
        for s, x in enumerate(maps):
            if x.shape[0] != n_channels:
                raise ValueError(
                    f"image {i} (scale {s}) has {x.shape[0]} channels, expected "
                    f"{n_channels}"
                )
    return int(n_channels), int(n_scales)


def _check_image(maps, index, n_channels):
    """Check the per-scale maps of image ``index``: channels, size, finiteness."""
    for s, x in enumerate(maps):
        if x.shape[0] != n_channels:
            raise ValueError(
                f"image {index} (scale {s}) has {x.shape[0]} channels, expected "
                f"{n_channels}"
            )
        if x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(
                f"image {index} (scale {s}) has an empty feature map of shape "
                f"{x.shape}"
            )
        if not np.isfinite(x).all():
            raise ValueError(
                f"the feature maps of image {index} (scale {s}) contain NaN or "
                "infinite values"
            )


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
    >>> from skretrieval._pooling import region_grid
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
    return _region_grid(int(H), int(W), int(levels), float(overlap)).copy()


@lru_cache(maxsize=256)
def _region_grid(H, W, levels, overlap):
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


# ---------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------
class _BasePooler(TransformerMixin, BaseEstimator):
    """Shared machinery of the poolers (validation, multi-scale, output).

    Subclasses implement ``_pool_map(x)``: a ``(C, H, W)`` float32 map (which
    may be a read-only view of the caller's data: never modify it) to a
    ``(C,)`` float64 vector, before any normalisation.
    """

    _parameter_constraints: dict = {
        "normalize": ["boolean"],
        "scale_combination": [StrOptions({"sum", "concat"})],
    }

    # The state skretrieval.persistence stores and accepts (see _persist.py),
    # the same for every pooler.
    _state_spec = StateSpec({
        "n_channels_": Attr("int", values=(1, None)),
        "n_scales_": Attr("int", values=(1, None)),
    })

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    # -- fitting ---------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the feature maps and record their number of channels.

        The pooler has nothing to learn: ``transform`` works without ``fit``.
        Fitting records ``n_channels_`` and ``n_scales_``, which
        :meth:`get_feature_names_out` needs, and makes later calls to
        ``transform`` check that their maps have the same number of channels.
        The values themselves are not read (a disk store is not scanned); NaN
        and infinite values are detected by ``transform``.

        Parameters
        ----------
        X : FeatureMaps, ndarray of shape (n_images, C, H, W) or list
            Feature maps: a :class:`~skretrieval.FeatureMaps`, a 4-D array, a
            list of ``(C, H, W)`` arrays, or a list of per-image sequences of
            ``(C, H, W)`` arrays (one per scale).
        y : None
            Ignored.

        Returns
        -------
        self : object
            The pooler.
        """
        self.n_channels_, self.n_scales_ = _inspect_maps(X)
        return self

    # -- transforming ----------------------------------------------------
    def transform(self, X):
        """Pool the feature maps of each image into one descriptor.

        Parameters
        ----------
        X : FeatureMaps, ndarray of shape (n_images, C, H, W) or list
            Feature maps: a :class:`~skretrieval.FeatureMaps`, a 4-D array, a
            list of ``(C, H, W)`` arrays, or a list of per-image sequences of
            ``(C, H, W)`` arrays (one per scale).  All maps must have the same
            number of channels ``C``; ``H`` and ``W`` may vary.

        Returns
        -------
        X_new : ndarray of shape (n_images, n_features), dtype=float32
            One descriptor per image; ``n_features`` is ``C``, or ``C *
            n_scales`` with ``scale_combination="concat"``.
        """
        self._validate_params()
        n_images = check_maps(X)
        n_channels = getattr(self, "n_channels_", None)
        n_scales = getattr(self, "n_scales_", None)
        concat = self.scale_combination == "concat"
        out = None
        for i, maps in enumerate(iter_maps(X)):
            if n_channels is None:
                n_channels = maps[0].shape[0]
            if concat:
                if n_scales is None:
                    n_scales = len(maps)
                elif len(maps) != n_scales:
                    raise ValueError(
                        f"image {i} has feature maps at {len(maps)} scales, "
                        f"expected {n_scales}: scale_combination='concat' needs "
                        "the same number of scales for every image"
                    )
            _check_image(maps, i, n_channels)
            vec = self._describe(maps)
            if out is None:
                out = np.empty((n_images, vec.shape[0]), dtype=np.float32)
            out[i] = vec
        return out

    def _describe(self, maps):
        """Pool every scale of one image and combine them (float64 vector)."""
        vecs = [self._pool_map(x) for x in maps]
        if self.normalize:
            vecs = [l2_normalize(v) for v in vecs]
        if self.scale_combination == "concat":
            vec = np.concatenate(vecs)
        else:
            vec = np.sum(vecs, axis=0)
        return l2_normalize(vec) if self.normalize else vec

    def _pool_map(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- feature names ---------------------------------------------------
    def get_feature_names_out(self, input_features=None):
        """Get output feature names for transformation.

        The names are the lowercased class name followed by the feature
        index, e.g. ``["gempooler0", "gempooler1", ...]``.  With
        ``scale_combination="concat"`` the features are ordered scale by scale
        (features ``s * C`` to ``(s + 1) * C - 1`` come from scale ``s``).

        Parameters
        ----------
        input_features : None
            Ignored (the input has no feature names); present for API
            consistency.

        Returns
        -------
        feature_names_out : ndarray of str objects
            Transformed feature names.
        """
        check_is_fitted(
            self,
            ["n_channels_", "n_scales_"],
            msg=(
                "This %(name)s instance is not fitted yet: the feature names "
                "depend on the number of channels, which 'fit' records "
                "(transform itself works without fit)."
            ),
        )
        n_out = self.n_channels_
        if self.scale_combination == "concat":
            n_out *= self.n_scales_
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(n_out)], dtype=object)


_COMMON_PARAMS_DOC = """\
    normalize : bool, default=True
        L2-normalise the descriptor, as every paper does before comparing
        descriptors by dot product.  With several scales, each scale's
        descriptor is also L2-normalised before they are combined.  With
        ``False`` nothing is normalised (the raw pooled vectors are summed or
        concatenated).
    scale_combination : {"sum", "concat"}, default="sum"
        How the descriptors of the scales of a multi-scale
        :class:`~skretrieval.FeatureMaps` are combined.  ``"sum"``: each
        scale's map is pooled and L2-normalised, the per-scale descriptors are
        summed (the same as averaged once L2-normalised) and L2-normalised, as
        Gordo et al. (2017) and Radenović et al. (2018) build multi-scale
        descriptors; the dimension stays ``C``.  ``"concat"``: the
        L2-normalised per-scale descriptors are concatenated, scale by scale,
        and the result L2-normalised, keeping the scales apart as in the
        multi-scale study of Ng et al. (2015); the dimension is ``C *
        n_scales``.  With a single scale both give the same result.
"""

_COMMON_ATTRS_DOC = """\
    n_channels_ : int
        Number of channels ``C`` of the maps seen in :meth:`fit`.
    n_scales_ : int
        Number of scales per image of the maps seen in :meth:`fit`.
"""

_COMMON_REFS = """\
    .. [Gordo2017] A. Gordo, J. Almazán, J. Revaud and D. Larlus, "End-to-end
       learning of deep visual representations for image retrieval",
       International Journal of Computer Vision 124(2):237-254, 2017.
    .. [Ng2015] J. Y.-H. Ng, F. Yang and L. S. Davis, "Exploiting local
       features from deep networks for image retrieval", CVPR Workshops, 2015.
"""


def _fill_doc(cls):
    if cls.__doc__ is None:  # python -OO
        return cls
    cls.__doc__ = (
        cls.__doc__.replace("%(common_params)s", _COMMON_PARAMS_DOC)
        .replace("%(common_attrs)s", _COMMON_ATTRS_DOC)
        .replace("%(common_refs)s", _COMMON_REFS)
    )
    return cls


# ---------------------------------------------------------------------------
# SPoC
# ---------------------------------------------------------------------------
@_fill_doc
class SPoCPooler(_BasePooler):
    """Sum-pooled convolutional features (SPoC) with a centre prior.

    Each channel is summed over the spatial positions, weighted by a Gaussian
    centre prior [Babenko2015]_:

    .. math::

        \\psi_k = \\sum_{y, x} \\alpha(x, y) f_k(x, y), \\qquad
        \\alpha(x, y) = \\exp\\left(-\\frac{(y - H/2)^2 + (x - W/2)^2}
        {2 \\sigma^2}\\right),

    and the result is L2-normalised.

    Parameters
    ----------
    center_prior : bool, default=True
        Weight the positions by the Gaussian centre prior; ``False`` gives
        plain sum pooling.
    sigma : float or None, default=None
        Standard deviation of the prior, as a fraction of the distance from
        the map centre to its closest boundary (``min(H, W) / 2``), so that
        the prior adapts to the size of each (ragged) map.  ``None`` means
        ``1/3``, the paper's choice.
%(common_params)s
    Attributes
    ----------
%(common_attrs)s
    See Also
    --------
    MACPooler : Global max pooling.
    GeMPooler : Generalized mean pooling (``p=1`` is average pooling).
    CroWPooler : Sum pooling with data-dependent spatial and channel weights.
    skretrieval.PCAWhitener : The paper's descriptor is SPoC followed by
        PCA-whitening and a second L2-normalisation: append a
        :class:`~skretrieval.PCAWhitener` to the pipeline.

    Notes
    -----
    Coordinates are pixel centres: cell ``(i, j)`` sits at ``(y, x) = (i +
    0.5, j + 0.5)`` in a map spanning ``[0, H] x [0, W]``, so the prior is
    symmetric and centred at ``(H/2, W/2)``.  With the default ``sigma`` the
    standard deviation is ``min(H, W) / 6`` cells.

    References
    ----------
    .. [Babenko2015] A. Babenko and V. Lempitsky, "Aggregating local deep
       features for image retrieval", Proceedings of the IEEE International
       Conference on Computer Vision (ICCV), pp. 1269-1277, 2015.
%(common_refs)s
    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import SPoCPooler
    >>> rng = np.random.default_rng(0)
    >>> maps = rng.random((3, 16, 7, 9), dtype=np.float32)  # 3 images, C=16
    >>> X = SPoCPooler().fit_transform(maps)
    >>> X.shape, X.dtype
    ((3, 16), dtype('float32'))
    >>> bool(np.allclose(np.linalg.norm(X, axis=1), 1.0))
    True
    """

    _parameter_constraints: dict = {
        **_BasePooler._parameter_constraints,
        "center_prior": ["boolean"],
        "sigma": [Interval(Real, 0, None, closed="neither"), None],
    }

    def __init__(
        self, *, center_prior=True, sigma=None, normalize=True, scale_combination="sum"
    ):
        self.center_prior = center_prior
        self.sigma = sigma
        self.normalize = normalize
        self.scale_combination = scale_combination

    def _prior(self, H, W):
        """The ``(H, W)`` Gaussian centre prior (float64)."""
        fraction = 1.0 / 3.0 if self.sigma is None else float(self.sigma)
        sigma = fraction * min(H, W) / 2.0
        dy = np.arange(H, dtype=np.float64) + 0.5 - H / 2.0
        dx = np.arange(W, dtype=np.float64) + 0.5 - W / 2.0
        wy = np.exp(-(dy**2) / (2.0 * sigma**2))
        wx = np.exp(-(dx**2) / (2.0 * sigma**2))
        return np.outer(wy, wx)  # separable: exp(-(a + b)) = exp(-a) exp(-b)

    def _pool_map(self, x):
        C, H, W = x.shape
        flat = x.reshape(C, H * W)
        if not self.center_prior:
            return flat.sum(axis=1, dtype=np.float64)
        # einsum with a float64 operand accumulates in float64
        return np.einsum("cp,p->c", flat, self._prior(H, W).ravel())


# ---------------------------------------------------------------------------
# MAC
# ---------------------------------------------------------------------------
@_fill_doc
class MACPooler(_BasePooler):
    """Maximum activations of convolutions (MAC): global max pooling.

    Each channel is reduced to its maximum over the spatial positions,
    ``f_k = max_{y, x} x_k(y, x)`` [Tolias2016]_ [Razavian2016]_, and the
    result is L2-normalised.

    Parameters
    ----------
%(common_params)s
    Attributes
    ----------
%(common_attrs)s
    See Also
    --------
    RMACPooler : MAC vectors of a grid of regions, aggregated.
    GeMPooler : Generalized mean pooling (``p=np.inf`` is MAC).
    skretrieval.PCAWhitener : Whitening of the descriptors.

    Notes
    -----
    On maps that are not rectified (negative activations), MAC keeps the
    negative maxima; an all-zero map gives a zero descriptor.

    References
    ----------
    .. [Tolias2016] G. Tolias, R. Sicre and H. Jégou, "Particular object
       retrieval with integral max-pooling of CNN activations", International
       Conference on Learning Representations (ICLR), 2016.
    .. [Razavian2016] A. S. Razavian, J. Sullivan, S. Carlsson and A. Maki,
       "Visual instance retrieval with deep convolutional networks", ITE
       Transactions on Media Technology and Applications 4(3):251-258, 2016.
%(common_refs)s
    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import MACPooler
    >>> maps = np.zeros((1, 2, 3, 3), dtype=np.float32)
    >>> maps[0, 0, 1, 2] = 3.0
    >>> maps[0, 1, 0, 0] = 4.0
    >>> MACPooler().fit_transform(maps)
    array([[0.6, 0.8]], dtype=float32)
    """

    def __init__(self, *, normalize=True, scale_combination="sum"):
        self.normalize = normalize
        self.scale_combination = scale_combination

    def _pool_map(self, x):
        C = x.shape[0]
        return x.reshape(C, -1).max(axis=1).astype(np.float64)


# ---------------------------------------------------------------------------
# GeM
# ---------------------------------------------------------------------------
@_fill_doc
class GeMPooler(_BasePooler):
    """Generalized-mean (GeM) pooling.

    Each channel is reduced to the generalized mean of its activations
    [Radenovic2018]_:

    .. math::

        f_k = \\left(\\frac{1}{|\\mathcal{X}_k|} \\sum_{x \\in \\mathcal{X}_k}
        \\max(x, \\epsilon)^p\\right)^{1/p},

    and the result is L2-normalised.  ``p=1`` is average pooling, ``p`` going
    to infinity tends to max pooling, and ``p=np.inf`` is max pooling
    (:class:`MACPooler` on ``max(x, eps)``) exactly.

    Parameters
    ----------
    p : float, default=3.0
        Pooling exponent, ``> 0``; ``np.inf`` for max pooling.  The paper
        learns ``p`` and reports values around 3.
    eps : float, default=1e-6
        Activations are clamped to at least ``eps`` before pooling, as in the
        authors' implementation (it keeps the powers of non-positive values
        defined).
%(common_params)s
    Attributes
    ----------
%(common_attrs)s
    See Also
    --------
    MACPooler : Max pooling, the ``p=np.inf`` case.
    SPoCPooler : Sum pooling (``p=1`` without centre prior, up to the
        clamping).
    skretrieval.PCAWhitener : Whitening of the descriptors (the paper learns
        it on matching pairs; PCA-whitening is the unsupervised variant).

    Notes
    -----
    The power mean is computed per channel relative to the channel's maximum
    ``m``, as ``m * mean((x / m)^p)^(1/p)``, so large ``p`` neither overflows
    nor loses the maximum.

    A map in which no activation exceeds ``eps`` (in particular an all-zero
    map) carries no signal; its descriptor is a zero vector rather than the
    constant vector ``eps`` that the formula gives (which L2-normalisation
    would turn into a spurious uniform descriptor).

    References
    ----------
    .. [Radenovic2018] F. Radenović, G. Tolias and O. Chum, "Fine-tuning CNN
       image retrieval with no human annotation", IEEE Transactions on
       Pattern Analysis and Machine Intelligence 41(7):1655-1668, 2019
       (online 2018).
%(common_refs)s
    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import GeMPooler
    >>> rng = np.random.default_rng(0)
    >>> maps = rng.random((4, 8, 5, 7), dtype=np.float32)  # 4 images, C=8
    >>> X = GeMPooler(p=3.0).fit_transform(maps)
    >>> X.shape
    (4, 8)
    >>> avg = GeMPooler(p=1.0, normalize=False).transform(maps)
    >>> bool(np.allclose(avg, maps.mean(axis=(2, 3))))
    True
    """

    _parameter_constraints: dict = {
        **_BasePooler._parameter_constraints,
        "p": [Interval(Real, 0, None, closed="neither"), Options(Real, {np.inf})],
        "eps": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, *, p=3.0, eps=1e-6, normalize=True, scale_combination="sum"):
        self.p = p
        self.eps = eps
        self.normalize = normalize
        self.scale_combination = scale_combination

    def _pool_map(self, x):
        C = x.shape[0]
        p, eps = float(self.p), float(self.eps)
        flat = x.reshape(C, -1)
        m = flat.max(axis=1).astype(np.float64)
        if not m.max() > eps:  # no activation above eps: no signal
            return np.zeros(C, dtype=np.float64)
        m = np.maximum(m, eps)  # the max of the clamped activations
        if math.isinf(p):
            return m
        safe_m = np.where(m > 0, m, 1.0)  # m == 0 only when eps == 0
        # x / m lies in [0, 1]: its powers can underflow (harmlessly), never
        # overflow, so float32 is enough; the mean is accumulated in float64.
        z = np.maximum(flat, np.float32(eps))
        z /= safe_m.astype(np.float32)[:, None]
        np.power(z, np.float32(p), out=z)
        return m * np.power(z.mean(axis=1, dtype=np.float64), 1.0 / p)


# ---------------------------------------------------------------------------
# R-MAC
# ---------------------------------------------------------------------------
@_fill_doc
class RMACPooler(_BasePooler):
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
        **_BasePooler._parameter_constraints,
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
        boxes = _region_grid(H, W, int(self.levels), float(self.overlap))
        vecs = np.stack(
            [x[:, y0:y1, x0:x1].max(axis=(1, 2)) for y0, x0, y1, x1 in boxes.tolist()]
        ).astype(np.float64)
        return l2_normalize(vecs), boxes

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
            _check_image(maps, i, n_channels)
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
@_fill_doc
class CroWPooler(_BasePooler):
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
        **_BasePooler._parameter_constraints,
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
