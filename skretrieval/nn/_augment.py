"""Images of :class:`~skretrieval.RetrievalNetTrainer`: decoded, resized, random crops, flips."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..extraction._batches import resize, resized_shape
from ..extraction._images import load_image

__all__ = ["crop_box", "load_resized", "load_training_image", "random_crops"]


def load_training_image(item, index, limit):
    """A training image as a ``3 x H x W`` uint8 tensor, longest side at most ``limit``."""
    arr = load_image(item, index=index)
    h, w = arr.shape[:2]
    if max(h, w) > limit:
        arr = resize(arr, resized_shape(h, w, limit))
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def load_resized(item, index, size):
    """An image as an ``H x W x 3`` array, its longest side resized to ``size``."""
    arr = load_image(item, index=index)
    return resize(arr, resized_shape(*arr.shape[:2], size))


def crop_box(H, W, scale, rng, ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """A random crop ``(top, left, height, width)`` as torchvision's RandomResizedCrop."""
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
    # fallback: central crop of the whole image, aspect ratio clamped
    in_ratio = W / H
    if in_ratio < ratio[0]:
        w, h = W, int(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = H, int(round(H * ratio[1]))
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


def random_crops(bank, indices, rng, size, crop_scale, flip, device):
    """A training batch: of each image ``bank[i]`` (``3 x H x W`` uint8 tensors)
    a random crop of ``crop_scale`` of its area (the whole image if None)
    resized to ``size x size``, flipped half of the time when ``flip``; a
    channels-last float batch in ``[0, 1]`` on ``device``."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for i in indices:
        img = bank[i]
        H, W = img.shape[-2:]
        if crop_scale is None:
            top, left, h, w = 0, 0, H, W
        else:
            top, left, h, w = crop_box(H, W, crop_scale, rng)
        crop = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        if flip and rng.random() < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    x = torch.stack(out).to(device).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)
