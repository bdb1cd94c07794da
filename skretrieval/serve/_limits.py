"""Limits and checks of the search service: its defaults, request errors, the
guard middleware (body size, security headers, last-resort 500), request
parsing (``k``, ``box``, the bearer token, form and JSON bodies) and the
confinement of paths to the images folder."""

import json
import logging
import math
import os
import re

__all__ = [
    "DEFAULT_MAX_K",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_INDEX_FILES",
    "SECURITY_HEADERS",
    "THUMBNAIL_SIZE",
    "BodyTooLarge",
    "GuardMiddleware",
    "RequestError",
    "bearer",
    "check_token",
    "content_type",
    "inside",
    "parse_box",
    "parse_k",
    "read_form",
    "read_json",
    "require_fastapi",
    "safe_name",
    "timeout_error",
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
#: Most images of one ``POST /index`` request.
MAX_INDEX_FILES = 64

#: Headers added to every response.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
     b"script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
]


def require_fastapi():
    """Raise ImportError, naming the ``serve`` extra, if FastAPI or
    python-multipart is missing."""
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


class RequestError(Exception):
    """An expected error of a request: an HTTP status and a one-line message."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class BodyTooLarge(Exception):
    """The request body went past the limit while it was being read."""


def timeout_error():
    """The 504 of a request past the server's time limit."""
    return RequestError(504, "the request took longer than the server's time limit")


# ---------------------------------------------------------------------------
# ASGI middleware (pure ASGI: it sees every request, streaming included)
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
                    *extra_headers, *SECURITY_HEADERS],
    })
    await send({"type": "http.response.body", "body": body})


def _with_security_headers(message):
    names = {k.lower() for k, _ in message.get("headers", ())}
    extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
    return dict(message, headers=[*message.get("headers", ()), *extra])


class GuardMiddleware:
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
        status = self._declared_length_refusal(scope, limit)
        if status is not None:
            await _send_json(send, status, too_large if status == 413
                             else "invalid Content-Length header")
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = _with_security_headers(message)
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, too_large)
        except Exception:  # noqa: BLE001 - the last resort: log, answer 500
            logger.exception("unexpected error on %s %s", scope.get("method"),
                             scope.get("path"))
            if not started:
                await _send_json(send, 500, "internal server error (see the server log)")

    @staticmethod
    def _declared_length_refusal(scope, limit):
        """400 for an invalid Content-Length, 413 for one over ``limit``,
        else None (the first offending header decides)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return 400
                if declared > limit:
                    return 413
        return None


# ---------------------------------------------------------------------------
# confinement to the images folder
# ---------------------------------------------------------------------------
def inside(root_real, path):
    """The real path of ``path`` if it lies inside ``root_real``, else None."""
    real = os.path.realpath(path)
    try:
        if os.path.commonpath([root_real, real]) != root_real:
            return None
    except ValueError:  # another drive
        return None
    return real


def safe_name(name):
    """Whether an indexed name is a plain relative path (no ``..``, not absolute)."""
    if not name or "\x00" in name or os.path.isabs(name) or name.startswith(("/", "\\")):
        return False
    parts = re.split(r"[\\/]+", name)
    return ".." not in parts and not re.match(r"^[A-Za-z]:", name)


# ---------------------------------------------------------------------------
# request parsing
# ---------------------------------------------------------------------------
def parse_k(value, max_k):
    """The number of results asked for (10, at most ``max_k``, when absent);
    422 unless an integer from 1 to ``max_k``."""
    if value is None or value == "":
        return min(10, max_k)
    if isinstance(value, bool):
        raise RequestError(422, f"k must be an integer from 1 to {max_k}, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,9}", text):  # ASCII digits only
            raise RequestError(422, f"k must be an integer from 1 to {max_k}, "
                                    f"got {value[:40]!r}")
        value = int(text)
    if not isinstance(value, int):
        raise RequestError(422, f"k must be an integer from 1 to {max_k}, got {value!r}")
    if not 1 <= value <= max_k:
        raise RequestError(422, f"k must be an integer from 1 to {max_k}, got {value}")
    return value


def parse_box(value):
    """``None``, ``"x1,y1,x2,y2"`` or a list of 4 numbers -> tuple or None."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise RequestError(422, "box must be 'x1,y1,x2,y2' or a list of 4 numbers")
    if len(parts) != 4:
        raise RequestError(422, f"box must have 4 values x1,y1,x2,y2, got {len(parts)}")
    box = [_box_value(p) for p in parts]
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise RequestError(422, f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}): need x2 > x1 "
                                "and y2 > y1")
    if x2 <= 0 or y2 <= 0:
        raise RequestError(422, "box lies outside the image")
    return tuple(int(v) if v.is_integer() else v for v in box)


def _box_value(p):
    try:
        if isinstance(p, bool) or (isinstance(p, str) and not (p.isascii() and "_" not in p)):
            raise ValueError  # float() would read full-width digits and '1_0'
        v = float(p)
    except (TypeError, ValueError):
        raise RequestError(422, f"box values must be numbers, got {str(p)[:40]!r}") \
            from None
    if not math.isfinite(v):
        raise RequestError(422, "box values must be finite numbers")
    return v


def check_token(token):
    """Raise ValueError unless ``token`` (or None) can be sent in a header and matched.

    A bearer token is compared with what follows ``Bearer`` in the
    ``Authorization`` header, stripped: one with surrounding or inner white
    space, control or non-ASCII characters could never match.
    """
    if token is None:
        return
    if not isinstance(token, str) or len(token) < 8:
        raise ValueError("token must be a string of at least 8 characters")
    if not re.fullmatch(r"[\x21-\x7e]+", token):
        raise ValueError("token must be printable ASCII without spaces (a header value "
                         "that can be matched), e.g. secrets.token_urlsafe()")


def bearer(request):
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def content_type(request):
    """The media type of a request, lower case, without its parameters."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request, *, max_files, max_fields):
    """The multipart form of a request (400 when malformed; 413 and HTTP
    errors of the parser pass through)."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except (StarletteHTTPException, BodyTooLarge):
        raise
    except Exception:  # noqa: BLE001 - a malformed multipart body
        raise RequestError(400, "malformed multipart body") from None


async def read_json(request):
    """The decoded JSON body of a request (400 when malformed)."""
    try:
        return json.loads(await request.body())
    except ValueError:
        raise RequestError(400, "malformed JSON body") from None
    except RecursionError:  # e.g. 100000 nested '[': the decoder's stack
        raise RequestError(400, "malformed JSON body: nested too deeply") from None
