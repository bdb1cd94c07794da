"""Inference engines: a torch network run by ONNX Runtime or OpenVINO.

Generic over any ``torch.nn.Module`` that maps an ``(N, 3, H, W)`` float
batch to a dict of named tensors (a cut backbone from
:func:`~skretrieval.extraction._network.cut_network`, a ViT, ...):

* :func:`resolve_engine` -- the engine an ``engine`` parameter means on a
  device (``"auto"``: the fastest one installed, :data:`AUTO_ORDER`);
* :func:`export_onnx` -- the network exported once to ONNX (dynamic batch,
  height and width) into a content-addressed cache on disk
  (``$SKRETRIEVAL_ONNX_CACHE``, else ``~/.cache/skretrieval/onnx``), each
  file beside a manifest (``<key>.onnx.json``: its key, outputs, size and
  sha256) that is checked on every load (:func:`cached_export`);
* :func:`engine_runner` -- a callable with the network's interface (a torch
  batch in, a dict of torch tensors out) run by the engine, built once per
  process and network content (kept by :func:`._network.shared`).

The exporter is torch's TorchScript-based one (``dynamo=False``): it traces
torchvision's FX-cut networks with dynamic height and width in seconds and
needs no other package, whereas the dynamo exporter (the default of recent
torch) needs ``onnxscript`` and re-derives shape guards per node.  Every
export is checked once against torch on an input of another size before
use (:data:`CHECK_RTOL`).

The cache is safe to share: a file that does not match its manifest (another
export copied over it, garbage, a truncated copy, a file without manifest) is
exported again, never run; the sessions are built from the bytes that were
checked, not by reopening the file.  An export is written under the file's
lock (:func:`..utils._files.file_lock`), model then manifest, each by atomic
rename: processes exporting one network at once export it once and all get
the checked file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import threading
import warnings
import weakref
from typing import NamedTuple

import numpy as np
import torch

from ..utils._files import atomic_write, file_lock, remove_stale_temps
from ._network import shared

__all__ = ["AUTO_ORDER", "ENGINES", "EngineError", "OnnxExport", "cached_export",
           "engine_available", "engine_runner", "export_onnx", "manifest_path",
           "onnx_cache_dir", "resolve_engine"]

#: Engine name -> (module to import, extra that installs it).
ENGINES = {
    "torch": ("torch", None),
    "onnxruntime": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "openvino"),
}
#: What ``engine="auto"`` picks on CPU, fastest first (measured on a 2-core
#: x86 CPU by ``benchmarks/bench_extraction.py``: MobileNetV2 at 512 px,
#: ONNX Runtime 2.7x, OpenVINO 2.3x, torch 1.3x the plain loop); on CUDA or
#: MPS torch runs the network.
AUTO_ORDER = ("onnxruntime", "openvino", "torch")
#: The ONNX opset and the export settings (part of the cache key).
OPSET = 17
EXPORT_SETTINGS = ("torchscript", OPSET, "dynamic n,h,w", "float32")
#: Largest relative difference (to the largest magnitude of each output)
#: accepted between an engine and torch when an export is first used.
CHECK_RTOL = 1e-3
#: Version of the manifest written beside each export.
MANIFEST_FORMAT = 1

_DIGESTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_EXPORT_LOCK = threading.Lock()


class EngineError(RuntimeError):
    """An engine cannot run a network (export failed, or its maps differ)."""


def engine_available(engine):
    """Whether the package of ``engine`` is installed."""
    return importlib.util.find_spec(ENGINES[engine][0]) is not None


def _require(engine):
    if not engine_available(engine):
        raise ImportError(f"engine={engine!r} needs the {ENGINES[engine][0]} package: "
                          f"pip install skretrieval[{ENGINES[engine][1]}]")


def resolve_engine(engine, device):
    """The engine that runs the network for an ``engine`` parameter.

    ``"auto"``: ``$SKRETRIEVAL_ENGINE`` when set, else torch on CUDA or MPS
    and the first installed engine of :data:`AUTO_ORDER` on CPU.  An explicit
    engine that is not installed raises an ImportError naming the extra;
    ONNX Runtime and OpenVINO run on the CPU only.
    """
    if engine == "auto":
        forced = os.environ.get("SKRETRIEVAL_ENGINE", "").strip()
        if forced and forced != "auto":
            engine = forced
        elif not str(device).startswith("cpu"):
            return "torch"
        else:
            return next(e for e in AUTO_ORDER if engine_available(e))
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of 'auto', {', '.join(map(repr, ENGINES))}; "
                         f"got {engine!r}")
    _require(engine)
    if engine != "torch" and not str(device).startswith("cpu"):
        raise ValueError(f"engine={engine!r} runs on the CPU, but device={device!r}: "
                         "use engine='torch' (or 'auto') on a GPU")
    return engine


def onnx_cache_dir():
    """Folder of the exported networks: ``$SKRETRIEVAL_ONNX_CACHE``, else
    ``$XDG_CACHE_HOME/skretrieval/onnx`` (``~/.cache/skretrieval/onnx``)."""
    folder = os.environ.get("SKRETRIEVAL_ONNX_CACHE")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        folder = os.path.join(base, "skretrieval", "onnx")
    return folder


def network_digest(net):
    """A hash of what ``net`` computes: its module tree, its graph code (FX
    networks), its parameters and buffers, torch's version and the export
    settings (computed once per network object)."""
    digest = _DIGESTS.get(net)
    if digest is None:
        h = hashlib.sha256()
        h.update(repr((torch.__version__, EXPORT_SETTINGS)).encode())
        h.update(repr(net).encode())
        h.update(str(getattr(net, "code", "")).encode())
        for name, value in net.state_dict().items():
            arr = value.detach().cpu().contiguous().numpy()
            h.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
            h.update(arr.tobytes())
        digest = _DIGESTS[net] = h.hexdigest()[:40]
    return digest


@contextlib.contextmanager
def _quiet_exporter():
    """Silence torch's TorchScript exporter, which prints its whole graph to
    stdout when an export fails (its ONNX log is switched on by every export
    in torch 2.x): the failure is reported as an EngineError instead."""
    log = getattr(torch._C, "_jit_onnx_log", None)
    if log is None:
        yield
        return
    torch._C._jit_onnx_log = lambda *args, **kwargs: None
    try:
        yield
    finally:
        torch._C._jit_onnx_log = log


class _Outputs(torch.nn.Module):
    """``net`` with its dict of outputs as a tuple in the order of ``names``."""

    def __init__(self, net, names):
        super().__init__()
        self.net, self.names = net, tuple(names)

    def forward(self, x):
        out = self.net(x)
        return tuple(out[n] for n in self.names)


def _outputs(net, x):
    with torch.inference_mode():
        out = net(x)
    return {k: v.float() for k, v in out.items()}


class OnnxExport(NamedTuple):
    """An export from the cache, checked against its manifest."""

    path: str
    names: tuple
    data: bytes


def manifest_path(path):
    """The manifest of the export ``path``: ``<path>.json``."""
    return path + ".json"


def _read_checked(path, key, names):
    """``(bytes, None)`` of the export ``path`` when it matches its manifest,
    else ``(None, why)`` (``why`` is ``"absent"`` when nothing is there)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None, "absent"
    except OSError as exc:
        return None, f"is unreadable ({exc})"
    try:
        with open(manifest_path(path), encoding="utf-8") as fh:
            info = json.load(fh)
    except FileNotFoundError:
        return None, "has no manifest"
    except (OSError, ValueError) as exc:
        return None, f"has an unreadable manifest ({type(exc).__name__})"
    if not isinstance(info, dict) or info.get("format") != MANIFEST_FORMAT:
        return None, "has a manifest of another format"
    if info.get("key") != key or info.get("outputs") != list(names):
        return None, "has the manifest of another export"
    if info.get("size") != len(data) or info.get("sha256") != hashlib.sha256(data).hexdigest():
        return None, "does not match its manifest's size and sha256"
    return data, None


def _export_bytes(net, sample, names, what):
    axes = {"image": {0: "n", 2: "h", 3: "w"}}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Outputs(net, names).eval(), (sample,), buf, dynamo=False,
                              input_names=["image"], output_names=list(names),
                              dynamic_axes=axes, opset_version=OPSET)
    except Exception as exc:
        raise EngineError(f"cannot export {what} to ONNX ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return buf.getvalue()


def cached_export(net, sample, *, what="the network"):
    """``net`` exported to ONNX (dynamic N, H, W), from the cache on disk when
    a checked export is there, else exported and written to it.

    A cached file is used only when its manifest (``<file>.json``) names its
    key and outputs and gives its size and sha256; any other file (another
    export copied over it, garbage, a truncated copy, an export of an older
    version without manifest) is exported again, with a RuntimeWarning.  The
    export is written under the file's lock, so that processes exporting one
    network at once export it once.

    Parameters
    ----------
    net : torch.nn.Module
        In eval mode, on the CPU; maps a batch to a dict of named tensors.
    sample : torch.Tensor
        An input it accepts (traced).
    what : str
        Names the network (backbone and layer) in the error.

    Returns
    -------
    export : OnnxExport
        Its ``path`` in the cache, the output ``names`` in the order of the
        file's outputs and the checked bytes ``data`` (build sessions from
        them, not from the path, which another process may replace).

    Raises
    ------
    EngineError
        If the export fails (an operation without an ONNX form, a shape that
        cannot be dynamic...), naming ``what``, or if it cannot be written to
        the cache folder.
    """
    names = tuple(_outputs(net, sample))
    folder = onnx_cache_dir()
    key = hashlib.sha256(repr((network_digest(net), names,
                               tuple(sample.shape))).encode()).hexdigest()[:40]
    path = os.path.join(folder, key + ".onnx")
    data, _ = _read_checked(path, key, names)
    if data is not None:
        return OnnxExport(path, names, data)
    with _EXPORT_LOCK, contextlib.ExitStack() as stack:
        try:
            os.makedirs(folder, exist_ok=True)
            stack.enter_context(file_lock(path, message=False))
        except OSError as exc:
            raise EngineError(f"cannot lock the ONNX cache folder {folder!r} to export "
                              f"{what} ({type(exc).__name__}: {exc})") from exc
        data, why = _read_checked(path, key, names)  # written while we waited?
        if data is not None:
            return OnnxExport(path, names, data)
        remove_stale_temps(path)
        remove_stale_temps(manifest_path(path))
        if why != "absent":
            warnings.warn(f"the cached ONNX export {path!r} of {what} {why}: "
                          "exporting it again", RuntimeWarning, stacklevel=2)
        data = _export_bytes(net, sample, names, what)
        info = {"format": MANIFEST_FORMAT, "key": key, "outputs": list(names),
                "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "torch": torch.__version__, "opset": OPSET}
        try:
            with atomic_write(path) as fh:
                fh.write(data)
            with atomic_write(manifest_path(path), "w") as fh:
                json.dump(info, fh)
        except OSError as exc:
            raise EngineError(f"cannot write the ONNX export of {what} to the cache "
                              f"folder {folder!r} ({type(exc).__name__}: {exc})") from exc
    return OnnxExport(path, names, data)


def export_onnx(net, sample, *, what="the network"):
    """The path of ``net`` exported to ONNX (dynamic N, H, W), from the cache
    on disk when a checked export is there (:func:`cached_export`).

    Parameters
    ----------
    net : torch.nn.Module
        In eval mode, on the CPU; maps a batch to a dict of named tensors.
    sample : torch.Tensor
        An input it accepts (traced).
    what : str
        Names the network (backbone and layer) in the error.

    Returns
    -------
    path : str
    names : tuple of str
        The output names, in the order of the file's outputs.

    Raises
    ------
    EngineError
        If the export fails (an operation without an ONNX form, a shape that
        cannot be dynamic...), naming ``what``, or cannot be written.
    """
    export = cached_export(net, sample, what=what)
    return export.path, export.names


class _OnnxRuntime:
    def __init__(self, model, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 4  # failures raise (with the message), not also log
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        return self.session.run(None, {"image": x})


class _OpenVINO:
    def __init__(self, model, threads):
        import openvino as ov

        core = ov.Core()
        self.model = core.compile_model(core.read_model(model), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.model.create_infer_request()
        self.lock = threading.Lock()

    def __call__(self, x):
        with self.lock:  # one request, used by one thread at a time
            out = self.request.infer({0: x})
            return [np.array(out[o]) for o in self.model.outputs]


_SESSIONS = {"onnxruntime": _OnnxRuntime, "openvino": _OpenVINO}


class EngineRunner:
    """A network run by an engine, with the torch interface: a float batch
    (any device, any memory format) in, ``{name: tensor}`` out (on the CPU)."""

    def __init__(self, engine, session, names, path):
        self.engine, self.session, self.names, self.path = engine, session, names, path

    def __call__(self, x):
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return {n: torch.from_numpy(np.asarray(y)) for n, y in zip(self.names,
                                                                   self.session(arr))}


def _check(runner, net, sample, what):
    """Raise EngineError when ``runner`` fails on ``sample`` or disagrees with ``net``
    (an export whose shapes were frozen at the traced size fails here)."""
    ref = _outputs(net, sample)
    try:
        got = runner(sample)
    except Exception as exc:
        raise EngineError(f"{runner.engine} cannot run {what} on an input of size "
                          f"{tuple(sample.shape[-2:])} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    for name, r in ref.items():
        g = got[name]
        scale = float(r.abs().max()) or 1.0
        if tuple(g.shape) != tuple(r.shape):
            raise EngineError(f"{runner.engine} gives output {name!r} of {what} the shape "
                              f"{tuple(g.shape)}, torch {tuple(r.shape)}")
        diff = float((g - r).abs().max()) / scale
        if not diff <= CHECK_RTOL:
            raise EngineError(f"{runner.engine} differs from torch on output {name!r} of "
                              f"{what} by {diff:.2g} of its largest value")


def engine_runner(engine, net, *, sample_size=224, check_size=None, threads=None,
                  what="the network"):
    """``net`` run by ``engine``: ``net`` itself for ``"torch"``, else an
    :class:`EngineRunner` over its ONNX export, built once per process, network
    content and thread count (kept by :func:`._network.shared`).

    Parameters
    ----------
    engine : {"torch", "onnxruntime", "openvino"}
    net : torch.nn.Module
        On the CPU, in eval mode; a batch in, a dict of named tensors out.
    sample_size : int, default=224
        Side of the square input traced by the export.
    check_size : tuple of int or None
        ``(h, w)`` of the input the engine is checked on against torch (None:
        ``sample_size`` and ``sample_size + 33``, so that a shape frozen into
        the graph is seen).
    threads : int or None
        Threads of the engine (None: torch's, ``torch.get_num_threads()``).
    what : str
        Names the network in errors.

    Raises
    ------
    EngineError
        If the export fails or the engine's outputs differ from torch's.
    ImportError
        If the engine is not installed (naming the extra).
    """
    if engine == "torch":
        return net
    _require(engine)
    threads = int(threads or torch.get_num_threads())
    key = ("engine", engine, network_digest(net), sample_size, threads)

    def build():
        sample = torch.zeros(1, 3, sample_size, sample_size)
        export = cached_export(net, sample, what=what)
        try:
            runner = EngineRunner(engine, _SESSIONS[engine](export.data, threads),
                                  export.names, export.path)
        except Exception as exc:
            raise EngineError(f"{engine} cannot load the ONNX export of {what} "
                              f"({type(exc).__name__}: {exc})") from exc
        h, w = check_size or (sample_size, sample_size + 33)
        gen = torch.Generator().manual_seed(0)
        _check(runner, net, torch.rand(1, 3, h, w, generator=gen), what)
        return runner

    return shared(key, build)
