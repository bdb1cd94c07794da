"""The trainer opens like skorch's NeuralNet: ``train_step``, ``get_loss`` and
``infer`` are public methods a subclass overrides; the losses come from a table."""

import numpy as np
import pytest
import torch

from skretrieval import RetrievalNetTrainer
from skretrieval.nn._registry import LOSSES


def _data():
    rng = np.random.default_rng(0)
    return ([rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(8)],
            [0, 0, 1, 1, 2, 2, 3, 3])


def _trainer(cls, **kw):
    params = dict(weights=None, image_size=32, batch_size=8, images_per_label=2,
                  n_epochs=1, steps_per_epoch=2, random_state=0)
    return cls("resnet18", **{**params, **kw})


class CenterLossTrainer(RetrievalNetTrainer):
    """A new loss by overriding get_loss: the AP loss plus a pull towards label means."""

    def get_loss(self, y_pred, y_true, *, n_tuple=1, head=None):
        self.calls_ = getattr(self, "calls_", 0) + 1
        base = super().get_loss(y_pred, y_true, n_tuple=n_tuple, head=head)
        means = torch.stack([y_pred[y_true == c].mean(0) for c in y_true.tolist()])
        return base + 0.0 * ((y_pred - means) ** 2).sum(1).mean()


class CountingInfer(RetrievalNetTrainer):
    def infer(self, x):
        self.seen_ = getattr(self, "seen_", 0) + len(x)
        return super().infer(x)


def test_get_loss_override_is_used_and_changes_nothing_else():
    X, y = _data()
    ours = _trainer(CenterLossTrainer).fit(X, y)
    plain = _trainer(RetrievalNetTrainer).fit(X, y)
    assert ours.calls_ == 2                       # one call per step
    np.testing.assert_allclose([h["loss"] for h in ours.history_],
                               [h["loss"] for h in plain.history_], rtol=1e-4)


def test_infer_override_sees_every_training_image():
    X, y = _data()
    t = _trainer(CountingInfer, chunk_size=4).fit(X, y)
    # 2 steps of 8 crops each; the multistage back-propagation runs infer twice per image
    assert t.seen_ >= 2 * 8


def test_every_loss_of_the_table_is_a_valid_parameter():
    X, y = _data()
    for name, spec in LOSSES.items():
        t = _trainer(RetrievalNetTrainer, loss=name, n_negatives=1, n_epochs=1,
                     steps_per_epoch=1).fit(X, y)
        assert np.isfinite(t.history_[-1]["loss"]), name
    with pytest.raises(ValueError, match="loss"):
        _trainer(RetrievalNetTrainer, loss="hinge").fit(X, y)
