"""Global poolings: SPoC, MAC and GeM.

* :class:`SPoCPooler` -- sum pooling with a Gaussian centre prior
  (Babenko & Lempitsky, 2015);
* :class:`MACPooler` -- global max pooling (Tolias et al., 2016;
  Razavian et al., 2016);
* :class:`GeMPooler` -- generalized mean pooling (Radenović et al., 2018).

The formulas are those of :mod:`._functional`, shared with the torch layers
of :mod:`skretrieval.nn`; the estimators add the validation, the multi-scale
combination and the normalisation of :class:`~._base.BasePooler`.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval, Options

from ._base import BasePooler, fill_doc
from ._functional import center_prior, gem, mac, spoc

__all__ = ["GeMPooler", "MACPooler", "SPoCPooler"]


# ---------------------------------------------------------------------------
# SPoC
# ---------------------------------------------------------------------------
@fill_doc
class SPoCPooler(BasePooler):
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
        **BasePooler._parameter_constraints,
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

    def _pool_map(self, x):
        if not self.center_prior:
            return spoc(x, dtype=np.float64)
        # the float64 prior makes the products and their sum float64
        return spoc(x, center_prior(*x.shape[1:], self.sigma))


# ---------------------------------------------------------------------------
# MAC
# ---------------------------------------------------------------------------
@fill_doc
class MACPooler(BasePooler):
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
        return mac(x).astype(np.float64)


# ---------------------------------------------------------------------------
# GeM
# ---------------------------------------------------------------------------
@fill_doc
class GeMPooler(BasePooler):
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
        **BasePooler._parameter_constraints,
        "p": [Interval(Real, 0, None, closed="neither"), Options(Real, {np.inf})],
        "eps": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, *, p=3.0, eps=1e-6, normalize=True, scale_combination="sum"):
        self.p = p
        self.eps = eps
        self.normalize = normalize
        self.scale_combination = scale_combination

    def _pool_map(self, x):
        eps = float(self.eps)
        if not float(x.max()) > eps:  # no activation above eps: no signal
            return np.zeros(x.shape[0], dtype=np.float64)
        # float32 powers of x / max(x) in [0, 1], accumulated in float64
        return np.asarray(gem(x, float(self.p), eps, dtype=np.float64), dtype=np.float64)
