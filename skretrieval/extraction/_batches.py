"""Collections of images into network batches: checking, resizing, stacking.

Shared by :class:`~skretrieval.ConvFeatureExtractor` and
:class:`~skretrieval.RetrievalNetTrainer`:

* :func:`as_image_list` -- a collection ``X`` checked and made a list;
* :func:`resized_shape` and :func:`resize` -- the longest side brought to a
  size, aspect ratio kept, with bilinear interpolation;
* :func:`to_batch` -- ``H x W x 3`` uint8 arrays stacked into a float batch
  in ``[0, 1]`` (optionally normalised) on a device;
* :func:`numbered_error` and :func:`stop_error` -- the errors naming the
  images of ``X`` that cannot be used.
"""

from __future__ import annotations

import warnings

import os

import numpy as np
import torch
from PIL import Image

from ._images import ImageLoadError, item_path, short_description
from ._maps import FeatureMaps

__all__ = ["as_image_list", "numbered_error", "resize", "resized_shape",
           "stop_error", "to_batch"]


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
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise TypeError(
            f"{what} must be a collection of images (a list of paths, PIL images or "
            f"arrays), got a single {type(X).__name__}; wrap it in a list"
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
