"""SIFTExtractor: images -> SIFT / RootSIFT local features (OpenCV)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval

from ..extraction._batches import as_image_list, prepare_image
from ..extraction._cache import cache_setting, get_cache, make_key
from ..extraction._images import ImageLoadError, image_key, load_image
from ..utils._state import Attr, PathParam, StateSpec
from ._features import LocalFeatures

__all__ = ["SIFTExtractor", "import_cv2", "root_sift"]

#: Columns of a cached entry: 4 keypoint fields, then the descriptor.
_KP = 4


def import_cv2():
    """The ``cv2`` module, or an ImportError naming the extra."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("local features and OpenCV's verification need OpenCV: "
                          "pip install skretrieval[local]") from exc
    return cv2


def root_sift(descriptors, eps=1e-12):
    """RootSIFT (Arandjelović & Zisserman, CVPR 2012) of SIFT descriptors.

    L1-normalise each descriptor, then take the element-wise square root:
    the Euclidean distance of RootSIFT vectors is the Hellinger kernel of
    the SIFT histograms, and every RootSIFT vector has unit L2 norm (its
    squares sum to the L1 norm, 1).  Zero descriptors stay zero.

    Parameters
    ----------
    descriptors : ndarray of shape (n, d)
        Non-negative SIFT descriptors.
    eps : float, default=1e-12
        Guard of the division.

    Returns
    -------
    root : ndarray of shape (n, d), float32
    """
    D = np.asarray(descriptors, dtype=np.float32)
    l1 = np.abs(D).sum(axis=1, keepdims=True)
    return np.sqrt(np.maximum(D, 0) / np.maximum(l1, eps)).astype(np.float32)


