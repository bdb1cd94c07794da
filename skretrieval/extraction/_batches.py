"""Collections of images into network batches: checking, resizing, stacking.

Shared by :class:`~skretrieval.ConvFeatureExtractor` and
:class:`~skretrieval.RetrievalNetTrainer`:

* :func:`as_image_list` -- a collection ``X`` checked and made a list;
* :func:`resized_shape` and :func:`resize` -- the longest side brought to a
  size, aspect ratio kept, with bilinear interpolation;
* :func:`to_batch` -- ``H x W x 3`` uint8 arrays stacked into a float batch
  in ``[0, 1]`` (optionally normalised) on a device;
* :class:`ShapeBatching` -- which images go to the network together: those
  of one shape, a bounded number at a time;
* :func:`numbered_error` and :func:`stop_error` -- the errors naming the
  images of ``X`` that cannot be used.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from sklearn.utils._param_validation import InvalidParameterError

from ._images import ImageLoadError, describe, item_path, load_image, short_description
from ._maps import FeatureMaps

__all__ = ["ShapeBatching", "as_image_list", "checked_scales", "numbered_error",
           "prepare_image", "resize", "resized_shape", "stop_error", "to_batch"]


def as_image_list(X, what="X", *, maps_message=None, empty_message=None):
    """Validate the collection ``X`` of images and return it as a list.

    Parameters
    ----------
    X : iterable of images
        Paths, PIL images, arrays, :class:`~skretrieval.Crop` items, or an
        ``(n, H, W, 3)`` array.
    what : str, default="X"
        Its name in the messages.
    maps_message, empty_message : str or None
        The messages when ``X`` is :class:`~skretrieval.FeatureMaps` or empty
        (None: those of the extractor).

    Returns
    -------
    list

    Raises
    ------
    TypeError
        For a single image, feature maps or something that is not iterable.
    ValueError
        For an array that is not a batch of images, or no image at all.
    """
    if isinstance(X, (str, os.PathLike, Image.Image, bytes, bytearray, memoryview,
                      io.IOBase)):
        raise TypeError(
            f"{what} must be a collection of images (a list of paths, PIL images, "
            f"encoded bytes or arrays), got a single {type(X).__name__}; wrap it in a list"
        )
    if isinstance(X, FeatureMaps):
        raise TypeError(maps_message or f"{what} is already FeatureMaps: it goes to a "
                        "pooler, not to the extractor")
    if isinstance(X, np.ndarray) and X.dtype != object and X.ndim != 4:
        raise ValueError(
            f"an array {what} must hold a batch of images, shape (n, H, W, 3); got "
            f"shape {X.shape}. Pass a list of images instead"
        )
    try:
        items = list(X)
    except TypeError:
        raise TypeError(
            f"{what} must be a list of images (paths, PIL images or arrays), got "
            f"{type(X).__name__}"
        ) from None
    if not items:
        raise ValueError(empty_message or f"{what} is empty: no image to extract "
                         "features from")
    return items


def checked_scales(scales, max_size, owner):
    """The ``scales`` parameter of an estimator as a tuple of floats.

    Parameters
    ----------
    scales : float or sequence of float
        Multipliers of ``max_size``.
    max_size : int
        The longest image side at scale 1.
    owner : str
        The estimator's class name, for the message.

    Returns
    -------
    scales : tuple of float

    Raises
    ------
    InvalidParameterError
        Unless ``scales`` is one or more finite positive numbers whose
        products with ``max_size`` are finite.
    """
    def invalid(why):
        return InvalidParameterError(
            f"The 'scales' parameter of {owner} must be {why}, got "
            f"{scales!r}: give finite positive multipliers of max_size, "
            "e.g. (1.0,) or (1, 2**-0.5, 0.5)")

    try:
        values = np.atleast_1d(np.asarray(scales, dtype=float))
    except (TypeError, ValueError):
        raise invalid("a number or a sequence of numbers") from None
    if values.ndim != 1 or values.size == 0:
        raise invalid("a non-empty sequence of numbers")
    with np.errstate(over="ignore"):
        sides = values * float(max_size)
    if not np.all(np.isfinite(sides)) or not np.all(values > 0):
        raise invalid("finite positive numbers")
    return tuple(float(s) for s in values)


def resized_shape(h, w, longest):
    """``(height, width)`` of an ``h x w`` image whose longest side becomes ``longest``."""
    s = longest / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def resize(arr, shape):
    """The ``H x W x 3`` uint8 array ``arr`` resized (bilinear) to ``shape``."""
    if arr.shape[:2] == tuple(shape):
        return arr
    img = Image.fromarray(arr).resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(img)


def prepare_image(item, index, scales, *, max_size, min_size, what, square=False,
                  strict=True):
    """Load one image and resize it for every scale.

    Parameters
    ----------
    item : image
        A path, PIL image, array or :class:`~skretrieval.Crop`.
    index : int
        Its position in its collection, for the messages.
    scales : sequence of float
        Multipliers of ``max_size``.
    max_size : int
        The longest side at scale 1.
    min_size : int
        The smallest side the network accepts after resizing.
    what : str
        The network in the message of an image too small for it, e.g.
        ``"layer 'layer3' of resnet50"``.
    square : bool, default=False
        Resize to a ``max_size * scale`` square, aspect ratio ignored (the
        fixed input of fully-connected layers).
    strict : bool, default=True
        Check JPEG data (see :func:`~skretrieval.load_image`).

    Returns
    -------
    arrays : list of ndarray
        ``H x W x 3`` uint8, one per scale.

    Raises
    ------
    ImageLoadError
        For an image that cannot be loaded, or is smaller than ``min_size``
        on a side after resizing.
    """
    # large JPEGs decode at a reduced scale still >= the largest target
    reduce_to = None if square else math.ceil(max_size * max(scales))
    arr = load_image(item, index=index, strict=strict, reduce_to=reduce_to)
    h, w = arr.shape[:2]
    out = []
    for s in scales:
        shape = resized_shape(h, w, max_size * s)
        if square:  # fully-connected codes: the whole image, aspect ignored
            shape = (max(1, round(max_size * s)),) * 2
        if min(shape) < min_size:
            reason = (
                f"{h}x{w} px, {shape[0]}x{shape[1]} after resizing to "
                f"max_size={max_size} x scale {s}; {what} "
                f"needs at least {min_size} px on each side. Raise max_size or drop "
                "this image")
            raise ImageLoadError(f"{describe(item, index)} is {reason}", index=index,
                                 reason=reason, path=item_path(item))
        out.append(resize(arr, shape))
    return out


def to_batch(arrays, device, mean=None, std=None, channels_last=True):
    """Stack ``H x W x 3`` uint8 arrays into an ``(N, 3, H, W)`` float batch.

    Values are brought to ``[0, 1]``, then normalised by ``(x - mean) / std``
    when ``mean`` and ``std`` (tensors on ``device``) are given.
    """
    x = torch.from_numpy(np.stack(arrays)).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if mean is not None:
        x = x.sub_(mean).div_(std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass(frozen=True)
class ShapeBatching:
    """The batching policy of the network passes: images of one shape together.

    Images of different sizes cannot be stacked into one tensor, so the
    resized images are grouped by shape (groups in sorted order of shape,
    images in their order within a group) and every group is cut into
    batches of at most ``batch_size`` images.

    Parameters
    ----------
    batch_size : int
        The most images of a batch (at least 1).

    See Also
    --------
    ShapeBatching.for_device : The default batch size of a device.

    Examples
    --------
    >>> from skretrieval.extraction import ShapeBatching
    >>> ShapeBatching(2).split([(4, 6, 3), (6, 4, 3), (4, 6, 3), (4, 6, 3)])
    [[0, 2], [3], [1]]
    """

    batch_size: int

    def __post_init__(self):
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    @classmethod
    def for_device(cls, batch_size, device):
        """The policy of ``batch_size``, or when None of the default of ``device``.

        Parameters
        ----------
        batch_size : int or None
            The most images of a batch; None: 1 on ``"cpu"`` (batching large
            images measured 1.6x slower there, ``benchmarks/bench_extraction.py``),
            8 on any other device.
        device : str
            The torch device the network runs on.

        Returns
        -------
        batching : ShapeBatching
        """
        return cls(batch_size or (1 if device == "cpu" else 8))

    def split(self, shapes):
        """The batches of images of the given shapes.

        Parameters
        ----------
        shapes : iterable of tuple
            The shape of every image (e.g. ``arr.shape`` of ``H x W x 3``
            arrays).

        Returns
        -------
        batches : list of list of int
            Positions in ``shapes``; every position is in exactly one batch,
            the images of a batch have one shape, and batches are no larger
            than ``batch_size``.
        """
        groups = {}
        for k, shape in enumerate(shapes):
            groups.setdefault(tuple(shape), []).append(k)
        size = int(self.batch_size)
        return [members[b:b + size]
                for shape in sorted(groups)
                for members in (groups[shape],)
                for b in range(0, len(members), size)]


def numbered_error(exc, i, items):
    """``exc`` of image ``i`` as an :class:`ImageLoadError` numbered in the whole ``items``."""
    reason = getattr(exc, "reason", None) or str(exc)
    return ImageLoadError(
        f"image {i} of {len(items)} ({short_description(items[i])}): {reason}",
        index=i, reason=reason, path=getattr(exc, "path", None) or item_path(items[i]))


def stop_error(errors, n_done, cached):
    """The error that stops a transform at the first image of ``errors``
    (numbered errors), saying where the maps of the ``n_done`` images went."""
    first = errors[0]
    message = (f"{first}. Fix or remove this image (skretrieval.check_images(X) "
               "lists every image that cannot be used; on_error='skip' leaves them "
               "out)")
    if len(errors) > 1:
        message += ("; images " + ", ".join(str(e.index) for e in errors[1:])
                    + " cannot be used either")
    if n_done:
        where = "in the cache" if cached else "in this process"
        message += (f". The maps of the {n_done} images extracted are kept {where}: "
                    "the next transform takes them from there")
    return ImageLoadError(message, index=first.index, reason=first.reason, path=first.path)


#: Skipped images listed by name in the warning of ``on_error="skip"``.
SKIP_LISTED = 20


def warn_skipped(skipped, n):
    """Warn that ``on_error="skip"`` left out ``skipped`` ((position, message) pairs) of ``n``."""
    lines = [msg for _, msg in skipped[:SKIP_LISTED]]
    if len(skipped) > SKIP_LISTED:
        lines.append(f"... and {len(skipped) - SKIP_LISTED} more")
    warnings.warn(
        f"on_error='skip': left out {len(skipped)} of {n} images that "
        "cannot be used (the output has a row per image kept; skipped_ lists "
        "the positions left out: drop them from the labels too):\n  "
        + "\n  ".join(lines), UserWarning, stacklevel=4)
