"""DeepLocalFeatures: images -> the strongest cells of a conv layer as local features."""

from __future__ import annotations

import os
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.decomposition import PCA
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ..extraction._extractor import ConvFeatureExtractor
from ..utils._arrays import l2_normalize
from ..utils._state import Attr, PathParam, StateSpec
from ._features import LocalFeatures

__all__ = ["DeepLocalFeatures", "strongest_cells"]

#: Local descriptors the PCA-whitening is learned on, at most.
_PCA_SAMPLE = 50_000


def _inner_cells(H, W, border):
    """Mask of the ``H * W`` cells at least ``border`` cells from the map's edge
    (every cell when the map has no such cell)."""
    rows, cols = np.divmod(np.arange(H * W), W)
    keep = ((rows >= border) & (rows < H - border) & (cols >= border) & (cols < W - border))
    return keep if keep.any() else np.ones(H * W, bool)


def strongest_cells(maps, max_features, stride, scales=None, border=0):
    """The ``max_features`` cells of largest L2 norm of one image's maps.

    Parameters
    ----------
    maps : sequence of ndarray of shape (C, H_s, W_s)
        The image's maps, one per scale.
    max_features : int
        Cells kept, all scales together (zero vectors never).
    stride : float
        Pixels of the image at scale 1 per map cell at scale 1.
    scales : sequence of float, default=None
        The scale of each map (default: 1 for all).
    border : int, default=0
        Cells within ``border`` cells of a map's edge are never kept (unless
        the map has no other cell): their receptive field covers the zero
        padding, so they describe the image's border rather than its content.

    Returns
    -------
    keypoints : ndarray of shape (n, 4), float32
        ``(x, y, scale, angle)``: the cell centre in pixels of the image at
        scale 1, ``((col + 0.5) * stride / s, (row + 0.5) * stride / s)``,
        the cell size ``stride / s`` as scale, angle -1 (none).
    descriptors : ndarray of shape (n, C), float32
        The L2-normalised channel vectors, strongest first.
    """
    scales = (1.0,) * len(maps) if scales is None else tuple(scales)
    kps, vecs = [], []
    for s, m in zip(scales, maps):
        C, H, W = m.shape
        rows, cols = np.divmod(np.arange(H * W), W)
        cell = stride / s
        inner = _inner_cells(H, W, border)
        kps.append(np.stack([(cols + 0.5) * cell, (rows + 0.5) * cell,
                             np.full(H * W, cell), np.full(H * W, -1.0)], 1)[inner])
        vecs.append(np.asarray(m, dtype=np.float32).reshape(C, H * W).T[inner])
    kps, vecs = np.concatenate(kps), np.concatenate(vecs)
    norms = np.linalg.norm(vecs, axis=1)
    order = np.argsort(-norms, kind="stable")[:max_features]
    order = order[norms[order] > 0]
    return kps[order].astype(np.float32), l2_normalize(vecs[order]).astype(np.float32)


