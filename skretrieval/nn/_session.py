"""The state of a training run of :class:`~skretrieval.RetrievalNetTrainer`, and its checkpoint.

A :class:`Session` holds what the epochs of ``fit`` share (network, head,
optimiser, random state, decoded images, history, best weights);
:func:`save_checkpoint` writes what is needed to resume it after every epoch,
atomically, and :func:`restore_checkpoint` puts it back.
"""

from __future__ import annotations

import os

import torch

from ..utils._files import atomic_write

__all__ = ["Session", "check_fingerprint", "load_checkpoint", "restore_checkpoint",
           "save_checkpoint", "state_copy", "training_fingerprint"]

#: Format of the checkpoint files.
CHECKPOINT_VERSION = 1


class Session:
    """What the epochs of one ``fit`` share."""

    def __init__(self, *, codes, seed, fingerprint):
        self.codes, self.seed, self.fingerprint = codes, seed, fingerprint
        self.net = self.head = self.opt = self.rng = None
        self.train_bank = self.eval_train = self.val_bank = self.val_codes = None
        self.crop_scale = None
        self.steps = self.total_steps = 0
        self.history = []
        self.best = {"score": None, "epoch": None, "state": None}
        self.start_epoch = self.step = 0


def state_copy(net):
    """A copy of the state dict of ``net`` on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def load_checkpoint(path):
    """The training state saved in ``path``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def training_fingerprint(params, weights, n_images, classes):
    """What a checkpoint must have been saved by to be resumed.

    ``params`` are the trainer's parameters, ``weights`` the description of
    its initial weights, ``classes`` its training labels.
    """
    dim = params["dim"]
    return {
        "backbone": params["backbone"], "weights": weights, "layer": repr(params["layer"]),
        "pooling": params["pooling"], "dim": -1 if dim is None else int(dim),
        "loss": params["loss"], "n_images": n_images,
        "classes": [str(c) for c in classes.tolist()],
    }


def check_fingerprint(state, fingerprint, path):
    """Raise when the checkpoint ``state`` was saved by another training."""
    if state is not None and state["fingerprint"] != fingerprint:
        diff = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
        raise ValueError(f"the checkpoint {str(path)!r} was saved by a different "
                         f"training ({', '.join(diff)} differ); remove it or resume=False")


def save_checkpoint(path, run, epoch):
    """Write the state of ``run`` after ``epoch`` to ``path`` (atomically)."""
    state = {
        "version": CHECKPOINT_VERSION, "fingerprint": run.fingerprint, "seed": run.seed,
        "epoch": epoch, "step": run.step, "network": state_copy(run.net),
        "head": None if run.head is None else state_copy(run.head),
        "optimizer": run.opt.state_dict(), "rng": run.rng.bit_generator.state,
        "history": run.history, "best_score": run.best["score"],
        "best_epoch": run.best["epoch"], "best_state": run.best["state"],
    }
    with atomic_write(os.fspath(path)) as fh:
        torch.save(state, fh)


def restore_checkpoint(state, run):
    """Put the saved training ``state`` back into ``run``."""
    run.net.load_state_dict(state["network"])
    if run.head is not None:
        run.head.load_state_dict(state["head"])
    run.opt.load_state_dict(state["optimizer"])
    run.rng.bit_generator.state = state["rng"]
    run.history = list(state["history"])
    run.best = {"score": state["best_score"], "epoch": state["best_epoch"],
                "state": state["best_state"]}
    run.start_epoch, run.step = int(state["epoch"]), int(state["step"])
