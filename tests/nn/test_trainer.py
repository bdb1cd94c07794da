"""RetrievalNet, its pooling layers and RetrievalNetTrainer (tiny random networks)."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

from skretrieval import (
    ConvFeatureExtractor,
    GeMPooler,
    MACPooler,
    NearestNeighborRetriever,
    PCAWhitener,
    RetrievalNet,
    RetrievalNetTrainer,
    RMACPooler,
    SPoCPooler,
)
from skretrieval.nn import GeM, MAC, RMAC, SPoC
from skretrieval.nn._training import backward, loss_function, train_mode

# resnet18 cut after its second stage: 128 channels, 0.7 M parameters, fast at 32 px
from _helpers import TINY, gratings  # noqa: E402  (shared with the persistence tests)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return gratings(seed=0), gratings(seed=1, per=6)


def _trainer(**kw):
    params = dict(TINY, batch_size=16, images_per_label=4, n_negatives=2,
                  crop_scale=(0.8, 1.0), learning_rate=1e-3, n_epochs=1, random_state=0)
    params.update(kw)
    return RetrievalNetTrainer(**params)


# ---------------------------------------------------------------------------
# the torch modules
# ---------------------------------------------------------------------------
def test_pooling_layers_are_the_numpy_poolers():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 6, 5, 7), dtype=np.float32)
    x = torch.from_numpy(maps)
    pairs = [(GeM(p=3.0), GeMPooler(p=3.0, normalize=False)),
             (MAC(), MACPooler(normalize=False)),
             (SPoC(), SPoCPooler(normalize=False)),
             (RMAC(levels=3), RMACPooler(levels=3, normalize=False))]
    for layer, pooler in pairs:
        np.testing.assert_allclose(layer(x).detach().numpy(), pooler.transform(maps),
                                   rtol=1e-5, atol=1e-6, err_msg=type(layer).__name__)
    gem = GeM(p=2.0)
    gem(x).sum().backward()
    assert gem.p.grad is not None and float(gem.p.grad.abs()) > 0
    assert not any(q.requires_grad for q in GeM(learn_p=False).parameters())


def test_network_projection_is_the_pca_whitening_of_the_pooled_vectors():
    net = RetrievalNet("resnet18", weights=None, layer="layer2", pooling="gem", dim=8).eval()
    x = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = net.pooled(x).numpy()
    assert pooled.shape == (20, 128)
    whitener = PCAWhitener(n_components=8).fit(pooled)
    net.init_projection(whitener.components_, whitener.mean_, whitener.scale_)
    with torch.no_grad():
        d = net(x).numpy()
    np.testing.assert_allclose(d, whitener.transform(pooled), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="components must have shape"):
        net.init_projection(np.zeros((4, 128)), np.zeros(128))
    with pytest.raises(ValueError, match="no projection"):
        RetrievalNet("resnet18", weights=None, layer="layer2").init_projection(
            np.zeros((8, 128)), np.zeros(128))


def test_untrained_trainer_is_the_off_the_shelf_pipeline(data):
    (X, y), _ = data
    trainer = RetrievalNetTrainer("resnet18", weights=None, image_size=64, n_epochs=0,
                                  learn_p=False).fit(X, y)
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu")
    expected = GeMPooler(p=3.0).fit_transform(ext.fit_transform(X[:6]))
    np.testing.assert_allclose(trainer.transform(X[:6]), expected, atol=2e-5)
    assert trainer.history_ == [] and trainer.best_epoch_ is None


def test_projection_starts_as_the_pca_whitening_of_the_training_images(data):
    (X, y), (Xv, _) = data
    trainer = _trainer(dim=16, n_epochs=0).fit(X, y)
    assert trainer.n_features_out_ == 16
    assert list(trainer.get_feature_names_out()[:2]) == ["retrievalnettrainer0",
                                                        "retrievalnettrainer1"]
    net = trainer.network_
    with torch.no_grad():
        pooled = np.concatenate([net.pooled(torch.from_numpy(np.stack(X)).permute(
            0, 3, 1, 2).float() / 255).numpy(), net.pooled(torch.from_numpy(np.stack(Xv)).permute(
                0, 3, 1, 2).float() / 255).numpy()])
    whitener = PCAWhitener(n_components=16).fit(pooled[:len(X)])
    np.testing.assert_allclose(trainer.transform(Xv), whitener.transform(pooled[len(X):]),
                               atol=1e-4)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["ap", "triplet"])
def test_training_lowers_the_loss_and_raises_the_held_out_map(data, loss):
    (X, y), (Xv, yv) = data
    trainer = _trainer(loss=loss, n_epochs=4, keep_best=False).fit(X, y, eval_set=(Xv, yv))
    h = trainer.history_
    assert [r["epoch"] for r in h] == [0, 1, 2, 3, 4]
    assert np.isnan(h[0]["loss"])
    assert h[-1]["loss"] < 0.75 * h[1]["loss"]
    assert h[-1]["val_map"] > h[0]["val_map"] + 0.15
    # the descriptors give the validation mAP that was recorded
    d = trainer.transform(Xv)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, rtol=1e-5)
    score = NearestNeighborRetriever(metric="inner_product").fit(d, yv).score(None, None)
    assert score == pytest.approx(h[-1]["val_map"], abs=1e-6)
    assert h[-1]["lr"] == pytest.approx(0.0)  # end of the cosine schedule
    assert h[-1]["p"] != 3.0  # GeM's exponent was trained


@pytest.mark.parametrize("loss", ["tie_aware_ap", "contrastive", "classification"])
def test_other_losses_train(data, loss):
    (X, y), _ = data
    trainer = _trainer(loss=loss, n_epochs=2, lr_schedule="constant").fit(X, y)
    assert [r["epoch"] for r in trainer.history_] == [1, 2]
    assert all(np.isfinite(r["loss"]) and np.isnan(r["val_map"]) for r in trainer.history_)
    assert trainer.history_[-1]["lr"] == pytest.approx(1e-3)


def test_neural_codes_pipeline_compresses_with_pca(data):
    (X, y), (Xv, yv) = data
    pipe = make_pipeline(_trainer(loss="classification"), PCAWhitener(n_components=8),
                         NearestNeighborRetriever())
    pipe.fit(X, y)
    assert pipe[:-1].transform(Xv).shape == (len(Xv), 8)
    assert 0 <= pipe.score(Xv, yv) <= 1
    # labels with a single image are fine for classification
    _trainer(loss="classification", n_epochs=1).fit(X[:9], y[:9])


def test_keep_best_restores_the_best_epoch_and_validation_fraction_holds_out_labels():
    X, y = gratings(n_classes=6, per=6)
    trainer = _trainer(n_epochs=2, validation_fraction=0.34, learning_rate=0.05,
                       optimizer="sgd").fit(X, y)
    assert len(trainer.classes_) == 4  # 2 of the 6 labels held out
    scores = [r["val_map"] for r in trainer.history_]
    assert trainer.best_score_ == max(scores)
    assert trainer.best_epoch_ == int(np.argmax(scores))
    held = np.setdiff1d(np.unique(y), trainer.classes_)
    mask = np.isin(y, held)
    d = trainer.transform([X[i] for i in np.flatnonzero(mask)])
    score = NearestNeighborRetriever(metric="inner_product").fit(d, y[mask]).score(None, None)
    assert score == pytest.approx(trainer.best_score_, abs=1e-6)


def test_seeds_reproduce_and_pickling_keeps_the_weights(data, tmp_path):
    (X, y), (Xv, _) = data
    a = _trainer(random_state=3, dim=16).fit(X, y)
    b = clone(a).fit(X, y)
    c = clone(a).set_params(random_state=4).fit(X, y)
    da = a.transform(Xv)
    np.testing.assert_array_equal(da, b.transform(Xv))
    assert np.abs(da - c.transform(Xv)).max() > 1e-4
    # joblib round trip: numpy state dict, no torch module, same descriptors
    state = a.__getstate__()
    assert state["network_"] is None
    assert all(isinstance(v, np.ndarray) for v in state["_network_state"].values())
    path = tmp_path / "trainer.joblib"
    joblib.dump(a, path)
    loaded = joblib.load(path)
    assert loaded.network_ is None
    np.testing.assert_array_equal(loaded.transform(Xv), da)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(loaded)).transform(Xv), da)


def test_resume_continues_from_the_saved_epoch(data, tmp_path, monkeypatch):
    (X, y), (Xv, yv) = data
    params = dict(n_epochs=3, steps_per_epoch=1, checkpoint=str(tmp_path / "ckpt.pt"))
    full = _trainer(**dict(params, checkpoint=None)).fit(X, y, eval_set=(Xv, yv))

    original = RetrievalNetTrainer._run_epoch
    calls = []

    def crash_at_third_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RetrievalNetTrainer, "_run_epoch", crash_at_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        _trainer(**params).fit(X, y, eval_set=(Xv, yv))
    monkeypatch.setattr(RetrievalNetTrainer, "_run_epoch", original)
    saved = torch.load(params["checkpoint"], weights_only=True)
    assert saved["epoch"] == 2

    resumed = _trainer(**params, resume=True).fit(X, y, eval_set=(Xv, yv))
    assert [r["epoch"] for r in resumed.history_] == [0, 1, 2, 3]
    for r1, r2 in zip(resumed.history_, full.history_):
        assert r1["loss"] == pytest.approx(r2["loss"], nan_ok=True, rel=1e-6)
        assert r1["val_map"] == pytest.approx(r2["val_map"], rel=1e-6)
    np.testing.assert_allclose(resumed.transform(Xv), full.transform(Xv), atol=1e-6)
    assert resumed.n_epochs_ == 3
    # another training refuses the checkpoint
    with pytest.raises(ValueError, match="different training"):
        _trainer(**params, resume=True, pooling="mac").fit(X, y)


def test_multistage_backprop_gives_the_gradient_of_the_whole_batch(data):
    (X, y), _ = data
    trainer = _trainer()
    net = RetrievalNet(**{k: TINY[k] for k in ("backbone", "weights", "layer")}, dim=None)
    train_mode(net, trainer.freeze_batchnorm)
    trainer.device_ = "cpu"
    x = torch.from_numpy(np.stack(X[:16])).permute(0, 3, 1, 2).float() / 255
    labels = torch.as_tensor(y[:16])
    loss_fn = loss_function(trainer.loss, None, labels, 1, n_bins=trainer.n_bins,
                            margin=trainer.margin)
    grads = []
    for chunk in (None, 5):
        net.zero_grad()
        trainer.chunk_size = chunk
        value = backward(net, x, loss_fn, trainer.chunk_size)
        grads.append([q.grad.clone() for q in net.parameters()])
    assert value > 0
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
def test_bad_inputs_get_clear_errors(data, tmp_path):
    (X, y), _ = data
    with pytest.raises(ValueError, match="single label"):
        _trainer().fit(X[:4], [0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"at least 2 images per label.*1 label\(s\)"):
        _trainer().fit(X[:5], [0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="at least 2 images per label"):
        _trainer(loss="triplet").fit(X[:5], [0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="labels"):
        _trainer().fit(X[:4])
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        _trainer().fit(X[:4], [0, 0, 1])
    with pytest.raises(TypeError, match="single ndarray|wrap it in a list|batch of images"):
        _trainer().fit("image.jpg", [0])
    with pytest.raises(ValueError, match="not both"):
        _trainer(validation_fraction=0.5).fit(X, y, eval_set=(X, y))
    with pytest.raises(ValueError, match="checkpoint"):
        _trainer(resume=True).fit(X, y)
    with pytest.raises(ValueError, match="crop_scale"):
        _trainer(crop_scale=(0.5, 2.0)).fit(X, y)
    with pytest.raises(ValueError, match="loss"):
        _trainer(loss="softmax").fit(X, y)
    with pytest.raises(ValueError, match="dim=500"):
        _trainer(dim=500).fit(X, y)
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        _trainer().transform(X)
