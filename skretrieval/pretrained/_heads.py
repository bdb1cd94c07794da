"""The descriptor heads of published networks: whitenings read from files, scale pooling.

The whitenings stored in checkpoints become fitted skretrieval whiteners
(frozen, so that fitting a pipeline on a database keeps them):

* an affine layer ``x -> W x + b`` followed by L2 normalisation (cirtorch's
  ``whiten`` layer, naver's ``fc``) is a :class:`~skretrieval.LearnedWhitener`
  with ``projection_ = W`` and the mean ``m`` that solves ``W m = -b``;
* cirtorch's learned whitening ``Lw = {'m', 'P'}`` (applied as ``P (x - m)``
  then L2) is a :class:`~skretrieval.LearnedWhitener` as it stands;
* naver's scikit-learn PCA with its whitening power is a
  :class:`~skretrieval.PCAWhitener`.

:class:`MultiScaleHead` is the multi-scale protocol of both families: every
scale goes through the network's whole head (pooling, projection, L2) and
the per-scale descriptors are combined by a generalized mean.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.decomposition import PCA
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted

from ..extraction._maps import check_maps, iter_maps
from ..pooling._base import inspect_maps
from ..pooling._learned_whitening import LearnedWhitener
from ..pooling._whitening import PCAWhitener
from ..utils._arrays import l2_normalize
from ..utils._state import Attr, StateSpec

__all__ = ["MultiScaleHead", "affine_whitener", "projection_whitener", "pca_whitener"]


def projection_whitener(mean, projection, *, l2_before=True):
    """A fitted, frozen :class:`~skretrieval.LearnedWhitener` computing
    ``L2(projection @ (x - mean))``.

    Parameters
    ----------
    mean : array-like of shape (n_features,)
    projection : array-like of shape (n_components, n_features)
    l2_before : bool, default=True
        Whether the input is L2-normalised first.

    Returns
    -------
    FrozenEstimator
        Wrapping the whitener; its ``eigenvalues_`` are NaN (a file gives the
        projection, not the eigenvalues it came from).
    """
    mean = np.asarray(mean, dtype=np.float64).ravel()
    projection = np.asarray(projection, dtype=np.float64)
    if projection.ndim != 2 or projection.shape[1] != mean.shape[0]:
        raise ValueError(f"a projection of shape {projection.shape} does not apply to "
                         f"vectors of {mean.shape[0]} dimensions")
    lw = LearnedWhitener(n_components=projection.shape[0], l2_before=l2_before)
    lw.n_features_in_ = int(mean.shape[0])
    lw.mean_ = mean
    lw.projection_ = projection
    lw.eigenvalues_ = np.full(projection.shape[0], np.nan)
    lw.n_components_ = int(projection.shape[0])
    return FrozenEstimator(lw)


def affine_whitener(weight, bias, *, l2_before=True, what="the projection layer"):
    """``L2(weight @ x + bias)`` as a fitted, frozen :class:`~skretrieval.LearnedWhitener`.

    The bias becomes the mean ``m`` with ``weight @ m = -bias`` (least squares);
    a layer whose bias is not in the range of its weight is refused.
    """
    W = np.asarray(weight, dtype=np.float64)
    b = np.zeros(W.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    try:  # a square (whitening-initialised) or wide layer: a direct solve
        if W.shape[0] == W.shape[1]:
            m = np.linalg.solve(W, -b)
        elif W.shape[0] < W.shape[1]:
            m = W.T @ np.linalg.solve(W @ W.T, -b)  # the least-norm solution
        else:
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        m, *_ = np.linalg.lstsq(W, -b, rcond=None)
    residual = np.linalg.norm(W @ m + b)
    if residual > 1e-6 * max(np.linalg.norm(b), 1.0):
        raise ValueError(f"{what} (weight {W.shape}) cannot be written as a whitening: "
                         f"its bias is not in the range of its weight (residual {residual:.3g})")
    return projection_whitener(m, W, l2_before=l2_before)


def pca_whitener(mean, components, explained_variance, *, power=0.5, whiten=True,
                 multiplier=1.0, n_samples=None):
    """A fitted, frozen :class:`~skretrieval.PCAWhitener` from PCA matrices.

    Component ``i`` is divided by ``multiplier * explained_variance[i] ** power``
    (naver's ``whitenp``, ``whitenm``), or not at all when ``whiten`` is False.
    """
    mean = np.asarray(mean, dtype=np.float64).ravel()
    components = np.asarray(components, dtype=np.float64)
    var = np.asarray(explained_variance, dtype=np.float64).ravel()
    k, d = components.shape
    if mean.shape != (d,) or var.shape != (k,):
        raise ValueError(f"PCA of {k} components of {d} dimensions with a mean of shape "
                         f"{mean.shape} and variances of shape {var.shape}")
    n = int(n_samples) if n_samples else k + 1
    pca = PCA(n_components=k)
    pca.n_features_in_ = d
    pca.mean_, pca.components_, pca.explained_variance_ = mean, components, var
    pca.n_components_, pca.n_samples_ = k, n
    pca.explained_variance_ratio_ = var / var.sum() if var.sum() > 0 else var
    pca.singular_values_ = np.sqrt(np.maximum(var, 0) * max(n - 1, 1))
    pca.noise_variance_ = 0.0
    pw = PCAWhitener(n_components=k, whiten=bool(whiten), whiten_power=2.0 * power, eps=0.0)
    pw.n_features_in_ = d
    pw.pca_ = pca
    pw.components_, pw.mean_, pw.explained_variance_ = components, mean, var
    pw.n_components_ = k
    pw.scale_ = (1.0 / (multiplier * np.power(var, power)) if whiten else np.ones(k))
    return FrozenEstimator(pw)


def _signed_power(v, p, eps):
    """``sign(v) max(|v|, eps) ** p`` (zeros stay zeros), deep-image-retrieval's ``sympow``."""
    return np.sign(v) * np.maximum(np.abs(v), eps) ** p


class MultiScaleHead(TransformerMixin, BaseEstimator):
    """Per-scale descriptors through a pooler and a projection, combined by a power mean.

    The multi-scale protocol of cirtorch and deep-image-retrieval: the maps of
    each scale are pooled (``pooler``), projected (``projection``, e.g. a
    network's whitening layer) and L2-normalised as a single-scale
    descriptor would be; the ``S`` descriptors ``v_s`` of an image are
    combined as

    .. math::

        v = \\mathrm{L2}\\Big(\\big(\\tfrac{1}{S} \\textstyle\\sum_s
            \\operatorname{sgn}(v_s) |v_s|^{p}\\big)^{1/p}\\Big)

    (signed powers, element-wise, of magnitudes floored at ``eps``), with
    ``p = power``: cirtorch's ``msp`` (the learned GeM ``p`` for networks
    without a whitening layer, 1 otherwise; no floor), naver's ``gemp`` (3,
    floored at ``1e-6`` before both powers, which matters when the mean of
    the cubes is tiny).

    Parameters
    ----------
    pooler : pooler
        Maps of one scale to descriptors, e.g. ``GeMPooler(p=2.87)``.
    projection : transformer or None, default=None
        Fitted transformer of the pooled descriptors (kept as it is by
        :meth:`fit`; wrap it in :class:`~sklearn.frozen.FrozenEstimator`).
    power : float, default=1.0
        Exponent of the generalized mean over the scales.
    eps : float, default=0.0
        Floor of the magnitudes raised to ``power`` and to ``1 / power``.

    Attributes
    ----------
    n_channels_ : int
        Channels of the maps seen in :meth:`fit`.
    n_scales_ : int
        Scales per image of the maps seen in :meth:`fit`.

    See Also
    --------
    skretrieval.pretrained.load_checkpoint : Builds it for multi-scale presets.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import GeMPooler
    >>> from skretrieval.pretrained import MultiScaleHead
    >>> rng = np.random.default_rng(0)
    >>> maps = [[rng.random((8, 4, 4), dtype=np.float32),
    ...          rng.random((8, 2, 2), dtype=np.float32)] for _ in range(3)]
    >>> head = MultiScaleHead(GeMPooler(p=3.0), power=3.0).fit(maps)
    >>> head.transform(maps).shape
    (3, 8)
    """

    _parameter_constraints = {
        "pooler": [HasMethods(["transform"])],
        "projection": [HasMethods(["transform"]), None],
        "power": [Interval(Real, 0, None, closed="neither")],
        "eps": [Interval(Real, 0, None, closed="left")],
    }

    _state_spec = StateSpec({
        "n_channels_": Attr("int", values=(1, None)),
        "n_scales_": Attr("int", values=(1, None)),
    })

    def __init__(self, pooler, *, projection=None, power=1.0, eps=0.0):
        self.pooler = pooler
        self.projection = projection
        self.power = power
        self.eps = eps

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Record the channels and scales of the maps (the steps are kept as given).

        Parameters
        ----------
        X : FeatureMaps or list
            Feature maps, one sequence of ``(C, H, W)`` maps per image.
        y : None
            Ignored.

        Returns
        -------
        self : MultiScaleHead
        """
        self.n_channels_, self.n_scales_ = inspect_maps(X)
        return self

    def transform(self, X):
        """The combined descriptor of every image.

        Parameters
        ----------
        X : FeatureMaps or list
            Feature maps, one sequence of ``(C, H, W)`` maps per image.

        Returns
        -------
        X_new : ndarray of shape (n_images, n_features), dtype float32
            Unit-norm descriptors.
        """
        self._validate_params()
        n_images = check_maps(X)
        out = None
        for i, maps in enumerate(iter_maps(X)):
            v = np.asarray(self.pooler.transform(list(maps)), dtype=np.float64)
            if self.projection is not None:
                v = np.asarray(self.projection.transform(v), dtype=np.float64)
            v = l2_normalize(v)
            p, eps = float(self.power), float(self.eps)
            v = _signed_power(_signed_power(v, p, eps).mean(axis=0), 1.0 / p, eps)
            if out is None:
                out = np.empty((n_images, v.shape[0]), dtype=np.float32)
            out[i] = l2_normalize(v)
        return out

    def get_feature_names_out(self, input_features=None):
        """``multiscalehead0``, ``multiscalehead1``, ... (one per output dimension).

        Parameters
        ----------
        input_features : None
            Ignored.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, ["n_channels_"])
        n = self.n_channels_
        if self.projection is not None:
            n = len(self.projection.get_feature_names_out())
        return np.asarray([f"multiscalehead{i}" for i in range(n)], dtype=object)
