"""The ASGI application of :func:`skretrieval.serve.create_app`."""

import os

import numpy as np

from ..index import set_feature_params
from ..utils._version import __version__
from ._limits import (
    DEFAULT_MAX_K,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
    THUMBNAIL_SIZE,
    GuardMiddleware,
    RequestError,
    check_token,
    require_fastapi,
)
from ._model import SharedModel, check_pipeline
from ._routes import Routes

__all__ = ["create_app"]


def create_app(model, *, images_root=None, token=None,
               max_upload_bytes=DEFAULT_MAX_UPLOAD_BYTES, max_pixels=DEFAULT_MAX_PIXELS,
               max_k=DEFAULT_MAX_K, request_timeout=DEFAULT_REQUEST_TIMEOUT,
               allow_paths=False, max_queue=16, thumbnail_size=THUMBNAIL_SIZE):
    """Build the ASGI search application over a fitted retrieval pipeline.

    Parameters
    ----------
    model : Pipeline
        A fitted retrieval pipeline: feature steps (e.g.
        :class:`~skretrieval.ConvFeatureExtractor`, a pooler, a
        :class:`~skretrieval.PCAWhitener`) then a fitted
        :class:`~skretrieval.NearestNeighborRetriever`, or local features
        (:class:`~skretrieval.local.SIFTExtractor`,
        :class:`~skretrieval.local.DeepLocalFeatures`) then a fitted
        :class:`~skretrieval.local.ASMKRetriever`, as loaded by
        :func:`load_model`: any retriever with ``kneighbors``, ``ids_`` and
        ``n_samples_fit_`` (``partial_fit``, ``rows_of`` and ``remove`` for
        ``POST /index``).  It is shared by all requests (used by one at a
        time) and changed in memory by ``POST /index``.
    images_root : str or path-like, default=None
        The folder of the indexed images: an image's file is
        ``images_root / name``, with ``name`` its label in the retriever's
        ``y_`` (its id when there are no labels), as written by
        ``skretrieval index FOLDER``.  Needed for thumbnails, path queries
        and ``POST /index``; nothing outside it is ever read or written.
    token : str, default=None
        Enables ``POST /index`` for requests carrying
        ``Authorization: Bearer <token>``: at least 8 printable ASCII
        characters, no spaces.  ``None`` disables it (403).
    max_upload_bytes : int, default=DEFAULT_MAX_UPLOAD_BYTES
        Largest request body, in bytes (413 beyond).
    max_pixels : int, default=DEFAULT_MAX_PIXELS
        Largest image (width x height, read from the header before decoding:
        decompression bombs are refused with 413).
    max_k : int, default=DEFAULT_MAX_K
        Largest number of results of a search (``k`` outside 1..max_k: 422).
    request_timeout : float, default=DEFAULT_REQUEST_TIMEOUT
        Seconds a search or an index request may take, waiting for the
        model included (504 beyond).
    allow_paths : bool, default=False
        Whether ``POST /search`` accepts JSON ``{"path": ...}`` naming an
        image file inside ``images_root`` (instead of an upload).
    max_queue : int, default=16
        Most requests waiting for the model at once (503 beyond).
    thumbnail_size : int, default=THUMBNAIL_SIZE
        Longest side of the thumbnails, in pixels.

    Returns
    -------
    app : fastapi.FastAPI
        The ASGI application; run it with uvicorn (see :func:`serve`).

    Raises
    ------
    ImportError
        If FastAPI or python-multipart is missing (``pip install
        skretrieval[serve]``).
    ValueError
        If ``model`` is not a fitted retrieval pipeline, ``images_root`` is
        not a folder, ``token`` is not a usable token, or a limit is not
        positive.

    Notes
    -----
    Endpoints (JSON errors are ``{"detail": message, "status": code}``):

    * ``GET /`` the web page; ``GET /static/{app.js,style.css}``.
    * ``GET /health``: ``{"status": "ok", "n_images", "dimension",
      "version", ...}``.
    * ``POST /search``: multipart ``image`` (a file), ``k``, ``box``
      (``"x1,y1,x2,y2"`` in pixels of the full-resolution image), or JSON
      ``{"path", "k", "box"}`` with ``allow_paths``; answers ``{"k",
      "box", "results": [{"rank", "id", "name", "score", "thumbnail"}]}``
      with ``score`` the similarity of the retriever's ``metric``: the cosine
      similarity ``1 - distance`` (an ASMK index's kernel value, its
      distances being ``1 - K``), ``-distance`` for the other metrics.
    * ``GET /images/{id}``: a JPEG thumbnail of an indexed image.
    * ``POST /index`` (token): multipart ``files`` saved under
      ``images_root/<folder>`` (form field ``folder``, default
      ``uploads``), or JSON ``{"paths": [...]}`` of files inside
      ``images_root``; the images are added to the in-memory index
      (replaced when their content changed), not saved to the model file.

    Every extraction runs in a worker thread holding one lock, so the event
    loop never blocks and the model is used by one request at a time.
    """
    require_fastapi()
    from fastapi import FastAPI

    pipe = check_pipeline(model)
    _check_limits(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_k=max_k,
                  max_queue=max_queue, thumbnail_size=thumbnail_size,
                  request_timeout=request_timeout)
    root_real = _images_folder(images_root)
    check_token(token)
    # no progress output per request; no feature cache growing per query; a
    # query the extractor cannot decode is an error (422), never skipped: on
    # each feature step that has these settings
    set_feature_params(pipe, verbose=0, cache=None, on_error="raise")

    shared = SharedModel(pipe, max_queue)
    routes = Routes(shared, root_real=root_real, token=token, max_pixels=max_pixels,
                    max_k=max_k, request_timeout=request_timeout, allow_paths=allow_paths,
                    thumbnail_size=thumbnail_size)
    app = FastAPI(title="skretrieval search", version=__version__, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.model = shared
    app.add_middleware(GuardMiddleware, max_body_bytes=max_upload_bytes)
    _add_exception_handlers(app)
    _add_routes(app, routes)
    return app


def _check_limits(*, request_timeout, **positive_ints):
    for name, value in positive_ints.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(request_timeout, (int, float)) and request_timeout > 0):
        raise ValueError(f"request_timeout must be a positive number of seconds, "
                         f"got {request_timeout!r}")


def _images_folder(images_root):
    """The real path of the images folder (None without one)."""
    if images_root is None:
        return None
    root_real = os.path.realpath(os.fspath(images_root))
    if not os.path.isdir(root_real):
        raise ValueError(f"images_root {os.fspath(images_root)!r} is not a folder")
    return root_real


def _add_exception_handlers(app):
    """Answer every error as JSON ``{"detail": message, "status": code}``."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestError)
    async def _request_error(request, exc):
        return JSONResponse({"detail": exc.message, "status": exc.status},
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"detail": str(exc.detail), "status": exc.status_code},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return JSONResponse({"detail": "invalid request", "status": 422},
                            status_code=422)


def _add_routes(app, routes):
    """Register the endpoints of ``routes`` (a :class:`Routes`) on ``app``."""
    from fastapi import Request

    @app.get("/", include_in_schema=False)
    async def page():
        return routes.static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        return routes.static(name)

    @app.get("/health")
    async def health():
        return routes.health()

    @app.post("/search")
    async def search(request: Request):
        return await routes.search(request)

    @app.get("/images/{image_id:path}")
    async def image(image_id: str):
        return await routes.image(image_id)

    @app.post("/index")
    async def index(request: Request):
        return await routes.index(request)
