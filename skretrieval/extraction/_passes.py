"""How the extractor runs its network: the engine, autocast, batches, jobs.

:class:`NetworkRunner` feeds resized images, in the batches of a
:class:`~skretrieval.extraction.ShapeBatching`, to a :class:`CutNetwork` run by
an :class:`EngineSessions` (the engines of :mod:`._engines`) and counts the
passes in a :class:`~._cache.PassCounter`.  It is given all of these when it
is built and reads nothing of its owner: :class:`~skretrieval.ConvFeatureExtractor`
builds one per transform from its fitted attributes.

The images of a chunk of a transform are jobs: :class:`StashedJob` (maps left
by a transform that failed), :class:`CachedJob` (maps found in the feature
cache) or :class:`RunJob` (an image for the network); running the jobs of a
chunk gives a :class:`ChunkResult`.
"""

from __future__ import annotations

import contextlib
import warnings
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from ._batches import to_batch
from ._cache import FORWARD_PASSES
from ._engines import EngineError, engine_runner, resolve_engine

__all__ = ["CHANNELS_LAST", "CachedJob", "ChunkResult", "CutNetwork", "EngineSessions",
           "NetworkRunner", "RunJob", "StashedJob", "as_map", "choose_engine"]

# NHWC tensors let oneDNN pick its fast convolution kernels on CPU (about
# 1.5x for MobileNetV2 here, see benchmarks/bench_extraction.py).
CHANNELS_LAST = True

# Where the warning of an engine falling back to torch points: the caller of
# the function that runs the jobs of a chunk (EngineSessions.__call__ <-
# NetworkRunner's batch <- NetworkRunner.run <- the chunk <- its caller).
_FALLBACK_STACKLEVEL = 5


def choose_engine(engine, precision, device):
    """The engine of an extractor's ``engine`` and ``precision`` parameters.

    Parameters
    ----------
    engine : {"auto", "torch", "onnxruntime", "openvino"}
        The engine asked for.
    precision : {"float32", "float16", "bfloat16"}
        The compute precision; other than float32 it is torch's autocast.
    device : str
        The torch device the network runs on.

    Returns
    -------
    engine : str
        ``"torch"``, ``"onnxruntime"`` or ``"openvino"``.

    Raises
    ------
    ValueError
        For an autocast precision with an engine other than torch or auto.
    """
    if precision == "float32":
        return resolve_engine(engine, device)
    if engine not in ("auto", "torch"):
        raise ValueError(f"precision={precision!r} is torch's autocast: use "
                         f"engine='torch' or 'auto', not {engine!r}")
    return "torch"


def as_map(out, what):
    """A network output as maps: 4-D as is, a fully-connected ``(N, D)`` as ``D x 1 x 1``.

    Parameters
    ----------
    out : torch.Tensor
        The output of a batch.
    what : str
        The layer in the message, e.g. ``"layer 'fc6' of vgg16"``.

    Returns
    -------
    maps : torch.Tensor
        Of shape ``(N, C, H, W)``.

    Raises
    ------
    ValueError
        For an output that is neither maps nor vectors.
    """
    if out.ndim == 2:
        return out[:, :, None, None]
    if out.ndim != 4:
        raise ValueError(
            f"{what} outputs a tensor of shape {tuple(out.shape)}, not a C x H x W "
            "map or a vector; choose a convolutional or fully-connected layer"
        )
    return out


class EngineSessions:
    """The networks of one owner as an engine runs them, each built once.

    Parameters
    ----------
    engine : str
        ``"torch"``, ``"onnxruntime"`` or ``"openvino"`` (resolved, see
        :func:`choose_engine`).
    what : str, default="the network"
        The network in messages, e.g. ``"layer 'layer3' of resnet50"``.
    sample_size : int, default=224
        Side of the input an export is checked on.
    fallback : bool, default=False
        Whether a network the engine cannot run (an
        :class:`~._engines.EngineError`) runs with torch, with a warning,
        instead of raising.  An engine that is not installed (ImportError,
        e.g. a model loaded elsewhere) always falls back.
    sessions : dict or None, default=None
        Where the sessions are kept, by ``id`` of the network: the owner's
        dict, so that its next runner finds them (None: a new dict).

    Attributes
    ----------
    engine : str
        The engine in effect: ``"torch"`` once it fell back.
    sessions : dict
        The sessions built, by ``id`` of the network.
    """

    def __init__(self, engine, *, what="the network", sample_size=224, fallback=False,
                 sessions=None):
        self.engine = engine
        self.what = what
        self.sample_size = sample_size
        self.fallback = fallback
        self.sessions = {} if sessions is None else sessions

    def __call__(self, net):
        """``net`` as the engine runs it (``net`` itself for torch).

        Parameters
        ----------
        net : torch.nn.Module
            A module mapping a batch to named outputs.

        Returns
        -------
        runner : callable
            Maps a batch to the same named outputs.
        """
        if self.engine == "torch":
            return net
        runner = self.sessions.get(id(net))
        if runner is None:
            try:
                runner = engine_runner(self.engine, net, what=self.what,
                                       sample_size=self.sample_size)
            except (EngineError, ImportError) as exc:
                if isinstance(exc, EngineError) and not self.fallback:
                    raise
                warnings.warn(f"engine {self.engine!r} cannot run {self.what} ({exc}); "
                              "running it with torch", RuntimeWarning,
                              stacklevel=_FALLBACK_STACKLEVEL)
                self.engine, runner = "torch", net
            self.sessions[id(net)] = runner
        return runner


@dataclass(frozen=True)
class CutNetwork:
    """A backbone cut at a layer, as an extractor runs it.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a batch to ``{"out": output of the layer}``, with ``"cam"`` (the
        maps of the CAM node) when ``cam_nodes`` is not empty.
    node : str
        The graph node of the layer: the key of its maps.
    what : str
        The layer in messages, e.g. ``"layer 'layer3' of resnet50"``.
    backbone : str
        The backbone in the message of a failed pass.
    cam_nodes : tuple of str, default=()
        The node of the ``"cam"`` output, when the CAMs need another node.
    multi : torch.nn.Module or None, default=None
        Maps a batch to ``{node: output}`` for more nodes at once (the cache
        layers), or None.
    multi_min_size : int or None, default=None
        Smallest input side ``multi`` accepts (smaller inputs run ``module``).
    """

    module: torch.nn.Module
    node: str
    what: str
    backbone: str
    cam_nodes: tuple = ()
    multi: torch.nn.Module | None = None
    multi_min_size: int | None = None

    def pick(self, side, multi):
        """The module for inputs whose smaller side is ``side``: ``multi`` when
        asked for and it accepts them, else ``module``."""
        if multi and self.multi is not None and side >= self.multi_min_size:
            return self.multi
        return self.module

    def maps(self, outputs, module):
        """``{node: maps}`` of the raw ``outputs`` of ``module``."""
        if module is self.module:
            return {self.node: as_map(outputs["out"], self.what),
                    **{n: outputs["cam"] for n in self.cam_nodes}}
        return {node: y if y.ndim == 4 else y[:, :, None, None]
                for node, y in outputs.items() if y.ndim in (2, 4)}


class NetworkRunner:
    """Runs a cut network over resized images, in batches of one shape.

    Parameters
    ----------
    network : CutNetwork
        The network and the nodes it gives.
    engine : EngineSessions
        What runs it (torch, ONNX Runtime, OpenVINO).
    batching : ShapeBatching
        Which images go to the network together.
    device : str
        The torch device of the network.
    mean, std : sequence of float
        The normalisation of RGB values in ``[0, 1]`` (3 values each).
    precision : {"float32", "float16", "bfloat16"}, default="float32"
        Other than float32: the network runs under torch's autocast.
    counter : PassCounter, default=FORWARD_PASSES
        Counts every image of a successful pass (the process's counter of
        :func:`~skretrieval.forward_pass_count` by default).
    channels_last : bool, default=CHANNELS_LAST
        Whether a torch network gets NHWC tensors.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skretrieval.extraction import ShapeBatching
    >>> class Net(torch.nn.Module):
    ...     def forward(self, x):
    ...         return {"out": x.mean(1, keepdim=True)}
    >>> runner = NetworkRunner(CutNetwork(Net(), "gray", "layer 'gray'", "toy"),
    ...                        engine=EngineSessions("torch"), batching=ShapeBatching(8),
    ...                        device="cpu", mean=(0, 0, 0), std=(1, 1, 1))
    >>> images = [np.zeros((4, 6, 3), np.uint8), np.zeros((6, 4, 3), np.uint8)]
    >>> [(k, maps["gray"].shape) for k, maps in runner.run(images)]
    [(0, (1, 4, 6)), (1, (1, 6, 4))]
    """

    def __init__(self, network, *, engine, batching, device, mean, std,
                 precision="float32", counter=FORWARD_PASSES, channels_last=CHANNELS_LAST):
        self.network = network
        self.engine = engine
        self.batching = batching
        self.device = device
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.precision = precision
        self.counter = counter
        self.channels_last = channels_last

    def run(self, arrays, *, multi=False, describe=None):
        """Run the network on every array, batch by batch.

        Parameters
        ----------
        arrays : sequence of ndarray
            ``H x W x 3`` uint8 images, already resized.
        multi : bool, default=False
            Give the maps of every node of ``network.multi`` (when the input
            is large enough for it), not only the layer's.
        describe : callable or None, default=None
            ``describe(k)`` names array ``k`` in the error of a failed pass
            (None: ``"input k"``).

        Yields
        ------
        k : int
            Position in ``arrays``.
        maps : dict of str to ndarray
            ``{node: C x H x W float32 map}`` of that image.

        Raises
        ------
        RuntimeError
            When the network fails on a batch, naming its first images.
        """
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        for batch in self.batching.split(a.shape for a in arrays):
            names = [describe(k) if describe is not None else f"input {k}"
                     for k in batch[:3]]
            yield from zip(batch, self._batch([arrays[k] for k in batch], mean, std,
                                              multi, names))

    def _batch(self, arrays, mean, std, multi, names):
        """Per image of a batch of one shape, ``{node: map}``."""
        module = self.network.pick(min(arrays[0].shape[:2]), multi)
        net = self.engine(module)
        with torch.inference_mode():
            x = to_batch(arrays, self.device, mean, std,
                         channels_last=self.channels_last and isinstance(net, torch.nn.Module))
            autocast = (torch.autocast(x.device.type, dtype=getattr(torch, self.precision))
                        if self.precision != "float32" else contextlib.nullcontext())
            try:
                with autocast:
                    outputs = net(x)
                outputs = self.network.maps(outputs, module)
            except RuntimeError as exc:
                raise RuntimeError(f"{self.network.backbone} failed on {', '.join(names)} "
                                   f"(input {tuple(x.shape)}): {exc}") from exc
            self.counter.add(len(arrays))
            outputs = {node: y.float().cpu().numpy() for node, y in outputs.items()}
        return [{node: np.ascontiguousarray(y[b]) for node, y in outputs.items()}
                for b in range(len(arrays))]


# -- the jobs of a chunk ---------------------------------------------------
@dataclass(frozen=True)
class StashedJob:
    """An image whose maps a transform that failed left in the resume store.

    Parameters
    ----------
    index : int
        Position of the image in the collection.
    position : int
        Position of its maps in the stored output.
    """

    index: int
    position: int


@dataclass(frozen=True)
class CachedJob:
    """An image whose maps are all in the feature cache.

    Parameters
    ----------
    index : int
        Position of the image in the collection.
    maps : tuple of dict
        Per scale, ``{node: map}`` of the nodes the output needs.
    """

    index: int
    maps: tuple


@dataclass(frozen=True)
class RunJob:
    """An image for the network.

    Parameters
    ----------
    index : int
        Position of the image in the collection.
    arrays : concurrent.futures.Future
        Of its resized ``H x W x 3`` arrays, one per scale (or of the
        :class:`~skretrieval.ImageLoadError` that makes it unusable).
    keys : dict or None
        Its cache keys, ``{node: [one key per scale]}``; None without a
        cache or for an image without a key.
    """

    index: int
    arrays: Future
    keys: dict | None = None


@dataclass(frozen=True)
class ChunkResult:
    """What running the jobs of a chunk gives.

    Parameters
    ----------
    placed : tuple of int
        Positions in the collection of the images extracted, in order.
    maps : tuple of tuple of ndarray
        Per image of ``placed``, its ``C x H x W`` maps, one per scale.
    cams : tuple
        Per image of ``placed``, its :class:`~skretrieval.ClassActivations`
        or None.
    errors : tuple of ImageLoadError
        The images that cannot be used, numbered in the collection, in order.
    reused : int, default=0
        How many images came from the resume store.
    """

    placed: tuple = ()
    maps: tuple = ()
    cams: tuple = ()
    errors: tuple = ()
    reused: int = 0

    def __post_init__(self):
        if not len(self.placed) == len(self.maps) == len(self.cams):
            raise ValueError("placed, maps and cams must have one entry per image")
