"""The shared model of the search service: one request at a time, in a
worker thread, within the request's deadline."""

import threading
import time

import numpy as np

from ._limits import RequestError, timeout_error

__all__ = ["SharedModel", "check_pipeline", "run_in_thread"]

_EXPIRED = object()


def check_pipeline(model):
    """Return ``model`` if it is a fitted retrieval pipeline, else raise ValueError."""
    from sklearn.pipeline import Pipeline

    if not (isinstance(model, Pipeline) and len(model) >= 2
            and hasattr(model[-1], "kneighbors")
            and getattr(model[-1], "n_samples_fit_", None) is not None):
        raise ValueError(
            "create_app needs a fitted retrieval pipeline (feature steps then a fitted "
            "retriever: NearestNeighborRetriever, ASMKRetriever), e.g. one written by "
            "'skretrieval index' or "
            f"save_pipeline; got {type(model).__name__}")
    return model


async def run_in_thread(fn, deadline):
    """``fn()`` in a worker thread; 504 when the deadline passes first (the
    thread is abandoned: it finishes on its own)."""
    import anyio

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise timeout_error()
    try:
        with anyio.fail_after(remaining):
            return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except TimeoutError:
        raise timeout_error() from None


class SharedModel:
    """The shared pipeline: one user at a time, in a worker thread."""

    def __init__(self, pipeline, max_queue):
        self.pipeline = pipeline
        self.lock = threading.Lock()
        self.max_queue = max_queue
        self.pending = 0  # requests waiting for or holding the model
        self.snapshot = None
        self.refresh()

    @property
    def retriever(self):
        """The pipeline's last step (a fitted nearest-neighbour retriever)."""
        return self.pipeline[-1]

    def refresh(self):
        """Take a new snapshot ``(ids, names, str(id) -> row)`` of the database
        (called with the lock held, or before serving): the event loop reads
        the snapshot, never the retriever while a worker changes it."""
        r = self.retriever
        ids = np.asarray(r.ids_)
        names = np.asarray(r.y_ if getattr(r, "y_", None) is not None else r.ids_)
        id_map = {str(v): row for row, v in enumerate(ids.tolist())}
        self.snapshot = (ids, names, id_map)

    async def run(self, fn, deadline):
        """Run ``fn()`` in a worker thread holding the model lock, unless the
        deadline passed while waiting for it (504)."""
        if self.pending >= self.max_queue:
            raise RequestError(503, f"server busy: {self.pending} requests in progress; "
                                    "try again later", headers={"Retry-After": "1"})
        self.pending += 1

        def job():
            with self.lock:
                if time.monotonic() > deadline:
                    return _EXPIRED
                return fn()

        try:
            result = await run_in_thread(job, deadline)
        finally:
            self.pending -= 1
        if result is _EXPIRED:
            raise timeout_error()
        return result
