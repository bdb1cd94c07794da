"""Loading a model file once and running the application with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os

from ..extraction._extractor import ConvFeatureExtractor
from ..index import load_index, set_feature_params
from ..index._indexing import is_model_file
from ..persistence import load_pipeline
from ._app import create_app
from ._limits import (
    DEFAULT_MAX_K,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
    require_fastapi,
)
from ._model import check_pipeline

__all__ = ["load_model", "serve"]

logger = logging.getLogger("skretrieval.serve")


def load_model(path, *, allow_pickle=False, device=None):
    """Load a fitted retrieval pipeline to serve.

    Parameters
    ----------
    path : str or path-like
        A model folder or ``.zip`` written by
        :func:`skretrieval.persistence.save_pipeline` (loaded without pickle),
        or, with ``allow_pickle=True`` only, a joblib index file written by
        ``skretrieval index`` or :func:`skretrieval.neighbors.save_index`.
    allow_pickle : bool, default=False
        Whether a joblib (pickle) file may be loaded.  Loading one runs code
        chosen by whoever wrote it: allow it only for files you trust.
    device : str, default=None
        Torch device of the extractor (``"cpu"``, ``"cuda"``...) for a
        pickle-free model; ``None`` keeps the saved one (or the CPU).

    Returns
    -------
    pipeline : Pipeline
        The fitted retrieval pipeline.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is a joblib file and ``allow_pickle`` is False (the
        message names the flag), or does not hold a fitted retrieval
        pipeline.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model not found: {path!r}")
    if is_model_file(path):
        pipe = load_pipeline(path, device=device)  # every network of the file on device
        if device is not None:  # and the steps' parameters say so
            set_feature_params(pipe, device=device)
        return check_pipeline(pipe)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder without manifest.json: not a model "
                         "written by save_pipeline")
    if not allow_pickle:
        raise ValueError(
            f"{path!r} is not a pickle-free model (a save_pipeline folder or .zip); if it "
            "is a joblib index file, loading it runs code stored in the file: pass "
            "allow_pickle=True (command line: --allow-pickle) only if you trust who "
            "wrote it, or convert it once with skretrieval.persistence.save_pipeline")
    pipe = load_index(path)
    if device is not None:
        _move_networks(pipe, device)
    return check_pipeline(pipe)


def _move_networks(pipe, device):
    """``device`` for the networks of a joblib model's feature steps: a
    :class:`~skretrieval.ConvFeatureExtractor` step, or the fitted one a step
    runs (``extractor_`` of :class:`~skretrieval.local.DeepLocalFeatures`),
    rebuilt there; the steps' own ``device`` parameters follow."""
    set_feature_params(pipe, device=device)
    for _, step in pipe.steps[:-1]:
        for extractor in (step, getattr(step, "extractor_", None)):
            if isinstance(extractor, ConvFeatureExtractor):
                extractor.set_params(device=device)
                extractor.fit()


def _is_loopback(host):
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(path, host="127.0.0.1", port=8000, *, allow_pickle=False, images_root=None,
          token=None, max_upload_bytes=DEFAULT_MAX_UPLOAD_BYTES,
          max_pixels=DEFAULT_MAX_PIXELS, max_k=DEFAULT_MAX_K,
          request_timeout=DEFAULT_REQUEST_TIMEOUT, allow_paths=False, device=None,
          log_level="info"):
    """Load a model file once and serve it over HTTP with uvicorn (blocks).

    Parameters
    ----------
    path : str or path-like
        The model: a :func:`~skretrieval.persistence.save_pipeline` folder or
        ``.zip``, or a joblib index file with ``allow_pickle=True``.
    host : str, default="127.0.0.1"
        Address to bind.  The default accepts connections from this machine
        only; ``"0.0.0.0"`` exposes the service to the network (a warning is
        logged: put it behind a reverse proxy with TLS).
    port : int, default=8000
        TCP port.
    allow_pickle : bool, default=False
        Whether a joblib (pickle) file may be loaded (it runs code).
    images_root, token, max_upload_bytes, max_pixels, max_k, request_timeout, \
allow_paths
        As for :func:`create_app`.
    device : str, default=None
        Torch device of the extractor; ``None`` keeps the saved one.
    log_level : str, default="info"
        uvicorn's log level.

    Raises
    ------
    ImportError
        If FastAPI, python-multipart or uvicorn is missing (``pip install
        skretrieval[serve]``).
    ValueError, FileNotFoundError
        As for :func:`load_model` and :func:`create_app`.
    """
    require_fastapi()
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError("skretrieval.serve needs uvicorn: pip install "
                          "skretrieval[serve]") from exc
    model = load_model(path, allow_pickle=allow_pickle, device=device)
    app = create_app(model, images_root=images_root, token=token,
                     max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_k=max_k,
                     request_timeout=request_timeout, allow_paths=allow_paths)
    if not _is_loopback(host):
        logger.warning("binding %s: the service is reachable from the network; serve it "
                       "behind a reverse proxy with TLS%s", host,
                       "" if token is None else " (the token travels in clear otherwise)")
    r = model[-1]
    logger.info("serving %s (%d images, %d dimensions) on http://%s:%d/",
                   os.fspath(path), r.n_samples_fit_, r.n_features_in_,
                   f"[{host}]" if ":" in host else host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False,
                proxy_headers=False)
