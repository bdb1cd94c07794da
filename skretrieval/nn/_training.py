"""The pieces of a training step of :class:`~skretrieval.RetrievalNetTrainer`.

Labels (:func:`check_labels`), the loss of a batch (:func:`loss_function`,
with the :class:`CosineClassifier` head of ``loss="classification"``), the
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

from ._losses import ap_loss, contrastive_loss, triplet_loss

__all__ = ["CosineClassifier", "backward", "check_labels", "loo_map", "loss_function",
           "make_optimizer", "set_lr", "train_mode"]

#: Margins of the tuple losses when ``margin=None``.
DEFAULT_MARGIN = {"triplet": 0.1, "contrastive": 0.7}
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


def loo_map(descriptors, codes):
    """Leave-one-out label mAP (Oxford AP) of descriptors, every image a query."""
    from ..neighbors._retriever import NearestNeighborRetriever

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
    """The loss ``loss`` of a batch of descriptors, as a function of them."""
    margin = margin if margin is not None else DEFAULT_MARGIN.get(loss)
    if loss in ("ap", "tie_aware_ap"):
        return lambda d: ap_loss(d, labels, n_bins=n_bins, tie_aware=loss == "tie_aware_ap")
    if loss == "classification":
        return lambda d: torch.nn.functional.cross_entropy(head(d), labels)

    def tuple_loss(d):
        d = d.view(-1, n_tuple, d.shape[-1])
        anchor, positive, negatives = d[:, 0], d[:, 1], d[:, 2:]
        if loss == "triplet":
            return triplet_loss(anchor, positive, negatives, margin=margin)
        k = negatives.shape[1]
        x1 = torch.cat([anchor, anchor.repeat_interleave(k, dim=0)])
        x2 = torch.cat([positive, negatives.reshape(-1, d.shape[-1])])
        same = torch.cat([torch.ones(len(anchor)), torch.zeros(len(anchor) * k)])
        return contrastive_loss(x1, x2, same.to(d.device), margin=margin)

    return tuple_loss


def backward(net, x, loss_fn, chunk=None):
    """Back-propagate ``loss_fn(net(x))``; with ``chunk``, the multistage
    back-propagation of Revaud et al. (section 3.3).  Returns the loss."""
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
