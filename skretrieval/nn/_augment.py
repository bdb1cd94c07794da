"""Training crops of :class:`~skretrieval.RetrievalNetTrainer`: random resized crops, flips."""

from __future__ import annotations

import math

import torch

__all__ = ["crop_box", "random_crops"]


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
