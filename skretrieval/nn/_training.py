"""The pieces of a training step of :class:`~skretrieval.RetrievalNetTrainer`.

Labels (:func:`check_labels`), the loss of a batch (:func:`loss_function`,
from the loss table of :mod:`._registry`, with the :class:`CosineClassifier`
head of ``loss="classification"``), the
optimiser and its schedule (:func:`make_optimizer`, :func:`set_lr`),
training mode with frozen batch-norm statistics (:func:`train_mode`), the
(multistage) back-propagation (:func:`backward`) and the validation
leave-one-out mAP (:func:`loo_map`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..extraction._batches import to_batch
from ..neighbors import NearestNeighborRetriever
from ._registry import LOSSES

__all__ = ["CosineClassifier", "backward", "check_labels", "describe_images", "loo_map", "loss_function",
           "make_optimizer", "set_lr", "split_labels", "train_mode"]

#: Temperature of the cosine classifier of loss="classification".
TEMPERATURE = 0.05
#: New layers (GeM exponent, classifier head) learn this much faster.
NEW_LAYER_LR = 10.0


def check_labels(y, n, what="y"):
    """``y`` as a 1-D array of ``n`` finite labels (raises naming ``what``)."""
    if y is None:
        raise ValueError(f"RetrievalNetTrainer.fit needs the labels {what} of the images "
                         "(same label = same object or place)")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one label per image), got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{what} has {y.shape[0]} labels for {n} images")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{what} contains NaN or infinite labels")
    return y


@torch.no_grad()
def describe_images(net, arrays, batching, device, *, pooled=False, freeze_batchnorm=True):
    """Descriptors of prepared (resized) images in eval mode, batched by ``batching``.

    Parameters
    ----------
    net : RetrievalNet
    arrays : list of ndarray
        ``H x W x 3`` images, already at their size.
    batching : ShapeBatching
        The batch policy (images of one shape together).
    device : str
    pooled : bool, default=False
        The pooled features (before the projection), not the descriptors.
    freeze_batchnorm : bool, default=True
        How to put the network back in training mode when it was training.

    Returns
    -------
    descriptors : ndarray of shape (len(arrays), dim), float32
    """
    was_training = net.training
    net.eval()
    fn = net.pooled if pooled else net
    out = None
    for idx in batching.split(arr.shape for arr in arrays):
        d = fn(to_batch([arrays[i] for i in idx], device)).float().cpu()
        if out is None:
            out = np.empty((len(arrays), d.shape[1]), dtype=np.float32)
        out[idx] = d.numpy()
    if was_training:
        train_mode(net, freeze_batchnorm)
    return out


def split_labels(items, y, fraction, seed):
    """``(items, y, val_items, val_y)``: a ``fraction`` of the labels held out.

    The held-out labels are drawn with the random state ``[seed, 1]``; every
    image of a held-out label goes to the validation side.  Raises when either
    side would be left without labels (training needs at least two).
    """
    classes = np.unique(y)
    n_val = int(round(fraction * len(classes)))
    if n_val < 1 or len(classes) - n_val < 2:
        raise ValueError(
            f"validation_fraction={fraction} of {len(classes)} labels leaves {n_val} for "
            f"validation and {len(classes) - n_val} for training; each side needs labels "
            "(training at least 2)")
    held = np.random.default_rng([seed, 1]).choice(classes, n_val, replace=False)
    is_val = np.isin(y, held)
    return ([items[i] for i in np.flatnonzero(~is_val)], y[~is_val],
            [items[i] for i in np.flatnonzero(is_val)], y[is_val])


def loo_map(descriptors, codes):
    """Leave-one-out label mAP (Oxford AP) of descriptors, every image a query."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        retriever = NearestNeighborRetriever(metric="inner_product").fit(descriptors, codes)
        return float(retriever.score(None, None))


class CosineClassifier(torch.nn.Module):
    """Logits ``cos(w_c, d) / temperature`` over the classes (normalised softmax)."""

    def __init__(self, dim, n_classes, generator):
        super().__init__()
        w = torch.randn(n_classes, dim, generator=generator) / math.sqrt(dim)
        self.weight = torch.nn.Parameter(w)

    def forward(self, d):
        return d @ torch.nn.functional.normalize(self.weight, dim=1).T / TEMPERATURE


def make_optimizer(net, head, name, lr, weight_decay):
    """The optimiser ``name`` ("adam", "adamw", "sgd") of ``net`` and ``head``;
    the pooling's parameters (no weight decay) and the head learn faster."""
    pool_params = list(net.pool.parameters())
    ids = {id(q) for q in pool_params}
    base = [q for q in net.parameters() if q.requires_grad and id(q) not in ids]
    groups = [{"params": base, "lr": lr, "weight_decay": weight_decay, "lr_factor": 1.0}]
    if pool_params:
        groups.append({"params": pool_params, "lr": lr * NEW_LAYER_LR,
                       "weight_decay": 0.0, "lr_factor": NEW_LAYER_LR})
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": lr * NEW_LAYER_LR,
                       "weight_decay": weight_decay, "lr_factor": NEW_LAYER_LR})
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def set_lr(opt, lr, schedule, step, total_steps):
    """The learning rates of ``opt`` at ``step`` ("cosine" or "constant" schedule)."""
    factor = 1.0
    if schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_factor"] * factor


def train_mode(net, freeze_batchnorm):
    """``net`` in training mode, its batch-norm statistics fixed if asked."""
    net.train()
    if freeze_batchnorm:
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def loss_function(loss, head, labels, n_tuple, *, n_bins, margin):
    """The loss ``loss`` (a row of :data:`~._registry.LOSSES`) of a batch of
    descriptors, as a function of them.

    Parameters
    ----------
    loss : str
        The loss's name.
    head : torch.nn.Module or None
        The classifier head (losses with ``head=True``).
    labels : torch.Tensor
        Label codes of the batch.
    n_tuple : int
        Images per tuple (1 but for the tuple losses).
    n_bins : int
        Bins of the AP losses.
    margin : float or None
        Margin of the tuple losses (None: the loss's default).

    Returns
    -------
    loss_fn : callable
        ``loss_fn(d)``: the scalar loss of the ``(N, dim)`` descriptors ``d``.
    """
    spec = LOSSES[loss]
    margin = margin if margin is not None else spec.margin
    return lambda d: spec.function(d, labels, head=head, n_tuple=n_tuple, n_bins=n_bins,
                                   margin=margin)


def backward(net, x, loss_fn, chunk=None):
    """Back-propagate ``loss_fn(net(x))``; with ``chunk``, the multistage
    back-propagation of Revaud et al. (section 3.3).  Returns the loss.

    ``net`` is any callable from a batch of images to descriptors (the
    network, or the trainer's :meth:`~skretrieval.RetrievalNetTrainer.infer`).
    """
    if chunk is None or len(x) <= chunk:
        loss = loss_fn(net(x))
        loss.backward()
        return float(loss.detach())
    with torch.no_grad():
        d = torch.cat([net(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    d.requires_grad_(True)
    loss = loss_fn(d)
    loss.backward()
    grad = d.grad
    for i in range(0, len(x), chunk):
        net(x[i:i + chunk]).backward(grad[i:i + chunk])
    return float(loss.detach())
