"""Class-weighted convolutional features (Jimenez, Alvarez & Giro-i-Nieto, BMVC 2017).

The class activation maps (CAMs) of an image's most probable classes say where
the objects are.  Each CAM weights the convolutional maps into one class
vector; the class vectors are normalised, PCA-whitened and summed into the
image descriptor, either per image with its own classes (``"offline"``) or at
query time with the query's classes (``"online"``, searched by
:class:`~skretrieval.reranking.OnlineCAMRetriever`).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context, clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..utils._arrays import l2_normalize
from ..extraction._maps import FeatureMaps, check_maps
from ..utils._state import Attr, StateSpec
from ._regional import CroWPooler

__all__ = ["CAMWeighter", "ClassVectors"]

_CHUNK = 128  # images whose class vectors are whitened together


def class_weighted_vectors(maps, cams, channel_weighting=True):
    """The class vectors of one image, before any normalisation.

    Parameters
    ----------
    maps : tuple of ndarray of shape (C, H, W)
        The image's feature maps, one per scale.
    cams : tuple of ndarray of shape (K, H, W)
        The CAMs of ``K`` classes on the grid of each scale, in [0, 1].
    channel_weighting : bool
        Multiply by CroW's channel weights (sparsity idf) of each scale's maps.

    Returns
    -------
    vectors : ndarray of shape (K, C), float32
        ``sum_scales omega * sum_xy F(x, y) CAM_c(x, y)`` for each class.
    """
    out = None
    for F, A in zip(maps, cams):
        C = F.shape[0]
        flat = F.reshape(C, -1)
        V = np.asarray(A, np.float32).reshape(A.shape[0], -1) @ flat.T
        if channel_weighting:
            V *= CroWPooler._channel_weights(flat).astype(np.float32)
        out = V if out is None else out + V
    return out


class ClassVectors:
    """Per-image class vectors of an online :class:`CAMWeighter`.

    ``classes[i]`` are the ``K`` classes of image ``i`` (most probable first)
    and ``vectors[i]`` their ``(K, D)`` normalised, whitened class vectors.
    Indexing returns a :class:`ClassVectors`, so it passes through pipelines
    and grid searches.
    """

    def __init__(self, classes, vectors):
        self.classes = np.asarray(classes, dtype=np.int64)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        if self.classes.ndim != 2 or self.vectors.shape[:2] != self.classes.shape:
            raise ValueError("classes must be (n, K) and vectors (n, K, D)")

    def __len__(self):
        return self.classes.shape[0]

    @property
    def shape(self):
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, tuple) and len(key) == 2 and key[1] is Ellipsis:
            key = key[0]
        if isinstance(key, (Integral, np.integer)):
            key = [key]
        return ClassVectors(self.classes[key], self.vectors[key])

    def __repr__(self):
        n, k, d = self.vectors.shape
        return f"ClassVectors(n_images={n}, n_classes={k}, n_features={d})"


class CAMWeighter(TransformerMixin, BaseEstimator):
    """Class-weighted convolutional features (Jimenez et al., BMVC 2017).

    For each of the image's ``n_classes`` most probable classes, the feature
    maps are weighted by the class's activation map and sum-pooled, then
    multiplied by CroW's channel weights.  Each class vector is L2-normalised,
    PCA-whitened and L2-normalised again (``whitener``, e.g.
    ``PCAWhitener(n_components=128)``, which performs exactly these three
    steps), and the class vectors are summed and L2-normalised: the paper's
    order.

    * ``aggregation="offline"``: each image sums its own top classes into one
      vector, shape ``(n_images, D)``; a plain
      :class:`~skretrieval.NearestNeighborRetriever` searches them.
    * ``aggregation="online"``: the class vectors are kept
      (:class:`ClassVectors`), and :class:`OnlineCAMRetriever` aggregates
      every database image over the *query's* top classes at search time.
      In a pipeline::

          make_pipeline(ConvFeatureExtractor(cams=64),
                        CAMWeighter(64, aggregation="online", whitener=PCAWhitener(128)),
                        OnlineCAMRetriever())

      The database keeps ``n_classes`` vectors per image (memory ``n x
      n_classes x D``), and a query class outside an image's own top
      ``n_classes`` contributes nothing to it (the paper stores all 1000;
      set ``n_classes`` and the extractor's ``cams`` as high as memory
      allows).

    The input comes from ``ConvFeatureExtractor(cams=K)`` with ``K >=
    n_classes``.

    Parameters
    ----------
    n_classes : int, default=64
        Number of top classes aggregated (the paper's ``N_C``).
    aggregation : {"offline", "online"}, default="offline"
        Aggregate per image with its own classes, or keep class vectors for
        query-time aggregation.
    channel_weighting : bool, default=True
        Multiply the class vectors by CroW's channel weights.
    whitener : estimator or None, default=None
        Applied to every class vector (cloned and fitted at ``fit`` on the
        class vectors of the training images); a ``FrozenEstimator`` of a
        whitener fitted elsewhere is used as is.  None: L2 only.
    max_whitening_vectors : int, default=100_000
        At most this many class vectors (drawn uniformly) fit the whitener.
    random_state : int, RandomState or None, default=None
        Seed of that draw.

    Attributes
    ----------
    whitener_ : estimator or None
        The fitted whitener.
    n_channels_ : int
        Channels of the input maps.
    n_features_out_ : int
        Dimension of the output vectors.

    See Also
    --------
    ConvFeatureExtractor : Extracts the maps and CAMs (``cams=K``).
    CroWPooler : The spatial + channel weighting this builds on.
    OnlineCAMRetriever : Search for ``aggregation="online"``.

    References
    ----------
    .. [1] A. Jimenez, J. M. Alvarez, X. Giro-i-Nieto. "Class-Weighted
       Convolutional Features for Visual Instance Search", BMVC 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import FeatureMaps, CAMWeighter
    >>> rng = np.random.default_rng(0)
    >>> maps = FeatureMaps()
    >>> for _ in range(3):
    ...     maps.append((rng.random((8, 4, 5)),),
    ...                 cams=([3, 1], [0.6, 0.3], (rng.random((2, 4, 5)),)))
    >>> CAMWeighter(n_classes=2).fit_transform(maps).shape
    (3, 8)
    """

    _parameter_constraints = {
        "n_classes": [Interval(Integral, 1, None, closed="left")],
        "aggregation": [StrOptions({"offline", "online"})],
        "channel_weighting": ["boolean"],
        "whitener": [HasMethods(["fit", "transform"]), None],
        "max_whitening_vectors": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = StateSpec({
        "n_channels_": Attr("int", values=(1, None)),
        "whitener_": Attr("estimator", none=True),
        "n_features_out_": Attr("int", values=(1, None)),
    })

    def __init__(self, n_classes=64, *, aggregation="offline", channel_weighting=True,
                 whitener=None, max_whitening_vectors=100_000, random_state=None):
        self.n_classes = n_classes
        self.aggregation = aggregation
        self.channel_weighting = channel_weighting
        self.whitener = whitener
        self.max_whitening_vectors = max_whitening_vectors
        self.random_state = random_state

    def _check(self, X):
        n = check_maps(X)
        if not isinstance(X, FeatureMaps) or not X.has_cams:
            raise ValueError(
                "CAMWeighter needs class activation maps: extract the features with "
                "ConvFeatureExtractor(cams=K), K >= n_classes"
            )
        return n

    def _class_vectors(self, X, i):
        """``(classes, L2-normalised class vectors)`` of image ``i``."""
        act = X.class_activations(i)
        k = act.classes.size
        if self.n_classes > k:
            raise ValueError(
                f"n_classes={self.n_classes} but the maps carry the CAMs of {k} classes; "
                f"extract with ConvFeatureExtractor(cams={self.n_classes}) or more"
            )
        cams = tuple(a[: self.n_classes] for a in act.maps)
        V = class_weighted_vectors(X[i], cams, self.channel_weighting)
        if not np.all(np.isfinite(V)):
            raise ValueError(f"image {i}: feature maps contain NaN or infinite values")
        return act.classes[: self.n_classes], l2_normalize(V)

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the whitener on the class vectors of the training images.

        Parameters
        ----------
        X : FeatureMaps
            Maps with CAMs (``ConvFeatureExtractor(cams=K)``).
        y : None
            Ignored.

        Returns
        -------
        self : CAMWeighter
        """
        n = self._check(X)
        self._class_vectors(X, 0)  # checks the number of stored classes
        self.n_channels_ = X.n_channels
        self.whitener_ = None
        if self.whitener is not None:
            rng = check_random_state(self.random_state)
            total = n * self.n_classes
            take = min(total, self.max_whitening_vectors)
            chosen = np.sort(rng.choice(total, size=take, replace=False))
            rows = []
            for i in np.unique(chosen // self.n_classes):
                _, V = self._class_vectors(X, i)
                mine = chosen[chosen // self.n_classes == i] % self.n_classes
                rows.append(V[mine])
            self.whitener_ = clone(self.whitener).fit(np.concatenate(rows).astype(np.float32))
        self.n_features_out_ = (self.n_channels_ if self.whitener_ is None
                                else int(self._whiten(np.zeros((1, self.n_channels_),
                                                               np.float32)).shape[1]))
        return self

    def _whiten(self, V):
        if self.whitener_ is None:
            return V.astype(np.float32)
        return l2_normalize(np.asarray(self.whitener_.transform(V.astype(np.float32)),
                                   dtype=np.float32))

    def transform(self, X):
        """Class-weighted descriptors.

        Parameters
        ----------
        X : FeatureMaps
            Maps with CAMs.

        Returns
        -------
        X_new : ndarray of shape (n_images, n_features_out) or ClassVectors
            Offline: one L2-normalised vector per image.  Online: the
            :class:`ClassVectors` (classes and whitened class vectors).
        """
        check_is_fitted(self, "n_features_out_")
        n = self._check(X)
        if X.n_channels != self.n_channels_:
            raise ValueError(f"maps have {X.n_channels} channels, CAMWeighter was fitted "
                             f"on {self.n_channels_}")
        D, K = self.n_features_out_, self.n_classes
        online = self.aggregation == "online"
        if online:
            classes = np.empty((n, K), np.int64)
            vectors = np.empty((n, K, D), np.float32)
        else:
            out = np.empty((n, D), np.float32)
        # whiten the class vectors of a chunk of images in one call
        for a in range(0, n, _CHUNK):
            got = [self._class_vectors(X, i) for i in range(a, min(n, a + _CHUNK))]
            W = self._whiten(np.concatenate([V for _, V in got])).reshape(len(got), K, D)
            if online:
                classes[a:a + len(got)] = [c for c, _ in got]
                vectors[a:a + len(got)] = W
            else:
                out[a:a + len(got)] = l2_normalize(W.sum(axis=1, dtype=np.float64))
        return ClassVectors(classes, vectors) if online else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags
