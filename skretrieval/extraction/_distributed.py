"""Feature extraction spread over a dask.distributed cluster, chosen with joblib.

Inside ``with joblib.parallel_backend("dask"):`` (or ``parallel_config``),
:meth:`ConvFeatureExtractor.transform` hands its images to
:func:`transform_distributed`, which uses that backend's dask client:

* the images are cut into chunks (at most :data:`CHUNK_IMAGES` images and
  :data:`CHUNK_BYTES` of output maps each, and at least
  :data:`CHUNKS_PER_THREAD` chunks per worker thread when the collection is
  small), one task each, at most ``3 x`` (worker threads) in flight, so that
  a worker only holds the maps of a few chunks and the caller receives them
  chunk by chunk, in order;
* the fitted extractor is shipped once per transform, as the result of a
  task whose input is its pickle (a numpy state dict, not a torch module):
  the workers fetch it from one another, the scheduler recomputes it when
  every worker holding it has died (scattered data would be lost), and the
  network is rebuilt once per worker process and reused by later transforms
  with the same network;
* each task runs the extractor's own ``transform`` on its chunk, with the
  distributed path off and ``store="memory"`` (so everything the extractor
  outputs, CAMs included, comes back unchanged), and the caller appends the
  chunks in order to one :class:`FeatureMaps` with its own ``store`` and
  ``dtype``;
* a directory ``cache`` is used as is by the workers (give a folder every
  worker sees): a second run, or a rerun after a failure, reads the maps
  already computed.

Failures: a chunk that raises (other than for its input) is retried on its
worker (:data:`RETRIES` times, or ``parallel_config(backend="dask",
retries=n)``), a retry that succeeds is reported by a ``RuntimeWarning``; a
dead worker's tasks are rerun elsewhere by the dask scheduler; a chunk that
kills workers more than the scheduler allows (``KilledWorker``) is run once
more on its own (it may only have shared a dying worker), then given up.
The other chunks go on; at the end :class:`DistributedExtractionError`
names the chunks given up and carries the maps of every other image.  An
unreadable image still aborts the transform with the
:class:`~skretrieval.ImageLoadError` naming it, as without a cluster.
"""

from __future__ import annotations

import ctypes
import math
import os
import pickle
import re
import sys
import threading
import time
import traceback
import uuid
import warnings

import numpy as np

from ._images import Crop, ImageLoadError, describe
from ._maps import FeatureMaps
from ._cache import cache_setting
from ._network import network_token, resolve_device, shared
from ..utils._progress import progress

__all__ = ["DistributedExtractionError", "distributed_backend", "transform_distributed"]

#: Images per chunk (one task) at most.
CHUNK_IMAGES = 32
#: Bytes of output maps per chunk at most (what a task holds and sends back).
CHUNK_BYTES = 64 * 1024**2
#: Chunks per worker thread at least, for small collections (load balance).
CHUNKS_PER_THREAD = 4
#: Times a chunk that raised is run again on its worker before it is given up.
RETRIES = 2

# Worker side: one rebuild of a shared extractor's network at a time.  The
# networks rebuilt are kept in the process-wide cache of ._network, keyed by
# the token of the caller's network object (see network_token), so that
# later transforms with the same network do not rebuild it.
_LOCK = threading.Lock()


class DistributedExtractionError(RuntimeError):
    """Chunks of a distributed ``transform`` failed even after their retries.

    Every other image was extracted: its maps are in ``maps``, in the order
    of ``X``, at the positions ``indices``.

    Attributes
    ----------
    failed : list of dict
        Per chunk given up: ``chunk`` (its number), ``start`` and ``stop``
        (its images are ``X[start:stop]``), ``attempts`` and ``errors`` (the
        message of each failed attempt).
    maps : FeatureMaps
        The maps of the images of the other chunks.
    indices : ndarray of int
        Position in ``X`` of each image of ``maps``.
    """

    def __init__(self, message, failed, maps, indices):
        super().__init__(message)
        self.failed = failed
        self.maps = maps
        self.indices = indices


def _in_dask_task():
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def distributed_backend():
    """The active joblib backend if it is dask.distributed's, else None.

    None as well inside a dask task (a grid search whose candidates already
    run on the workers extracts in place rather than from the workers).
    Cheap when dask was never used: the joblib dask backend module is not
    even imported then.
    """
    module = sys.modules.get("joblib._dask")
    if module is None:
        return None
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    if not isinstance(backend, module.DaskDistributedBackend) or _in_dask_task():
        return None
    return backend


# -- worker side -----------------------------------------------------------
_MALLOC = {"tuned": False}


def _tune_malloc():
    """Undo, for this worker process, the cost of dask's ``MALLOC_TRIM_THRESHOLD_``.

    dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (so
    that freed memory goes back to the OS at once).  Setting it turns off
    glibc's adaptive mmap threshold: every allocation above 128 KiB (each
    activation tensor of the network) is then a fresh ``mmap`` whose pages
    fault in, which made MobileNetV2 at 256 px 1.6x slower on one thread
    here (``benchmarks/bench_distributed.py``).  When a worker has exactly
    dask's value and no ``MALLOC_MMAP_THRESHOLD_``, raise the mmap threshold
    to 32 MiB and the trim threshold to 128 MiB (glibc's ``mallopt``); any
    other setting of these variables is left alone.
    """
    if _MALLOC["tuned"]:
        return
    _MALLOC["tuned"] = True
    if (os.environ.get("MALLOC_TRIM_THRESHOLD_") != "65536"
            or "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux")):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024**2)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024**2)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def _worker_copy(estimator, cache, token=None):
    """A task's own view of the extractor shipped to this worker (shared by its
    tasks): the network is built once per worker process and network token;
    store, verbosity and cache are the task's."""
    with _LOCK:
        _tune_malloc()
        if estimator.trunk_ is None:
            if estimator.device == "auto":  # the best device of this worker
                estimator.device_ = resolve_device("auto")
            if token is None:
                estimator._ensure_trunk()
            else:
                def rebuild():
                    estimator._ensure_trunk()
                    return estimator.trunk_

                estimator.trunk_ = shared(("shipped", token, estimator.device_), rebuild)
                estimator.__dict__.pop("_trunk_state", None)
    local = object.__new__(type(estimator))  # not copy.copy: that would pickle the net
    local.__dict__.update(estimator.__dict__)
    local.store, local.verbose, local.cache = "memory", 0, cache
    return local


class _Chunk:
    """The task of one chunk: ``X[start:stop]`` through the extractor's own
    ``transform``; returns ``("ok", maps, errors of the failed attempts)``,
    ``("input", exception class, message, index, reason)`` for an error of
    the input (not retried) or ``("failed", errors, last traceback)``."""

    def __init__(self, number, start, stop):
        self.number, self.start, self.stop = number, start, stop

    def __call__(self, estimator, items, cache, retries, token=None):
        from joblib import parallel_config

        local = _worker_copy(estimator, cache, token)
        errors, trace = [], None
        for attempt in range(retries + 1):
            try:
                with parallel_config(backend="sequential"):  # no nested distribution
                    maps = local.transform(items)
                return ("ok", maps, errors)
            except (ValueError, TypeError) as exc:  # the input (ImageLoadError...)
                return ("input", type(exc), str(exc), getattr(exc, "index", None),
                        getattr(exc, "reason", None))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                trace = traceback.format_exc()
                if attempt < retries:
                    time.sleep(min(0.5 * 2**attempt, 5.0))
        return ("failed", errors, trace)


# -- caller side -----------------------------------------------------------
def _portable(item):
    """Relative paths made absolute (a worker's working directory differs)."""
    if isinstance(item, (str, os.PathLike)) and not os.path.isabs(item):
        return os.path.abspath(item)
    if isinstance(item, Crop) and isinstance(item.image, (str, os.PathLike)) \
            and not os.path.isabs(item.image):
        return Crop(os.path.abspath(item.image), item.box)
    return item