class SIFTExtractor(TransformerMixin, BaseEstimator):
    """SIFT (or RootSIFT) local features of images, with OpenCV.

    Every image is loaded as :func:`~skretrieval.load_image` loads it (a
    :class:`~skretrieval.Crop` is cut at full resolution first, as the
    revisitop protocol requires), resized so that its longest side is
    ``max_size`` (unless None), converted to grey (OpenCV's weights) and
    described by OpenCV's SIFT (Lowe, IJCV 2004: difference-of-Gaussians
    keypoints, 128-bin gradient histograms).  With ``root=True`` the
    descriptors are RootSIFT (:func:`root_sift`), unit L2 vectors compared
    by their dot product.

    Parameters
    ----------
    n_features : int, default=2000
        Keypoints kept per image, strongest (DoG response) first; 0 keeps
        every keypoint (OpenCV's ``nfeatures``).
    contrast_threshold : float, default=0.04
        Keypoints of weaker DoG contrast are dropped (OpenCV's
        ``contrastThreshold``; lower gives more keypoints on low-contrast
        images).
    edge_threshold : float, default=10.0
        Edge-like keypoints above this ratio of principal curvatures are
        dropped.
    n_octave_layers : int, default=3
        Scales per octave of the DoG pyramid.
    sigma : float, default=1.6
        Gaussian of the first octave.
    root : bool, default=True
        RootSIFT descriptors (else OpenCV's raw SIFT, values 0-255).
    max_size : int or None, default=1024
        Longest image side, in pixels, the image is resized to before
        detection (bilinear; up- or down-sampled); None keeps its size.
        Keypoints are in pixels of the resized image.
    cache : "auto", "memory", path, None or False, default="auto"
        The extractors' feature cache (``ConvFeatureExtractor(cache=...)``):
        features are computed once per image content and setting and reused
        by every candidate of a grid search that differs downstream.
    strict : bool, default=True
        Check JPEG data (see :func:`~skretrieval.load_image`).
    n_jobs : int or None, default=None
        Images described at once in threads (OpenCV releases the GIL);
        None: 1.

    Attributes
    ----------
    n_dims_ : int
        Descriptor size (128).

    See Also
    --------
    DeepLocalFeatures : Local features from conv maps.
    ASMKRetriever : Search over local features.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.local import SIFTExtractor
    >>> rng = np.random.default_rng(0)
    >>> img = (rng.random((96, 96, 3)) * 255).astype(np.uint8)
    >>> feats = SIFTExtractor(n_features=50, max_size=None).fit_transform([img])
    >>> feats[0][1].shape[1]
    128
    """

    _parameter_constraints = {
        "n_features": [Interval(Integral, 0, None, closed="left")],
        "contrast_threshold": [Interval(Real, 0, None, closed="left")],
        "edge_threshold": [Interval(Real, 0, None, closed="neither")],
        "n_octave_layers": [Interval(Integral, 1, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="neither")],
        "root": ["boolean"],
        "max_size": [Interval(Integral, 1, None, closed="left"), None],
        "cache": [None, "boolean", str, os.PathLike],
        "strict": ["boolean"],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), None],
    }

    _state_spec = StateSpec(
        {"n_dims_": Attr("int")},
        paths={"cache": PathParam(None, keep=(None, False, "memory", "auto", "none"))})

    def __init__(self, n_features=2000, *, contrast_threshold=0.04, edge_threshold=10.0,
                 n_octave_layers=3, sigma=1.6, root=True, max_size=1024, cache="auto",
                 strict=True, n_jobs=None):
        self.n_features = n_features
        self.contrast_threshold = contrast_threshold
        self.edge_threshold = edge_threshold
        self.n_octave_layers = n_octave_layers
        self.sigma = sigma
        self.root = root
        self.max_size = max_size
        self.cache = cache
        self.strict = strict
        self.n_jobs = n_jobs

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Check the parameters (SIFT learns nothing).

        Parameters
        ----------
        X : list of images, optional
            Checked for emptiness when given.
        y : ignored

        Returns
        -------
        self : SIFTExtractor
        """
        if X is not None:
            as_image_list(X)
        import_cv2()
        self.n_dims_ = 128
        return self

    def _detector(self):
        cv2 = import_cv2()
        return cv2.SIFT_create(nfeatures=int(self.n_features),
                               nOctaveLayers=int(self.n_octave_layers),
                               contrastThreshold=float(self.contrast_threshold),
                               edgeThreshold=float(self.edge_threshold),
                               sigma=float(self.sigma))

    def _setting(self):
        return ("sift", 1, int(self.n_features), float(self.contrast_threshold),
                float(self.edge_threshold), int(self.n_octave_layers), float(self.sigma),
                bool(self.root), self.max_size)

    def load(self, item, index=None):
        """The ``H x W x 3`` uint8 image SIFT describes (cropped, resized)."""
        if self.max_size is None:
            return load_image(item, index=index, strict=self.strict)
        return prepare_image(item, index, (1.0,), max_size=self.max_size, min_size=1,
                             what="SIFT", strict=self.strict)[0]

    def describe(self, image):
        """Keypoints ``(n, 4)`` and descriptors ``(n, 128)`` of one RGB uint8 array."""
        cv2 = import_cv2()
        image = np.ascontiguousarray(image, dtype=np.uint8)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        kps, desc = self._detector().detectAndCompute(grey, None)
        if not kps:
            return np.zeros((0, _KP), np.float32), np.zeros((0, 128), np.float32)
        kp = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float32)
        desc = np.asarray(desc, np.float32)
        return kp, (root_sift(desc) if self.root else desc)

    def _one(self, args):
        index, item, cache, setting = args
        key = None
        if cache is not None:
            try:
                key = make_key(setting, image_key(item, index=index))
            except (ImageLoadError, TypeError):
                key = None  # fails to load below, with the loader's message
            hit = None if key is None else cache.get(key)
            if hit is not None:
                return hit[:, :_KP], hit[:, _KP:]
        kp, desc = self.describe(self.load(item, index))
        if key is not None:
            cache.put(key, np.concatenate([kp, desc], 1).astype(np.float32))
        return kp, desc

    def transform(self, X):
        """Detect and describe the local features of images.

        Parameters
        ----------
        X : list of images
            Paths, PIL images, ``H x W x 3`` arrays or :class:`~skretrieval.Crop`.

        Returns
        -------
        features : LocalFeatures
            One ``(keypoints, descriptors)`` pair per image, in order (an
            image without keypoints, e.g. a flat one, gives empty arrays).

        Raises
        ------
        ImageLoadError
            For an image that cannot be loaded (naming it).
        """
        if not hasattr(self, "n_dims_"):
            self.fit()
        items = as_image_list(X)
        cache = get_cache(cache_setting(self.cache))
        jobs = [(i, item, cache, self._setting()) for i, item in enumerate(items)]
        n_jobs = self.n_jobs or 1
        if n_jobs > 1:
            with ThreadPoolExecutor(n_jobs) as pool:
                pairs = list(pool.map(self._one, jobs))
        else:
            pairs = [self._one(job) for job in jobs]
        return LocalFeatures(pairs, n_dims=128, kind="rootsift" if self.root else "sift")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = False
        return tags
