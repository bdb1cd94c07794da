"""The ASGI application of :func:`skretrieval.serve.create_app`."""


import hmac
import io
import json
import logging
import math
import os
import re
import stat
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from importlib import resources
from urllib.parse import quote

import numpy as np

__all__ = [
    "DEFAULT_MAX_K",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_REQUEST_TIMEOUT",
    "THUMBNAIL_SIZE",
    "create_app",
]

logger = logging.getLogger("skretrieval.serve")

#: Largest request body accepted (an upload with its form fields): 20 MiB.
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest decoded image accepted, in pixels (width x height, read from the
#: file's header before decoding): 40 megapixels.
DEFAULT_MAX_PIXELS = 40_000_000
#: Largest number of results of one search.
DEFAULT_MAX_K = 100
#: Seconds a request may take, waiting for the model included.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Longest side of the thumbnails of ``GET /images/{id}``, in pixels.
THUMBNAIL_SIZE = 256

_MAX_INDEX_FILES = 64
_THUMBNAIL_CACHE_ENTRIES = 512
_STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
     b"script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
]


def _require_fastapi():
    import importlib.util

    try:
        import fastapi  # noqa: F401
        # python-multipart (uploads): python_multipart since 0.0.13, multipart before
        if importlib.util.find_spec("python_multipart") is None:
            import multipart  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "skretrieval.serve needs FastAPI, uvicorn and python-multipart: "
            "pip install skretrieval[serve]"
        ) from exc


class _RequestError(Exception):
    """An expected error of a request: an HTTP status and a one-line message."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# ---------------------------------------------------------------------------
# ASGI middlewares (pure ASGI: they see every request, streaming included)
# ---------------------------------------------------------------------------
def _json_bytes(status, message):
    return json.dumps({"detail": message, "status": status}).encode()


async def _send_json(send, status, message, extra_headers=()):
    body = _json_bytes(status, message)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra_headers, *_SECURITY_HEADERS],
    })
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class _GuardMiddleware:
    """Bound the request body, add security headers, and turn unexpected
    errors into a JSON 500 without a traceback (logged here instead)."""

    def __init__(self, app, max_body_bytes):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        too_large = (f"request body larger than the limit of {limit} bytes "
                     f"({limit / 2**20:.1f} MiB)")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, "invalid Content-Length header")
                    return
                if declared > limit:
                    await _send_json(send, 413, too_large)
                    return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", ())}
                extra = [(k, v) for k, v in _SECURITY_HEADERS if k not in names]
                message = dict(message, headers=[*message.get("headers", ()), *extra])
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, too_large)
        except Exception:  # noqa: BLE001 - the last resort: log, answer 500
            logger.exception("unexpected error on %s %s", scope.get("method"),
                             scope.get("path"))
            if not started:
                await _send_json(send, 500, "internal server error (see the server log)")


# ---------------------------------------------------------------------------
# the model and its lock
# ---------------------------------------------------------------------------
def _check_pipeline(model):
    from sklearn.pipeline import Pipeline

    if not (isinstance(model, Pipeline) and len(model) >= 2
            and hasattr(model[-1], "kneighbors")
            and getattr(model[-1], "n_samples_fit_", None) is not None):
        raise ValueError(
            "create_app needs a fitted retrieval pipeline (feature steps then a fitted "
            "NearestNeighborRetriever), e.g. one written by 'skretrieval index' or "
            f"save_pipeline; got {type(model).__name__}")
    return model


class _Model:
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
            raise _RequestError(503, f"server busy: {self.pending} requests in progress; "
                                     "try again later", headers={"Retry-After": "1"})
        self.pending += 1

        def job():
            with self.lock:
                if time.monotonic() > deadline:
                    return _EXPIRED
                return fn()

        try:
            result = await _run_in_thread(job, deadline)
        finally:
            self.pending -= 1
        if result is _EXPIRED:
            raise _timeout_error()
        return result


_EXPIRED = object()


def _timeout_error():
    return _RequestError(504, "the request took longer than the server's time limit")


async def _run_in_thread(fn, deadline):
    """``fn()`` in a worker thread; 504 when the deadline passes first (the
    thread is abandoned: it finishes on its own)."""
    import anyio

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timeout_error()
    try:
        with anyio.fail_after(remaining):
            return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except TimeoutError:
        raise _timeout_error() from None


# ---------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------
def _check_pixels(path, max_pixels):
    """Read the image header only; refuse images larger than ``max_pixels``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except UnidentifiedImageError:
        raise _RequestError(422, "not an image file, or a format Pillow cannot "
                                 "identify") from None
    except Image.DecompressionBombError:
        raise _RequestError(413, f"image has too many pixels (more than "
                                 f"{max_pixels} allowed): refused before decoding") from None
    except Exception as exc:  # noqa: BLE001 - a broken header
        raise _RequestError(422, f"unreadable image header ({type(exc).__name__})") from None
    if width * height > max_pixels:
        raise _RequestError(
            413, f"image of {width} x {height} = {width * height} pixels is larger than "
                 f"the limit of {max_pixels} pixels: refused before decoding")
    return width, height


