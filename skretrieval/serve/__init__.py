"""A small HTTP search service over a fitted retrieval pipeline.

:func:`create_app` wraps a loaded pipeline (extractor -> pooler -> optional
whitening -> :class:`~skretrieval.NearestNeighborRetriever`, or local
features -> :class:`~skretrieval.local.ASMKRetriever`) in an ASGI
application with a search API (``POST /search``), thumbnails of the indexed
images (``GET /images/{id}``), a health check (``GET /health``), an optional
token-protected ``POST /index`` and a web page at ``/``; :func:`serve` loads
a model file once and runs it with uvicorn (``python -m skretrieval.serve``).

FastAPI and uvicorn are optional: ``pip install skretrieval[serve]``.  They
are imported when :func:`create_app` or :func:`serve` is called, not when
this module is.
"""

from ._app import create_app
from ._limits import (
    DEFAULT_MAX_K,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
    THUMBNAIL_SIZE,
)
from ._server import load_model, serve

__all__ = [
    "DEFAULT_MAX_K",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_REQUEST_TIMEOUT",
    "THUMBNAIL_SIZE",
    "create_app",
    "load_model",
    "serve",
]
