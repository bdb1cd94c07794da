"""The endpoints of the search service, as methods of :class:`Routes`."""

import hmac
import logging
import os
import re
import stat
import tempfile
import time
from importlib import resources
from urllib.parse import quote

import numpy as np

from ..extraction._images import Crop, ImageLoadError
from ..index import add_to_index
from ..utils._arrays import similarities_from_distances
from ..utils._version import __version__
from ._images import ThumbnailCache, check_pixels, image_reason, make_thumbnail
from ._limits import (
    MAX_INDEX_FILES,
    RequestError,
    bearer,
    content_type,
    inside,
    parse_box,
    parse_k,
    read_form,
    read_json,
    safe_name,
)
from ._model import run_in_thread

__all__ = ["MAX_NAME_LENGTH", "Routes", "STATIC_FILES"]

logger = logging.getLogger("skretrieval.serve")

#: The files of the web page, with their media types.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: Longest name of an uploaded file once sanitised (file systems allow 255 bytes).
MAX_NAME_LENGTH = 200


class Routes:
    """The endpoints over one shared model and the limits of the service.

    Parameters
    ----------
    shared : SharedModel
        The model, used by one request at a time.
    root_real : str or None
        The real path of the images folder, or None without one.
    token : str or None
        The bearer token of ``POST /index`` (None: indexing disabled).
    max_pixels, max_k, request_timeout, allow_paths, thumbnail_size
        As for :func:`~skretrieval.serve.create_app`.
    """

    def __init__(self, shared, *, root_real, token, max_pixels, max_k, request_timeout,
                 allow_paths, thumbnail_size):
        self.shared = shared
        self.root_real = root_real
        self.token = token
        self.max_pixels = max_pixels
        self.max_k = max_k
        self.request_timeout = request_timeout
        self.allow_paths = allow_paths
        self.thumbnail_size = thumbnail_size
        self.thumbnails = ThumbnailCache()

    # -- the web page ----------------------------------------------------
    @staticmethod
    def static(name):
        """``GET /`` (``index.html``) and ``GET /static/{name}``."""
        from fastapi.responses import Response

        if name not in STATIC_FILES:
            raise RequestError(404, "not found")
        data = resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
        return Response(data, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})

    # -- GET /health -----------------------------------------------------
    def health(self):
        """``GET /health``: the model's size and the service's settings."""
        r = self.shared.retriever
        ids, _, _ = self.shared.snapshot  # never the retriever while /index changes it
        return {
            "status": "ok",
            "model_loaded": True,
            "n_images": len(ids),
            "dimension": int(r.n_features_in_),
            "metric": getattr(r, "metric", None),
            "steps": [type(step).__name__ for _, step in self.shared.pipeline.steps],
            "version": __version__,
            "max_k": self.max_k,
            "thumbnails": self.root_real is not None,
            "path_queries": self.allow_paths and self.root_real is not None,
            "indexing": self.token is not None,
        }

    # -- POST /search ----------------------------------------------------
    async def search(self, request):
        """``POST /search``: the ``k`` nearest indexed images of a query."""
        deadline = time.monotonic() + self.request_timeout
        source, k, box, label = await self._read_query(request)
        item = await self._query_item(source, box, deadline)
        shared = self.shared
        pipe = shared.pipeline

        def query():
            retriever = shared.retriever
            n_neighbors = min(k, retriever.n_samples_fit_)
            try:
                Xq = pipe[:-1].transform([item])
            except Exception as exc:  # noqa: BLE001 - ImageLoadError of a crop...
                if isinstance(exc, ImageLoadError):
                    raise RequestError(422, image_reason(exc)) from None
                raise
            dist, ind = retriever.kneighbors(Xq, n_neighbors=n_neighbors)
            ids, names, _ = shared.snapshot
            # the size too, under the lock: the version of the index searched
            return dist[0], ids[ind[0]], names[ind[0]], len(ids)

        dist, ids, names, n_images = await shared.run(query, deadline)
        scores = self._similarity_of(np.asarray(dist, dtype=np.float64))
        results = [
            {"rank": r + 1, "id": _plain(ids[r]), "name": str(names[r]),
             "score": round(float(scores[r]), 6), "distance": round(float(dist[r]), 6),
             "thumbnail": self._thumbnail_url(ids[r])}
            for r in range(len(ids))
        ]
        return {"query": label, "k": k, "box": list(box) if box is not None else None,
                "n_images": n_images, "results": results}

    async def _read_query(self, request):
        """(image source, k, box, description) of a /search request."""
        ctype = content_type(request)
        if ctype == "multipart/form-data":
            return await self._read_query_form(request)
        if ctype == "application/json":
            return await self._read_query_json(request)
        raise RequestError(415, "send the image as multipart/form-data (field 'image') "
                                "or JSON {'path': ...}")

    async def _read_query_form(self, request):
        form = await read_form(request, max_files=1, max_fields=8)
        upload = form.get("image")
        if upload is None:
            upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "no image: send the file in the multipart "
                                    "field 'image'")
        data = await upload.read()
        k = parse_k(form.get("k", request.query_params.get("k")), self.max_k)
        box = parse_box(form.get("box", request.query_params.get("box")))
        return ("bytes", data), k, box, upload.filename

    async def _read_query_json(self, request):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise RequestError(400, "the JSON body must be an object")
        if "path" not in body:
            raise RequestError(400, "no image: give {'path': ...} or upload a file "
                                    "as multipart field 'image'")
        if not self.allow_paths:
            raise RequestError(403, "path queries are disabled on this server "
                                    "(start it with allow_paths); upload the image")
        real = self._resolve_in_root(body["path"], "path")
        if not os.path.isfile(real):
            raise RequestError(404, "no image file at this path")
        k = parse_k(body.get("k", request.query_params.get("k")), self.max_k)
        box = parse_box(body.get("box", request.query_params.get("box")))
        return ("path", real), k, box, body["path"]

    async def _query_item(self, source, box, deadline):
        """The query as the pipeline takes it: the uploaded bytes or the file
        name, in a :class:`~skretrieval.Crop` with ``box``.  Only its header
        is read here (413 for too many pixels, 422 for what is not an image):
        the extractor decodes it once, JPEGs at a reduced scale."""
        _, value = source
        await run_in_thread(lambda: check_pixels(value, self.max_pixels), deadline)
        return value if box is None else Crop(value, box=box)

    def _similarity_of(self, distances):
        metric = getattr(self.shared.retriever, "metric", "cosine")
        return similarities_from_distances(distances, metric)

    def _thumbnail_url(self, image_id):
        if self.root_real is None:
            return None
        return "/images/" + quote(str(image_id), safe="/")

    def _resolve_in_root(self, relative, what):
        """The real path of ``relative`` (a path inside the images root)."""
        root_real = self.root_real
        if root_real is None:
            raise RequestError(404, "the server has no images folder (images_root)")
        if not isinstance(relative, str) or not relative or "\x00" in relative:
            raise RequestError(422, f"{what} must be a non-empty string")
        joined = os.path.join(root_real, relative)  # an absolute path replaces the root
        real = inside(root_real, joined)
        if real is None:
            raise RequestError(403, f"{what} is outside the images folder")
        return real

    # -- GET /images/{id} ------------------------------------------------
    async def image(self, image_id):
        """``GET /images/{id}``: a JPEG thumbnail of an indexed image."""
        from fastapi.responses import Response

        real, st = self._indexed_file(image_id)
        key = (real, st.st_mtime_ns, st.st_size)
        data = self.thumbnails.get(key)
        if data is None:
            data = await run_in_thread(
                lambda: make_thumbnail(real, self.thumbnail_size, self.max_pixels),
                time.monotonic() + self.request_timeout)
            self.thumbnails.put(key, data)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=60"})

    def _indexed_file(self, image_id):
        """The real path and ``os.stat`` of the file of an indexed image,
        confined to the images folder."""
        root_real = self.root_real
        if root_real is None:
            raise RequestError(404, "the server has no images folder (images_root)")
        _, names, id_map = self.shared.snapshot
        row = id_map.get(image_id)
        if row is None:
            raise RequestError(404, "no indexed image with this id")
        name = str(names[row])
        if not safe_name(name):
            raise RequestError(403, "the indexed name of this image is not a path inside "
                                    "the images folder")
        real = inside(root_real, os.path.join(root_real, name))
        if real is None:
            raise RequestError(403, "the file of this image is outside the images folder")
        try:
            st = os.stat(real)
        except OSError:
            raise RequestError(404, "the file of this image is missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise RequestError(404, "the file of this image is not a regular file")
        return real, st

    # -- POST /index -----------------------------------------------------
    async def index(self, request):
        """``POST /index`` (token): add uploaded files, or files of the images
        folder, to the in-memory index."""
        deadline = time.monotonic() + self.request_timeout
        self._authorize_indexing(request)
        ctype = content_type(request)
        saved = []  # files written by this request (removed if it fails)
        if ctype == "multipart/form-data":
            folder, files = await self._read_uploads(request)
            paths = await self._save_uploads(folder, files, deadline, saved)
        elif ctype == "application/json":
            paths = await self._read_paths(request)
            await self._check_files(paths, deadline)
        else:
            raise RequestError(415, "send multipart/form-data 'files' or JSON "
                                    "{'paths': [...]}")
        try:
            report = await self._add_to_index(paths, deadline)
        except RequestError as exc:
            if exc.status != 504:  # past the time limit the addition may still run:
                _remove(saved)     # its files stay
            raise
        logger.info("indexed %d image(s): %s", len(paths), report)
        return {"added": [_plain(v) for v in report.added],
                "replaced": [_plain(v) for v in report.replaced],
                "unchanged": [_plain(v) for v in report.unchanged],
                "n_images": int(self.shared.retriever.n_samples_fit_)}

    def _authorize_indexing(self, request):
        """Refuse the request unless indexing is on, its token is right, and
        the model can grow in the images folder."""
        if self.token is None:
            raise RequestError(403, "indexing is disabled: start the server with a token "
                                    "(--token or SKRETRIEVAL_SERVE_TOKEN)")
        given = bearer(request)
        if given is None:
            raise RequestError(401, "this endpoint needs 'Authorization: Bearer <token>'",
                               headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise RequestError(403, "wrong token")
        if self.root_real is None:
            raise RequestError(409, "indexing needs the server's images folder "
                                    "(images_root)")
        retriever = self.shared.retriever
        if not hasattr(retriever, "partial_fit"):
            raise RequestError(409, f"the retriever ({type(retriever).__name__}) cannot grow")

    async def _read_uploads(self, request):
        """(folder, [(safe file name, bytes)]) of a multipart /index request."""
        form = await read_form(request, max_files=MAX_INDEX_FILES, max_fields=4)
        uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not uploads:
            raise RequestError(400, "no file: send the images in the multipart "
                                    "field 'files'")
        folder = form.get("folder") or "uploads"
        if not isinstance(folder, str) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", folder):
            raise RequestError(422, "folder must be a simple name (letters, digits, "
                                    "'_', '-')")
        files = []
        for up in uploads:
            base = os.path.basename((up.filename or "").replace("\\", "/"))
            safe = re.sub(r"[^A-Za-z0-9._\-]", "_", base).lstrip(".")
            if not safe:
                raise RequestError(422, "every uploaded file needs a file name")
            if len(safe) > MAX_NAME_LENGTH:
                raise RequestError(422, f"file name too long: {safe[:40]}... has "
                                        f"{len(safe)} characters, at most "
                                        f"{MAX_NAME_LENGTH} allowed")
            files.append((safe, await up.read()))
        names_here = [s for s, _ in files]
        if len(set(names_here)) != len(names_here):
            raise RequestError(422, "two uploaded files have the same name")
        return folder, files

    async def _save_uploads(self, folder, files, deadline, saved):
        """Write checked uploads under ``images_root/folder`` (never over an
        existing file); their paths.  ``saved`` lists the files written (all
        removed again if one fails)."""
        dest = self._resolve_in_root(folder, "folder")
        if os.path.lexists(dest) and not os.path.isdir(dest):
            raise RequestError(409, f"{folder!r} exists in the images folder and is not "
                                    "a folder: choose another 'folder'")

        def save_uploads():
            os.makedirs(dest, exist_ok=True)
            out = []
            for safe, data in files:
                target = os.path.join(dest, safe)
                self._save_upload(folder, safe, data, target)
                saved.append(target)
                out.append(target)
            return out

        try:
            return await run_in_thread(save_uploads, deadline)
        except FileExistsError:
            _remove(saved)
            raise RequestError(409, "an uploaded file name exists already") from None
        except BaseException:
            _remove(saved)
            raise

    def _save_upload(self, folder, safe, data, target):
        """Write one upload with a valid image header at ``target`` (through a
        temporary file); the extraction decodes it, or fails the request."""
        if os.path.lexists(target):
            raise RequestError(409, f"{folder}/{safe} exists already: index "
                                    "it by path, or rename the upload")
        try:
            check_pixels(data, self.max_pixels)
        except RequestError as exc:
            raise RequestError(exc.status, f"{safe}: {exc.message}") from None
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.link(tmp, target)  # fails if the name was taken meanwhile
        finally:
            os.unlink(tmp)

    async def _read_paths(self, request):
        """The real paths of a JSON /index request's ``paths``."""
        body = await read_json(request)
        rel = body.get("paths") if isinstance(body, dict) else None
        if not isinstance(rel, list) or not rel:
            raise RequestError(400, "give {'paths': [...]} (files inside the images "
                                    "folder) or upload multipart 'files'")
        if len(rel) > MAX_INDEX_FILES:
            raise RequestError(413, f"at most {MAX_INDEX_FILES} images per request")
        paths = []
        for p in rel:
            real = self._resolve_in_root(p, "path")
            if not os.path.isfile(real):
                raise RequestError(404, f"no image file at {str(p)[:100]!r}")
            if real in paths:
                raise RequestError(422, f"{str(p)[:100]!r} is listed twice (the same "
                                        "file as an earlier path)")
            paths.append(real)
        return paths

    async def _check_files(self, paths, deadline):
        """Check the header of every file of ``paths`` (422 or 413 naming the
        first bad one); the extraction decodes them."""
        def check_files():
            for p in paths:
                try:
                    check_pixels(p, self.max_pixels)
                except RequestError as exc:
                    raise RequestError(exc.status, f"{os.path.relpath(p, self.root_real)}: "
                                                   f"{exc.message}") from None

        await run_in_thread(check_files, deadline)

    async def _add_to_index(self, paths, deadline):
        """Add (or update) the images of ``paths`` in the shared model; the
        report of :func:`~skretrieval.add_to_index`."""
        names = [os.path.relpath(p, self.root_real).replace(os.sep, "/") for p in paths]
        shared = self.shared

        def add():
            r = shared.retriever
            ids = np.asarray(r.ids_)
            str_ids = ids.dtype.kind in "US" or (ids.dtype.kind == "O" and ids.shape[0]
                                                 and isinstance(ids[0], str))
            labels = np.asarray(names) if getattr(r, "y_", None) is not None else None
            try:
                _, report = add_to_index(shared.pipeline, paths, labels,
                                         ids=np.asarray(names) if str_ids else None,
                                         on_existing="update", return_report=True)
            except ImageLoadError as exc:
                bad = exc.path and os.path.relpath(exc.path, self.root_real)
                raise RequestError(422, image_reason(exc, bad)) from None
            except ValueError as exc:
                raise RequestError(422, f"cannot add the images: {exc}") from None
            finally:
                shared.refresh()
            return report

        return await shared.run(add, deadline)


def _plain(value):
    """A numpy scalar as a JSON-able Python value."""
    return value.item() if isinstance(value, np.generic) else value


def _remove(paths):
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass
