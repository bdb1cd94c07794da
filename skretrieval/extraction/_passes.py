"""How the extractor runs its network: the engine, autocast, batches.

:class:`NetworkPasses` is the part of
:class:`~skretrieval.ConvFeatureExtractor` that feeds the resized images of
a chunk, grouped by shape, to the network run by the chosen engine
(:mod:`._engines`) and stores the maps in the feature cache.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch

from ._batches import to_batch
from ._cache import FORWARD_PASSES
from ._engines import EngineError, engine_runner, resolve_engine
from ._images import describe

__all__ = ["CHANNELS_LAST", "NetworkPasses"]

# NHWC tensors let oneDNN pick its fast convolution kernels on CPU (about
# 1.5x for MobileNetV2 here, see benchmarks/bench_extraction.py).
CHANNELS_LAST = True


class NetworkPasses:
    """The network passes of :class:`~skretrieval.ConvFeatureExtractor`."""

    def _resolve_engine(self):
        """The engine of the ``engine`` and ``precision`` parameters here."""
        if getattr(self, "precision", "float32") == "float32":
            return resolve_engine(getattr(self, "engine", "torch"), self.device_)
        if self.engine not in ("auto", "torch"):
            raise ValueError(f"precision={self.precision!r} is torch's autocast: use "
                             f"engine='torch' or 'auto', not {self.engine!r}")
        return "torch"

    def _engine(self, net):
        """``net`` as run by ``engine_`` (built once per network and process;
        when the engine cannot run it: torch, with a warning under
        ``engine="auto"`` or for a model loaded where the engine is absent)."""
        engine = getattr(self, "engine_", "torch")
        if engine == "torch":
            return net
        runners = self.__dict__.get("_runners")
        if runners is None:
            runners = self._runners = {}
        runner = runners.get(id(net))
        if runner is None:
            what = f"layer {self.layer_name_!r} of {self.backbone}"
            try:
                runner = engine_runner(engine, net, what=what,
                                       sample_size=max(224, self.min_input_size_))
            except (EngineError, ImportError) as exc:
                if isinstance(exc, EngineError) and self.engine != "auto":
                    raise
                warnings.warn(f"engine {engine!r} cannot run {what} ({exc}); running "
                              "it with torch", RuntimeWarning, stacklevel=5)
                self.engine_, runner = "torch", net
            runners[id(net)] = runner
        return runner

    def _run_groups(self, groups, chunk, items, cache, results):
        """Run the network on the resized arrays of ``groups`` (by shape), in
        batches; maps into ``results[(j, scale)]`` and into ``cache``."""
        needed = (self.layer_node_,) + self._cam_extra()
        batch_size = self.batch_size or (1 if self.device_ == "cpu" else 8)
        mean = torch.tensor(self.mean_, device=self.device_).view(1, 3, 1, 1)
        std = torch.tensor(self.std_, device=self.device_).view(1, 3, 1, 1)
        for shape in sorted(groups):
            members = groups[shape]
            for b in range(0, len(members), batch_size):
                batch = members[b:b + batch_size]
                outputs = self._run_batch([m[2] for m in batch], mean, std,
                                          [chunk[m[0]] for m in batch], items,
                                          multi=cache is not None)
                for (j, s, _, keys_j), maps in zip(batch, outputs):
                    results[(j, s)] = {node: maps[node] for node in needed}
                    if cache is not None and keys_j is not None:
                        for node, fmap in maps.items():
                            if self.dtype == "float16":  # in the key too
                                fmap = fmap.astype(np.float16)
                            cache.put(keys_j[node][s], fmap)

    def _run_batch(self, arrays, mean, std, indices, items, multi=False):
        """Run a batch; per image, ``{node: map}`` (the cache layers too when
        ``multi`` and the multi-layer network accepts the input size)."""
        trunk = getattr(self, "_multi_trunk", None) if multi else None
        if trunk is not None and min(arrays[0].shape[:2]) < self._multi_min_size:
            trunk = None  # too small for the deepest cache layer: this layer only
        net = self._engine(self.trunk_ if trunk is None else trunk)
        x = to_batch(arrays, self.device_, mean, std,
                     channels_last=CHANNELS_LAST and isinstance(net, torch.nn.Module))
        precision = getattr(self, "precision", "float32")
        autocast = (torch.autocast(x.device.type, dtype=getattr(torch, precision))
                    if precision != "float32" else contextlib.nullcontext())
        try:
            with autocast:
                outputs = net(x)
            if trunk is None:
                outputs = {self.layer_node_: self._as_map(outputs["out"]),
                           **{n: outputs["cam"] for n in self._cam_extra()}}
            else:
                outputs = {node: y if y.ndim == 4 else y[:, :, None, None]
                           for node, y in outputs.items() if y.ndim in (2, 4)}
        except RuntimeError as exc:
            names = ", ".join(describe(items[i], i) for i in indices[:3])
            raise RuntimeError(
                f"{self.backbone} failed on {names} (input {tuple(x.shape)}): {exc}"
            ) from exc
        FORWARD_PASSES.add(len(arrays))
        outputs = {node: y.float().cpu().numpy() for node, y in outputs.items()}
        return [{node: np.ascontiguousarray(y[b]) for node, y in outputs.items()}
                for b in range(len(arrays))]