class DeepLocalFeatures(TransformerMixin, BaseEstimator):
    """Local features from the conv maps of a backbone: its strongest cells.

    The training-free version of the local features of DELF (Noh et al.,
    ICCV 2017) and HOW (Tolias, Jenicek & Chum, ECCV 2020): a
    :class:`~skretrieval.ConvFeatureExtractor` gives the maps of ``layer``
    (any layer of any backbone it supports, at every scale of ``scales``);
    the ``max_features`` cells of largest L2 norm over all scales are the
    keypoints (the norm stands in for a learned attention, as HOW's does),
    their centre in pixels of the image at scale 1 (``stride`` pixels per
    cell, read from the network) the position, the cell size the scale;
    the channel vectors, L2-normalised, are the descriptors, optionally
    PCA-whitened to ``n_components`` dimensions (learned in :meth:`fit` on
    the local descriptors of ``X``) and L2-normalised again.

    The maps go through the extractor's feature cache, so a grid search
    over ``max_features`` or ``n_components`` runs the network once per
    image.

    Parameters
    ----------
    backbone : str, default="mobilenet_v2"
        Any backbone :class:`~skretrieval.ConvFeatureExtractor` takes.
    weights : str, path or None, default="IMAGENET1K_V1"
        Its weights.
    layer : str, int or None, default=None
        The layer cut (None: the last conv layer); an intermediate one
        (e.g. MobileNetV2 ``"block13"``, stride 16) gives more, finer cells.
    max_size : int, default=1024
        Longest image side at scale 1.
    scales : tuple of float, default=(1.0,)
        Multipliers of ``max_size`` (multi-scale: the cells of every scale
        compete for ``max_features``).
    max_features : int, default=500
        Local features kept per image.
    border : int, default=2
        Cells within ``border`` cells of the map's edge are not candidates.
        Their receptive field covers the zero padding, so their vectors
        encode *where the image ends*, not what it shows: the corner and edge
        cells of any two images of the same size match each other at the
        same positions, which spatial verification then accepts as an
        identity transform with many inliers.  0 keeps every cell (the
        behaviour before this parameter).
    n_components : int or None, default=None
        PCA-whitening of the descriptors to this size, learned in ``fit``
        (needs ``X``); None keeps the ``C`` L2-normalised channels.
    device : str, default="auto"
        Torch device of the extractor.
    cache : "auto", "memory", path, None or False, default="auto"
        The extractor's feature cache.
    strict : bool, default=True
        Check JPEG data.

    Attributes
    ----------
    extractor_ : ConvFeatureExtractor
        The fitted extractor.
    stride_ : float
        Pixels per cell of ``layer`` at scale 1.
    mean_, components_ : ndarray or None
        The whitening: descriptors become ``l2((d - mean_) @ components_.T)``
        (None without ``n_components``).
    n_dims_ : int
        Descriptor size.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.local import DeepLocalFeatures
    >>> rng = np.random.default_rng(0)
    >>> imgs = [(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(2)]
    >>> deep = DeepLocalFeatures("resnet18", weights=None, max_size=64, max_features=3)
    >>> deep.fit_transform(imgs).counts.tolist()
    [3, 3]
    """

    _parameter_constraints = {
        "backbone": [str],
        "weights": [str, os.PathLike, None],
        "layer": [str, Integral, None],
        "max_size": [Interval(Integral, 1, None, closed="left")],
        "scales": ["array-like", Real],
        "max_features": [Interval(Integral, 1, None, closed="left")],
        "border": [Interval(Integral, 0, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "device": [str],
        "cache": [None, "boolean", str, os.PathLike],
        "strict": ["boolean"],
    }

    _state_spec = StateSpec(
        {
            "extractor_": Attr("estimator", classes=(ConvFeatureExtractor,)),
            "stride_": Attr("float"),
            "n_dims_": Attr("int", values=(1, None)),
            "mean_": Attr("array", dtype="f", shape=(None,), none=True),
            "components_": Attr("array", dtype="f", shape=("n_dims_", "mean_"), none=True),
        },
        paths={"weights": PathParam(None, keep_names=True),
               "cache": PathParam(None, keep=(None, False, "memory", "auto", "none"))},
    )

    def __init__(self, backbone="mobilenet_v2", *, weights="IMAGENET1K_V1", layer=None,
                 max_size=1024, scales=(1.0,), max_features=500, border=2,
                 n_components=None, device="auto", cache="auto", strict=True):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.max_size = max_size
        self.scales = scales
        self.max_features = max_features
        self.border = border
        self.n_components = n_components
        self.device = device
        self.cache = cache
        self.strict = strict

    def _maps_features(self, maps):
        return [strongest_cells(maps[i], self.max_features, self.stride_, maps.scales,
                                self.border) for i in range(len(maps))]

    def _fit(self, X):
        self.extractor_ = ConvFeatureExtractor(
            self.backbone, weights=self.weights, layer=self.layer, max_size=self.max_size,
            scales=self.scales, device=self.device, cache=self.cache,
            strict=self.strict).fit()
        self.stride_ = float(self.extractor_.stride_)
        self.mean_ = self.components_ = None
        self.n_dims_ = int(self.extractor_.n_channels_)
        if self.n_components is None:
            return None
        if X is None:
            raise ValueError("DeepLocalFeatures(n_components=...) learns its whitening "
                             "from images: call fit(X) with images")
        raw = self._maps_features(self.extractor_.transform(X))
        self._fit_whitening(np.concatenate([d for _, d in raw]))
        return raw

    def _fit_whitening(self, D):
        if len(D) > _PCA_SAMPLE:
            D = D[np.linspace(0, len(D) - 1, _PCA_SAMPLE).round().astype(int)]
        d = min(self.n_components, D.shape[1], max(len(D) - 1, 1))
        pca = PCA(n_components=d, svd_solver="full").fit(D.astype(np.float64))
        vals = pca.explained_variance_
        vals = np.maximum(vals, vals[0] * 1e-6 if vals[0] > 0 else 1e-12)
        self.mean_ = pca.mean_.astype(np.float32)
        self.components_ = np.ascontiguousarray(pca.components_ / np.sqrt(vals)[:, None],
                                                dtype=np.float32)
        self.n_dims_ = int(d)

    def _project(self, pairs):
        if self.components_ is None:
            return LocalFeatures(pairs, n_dims=self.n_dims_, kind="deep")
        out = LocalFeatures(n_dims=self.n_dims_, kind="deep")
        for kp, D in pairs:
            out.append(kp, l2_normalize((D - self.mean_) @ self.components_.T))
        return out

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Build the extractor and learn the whitening (with ``n_components``).

        Parameters
        ----------
        X : list of images, default=None
            Images whose local descriptors the whitening is learned on.
        y : ignored

        Returns
        -------
        self : DeepLocalFeatures
        """
        self._fit(X)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None):
        """Fit, then the local features of ``X`` (its maps extracted once)."""
        raw = self._fit(X)
        if raw is None:
            raw = self._maps_features(self.extractor_.transform(X))
        return self._project(raw)

    def transform(self, X):
        """Local features of images.

        Parameters
        ----------
        X : list of images
            Paths, PIL images, arrays or :class:`~skretrieval.Crop` (cut first).

        Returns
        -------
        features : LocalFeatures
        """
        check_is_fitted(self, "extractor_")
        return self._project(self._maps_features(self.extractor_.transform(X)))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags
