"""The training losses by name: one table of :class:`LossSpec` rows.

:data:`LOSSES` maps the ``loss`` parameter of
:class:`~skretrieval.RetrievalNetTrainer` to a :class:`LossSpec`: the loss of
a batch of descriptors, how the batches are drawn (a sampling object:
:data:`LABEL_BATCHES`, :data:`SHUFFLED_BATCHES` or :data:`MINED_TUPLES`),
whether it needs the classifier head, its default margin and whether every
label needs two images.  The trainer reads the table and never branches on
the loss's name; a new loss is one function and one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._losses import ap_loss, contrastive_loss, triplet_loss
from ._mining import ap_batches, mine_tuples

__all__ = ["LABEL_BATCHES", "LOSSES", "LossSpec", "MINED_TUPLES", "SHUFFLED_BATCHES",
           "LabelBatches", "MinedTuples", "ShuffledBatches"]


# ---------------------------------------------------------------------------
# how the batches of an epoch are drawn
# ---------------------------------------------------------------------------
class LabelBatches:
    """Batches of ``images_per_label`` images of random labels (listwise losses).

    Every image of a batch is a query against the others, so a batch needs
    two images of at least two labels.
    """

    #: The mining needs no training image at the evaluation size.
    needs_eval_images = False

    def check(self, trainer, n_classes):
        """Raise when the trainer's ``batch_size`` cannot hold a batch."""
        if trainer.batch_size < 4:
            raise ValueError(f"batch_size={trainer.batch_size} is too small for the AP "
                             "loss: a batch needs two images of at least two labels (>= 4)")

    def batches(self, trainer, run, describe):
        """``(batches, n_tuple)``: the index arrays of an epoch, 1 image per tuple."""
        return ap_batches(run.codes, run.steps, run.rng, trainer.images_per_label,
                          trainer.batch_size), 1


class ShuffledBatches:
    """The training images in random orders, ``batch_size`` at a time."""

    needs_eval_images = False

    def check(self, trainer, n_classes):
        """Any batch size will do."""

    def batches(self, trainer, run, describe):
        """``(batches, n_tuple)``: the index arrays of an epoch, 1 image per tuple."""
        codes, steps, rng, size = run.codes, run.steps, run.rng, trainer.batch_size
        n = len(codes)
        order = np.concatenate([rng.permutation(n) for _ in range(-(-steps * size // n))])
        return (order[s * size:(s + 1) * size] for s in range(steps)), 1


class MinedTuples:
    """Tuples (anchor, positive, ``n_negatives`` hard negatives) mined every epoch.

    The negatives are mined with the current network on the training images
    at the evaluation size (``describe``).
    """

    needs_eval_images = True

    def check(self, trainer, n_classes):
        """Raise when the trainer's ``batch_size`` cannot hold one tuple."""
        if trainer.batch_size < 2 + min(trainer.n_negatives, n_classes - 1):
            raise ValueError(
                f"batch_size={trainer.batch_size} cannot hold one tuple (anchor, "
                f"positive and {trainer.n_negatives} negatives); raise batch_size or "
                "lower n_negatives")

    def batches(self, trainer, run, describe):
        """``(batches, n_tuple)``: the tuples of every step, flattened, and the
        images per tuple."""
        codes, steps = run.codes, run.steps
        n_tuple = 2 + min(trainer.n_negatives, int(codes.max()))
        per_step = max(1, trainer.batch_size // n_tuple)
        tuples = mine_tuples(describe, codes, steps * per_step, run.rng,
                             n_negatives=trainer.n_negatives,
                             pool_size=trainer.mining_pool_size, dim=run.net.out_dim)
        return (tuples[s * per_step:(s + 1) * per_step].ravel() for s in range(steps)), n_tuple


LABEL_BATCHES = LabelBatches()
SHUFFLED_BATCHES = ShuffledBatches()
MINED_TUPLES = MinedTuples()


# ---------------------------------------------------------------------------
# the losses of a batch of descriptors
# ---------------------------------------------------------------------------
def _ap(d, labels, *, n_bins, **_):
    return ap_loss(d, labels, n_bins=n_bins, tie_aware=False)


def _tie_aware_ap(d, labels, *, n_bins, **_):
    return ap_loss(d, labels, n_bins=n_bins, tie_aware=True)


def _classification(d, labels, *, head, **_):
    return torch.nn.functional.cross_entropy(head(d), labels)


def _tuples(d, n_tuple):
    d = d.view(-1, n_tuple, d.shape[-1])
    return d[:, 0], d[:, 1], d[:, 2:]


def _triplet(d, labels, *, n_tuple, margin, **_):
    anchor, positive, negatives = _tuples(d, n_tuple)
    return triplet_loss(anchor, positive, negatives, margin=margin)


def _contrastive(d, labels, *, n_tuple, margin, **_):
    anchor, positive, negatives = _tuples(d, n_tuple)
    k = negatives.shape[1]
    x1 = torch.cat([anchor, anchor.repeat_interleave(k, dim=0)])
    x2 = torch.cat([positive, negatives.reshape(-1, d.shape[-1])])
    same = torch.cat([torch.ones(len(anchor)), torch.zeros(len(anchor) * k)])
    return contrastive_loss(x1, x2, same.to(d.device), margin=margin)


@dataclass(frozen=True)
class LossSpec:
    """A row of the loss table.

    Parameters
    ----------
    name : str
        The ``loss`` parameter of the trainer.
    function : callable
        ``function(d, labels, *, head, n_tuple, n_bins, margin)``: the scalar
        loss of a batch of descriptors ``d`` (``(N, dim)``, tuples of
        ``n_tuple`` consecutive rows for the tuple losses) with label codes
        ``labels``; ``head`` is the classifier head or None.
    sampling : object
        How the batches are drawn: :data:`LABEL_BATCHES`,
        :data:`SHUFFLED_BATCHES` or :data:`MINED_TUPLES` (an object with
        ``needs_eval_images``, ``check(trainer, n_classes)`` and
        ``batches(trainer, run, describe)``).
    head : bool, default=False
        The loss needs a classifier head over the labels.
    margin : float or None, default=None
        The margin when the trainer's ``margin`` is None.
    two_per_label : bool, default=True
        Every label needs two training images (a query needs a positive).

    Examples
    --------
    >>> from skretrieval.nn._registry import LOSSES
    >>> LOSSES["triplet"].margin, LOSSES["classification"].two_per_label
    (0.1, False)
    """

    name: str
    function: Callable
    sampling: object
    head: bool = False
    margin: float | None = None
    two_per_label: bool = True


LOSSES = {
    spec.name: spec
    for spec in (
        LossSpec("ap", _ap, LABEL_BATCHES),
        LossSpec("tie_aware_ap", _tie_aware_ap, LABEL_BATCHES),
        LossSpec("triplet", _triplet, MINED_TUPLES, margin=0.1),
        LossSpec("contrastive", _contrastive, MINED_TUPLES, margin=0.7),
        LossSpec("classification", _classification, SHUFFLED_BATCHES, head=True,
                 two_per_label=False),
    )
}
