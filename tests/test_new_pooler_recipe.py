"""The recipe of docs/architecture.md, followed once: a new pooler is one class
and one row of the pooler table, and then the command line, the pickle-free
format and the trainer all know it with no other edit."""

import numpy as np
import pytest
import torch
from PIL import Image

from skretrieval import RetrievalNetTrainer
from skretrieval.cli import main
from skretrieval.nn import POOLINGS
from skretrieval.persistence import load_pipeline
from skretrieval.persistence._registry import NAME_OF_CLASS, SUPPORTED_CLASSES
from skretrieval.pooling._base import BasePooler
from skretrieval.pooling._registry import POOLERS, PoolerSpec

FAST = ["--backbone", "resnet18", "--weights", "none", "--max-size", "64", "--device", "cpu"]


# ---------------------------------------------------------------------------
# the one class (estimator + its torch layer) ...
# ---------------------------------------------------------------------------
class LSEPooler(BasePooler):
    """Log-sum-exp pooling, ``log(mean(exp(r x))) / r`` per channel (a smooth max)."""

    _parameter_constraints = {**BasePooler._parameter_constraints, "r": [float, int]}

    def __init__(self, r=10.0, *, normalize=True, scale_combination="sum"):
        self.r = r
        self.normalize = normalize
        self.scale_combination = scale_combination

    def _pool_map(self, x):
        z = float(self.r) * x.reshape(x.shape[0], -1).astype(np.float64)
        top = z.max(axis=1)
        return (top + np.log(np.mean(np.exp(z - top[:, None]), axis=1))) / float(self.r)


class LSE(torch.nn.Module):
    """The torch layer of :class:`LSEPooler` (``(N, C, H, W) -> (N, C)``)."""

    def __init__(self, r=10.0):
        super().__init__()
        self.r = float(r)

    def forward(self, x):
        flat = x.flatten(2) * self.r
        return (torch.logsumexp(flat, dim=2) - np.log(flat.shape[2])) / self.r


# ---------------------------------------------------------------------------
# ... and the one row
# ---------------------------------------------------------------------------
@pytest.fixture
def lse_row(monkeypatch):
    monkeypatch.setitem(POOLERS, "lse", PoolerSpec("lse", "LSE", LSEPooler, layer=LSE))
    return POOLERS["lse"]


def _collection(folder, n_groups=2, per_group=3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for g in range(n_groups):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((80, 60), Image.BICUBIC)).astype(int)
        for j in range(per_group):
            noisy = np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"g{g}_{j}.png")
    return sorted(p.name for p in folder.iterdir())


def test_the_table_row_is_seen_everywhere(lse_row):
    assert "lse" in POOLINGS                      # the trainer's and RetrievalNet's choices
    assert SUPPORTED_CLASSES["skretrieval.LSEPooler"] is LSEPooler
    assert NAME_OF_CLASS[LSEPooler] == "skretrieval.LSEPooler"
    x = np.random.default_rng(0).random((2, 5, 4, 3), dtype=np.float32)
    ours = LSEPooler(normalize=False).fit_transform(x)
    layer = lse_row.make_layer(p=3.0, learn_p=True)  # GeM's parameters are not passed
    np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy(), ours, rtol=1e-5)
    # r large: a smooth max, close to MAC
    np.testing.assert_allclose(LSEPooler(r=1e4, normalize=False).fit_transform(x),
                               x.reshape(2, 5, -1).max(axis=2), atol=1e-3)


def test_without_the_row_nothing_knows_it():
    assert "lse" not in POOLINGS
    assert "skretrieval.LSEPooler" not in SUPPORTED_CLASSES
    with pytest.raises(ValueError, match="pooling"):
        RetrievalNetTrainer("resnet18", weights=None, pooling="lse").fit(
            [np.zeros((32, 32, 3), np.uint8)] * 4, [0, 0, 1, 1])


def test_command_line_and_the_pickle_free_file(lse_row, tmp_path, capsys):
    names = _collection(tmp_path / "db")
    model = tmp_path / "index.zip"
    assert main(["index", str(tmp_path / "db"), "-o", str(model), "--pooler", "lse",
                 *FAST]) == 0
    capsys.readouterr()
    pipe = load_pipeline(model)
    assert isinstance(pipe[1], LSEPooler)
    assert pipe[1].get_params() == LSEPooler().get_params()
    assert main(["search", str(model), str(tmp_path / "db" / names[0]), "-k", "3"]) == 0
    rank, sim, name = capsys.readouterr().out.strip().splitlines()[2].split()
    assert (rank, name) == ("1", names[0])            # the image finds itself first
    assert float(sim) == pytest.approx(1.0, abs=1e-4)


def test_the_trainer_trains_with_it(lse_row):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(8)]
    trainer = RetrievalNetTrainer("resnet18", weights=None, pooling="lse", image_size=32,
                                  batch_size=8, images_per_label=2, n_epochs=1,
                                  random_state=0).fit(images, [0, 0, 1, 1, 2, 2, 3, 3])
    assert isinstance(trainer.network_.pool, LSE)
    d = trainer.transform(images)
    assert d.shape == (8, 512) and np.isfinite(d).all()
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)
