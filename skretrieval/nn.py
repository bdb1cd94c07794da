"""PyTorch building blocks of retrieval networks, usable on their own.

* :class:`RetrievalNet` -- torchvision trunk -> pooling -> optional
  projection -> L2 (what :class:`skretrieval.RetrievalNetTrainer` trains);
* the pooling layers :class:`GeM` (learnable ``p``), :class:`MAC`,
  :class:`SPoC` and :class:`RMAC`, the torch versions of the NumPy poolers;
* the losses of :mod:`skretrieval.losses` (:class:`APLoss`,
  :class:`TripletLoss`, :class:`ContrastiveLoss`).

Examples
--------
>>> import torch
>>> from skretrieval.nn import APLoss, RetrievalNet
>>> net = RetrievalNet("resnet18", weights=None, pooling="gem")
>>> loss = APLoss(n_bins=20)(net(torch.rand(4, 3, 64, 64)), [0, 0, 1, 1])
>>> loss.backward()
"""

from ._deepnet import GeM, MAC, POOLINGS, RMAC, RetrievalNet, SPoC, make_pooling
from .losses import APLoss, ContrastiveLoss, TripletLoss

__all__ = [
    "APLoss",
    "ContrastiveLoss",
    "GeM",
    "MAC",
    "POOLINGS",
    "RMAC",
    "RetrievalNet",
    "SPoC",
    "TripletLoss",
    "make_pooling",
]
