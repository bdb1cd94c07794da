"""Images of the search service: the pixel check read from the header (the
pipeline then decodes each image once), and the thumbnails with their cache."""

import io
import threading
import warnings
from collections import OrderedDict

from ._limits import RequestError

__all__ = [
    "ThumbnailCache",
    "check_pixels",
    "image_reason",
    "make_thumbnail",
]

_THUMBNAIL_CACHE_ENTRIES = 512


def check_pixels(source, max_pixels):
    """Read the header of an image (a file name, or its encoded bytes) without
    decoding it; refuse what is not an image (422) or is larger than
    ``max_pixels`` (413).  Returns its stored ``(width, height)``."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise RequestError(422, "the uploaded file is empty")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
    except UnidentifiedImageError:
        raise RequestError(422, "not an image file, or a format Pillow cannot "
                                "identify") from None
    except Image.DecompressionBombError:
        raise RequestError(413, f"image has too many pixels (more than "
                                f"{max_pixels} allowed): refused before decoding") from None
    except Exception as exc:  # noqa: BLE001 - a broken header
        raise RequestError(422, f"unreadable image header ({type(exc).__name__})") from None
    if width * height > max_pixels:
        raise RequestError(
            413, f"image of {width} x {height} = {width * height} pixels is larger than "
                 f"the limit of {max_pixels} pixels: refused before decoding")
    return width, height


def image_reason(exc, name=None):
    """The message of a 422 for an :class:`~skretrieval.ImageLoadError` (of
    the image ``name`` if given)."""
    reason = getattr(exc, "reason", None) or str(exc)
    if reason.startswith("crop box"):  # a query box beyond the decoded image
        return reason.replace("crop box", "box", 1)
    return f"{name + ': ' if name else ''}cannot read the image: {reason}"


def make_thumbnail(path, size, max_pixels):
    """The JPEG bytes of a thumbnail of the image file ``path`` (longest
    side ``size``)."""
    from PIL import Image, ImageOps

    check_pixels(path, max_pixels)
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
        raise RequestError(422, f"cannot read the indexed image ({type(exc).__name__})") \
            from None


class ThumbnailCache:
    """The most recently used thumbnails, by key (thread-safe)."""

    def __init__(self, max_entries=_THUMBNAIL_CACHE_ENTRIES):
        self.max_entries = max_entries
        self._data = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        """The cached bytes of ``key``, or None."""
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
            return data

    def put(self, key, data):
        """Cache ``data`` under ``key``, dropping the least recently used."""
        with self._lock:
            self._data[key] = data
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
