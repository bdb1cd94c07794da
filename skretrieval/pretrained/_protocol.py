"""The authors' image sizes: never enlarge, and query crops at the scale of their image.

:class:`~skretrieval.ConvFeatureExtractor` brings the longest side of every
input to ``max_size``, a query :class:`~skretrieval.Crop` included (the crop
is enlarged to ``max_size``).  cirtorch's ``ImagesFromList`` (and revisitop's
example code) shrink the image with PIL's ``thumbnail`` to ``imsize`` (never
enlarging) and scale a crop by the factor that brings *its image* to
``imsize``: ``imresize(crop, imsize * max(crop.size) / max(image.size))``;
deep-image-retrieval feeds images and crops at full resolution, which is the
same for Oxford and Paris (1024 px images).  :class:`NativeScale` wraps a
fitted descriptor pipeline and runs it, for each group of inputs of one
target size, with the extractor's ``max_size`` set to that size.
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import HasMethods

from ..extraction._images import Crop, load_image

__all__ = ["NativeScale", "native_size"]

_SWAPPED = (5, 6, 7, 8)  # EXIF orientations that exchange width and height


def _image_size(image):
    """``(height, width)`` of an image as :func:`~skretrieval.load_image` returns it."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                w, h = im.size
                orientation = im.getexif().get(274, 1)
            return (w, h) if orientation in _SWAPPED else (h, w)
        except (OSError, ValueError):
            pass  # the extractor reports it with its own message
    return tuple(load_image(image).shape[:2])


def native_size(item, max_size):
    """The longest side the authors' code gives ``item`` when their ``imsize`` is ``max_size``.

    An image: ``min(longest side, max_size)``.  A :class:`~skretrieval.Crop`:
    its longest side (rounded and clipped as the crop is) times the factor
    that brings its image to ``max_size``, never more than the crop itself.
    """
    if isinstance(item, Crop):
        h, w = _image_size(item.image)
        x1, y1, x2, y2 = item.box
        cw = min(w, math.ceil(x2)) - max(0, math.floor(x1))
        ch = min(h, math.ceil(y2)) - max(0, math.floor(y1))
        longest = max(cw, ch, 1)
        return max(1, min(longest, int(round(max_size * longest / max(h, w)))))
    try:
        h, w = _image_size(item)
    except Exception:  # noqa: BLE001 - left to the extractor's error
        return max_size
    return max(1, min(max(h, w), max_size))


class NativeScale(TransformerMixin, BaseEstimator):
    """A fitted descriptor pipeline run at the authors' image sizes.

    Every input goes through ``features`` with its extractor's ``max_size``
    set to :func:`native_size` of the input: images larger than
    ``max_size`` are shrunk to it, smaller ones are left as they are, and a
    query :class:`~skretrieval.Crop` keeps the scale of its image (a crop of
    a 1024 px Oxford image is fed at its own size), as cirtorch and
    deep-image-retrieval evaluate.  ``skretrieval evaluate --model`` uses it.

    Parameters
    ----------
    features : Pipeline
        Fitted, from images to descriptors, whose first step is a
        :class:`~skretrieval.ConvFeatureExtractor` (e.g.
        ``load_checkpoint(path)[:-1]``).

    Examples
    --------
    >>> from skretrieval.pretrained import NativeScale, load_checkpoint
    >>> pipe = load_checkpoint("gl18-tl-resnet101-gem-w-a4d43db.pth")  # doctest: +SKIP
    >>> X_q = NativeScale(pipe[:-1]).transform(queries)  # doctest: +SKIP
    """

    _parameter_constraints = {"features": [HasMethods(["transform"])]}

    def __init__(self, features):
        self.features = features

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        return tags

    def fit(self, X=None, y=None):
        """Nothing to learn: ``features`` is used as fitted.

        Parameters
        ----------
        X, y : ignored

        Returns
        -------
        self : NativeScale
        """
        return self

    def transform(self, X):
        """Descriptors of ``X``, each image at its native size.

        Parameters
        ----------
        X : list of images
            Paths, PIL images, arrays or :class:`~skretrieval.Crop`.

        Returns
        -------
        X_new : ndarray of shape (n_images, n_features), dtype float32
        """
        items = list(X)
        extractor = self.features[0]
        groups = {}
        for i, item in enumerate(items):
            groups.setdefault(native_size(item, extractor.max_size), []).append(i)
        out = None
        for size, rows in groups.items():
            steps = list(self.features.steps)
            ext = copy.copy(extractor)  # shares the fitted network
            ext.max_size = size
            steps[0] = (steps[0][0], ext)
            sub = copy.copy(self.features)
            sub.steps = steps
            desc = np.asarray(sub.transform([items[i] for i in rows]), dtype=np.float32)
            if out is None:
                out = np.empty((len(items), desc.shape[1]), dtype=np.float32)
            out[rows] = desc
        return out