def _chunk_size(estimator, scales, n_images, n_threads):
    itemsize = np.dtype(estimator.dtype).itemsize
    per_image = 0
    for s in scales:
        side = math.ceil(estimator.max_size * s / estimator.stride_) + 1
        per_image += estimator.n_channels_ * side * side * itemsize
    by_bytes = max(1, CHUNK_BYTES // max(per_image, 1))
    balance = math.ceil(n_images / (CHUNKS_PER_THREAD * max(n_threads, 1)))
    return max(1, min(CHUNK_IMAGES, by_bytes, balance))


def _input_error(result, items, shipped, start, stop, number):
    """The worker's input error, with the image numbered as in ``X``."""
    cls, message, index, reason = result[1:]
    if issubclass(cls, ImageLoadError) and index is not None and reason is not None:
        g = start + index
        item = items[g]
        path = os.fsdecode(os.fspath(item)) if isinstance(item, (str, os.PathLike)) else None
        where = describe(item, g).replace(f"image {g} ", f"image {g} of {len(items)} ", 1)
        err = ImageLoadError(f"{where}: {reason}", index=g, reason=reason, path=path)
    else:
        # the worker numbered the chunk from 0 (and saw absolute paths)
        names = {describe(shipped[start + j], j): describe(items[start + j], start + j)
                 for j in range(stop - start)}
        names.update({f"image {j}: ": f"image {start + j}: " for j in range(stop - start)})
        pattern = "|".join(re.escape(k) for k in sorted(names, key=len, reverse=True))
        message = re.sub(pattern, lambda m: names[m.group(0)], message)
        try:
            err = cls(message)
        except Exception:
            err = ValueError(message)
    if hasattr(err, "add_note"):
        err.add_note(f"(raised on a dask worker, chunk {number}: images {start}-{stop - 1})")
    return err


def _unpickle(payload):
    return pickle.loads(payload)


def transform_distributed(estimator, items, backend=None, *, scales):
    """Extract the maps of ``items`` on the workers of the dask backend.

    Called by :meth:`ConvFeatureExtractor.transform` when
    :func:`distributed_backend` is not None; returns what the in-process
    path returns (the same maps, CAMs included, in the order of ``items``).

    Parameters
    ----------
    estimator : ConvFeatureExtractor
        Fitted; shipped to the workers, whose tasks run its ``transform``.
    items : list of images
    backend : joblib's DaskDistributedBackend or None
        None: :func:`distributed_backend`.
    scales : tuple of float
        The extractor's scales (they size the chunks).

    The chunks are submitted to the backend's dask client directly rather
    than through ``joblib.Parallel``: joblib's dask backend never completes
    a task that the scheduler failed (``KilledWorker``), it waits for it
    forever, and a chunk must be resubmitted or reported instead.  The
    backend's ``submit_kwargs`` (``parallel_config(backend="dask",
    resources=..., workers=...)``) go to every chunk's task.
    """
    run = _Run(estimator, items, backend if backend is not None else distributed_backend(),
               scales)
    try:
        for c in range(len(run.bounds)):  # append the chunks in order
            run.append(c, run.result(c))
    finally:
        run.close()
    return run.output(scales)


class _Run:
    """One distributed transform: the chunks, their tasks, the output."""

    def __init__(self, estimator, items, backend, scales):
        self.estimator, self.items, self.client = estimator, items, backend.client
        n_threads = max(1, backend.effective_n_jobs(-1))
        self.n = n = len(items)
        size = _chunk_size(estimator, scales, n, n_threads)
        self.bounds = [(a, min(a + size, n)) for a in range(0, n, size)]
        self.portable = [_portable(item) for item in items]
        cache = cache_setting(estimator.cache, estimator.store)
        if cache is not None and not (isinstance(cache, str) and cache == "memory"):
            cache = os.path.abspath(os.fspath(cache))
        self.cache = cache
        self.submit_kwargs = dict(getattr(backend, "submit_kwargs", None) or {})
        retries = self.submit_kwargs.pop("retries", None)
        self.retries = RETRIES if retries is None else int(retries)
        # chunks in flight at most: bounds what the workers hold for the caller
        self.window = max(4, 3 * n_threads)
        self.verbose = estimator.verbose
        if self.verbose:
            print(f"[ConvFeatureExtractor] dask: {n} images in {len(self.bounds)} chunks of "
                  f"<= {size} on {n_threads} worker threads", file=sys.stderr, flush=True)
        self.token = network_token(estimator.trunk_)
        # The extractor is the result of a task whose input is its pickle: the
        # workers fetch it from one another, and when every worker holding it has
        # died the scheduler computes it again (scattered data would be lost).
        self.payload = pickle.dumps(estimator, protocol=5)
        self.shipped = self._ship()
        self.futures = {}  # chunk number -> its task, in flight
        self.suspects = set()  # chunks whose workers died too often: run again on their own
        self.reshipped = 0
        self.following = 0  # next chunk to submit
        self.out, self.indices, self.failed = None, [], []
        self.bar = progress(total=n, desc="extracting (dask)", unit="img",
                            verbose=self.verbose)

    def _ship(self):
        with warnings.catch_warnings():  # the payload is in the graph on purpose
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            return self.client.submit(_unpickle, self.payload, pure=False, **self.submit_kwargs,
                                      key=f"skretrieval_extractor-{uuid.uuid4().hex}")

    def _submit(self, c):
        a, b = self.bounds[c]
        self.futures[c] = self.client.submit(
            _Chunk(c, a, b), self.shipped, self.portable[a:b], self.cache, self.retries,
            self.token, key=f"skretrieval_chunk_{c}-{uuid.uuid4().hex}", pure=False,
            **self.submit_kwargs)

    def _give_up(self, c, attempts, errors, trace=None):
        a, b = self.bounds[c]
        self.failed.append({"chunk": c, "start": a, "stop": b, "attempts": attempts,
                            "errors": errors, "traceback": trace})
        warnings.warn(f"chunk {c} (images {a}-{b - 1}) failed {attempts} times, given "
                      f"up: {errors[-1]}", RuntimeWarning, stacklevel=7)

    def result(self, c):
        """The result of chunk ``c`` (None when given up), its task resubmitted
        as long as its failures are not its own."""
        from distributed import wait

        while True:
            if c in self.suspects:  # alone: once the others in flight are done
                wait([f for k, f in self.futures.items() if k != c])
                self._submit(c)
            else:
                while self.following < len(self.bounds) and len(self.futures) < self.window:
                    if self.following not in self.futures:
                        self._submit(self.following)
                    self.following += 1
            try:
                result = self.futures[c].result()
            except Exception as exc:
                del self.futures[c]
                if self._lost_extractor(exc):
                    self._reship(c)
                    continue
                if type(exc).__name__ != "KilledWorker":
                    self._stopped(c, exc)
                if c in self.suspects:
                    self._give_up(c, 2, [f"KilledWorker: {exc}"])
                    return None
                self.suspects.add(c)
                if self.verbose:
                    a, b = self.bounds[c]
                    print(f"[ConvFeatureExtractor] chunk {c + 1}/{len(self.bounds)} "
                          f"(images {a}-{b - 1}): its workers died, running it "
                          "again on its own", file=sys.stderr, flush=True)
                continue
            del self.futures[c]
            return result

    def _lost_extractor(self, exc):
        """Whether the workers died while unpickling the extractor (for another
        reason: it is innocent), and it may be shipped again."""
        return (type(exc).__name__ == "KilledWorker"
                and getattr(exc, "task", None) == self.shipped.key
                and self.reshipped <= RETRIES)

    def _reship(self, c):
        self.reshipped += 1
        self.shipped.release()
        self.shipped = self._ship()
        for k, f in list(self.futures.items()):
            if f.status != "finished":  # they needed the lost one
                f.cancel()
                self._submit(k)
        if c not in self.suspects:
            self._submit(c)

    def _stopped(self, c, exc):
        a, b = self.bounds[c]
        raise RuntimeError(
            f"distributed extraction stopped at chunk {c} (images {a}-{b - 1}) "
            f"after {len(self.indices)} of {self.n} images: {type(exc).__name__}: {exc}. "
            "With cache=<a directory every worker sees>, running it again "
            "resumes where it stopped") from exc

    def append(self, c, result):
        """Append the maps of chunk ``c`` to the output (or raise its input error)."""
        if result is None:
            return
        a, b = self.bounds[c]
        if result[0] == "input":
            raise _input_error(result, self.items, self.portable, a, b, c) from None
        if result[0] == "failed":
            self._give_up(c, self.retries + 1, result[1], result[2])
            return
        maps, errors = result[1], result[2]
        del result
        if errors:
            warnings.warn(f"chunk {c} (images {a}-{b - 1}) succeeded after "
                          f"{len(errors)} failed attempt(s): {errors[0]}",
                          RuntimeWarning, stacklevel=6)
        if self.out is None:
            est = self.estimator
            self.out = FeatureMaps(scales=maps.scales, layer=maps.layer, store=est.store,
                                   dtype=est.dtype)
        self.out.extend(maps)
        self.indices.extend(range(a, b))
        del maps
        self.bar.update(b - a)

    def close(self):
        self.bar.close()
        if self.futures:
            self.client.cancel(list(self.futures.values()))
        self.shipped.release()

    def output(self, scales):
        """The maps; :class:`DistributedExtractionError` when chunks were given up."""
        est = self.estimator
        out = self.out
        if out is None:  # every chunk failed
            out = FeatureMaps(scales=scales, layer=est.layer_name_, store=est.store,
                              dtype=est.dtype)
        if self.failed:
            failed, n = self.failed, self.n
            lost = sum(f["stop"] - f["start"] for f in failed)
            lines = "; ".join(f"chunk {f['chunk']} (images {f['start']}-{f['stop'] - 1}, "
                              f"{f['attempts']} attempts): {f['errors'][-1]}" for f in failed)
            raise DistributedExtractionError(
                f"{len(failed)} of {len(self.bounds)} chunks failed ({lost} of {n} images): "
                f"{lines}. The maps of the other {len(self.indices)} images are in .maps "
                "(their positions in .indices); extract the failed images again, or use "
                "cache=<a directory every worker sees> so that a rerun resumes",
                failed, out, np.asarray(self.indices, dtype=np.intp))
        return out