def _decode(path, max_pixels):
    """Decode an image file to an RGB array (strict: truncated or corrupt
    files are refused), after checking its size from the header."""
    from skretrieval import ImageLoadError, load_image

    _check_pixels(path, max_pixels)
    try:
        return load_image(path)
    except ImageLoadError as exc:
        raise _RequestError(422, _image_reason(exc)) from None


def _image_reason(exc):
    reason = getattr(exc, "reason", None) or str(exc)
    return f"cannot read the image: {reason}"


def _decode_bytes(data, max_pixels):
    if not data:
        raise _RequestError(422, "the uploaded file is empty")
    fd, tmp = tempfile.mkstemp(prefix="skretrieval-serve-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return _decode(tmp, max_pixels)
    finally:
        os.unlink(tmp)


def _make_thumbnail(path, size, max_pixels):
    from PIL import Image, ImageOps

    _check_pixels(path, max_pixels)
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            im = ImageOps.exif_transpose(im)
            im.thumbnail((size, size))
            if im.mode != "RGB":
                im = im.convert("RGBA").convert("RGB") if "A" in im.mode else im.convert("RGB")
            out = io.BytesIO()
            im.save(out, format="JPEG", quality=85)
            return out.getvalue()
    except Exception as exc:  # noqa: BLE001
        raise _RequestError(422, f"cannot read the indexed image ({type(exc).__name__})") \
            from None


def _inside(root_real, path):
    """The real path of ``path`` if it lies inside ``root_real``, else None."""
    real = os.path.realpath(path)
    try:
        if os.path.commonpath([root_real, real]) != root_real:
            return None
    except ValueError:  # another drive
        return None
    return real


def _safe_name(name):
    """Whether an indexed name is a plain relative path (no ``..``, not absolute)."""
    if not name or "\x00" in name or os.path.isabs(name) or name.startswith(("/", "\\")):
        return False
    parts = re.split(r"[\\/]+", name)
    return ".." not in parts and not re.match(r"^[A-Za-z]:", name)


# ---------------------------------------------------------------------------
# request parsing
# ---------------------------------------------------------------------------
def _parse_k(value, max_k):
    if value is None or value == "":
        return min(10, max_k)
    if isinstance(value, bool):
        raise _RequestError(422, f"k must be an integer from 1 to {max_k}, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?\d{1,9}", text):
            raise _RequestError(422, f"k must be an integer from 1 to {max_k}, "
                                     f"got {value[:40]!r}")
        value = int(text)
    if not isinstance(value, int):
        raise _RequestError(422, f"k must be an integer from 1 to {max_k}, got {value!r}")
    if not 1 <= value <= max_k:
        raise _RequestError(422, f"k must be an integer from 1 to {max_k}, got {value}")
    return value


def _parse_box(value):
    """``None``, ``"x1,y1,x2,y2"`` or a list of 4 numbers -> tuple or None."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise _RequestError(422, "box must be 'x1,y1,x2,y2' or a list of 4 numbers")
    if len(parts) != 4:
        raise _RequestError(422, f"box must have 4 values x1,y1,x2,y2, got {len(parts)}")
    box = []
    for p in parts:
        try:
            if isinstance(p, bool):
                raise ValueError
            v = float(p)
        except (TypeError, ValueError):
            raise _RequestError(422, f"box values must be numbers, got {str(p)[:40]!r}") \
                from None
        if not math.isfinite(v):
            raise _RequestError(422, "box values must be finite numbers")
        box.append(v)
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise _RequestError(422, f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}): need x2 > x1 "
                                 "and y2 > y1")
    if x2 <= 0 or y2 <= 0:
        raise _RequestError(422, "box lies outside the image")
    return tuple(int(v) if v.is_integer() else v for v in box)


def _bearer(request):
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# ---------------------------------------------------------------------------
# the application
# ---------------------------------------------------------------------------
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
        :class:`~skretrieval.NearestNeighborRetriever`, as loaded by
        :func:`load_model`.  It is shared by all requests (used by one at a
        time) and changed in memory by ``POST /index``.
    images_root : str or path-like, default=None
        The folder of the indexed images: an image's file is
        ``images_root / name``, with ``name`` its label in the retriever's
        ``y_`` (its id when there are no labels), as written by
        ``skretrieval index FOLDER``.  Needed for thumbnails, path queries
        and ``POST /index``; nothing outside it is ever read or written.
    token : str, default=None
        Enables ``POST /index`` for requests carrying
        ``Authorization: Bearer <token>``.  ``None`` disables it (403).
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
        not a folder, or a limit is not positive.

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
      with ``score`` the cosine similarity (``1 - distance``; ``-distance``
      for the other metrics).
    * ``GET /images/{id}``: a JPEG thumbnail of an indexed image.
    * ``POST /index`` (token): multipart ``files`` saved under
      ``images_root/<folder>`` (form field ``folder``, default
      ``uploads``), or JSON ``{"paths": [...]}`` of files inside
      ``images_root``; the images are added to the in-memory index
      (replaced when their content changed), not saved to the model file.

    Every extraction runs in a worker thread holding one lock, so the event
    loop never blocks and the model is used by one request at a time.
    """
    _require_fastapi()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    from skretrieval import ConvFeatureExtractor, Crop, __version__

    pipe = _check_pipeline(model)
    for name, value in (("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels),
                        ("max_k", max_k), ("max_queue", max_queue),
                        ("thumbnail_size", thumbnail_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(request_timeout, (int, float)) and request_timeout > 0):
        raise ValueError(f"request_timeout must be a positive number of seconds, "
                         f"got {request_timeout!r}")
    root_real = None
    if images_root is not None:
        root_real = os.path.realpath(os.fspath(images_root))
        if not os.path.isdir(root_real):
            raise ValueError(f"images_root {os.fspath(images_root)!r} is not a folder")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ValueError("token must be a string of at least 8 characters")
    for _, step in pipe.steps[:-1]:
        if isinstance(step, ConvFeatureExtractor):
            # no progress output per request; no feature cache growing per query
            step.set_params(verbose=0, cache=None)

    shared = _Model(pipe, max_queue)
    thumbnails = OrderedDict()
    thumbnails_lock = threading.Lock()

    app = FastAPI(title="skretrieval search", version=__version__, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.model = shared
    app.add_middleware(_GuardMiddleware, max_body_bytes=max_upload_bytes)

    @app.exception_handler(_RequestError)
    async def _request_error(request, exc):
        return JSONResponse({"detail": exc.message, "status": exc.status},
                            status_code=exc.status, headers=exc.headers)

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"detail": str(exc.detail), "status": exc.status_code},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return JSONResponse({"detail": "invalid request", "status": 422},
                            status_code=422)

    # -- helpers ---------------------------------------------------------
    def thumbnail_url(image_id):
        if root_real is None:
            return None
        return "/images/" + quote(str(image_id), safe="/")

    def resolve_in_root(relative, what):
        """The real path of ``relative`` (a path inside the images root)."""
        if root_real is None:
            raise _RequestError(404, "the server has no images folder (images_root)")
        if not isinstance(relative, str) or not relative or "\x00" in relative:
            raise _RequestError(422, f"{what} must be a non-empty string")
        joined = os.path.join(root_real, relative)  # an absolute path replaces the root
        real = _inside(root_real, joined)
        if real is None:
            raise _RequestError(403, f"{what} is outside the images folder")
        return real

    def similarity_of(distances):
        metric = getattr(shared.retriever, "metric", "cosine")
        if metric == "cosine":
            return 1.0 - distances
        return -distances

    async def read_query(request):
        """(image source, k, box, description) of a /search request."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=8)
            except (StarletteHTTPException, _BodyTooLarge):
                raise
            except Exception:  # noqa: BLE001 - a malformed multipart body
                raise _RequestError(400, "malformed multipart body") from None
            upload = form.get("image")
            if upload is None:
                upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise _RequestError(400, "no image: send the file in the multipart "
                                         "field 'image'")
            data = await upload.read()
            k = _parse_k(form.get("k", request.query_params.get("k")), max_k)
            box = _parse_box(form.get("box", request.query_params.get("box")))
            return ("bytes", data), k, box, upload.filename
        if ctype == "application/json":
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise _RequestError(400, "malformed JSON body") from None
            if not isinstance(body, dict):
                raise _RequestError(400, "the JSON body must be an object")
            if "path" not in body:
                raise _RequestError(400, "no image: give {'path': ...} or upload a file "
                                         "as multipart field 'image'")
            if not allow_paths:
                raise _RequestError(403, "path queries are disabled on this server "
                                         "(start it with allow_paths); upload the image")
            real = resolve_in_root(body["path"], "path")
            if not os.path.isfile(real):
                raise _RequestError(404, "no image file at this path")
            k = _parse_k(body.get("k", request.query_params.get("k")), max_k)
            box = _parse_box(body.get("box", request.query_params.get("box")))
            return ("path", real), k, box, body["path"]
        raise _RequestError(415, "send the image as multipart/form-data (field 'image') "
                                 "or JSON {'path': ...}")

    # -- routes ----------------------------------------------------------
    static = resources.files(__package__).joinpath("static")

    def static_response(name):
        data = static.joinpath(name).read_bytes()
        return Response(data, media_type=_STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def page():
        return static_response("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in _STATIC_FILES:
            raise _RequestError(404, "not found")
        return static_response(name)

    @app.get("/health")
    async def health():
        r = shared.retriever
        return {
            "status": "ok",
            "model_loaded": True,
            "n_images": int(r.n_samples_fit_),
            "dimension": int(r.n_features_in_),
            "metric": getattr(r, "metric", None),
            "steps": [type(step).__name__ for _, step in pipe.steps],
            "version": __version__,
            "max_k": max_k,
            "thumbnails": root_real is not None,
            "path_queries": allow_paths and root_real is not None,
            "indexing": token is not None,
        }

    @app.post("/search")
    async def search(request: Request):
        deadline = time.monotonic() + request_timeout
        source, k, box, label = await read_query(request)

        def decode():
            kind, value = source
            if kind == "bytes":
                return _decode_bytes(value, max_pixels)
            return _decode(value, max_pixels)

        image = await _run_in_thread(decode, deadline)
        item = image
        if box is not None:
            h, w = image.shape[:2]
            if box[0] >= w or box[1] >= h:
                raise _RequestError(422, f"box lies outside the image of {w} x {h} pixels")
            item = Crop(image, box=box)

        def query():
            retriever = shared.retriever
            n_neighbors = min(k, retriever.n_samples_fit_)
            try:
                Xq = pipe[:-1].transform([item])
            except Exception as exc:  # noqa: BLE001 - ImageLoadError of a crop...
                from skretrieval import ImageLoadError

                if isinstance(exc, ImageLoadError):
                    raise _RequestError(422, _image_reason(exc)) from None
                raise
            dist, ind = retriever.kneighbors(Xq, n_neighbors=n_neighbors)
            ids, names, _ = shared.snapshot
            return dist[0], ids[ind[0]], names[ind[0]]

        dist, ids, names = await shared.run(query, deadline)
        scores = similarity_of(np.asarray(dist, dtype=np.float64))
        results = [
            {"rank": r + 1, "id": _plain(ids[r]), "name": str(names[r]),
             "score": round(float(scores[r]), 6), "distance": round(float(dist[r]), 6),
             "thumbnail": thumbnail_url(ids[r])}
            for r in range(len(ids))
        ]
        return {"query": label, "k": k, "box": list(box) if box is not None else None,
                "n_images": int(shared.retriever.n_samples_fit_), "results": results}

    @app.get("/images/{image_id:path}")
    async def image(image_id: str):
        if root_real is None:
            raise _RequestError(404, "the server has no images folder (images_root)")
        _, names, id_map = shared.snapshot
        row = id_map.get(image_id)
        if row is None:
            raise _RequestError(404, "no indexed image with this id")
        name = str(names[row])
        if not _safe_name(name):
            raise _RequestError(403, "the indexed name of this image is not a path inside "
                                     "the images folder")
        real = _inside(root_real, os.path.join(root_real, name))
        if real is None:
            raise _RequestError(403, "the file of this image is outside the images folder")
        try:
            st = os.stat(real)
        except OSError:
            raise _RequestError(404, "the file of this image is missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise _RequestError(404, "the file of this image is not a regular file")
        key = (real, st.st_mtime_ns, st.st_size)
        with thumbnails_lock:
            data = thumbnails.get(key)
            if data is not None:
                thumbnails.move_to_end(key)
        if data is None:
            data = await _run_in_thread(
                lambda: _make_thumbnail(real, thumbnail_size, max_pixels),
                time.monotonic() + request_timeout)
            with thumbnails_lock:
                thumbnails[key] = data
                while len(thumbnails) > _THUMBNAIL_CACHE_ENTRIES:
                    thumbnails.popitem(last=False)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=60"})

    @app.post("/index")
    async def index(request: Request):
        deadline = time.monotonic() + request_timeout
        if token is None:
            raise _RequestError(403, "indexing is disabled: start the server with a token "
                                     "(--token or SKRETRIEVAL_SERVE_TOKEN)")
        given = _bearer(request)
        if given is None:
            raise _RequestError(401, "this endpoint needs 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise _RequestError(403, "wrong token")
        if root_real is None:
            raise _RequestError(409, "indexing needs the server's images folder "
                                     "(images_root)")
        retriever = shared.retriever
        if not hasattr(retriever, "partial_fit"):
            raise _RequestError(409, f"the retriever ({type(retriever).__name__}) cannot grow")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        saved = []  # files written by this request (removed if it fails)
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=_MAX_INDEX_FILES, max_fields=4)
            except (StarletteHTTPException, _BodyTooLarge):
                raise
            except Exception:  # noqa: BLE001
                raise _RequestError(400, "malformed multipart body") from None
            uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
            if not uploads:
                raise _RequestError(400, "no file: send the images in the multipart "
                                         "field 'files'")
            folder = form.get("folder") or "uploads"
            if not isinstance(folder, str) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}",
                                                                folder):
                raise _RequestError(422, "folder must be a simple name (letters, digits, "
                                         "'_', '-')")
            files = []
            for up in uploads:
                base = os.path.basename((up.filename or "").replace("\\", "/"))
                safe = re.sub(r"[^A-Za-z0-9._\-]", "_", base).lstrip(".")
                if not safe:
                    raise _RequestError(422, "every uploaded file needs a file name")
                files.append((safe, await up.read()))
            names_here = [s for s, _ in files]
            if len(set(names_here)) != len(names_here):
                raise _RequestError(422, "two uploaded files have the same name")
            dest = resolve_in_root(folder, "folder")

            def save_uploads():
                os.makedirs(dest, exist_ok=True)
                out = []
                for safe, data in files:
                    target = os.path.join(dest, safe)
                    if os.path.lexists(target):
                        raise _RequestError(409, f"{folder}/{safe} exists already: index "
                                                 "it by path, or rename the upload")
                    if not data:
                        raise _RequestError(422, f"{safe}: the uploaded file is empty")
                    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".upload-")
                    try:
                        with os.fdopen(fd, "wb") as fh:
                            fh.write(data)
                        try:
                            _decode(tmp, max_pixels)
                        except _RequestError as exc:
                            raise _RequestError(exc.status, f"{safe}: {exc.message}") \
                                from None
                        os.link(tmp, target)  # fails if the name was taken meanwhile
                    finally:
                        os.unlink(tmp)
                    saved.append(target)
                    out.append(target)
                return out

            try:
                paths = await _run_in_thread(save_uploads, deadline)
            except FileExistsError:
                _remove(saved)
                raise _RequestError(409, "an uploaded file name exists already") from None
            except BaseException:
                _remove(saved)
                raise
        elif ctype == "application/json":
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise _RequestError(400, "malformed JSON body") from None
            rel = body.get("paths") if isinstance(body, dict) else None
            if not isinstance(rel, list) or not rel:
                raise _RequestError(400, "give {'paths': [...]} (files inside the images "
                                         "folder) or upload multipart 'files'")
            if len(rel) > _MAX_INDEX_FILES:
                raise _RequestError(413, f"at most {_MAX_INDEX_FILES} images per request")
            paths = []
            for p in rel:
                real = resolve_in_root(p, "path")
                if not os.path.isfile(real):
                    raise _RequestError(404, f"no image file at {str(p)[:100]!r}")
                paths.append(real)

            def check_files():
                for p in paths:
                    try:
                        _decode(p, max_pixels)
                    except _RequestError as exc:
                        raise _RequestError(exc.status, f"{os.path.relpath(p, root_real)}: "
                                                        f"{exc.message}") from None

            await _run_in_thread(check_files, deadline)
        else:
            raise _RequestError(415, "send multipart/form-data 'files' or JSON "
                                     "{'paths': [...]}")

        names = [os.path.relpath(p, root_real).replace(os.sep, "/") for p in paths]

        def add():
            from skretrieval import ImageLoadError, add_to_index

            r = shared.retriever
            ids = np.asarray(r.ids_)
            str_ids = ids.dtype.kind in "US" or (ids.dtype.kind == "O" and ids.shape[0]
                                                 and isinstance(ids[0], str))
            labels = np.asarray(names) if getattr(r, "y_", None) is not None else None
            try:
                _, report = add_to_index(pipe, paths, labels,
                                         ids=np.asarray(names) if str_ids else None,
                                         on_existing="update", return_report=True)
            except ImageLoadError as exc:
                raise _RequestError(422, _image_reason(exc)) from None
            except ValueError as exc:
                raise _RequestError(422, f"cannot add the images: {exc}") from None
            finally:
                shared.refresh()
            return report

        try:
            report = await shared.run(add, deadline)
        except _RequestError as exc:
            if exc.status != 504:  # past the time limit the addition may still run:
                _remove(saved)     # its files stay
            raise
        logger.info("indexed %d image(s): %s", len(paths), report)
        return {"added": [_plain(v) for v in report.added],
                "replaced": [_plain(v) for v in report.replaced],
                "unchanged": [_plain(v) for v in report.unchanged],
                "n_images": int(shared.retriever.n_samples_fit_)}

    return app


def _plain(value):
    """A numpy scalar as a JSON-able Python value."""
    return value.item() if isinstance(value, np.generic) else value


def _remove(paths):
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass
