"""PyTorch building blocks of retrieval networks, usable on their own, and their trainer.

* :class:`RetrievalNet` -- torchvision trunk -> pooling -> optional
  projection -> L2 (what :class:`RetrievalNetTrainer` trains);
* the pooling layers :class:`GeM` (learnable ``p``), :class:`MAC`,
  :class:`SPoC` and :class:`RMAC`, the torch versions of the NumPy poolers;
* the losses (:class:`APLoss`, :class:`TripletLoss`, :class:`ContrastiveLoss`
  and their functional forms);
* :class:`RetrievalNetTrainer`, the scikit-learn estimator that fine-tunes a
  :class:`RetrievalNet` and then transforms images into descriptors.

Examples
--------
>>> import torch
>>> from skretrieval.nn import APLoss, RetrievalNet
>>> net = RetrievalNet("resnet18", weights=None, pooling="gem")
>>> loss = APLoss(n_bins=20)(net(torch.rand(4, 3, 64, 64)), [0, 0, 1, 1])
>>> loss.backward()
"""

from ._layers import GeM, MAC, POOLINGS, RMAC, RetrievalNet, SPoC, make_pooling
from ._losses import (
    APLoss,
    ContrastiveLoss,
    TripletLoss,
    ap_loss,
    contrastive_loss,
    quantized_average_precision,
    triplet_loss,
)
from ._trainer import RetrievalNetTrainer

__all__ = [
    "APLoss",
    "ContrastiveLoss",
    "GeM",
    "MAC",
    "POOLINGS",
    "RMAC",
    "RetrievalNet",
    "RetrievalNetTrainer",
    "SPoC",
    "TripletLoss",
    "ap_loss",
    "contrastive_loss",
    "make_pooling",
    "quantized_average_precision",
    "triplet_loss",
]
