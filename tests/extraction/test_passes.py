"""The network runner of the extractor, built without an extractor, and its jobs."""

import dataclasses
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from skretrieval.extraction import ShapeBatching
from skretrieval.extraction._cache import PassCounter
from skretrieval.extraction._engines import EngineError
from skretrieval.extraction._passes import (CachedJob, ChunkResult, CutNetwork, EngineSessions,
                                            NetworkRunner, RunJob, StashedJob, as_map,
                                            choose_engine)


class Halves(torch.nn.Module):
    """Mean over the channels, at full and at half resolution; records batch sizes."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append(tuple(x.shape))
        gray = x.mean(1, keepdim=True)
        return {"out": gray, "cam": gray[:, :, ::2, ::2]}


class Multi(torch.nn.Module):
    def forward(self, x):
        return {"a": x[:, :1], "b": x.mean((2, 3)), "ignored": x.mean((1, 2, 3))}


def _runner(network, batch_size=2, counter=None, engine=None):
    return NetworkRunner(network, engine=engine or EngineSessions("torch"),
                         batching=ShapeBatching(batch_size), device="cpu",
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                         counter=PassCounter() if counter is None else counter)


def _images(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def test_shape_batching_groups_by_shape_and_bounds_batches():
    batching = ShapeBatching(2)
    shapes = [(8, 6, 3), (6, 8, 3), (8, 6, 3), (8, 6, 3), (6, 8, 3)]
    assert batching.split(shapes) == [[1, 4], [0, 2], [3]]
    assert ShapeBatching(10).split(iter(shapes)) == [[1, 4], [0, 2, 3]]
    assert batching.split([]) == []
    assert ShapeBatching.for_device(None, "cpu") == ShapeBatching(1)
    assert ShapeBatching.for_device(None, "cuda:0") == ShapeBatching(8)
    assert ShapeBatching.for_device(3, "cpu") == ShapeBatching(3)
    with pytest.raises(ValueError, match="positive"):
        ShapeBatching(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        batching.batch_size = 4


def test_runner_maps_every_image_in_shape_batches_and_counts_passes():
    net = Halves()
    counter = PassCounter()
    runner = _runner(CutNetwork(net, "gray", "layer 'gray' of toy", "toy",
                                cam_nodes=("half",)), counter=counter)
    images = _images([(8, 6), (6, 8), (8, 6), (8, 6)])
    got = dict(runner.run(images))
    assert sorted(got) == [0, 1, 2, 3]
    assert net.batches == [(1, 3, 6, 8), (2, 3, 8, 6), (1, 3, 8, 6)]
    assert counter.value == 4
    for k, image in enumerate(images):
        expected = image.astype(np.float32).mean(2) / 255
        np.testing.assert_allclose(got[k]["gray"][0], expected, rtol=1e-5)
        assert got[k]["half"].shape == (1, (image.shape[0] + 1) // 2,
                                        (image.shape[1] + 1) // 2)
        assert got[k]["gray"].dtype == np.float32 and got[k]["gray"].flags.c_contiguous


def test_runner_uses_the_multi_network_only_when_asked_and_large_enough():
    network = CutNetwork(Halves(), "a", "layer 'a' of toy", "toy", multi=Multi(),
                         multi_min_size=7)
    runner = _runner(network)
    small, large = _images([(6, 6), (8, 8)])
    assert set(dict(runner.run([large]))[0]) == {"a"}
    assert set(dict(runner.run([small], multi=True))[0]) == {"a"}
    maps = dict(runner.run([large], multi=True))[0]
    assert set(maps) == {"a", "b"}
    assert maps["b"].shape == (3, 1, 1)


def test_runner_failure_names_the_images_and_counts_nothing():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("out of luck")

    counter = PassCounter()
    runner = _runner(CutNetwork(Broken(), "x", "layer 'x' of toy", "toy"), counter=counter)
    with pytest.raises(RuntimeError, match=r"toy failed on image 5, image 6 \(input "
                                           r"\(2, 3, 4, 4\)\): out of luck"):
        list(runner.run(_images([(4, 4)] * 2), describe=lambda k: f"image {k + 5}"))
    assert counter.value == 0


def test_as_map_and_engine_choice():
    assert as_map(torch.zeros(2, 5), "x").shape == (2, 5, 1, 1)
    with pytest.raises(ValueError, match="layer 'y' of toy outputs a tensor of shape"):
        as_map(torch.zeros(2, 5, 3), "layer 'y' of toy")
    assert choose_engine("auto", "bfloat16", "cpu") == "torch"
    with pytest.raises(ValueError, match="autocast"):
        choose_engine("openvino", "float16", "cpu")


def test_engine_sessions_keep_sessions_and_fall_back_to_torch(monkeypatch):
    from skretrieval.extraction import _passes

    built = []

    def fake_runner(engine, net, *, what, sample_size):
        built.append((engine, what, sample_size))
        if engine == "broken":
            raise EngineError("no export")
        return lambda x: net(x)

    monkeypatch.setattr(_passes, "engine_runner", fake_runner)
    net = Halves()
    assert EngineSessions("torch")(net) is net
    kept = {}
    sessions = EngineSessions("fake", what="layer 'l' of toy", sample_size=32, sessions=kept)
    first = sessions(net)
    assert sessions(net) is first and kept == {id(net): first}
    assert built == [("fake", "layer 'l' of toy", 32)]
    with pytest.raises(EngineError):
        EngineSessions("broken")(net)
    fallback = EngineSessions("broken", fallback=True)
    with pytest.warns(RuntimeWarning, match="running it with torch"):
        assert fallback(net) is net
    assert fallback.engine == "torch"


def test_jobs_are_frozen_values():
    future = Future()
    future.set_result([np.zeros((2, 2, 3), np.uint8)])
    jobs = [StashedJob(3, 0), CachedJob(4, ({"n": np.zeros(1)},)), RunJob(5, future)]
    assert [job.index for job in jobs] == [3, 4, 5]
    assert jobs[0] == StashedJob(3, 0) and jobs[2].keys is None
    for job in jobs:
        with pytest.raises(dataclasses.FrozenInstanceError):
            job.index = 0
    result = ChunkResult((3, 5), ((np.zeros(1),), (np.ones(1),)), (None, None), reused=1)
    assert result.errors == () and result.reused == 1
    with pytest.raises(ValueError, match="one entry per image"):
        ChunkResult((3,), (), ())
