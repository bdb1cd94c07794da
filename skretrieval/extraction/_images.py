"""Image input: loading, validation, cropping and cache keys.

Every estimator of :mod:`skretrieval` that consumes images accepts a list
whose items may be freely mixed and of different sizes:

* a file path (``str`` or :class:`os.PathLike`, e.g. :class:`pathlib.Path`);
* the encoded bytes of an image file (``bytes``, ``bytearray``,
  ``memoryview``) or a binary file object (:class:`io.BytesIO`, an open
  file, an upload's ``file``), decoded like a file;
* a :class:`PIL.Image.Image`;
* a :class:`numpy.ndarray` (``H x W``, ``H x W x 1``, ``H x W x 2``,
  ``H x W x 3`` or ``H x W x 4``);
* a :class:`Crop`, i.e. one of the above plus a bounding box (query crops
  of the Oxford / Paris / revisitop benchmarks).

:func:`load_image` turns any of them into an ``H x W x 3`` ``uint8`` RGB array
following explicit, documented rules, and raises :class:`ImageLoadError` (a
:class:`ValueError`) naming the offending item when it cannot.  JPEG files
are checked strictly by default: damaged compressed data, which Pillow
decodes to wrong pixels without a word, is an error too (see
:func:`load_image`).
:func:`check_images` runs the same loader over a whole collection and reports
the problems instead of raising, so that a large folder can be cleaned up
before fitting; :func:`list_images` lists the image files of a folder.
"""

from __future__ import annotations

import hashlib
import io
import math
import numbers
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "Crop",
    "ImageLoadError",
    "describe",
    "image_key",
    "load_image",
]


_EXIF_ORIENTATION = 0x0112
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Float arrays may exceed [0, 1] by this much (rounding noise) and are clipped.
_FLOAT_TOLERANCE = 1e-6


class ImageLoadError(ValueError):
    """An input item could not be read or converted to an RGB image.

    The message always names the item (its index in the input list when
    known, and the path for files) followed by the reason, e.g.
    ``"image 3 ('/data/x.jpg'): truncated file (...)"``.

    Parameters
    ----------
    message : str
        Full error message.
    index : int or None, default=None
        Position of the item in the input list, when known.
    reason : str or None, default=None
        The reason alone, without the item description.
    path : str or None, default=None
        The file, for a path item, a :class:`Crop` of one or a PIL image
        opened from one.

    Attributes
    ----------
    index : int or None
        Position of the item in the input list, when known: code that loads
        a collection in batches renumbers with ``batch_start + err.index``.
    reason : str or None
        The reason alone, without the item description.
    path : str or None
        The file, when the item is (or was read from) one.

    Notes
    -----
    The attributes survive pickling (errors raised in worker processes).
    """

    def __init__(self, message, index=None, reason=None, path=None):
        super().__init__(message)
        self.index = index
        self.reason = reason
        self.path = path

    def __reduce__(self):
        return (type(self), (str(self), self.index, self.reason, self.path))


def _is_path(item):
    return isinstance(item, (str, os.PathLike))


def _is_encoded(item):
    """Whether ``item`` is encoded image data: bytes or a binary file object."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return True
    return (not isinstance(item, (str, os.PathLike, Image.Image, np.ndarray, Crop))
            and callable(getattr(item, "read", None)))


def _is_image_like(item):
    return _is_path(item) or _is_encoded(item) or isinstance(item, (Image.Image, np.ndarray))


def _type_error(item, index):
    where = "image" if index is None else f"image {index}"
    return TypeError(
        f"{where}: unsupported input of type {type(item).__name__!s}; expected a "
        "file path (str or pathlib.Path), encoded bytes or a binary file object, a "
        "PIL.Image.Image, a numpy.ndarray or a skretrieval.Crop"
    )


def item_path(item):
    """The file behind an item, or None."""
    if isinstance(item, Crop):
        item = item.image
    if _is_path(item):
        return os.fsdecode(os.fspath(item))
    if isinstance(item, Image.Image):
        filename = getattr(item, "filename", None)
        return os.fsdecode(filename) if filename else None
    return None


def _fail(item, index, reason):
    return ImageLoadError(f"{describe(item, index)}: {reason}", index=index, reason=reason,
                          path=item_path(item))


# --------------------------------------------------------------------------
# Crop
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Crop:
    """An image restricted to a bounding box (e.g. an Oxford / Paris query).

    Parameters
    ----------
    image : str, os.PathLike, PIL.Image.Image or numpy.ndarray
        Any image accepted by :func:`load_image` (but not another ``Crop``).
    box : sequence of 4 real numbers
        ``(x1, y1, x2, y2)`` in pixels of the *original, full-resolution*
        image, with ``x`` to the right and ``y`` downwards, ``x2`` and ``y2``
        exclusive (the Oxford / revisitop convention). Float coordinates are
        rounded outwards: ``x1, y1`` are floored and ``x2, y2`` ceiled, so the
        crop covers the whole box.

    Notes
    -----
    * The crop is applied at full resolution, *before* any resizing done by
      a feature extractor: only the cropped region is the query (the
      revisitop protocol).
    * For files (and PIL images) carrying an EXIF orientation, the box refers
      to the image *after* EXIF transposition, i.e. as it is displayed and
      as :func:`load_image` returns it. (The Oxford and Paris images carry no
      orientation tag, so for them displayed and stored pixels coincide.)
    * The box is clipped to the image bounds when the crop is applied; a box
      that lies entirely outside the image raises :class:`ImageLoadError`
      (a :class:`ValueError`) naming the image.
    * The length, finiteness and ordering (``x2 > x1`` and ``y2 > y1``) of
      the box are validated at construction.
    * Equality and hashing are by identity (``eq=False``), since the image may
      be a numpy array; use ``image_key`` to compare contents.
    """

    image: object
    box: tuple

    def __post_init__(self):
        if isinstance(self.image, Crop):
            raise TypeError(
                "Crop(image=...) cannot be another Crop; combine the boxes "
                "into one box in the coordinates of the original image"
            )
        if not _is_image_like(self.image):
            raise TypeError(
                f"Crop(image=...) must be a file path, a PIL.Image.Image or a "
                f"numpy.ndarray, got {type(self.image).__name__}"
            )
        try:
            box = self.box.tolist() if isinstance(self.box, np.ndarray) else self.box
            values = tuple(box)
        except TypeError:
            raise TypeError(
                f"Crop box must be a sequence (x1, y1, x2, y2), got "
                f"{type(self.box).__name__}"
            ) from None
        if len(values) != 4:
            raise ValueError(
                f"Crop box must have 4 values (x1, y1, x2, y2), got {len(values)}: "
                f"{values!r}"
            )
        box = []
        for v in values:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
                raise TypeError(f"Crop box values must be real numbers, got {values!r}")
            if isinstance(v, numbers.Integral):
                box.append(int(v))
            else:
                v = float(v)
                if not math.isfinite(v):
                    raise ValueError(f"Crop box values must be finite, got {values!r}")
                box.append(v)
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            raise ValueError(
                f"empty crop box {tuple(box)!r} for {describe(self.image)}: "
                "need x2 > x1 and y2 > y1 (box is (x1, y1, x2, y2))"
            )
        object.__setattr__(self, "box", tuple(box))

    def __repr__(self):
        return f"Crop({short_description(self.image)}, box={self.box!r})"


def _apply_crop(arr, crop, index):
    h, w = arr.shape[:2]
    x1, y1, x2, y2 = crop.box
    x1 = max(0, math.floor(x1))
    y1 = max(0, math.floor(y1))
    x2 = min(w, math.ceil(x2))
    y2 = min(h, math.ceil(y2))
    if x2 <= x1 or y2 <= y1:
        raise _fail(
            crop,
            index,
            f"crop box {crop.box!r} lies entirely outside the image "
            f"(width {w}, height {h})",
        )
    return arr[y1:y2, x1:x2].copy(order="C")


# --------------------------------------------------------------------------
# Descriptions
# --------------------------------------------------------------------------


def short_description(item):
    """A short description of an item for messages, e.g. ``"'/data/a.jpg'"``."""
    if _is_path(item):
        return repr(os.fsdecode(os.fspath(item)))
    if isinstance(item, np.ndarray):
        shape = "x".join(str(s) for s in item.shape) if item.ndim else "scalar"
        return f"array {shape} {item.dtype}"
    if isinstance(item, Image.Image):
        desc = f"PIL {item.mode} {item.size[0]}x{item.size[1]}"
        filename = getattr(item, "filename", None)
        if filename:
            desc += f" from {os.fsdecode(filename)!r}"
        return desc
    if isinstance(item, Crop):
        return f"crop {item.box!r} of {short_description(item.image)}"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"{memoryview(item).nbytes} bytes of image data"
    if _is_encoded(item):
        name = getattr(item, "name", None)
        return f"binary file object {name!r}" if isinstance(name, str) else \
            f"binary file object of type {type(item).__name__}"
    return f"object of type {type(item).__name__}"


def describe(item, index=None):
    """Return a short human description of an input item, for messages.

    Parameters
    ----------
    item : object
        Any item (accepted or not).
    index : int or None, default=None
        Position of the item in its list, included when given.

    Returns
    -------
    description : str
        For example ``"image 12 ('/data/a.jpg')"``,
        ``"image 3 (array 480x640x3 uint8)"``, ``"image 0 (PIL RGB 640x480)"``
        (PIL sizes are width x height) or
        ``"image 5 (crop (10, 20, 110, 220) of '/data/q.jpg')"``.
    """
    where = "image" if index is None else f"image {index}"
    return f"{where} ({short_description(item)})"


# --------------------------------------------------------------------------
# Conversion to H x W x 3 uint8
# --------------------------------------------------------------------------


def _grey_to_rgb(grey):
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _composite_over_white(rgb, alpha):
    """Composite uint8 ``rgb`` (H x W x 3) with uint8 ``alpha`` over white."""
    a = alpha.astype(np.uint32)[:, :, None]
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))


def _uint16_to_uint8(values):
    # 0 -> 0, 65535 -> 255, rounded (65535 / 257 == 255).
    return np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)


def _exif_transpose(im, item, index):
    """Apply the EXIF orientation of ``im`` (returns ``im`` if there is none)."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as exc:  # malformed EXIF block: keep stored orientation
        warnings.warn(
            f"{describe(item, index)}: could not read EXIF data ({exc}); "
            "using the stored pixel orientation",
            RuntimeWarning,
            stacklevel=4,
        )
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im)
    return im


def _pil_to_rgb(im, item, index):
    """Convert a (loaded, already transposed) PIL image to H x W x 3 uint8."""
    mode = im.mode
    if mode in _MODES_16BIT:
        return _grey_to_rgb(_uint16_to_uint8(np.array(im)))
    if mode == "I":
        values = np.clip(np.array(im, dtype=np.int64), 0, 65535)
        return _grey_to_rgb(_uint16_to_uint8(values))
    if mode == "F":
        values = np.array(im, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise _fail(item, index, "float ('F' mode) image contains NaN or infinite values")
        if values.size and values.max() <= 1.0:
            values = np.clip(values, 0.0, 1.0) * 255.0
        else:
            values = np.clip(values, 0.0, 255.0)
        return _grey_to_rgb(np.rint(values).astype(np.uint8))
    if mode == "La":  # premultiplied; Pillow converts it to "LA" only
        im = im.convert("LA")
    if im.has_transparency_data:
        rgba = np.array(im.convert("RGBA"), dtype=np.uint8)
        return _composite_over_white(rgba[:, :, :3], rgba[:, :, 3])
    if mode == "RGB":
        return np.ascontiguousarray(np.array(im, dtype=np.uint8))
    if mode in ("L", "1"):
        return _grey_to_rgb(np.array(im.convert("L"), dtype=np.uint8))
    try:
        converted = im.convert("RGB")
    except Exception as exc:
        raise _fail(item, index, f"unsupported PIL image mode {mode!r} ({exc})") from exc
    return np.ascontiguousarray(np.array(converted, dtype=np.uint8))


def _array_to_uint8(a, item, index):
    """Convert the values of a numeric array to uint8 (shape unchanged)."""
    dtype = a.dtype
    if dtype == np.uint8:
        return a
    if dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if dtype == np.uint16:
        return _uint16_to_uint8(a)
    if np.issubdtype(dtype, np.integer):
        lo, hi = a.min(), a.max()
        if lo < 0 or hi > 255:
            raise _fail(
                item,
                index,
                f"{dtype} array values must lie in 0..255 (found {lo}..{hi}); "
                "convert to uint8 (8-bit) or uint16 (16-bit) explicitly",
            )
        return a.astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        if np.isnan(a).any():
            raise _fail(item, index, f"{dtype} array contains NaN values")
        if np.isinf(a).any():
            raise _fail(item, index, f"{dtype} array contains infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < -_FLOAT_TOLERANCE or hi > 1.0 + _FLOAT_TOLERANCE:
            raise _fail(
                item,
                index,
                f"float arrays must have values in [0, 1] (found "
                f"{lo:.6g}..{hi:.6g}); for 0..255 data use "
                "array.astype(np.uint8), or divide by 255",
            )
        return np.rint(np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    raise _fail(
        item,
        index,
        f"unsupported array dtype {dtype}; expected uint8, uint16, bool, "
        "float in [0, 1] or integers in 0..255",
    )


def _array_to_rgb(a, item, index):
    if a.size == 0:
        raise _fail(item, index, f"empty array (shape {a.shape})")
    shape_ok = a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 2, 3, 4))
    if not shape_ok:
        reason = (
            f"unsupported array shape {a.shape}; expected (H, W), (H, W, 1), "
            "(H, W, 2), (H, W, 3) or (H, W, 4)"
        )
        if a.ndim == 3 and a.shape[0] in (1, 3, 4):
            reason += "; channel-first arrays must be moved with np.moveaxis(a, 0, -1)"
        elif a.ndim == 4:
            reason += "; pass a batch as a list of images"
        raise _fail(item, index, reason)
    a = _array_to_uint8(np.asarray(a), item, index)
    if a.ndim == 2:
        return _grey_to_rgb(a)
    channels = a.shape[2]
    if channels == 1:
        return _grey_to_rgb(a[:, :, 0])
    if channels == 2:
        return _composite_over_white(_grey_to_rgb(a[:, :, 0]), a[:, :, 1])
    if channels == 4:
        return _composite_over_white(a[:, :, :3], a[:, :, 3])
    return np.ascontiguousarray(a)


# Formats whose file is checked by ``strict`` (MPO: camera JPEGs holding more
# images after the first, which is the one decoded).
_STRICT_FORMATS = ("JPEG", "MPO")


def _strict_check(source, path, index):
    """Raise for JPEG data (``source``: a file name or the bytes) whose
    compressed data is corrupt (Pillow decodes such data to wrong pixels
    without an error: libjpeg only warns)."""
    from ._jpeg import jpeg_problem

    data = source
    if not isinstance(source, (bytes, bytearray, memoryview)):
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise _fail(path, index, f"cannot read file ({exc})") from exc
    problem = jpeg_problem(data)
    if problem is not None:
        raise _fail(
            path, index,
            f"{problem}: the file decodes to wrong pixels. Replace it with an "
            "intact copy, or pass strict=False to accept it as decoded",
        )


def _draft(im, reduce_to):
    """Let a JPEG ``im`` decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling), the largest reduction whose longest side stays >= ``reduce_to``."""
    if not reduce_to or im.format not in _STRICT_FORMATS:
        return
    w, h = im.size
    longest = max(w, h)
    if longest < 2 * reduce_to:
        return
    im.draft(None, (max(1, math.ceil(w * reduce_to / longest)),
                    max(1, math.ceil(h * reduce_to / longest))))


def _check_pixels(im, item, index, max_pixels):
    """Refuse ``im`` (opened: its header read, not decoded) above ``max_pixels``."""
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise _fail(item, index, f"image of {w} x {h} = {w * h} pixels is larger than "
                                 f"the limit of {max_pixels} pixels (max_pixels): "
                                 "refused before decoding")


def _read_encoded(item, index):
    """The bytes of encoded data ``item`` (a file object is read from its
    position to its end, then sought back there when it can be)."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = item
    else:
        try:
            pos = item.tell() if getattr(item, "seekable", lambda: False)() else None
            data = item.read()
            if pos is not None:
                item.seek(pos)
        except (OSError, ValueError) as exc:  # closed, unreadable
            raise _fail(item, index, f"cannot read the file object ({exc})") from exc
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise _fail(item, index, f"the file object gave {type(data).__name__}, not "
                                     "bytes: open it in binary mode ('rb')")
    if not memoryview(data).nbytes:
        raise _fail(item, index, "empty image data (zero bytes)")
    return data


def _load_encoded(item, index, strict=True, reduce_to=None, max_pixels=None):
    data = _read_encoded(item, index)
    return _decode(io.BytesIO(data), data, item, index, strict, reduce_to, max_pixels)


def _load_path(path, index, strict=True, reduce_to=None, max_pixels=None):
    p = os.fsdecode(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise _fail(path, index, "file not found") from None
    except PermissionError:
        raise _fail(path, index, "permission denied") from None
    except OSError as exc:
        raise _fail(path, index, f"cannot access file ({exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, index, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, index, "not a regular file")
    if st.st_size == 0:
        raise _fail(path, index, "zero-byte (empty) file")
    return _decode(p, p, path, index, strict, reduce_to, max_pixels)


def _decode(fp, source, path, index, strict, reduce_to, max_pixels):
    """Decode the file name or binary stream ``fp`` (``source``: the name
    or the bytes, for the strict check) of the item ``path``."""
    try:
        with Image.open(fp) as im:
            _check_pixels(im, path, index, max_pixels)
            _draft(im, reduce_to)
            im.load()  # full decode now, so that truncated files fail here
            if strict and im.format in _STRICT_FORMATS:
                _strict_check(source, path, index)
            im = _exif_transpose(im, path, index)
            return _pil_to_rgb(im, path, index)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise _fail(
            path, index, "not an image file, or a format Pillow cannot identify"
        ) from None
    except Image.DecompressionBombError as exc:
        raise _fail(path, index, f"image too large ({exc})") from exc
    except PermissionError:
        raise _fail(path, index, "permission denied") from None
    except Exception as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            reason = f"truncated file ({type(exc).__name__}: {msg})"
        else:
            reason = f"corrupt or unreadable image data ({type(exc).__name__}: {msg})"
        raise _fail(path, index, reason) from exc


def _load_pil(im, index):
    try:
        im.load()
        transposed = _exif_transpose(im, im, index)
        return _pil_to_rgb(transposed, im, index)
    except ImageLoadError:
        raise
    except Exception as exc:
        msg = str(exc)
        kind = "truncated image" if "truncated" in msg.lower() else "unreadable PIL image"
        raise _fail(im, index, f"{kind} ({type(exc).__name__}: {msg})") from exc


def load_image(item, *, index=None, strict=True, reduce_to=None, max_pixels=None):
    """Load one input item as an ``H x W x 3`` ``uint8`` RGB array.

    Parameters
    ----------
    item : str, os.PathLike, bytes, binary file object, PIL.Image.Image, \
numpy.ndarray or Crop
        The image. See Notes for the conversion rules.
    index : int or None, default=None
        Position of the item in its list; only used in error messages.
    strict : bool, default=True
        Whether a JPEG file whose compressed data is corrupt is an error
        (see Notes). False accepts it with the pixels Pillow decodes.
    reduce_to : int or None, default=None
        The longest side the image is to be resized to, if known: a JPEG file
        at least twice as large is then decoded at 1/2, 1/4 or 1/8 of its size
        (Pillow's ``draft``, libjpeg's DCT scaling), the largest reduction
        whose longest side stays >= ``reduce_to``; the caller resizes the rest
        of the way.  A 12-megapixel photo decodes about 5x faster for a
        512-px target (``benchmarks/bench_extraction.py``).  None: full
        size.  Encoded bytes and file objects are decoded the same way.
        Other formats, PIL images, arrays and crops decode at full size.
    max_pixels : int or None, default=None
        Largest image accepted from a file, bytes or a file object, in pixels
        (width x height, read from the header *before* decoding: a
        decompression bomb, a tiny file claiming huge dimensions, is refused
        cheaply).  None: Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``,
        an error at twice it).

    Returns
    -------
    image : ndarray of shape (H, W, 3), dtype uint8
        A new C-contiguous RGB array (never a view of the input).

    Raises
    ------
    ImageLoadError
        If the item cannot be read or converted: missing, zero-byte or
        non-regular file, not an image / corrupt data, truncated file,
        corrupt JPEG data (with ``strict``), more pixels than ``max_pixels``,
        empty bytes, a text file object, unsupported array shape or dtype,
        out-of-range values, empty array, crop box outside the image.
        The message names the item (index, path).
    TypeError
        If the item is of an unsupported type (``None``, a number, a list...).

    Notes
    -----
    **Files** are opened with Pillow and fully decoded immediately (so
    truncated files fail here; the global
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is respected). The EXIF
    orientation is honoured (:func:`PIL.ImageOps.exif_transpose`).
    Multi-frame files (GIF, TIFF) contribute their first frame.

    **Strict JPEG decoding.** A JPEG file whose entropy-coded data is damaged
    (bytes overwritten or lost in the middle of the file, its header intact)
    is decoded by libjpeg to wrong pixels, often garbage over most of the
    image: libjpeg reports it only as a warning ("Corrupt JPEG data: ...")
    that Pillow drops.  With ``strict=True`` the compressed data of every
    JPEG (and MPO) file is read again the way the decoder reads it (Huffman
    codes, block counts, restart markers, coefficient ranges; see
    ``skretrieval._jpeg``), and any inconsistency raises
    :class:`ImageLoadError` ("corrupt JPEG data in scan 1: premature end of
    data segment"...).  Intact files of any conforming encoder pass
    (baseline, progressive, greyscale, CMYK, any chroma subsampling, restart
    intervals).  Damage that keeps the stream consistent, e.g. one changed
    coefficient, cannot be seen this way: it changes a few blocks only.
    Arithmetic-coded, lossless and hierarchical JPEG files are not checked.
    Cost (one thread): the check reads the compressed data once more, at
    about 120 MB/s: +33 ms on a 4 MB 8-megapixel camera photo that loads in
    89 ms (+36%), +2 ms on a 640 x 480 photo (about twice its 2 ms), +3 ms on
    a 512 x 512 progressive file; little next to a CNN forward pass.  Its
    compiled code is built on the first use in an environment (about 2 s,
    then 0.3 s to load from numba's cache on disk).
    PIL images and arrays are already decoded: they are not checked.

    **Bytes and binary file objects** hold an encoded image file (as read
    from disk or uploaded) and are decoded exactly like a file of the same
    content, in memory, with the same checks and results.  A file object is
    read from its current position to its end, then sought back to that
    position when it is seekable (so it can be loaded again).

    **PIL images** are treated exactly like files, including their EXIF
    orientation when they carry one (an image already passed through
    ``exif_transpose`` has no orientation tag left and is not rotated again).

    Conversion by PIL mode:

    * ``"RGB"``: as is.
    * ``"L"``, ``"1"``: replicated to three channels (``"1"`` gives 0/255).
    * Images with transparency (``"RGBA"``, ``"LA"``, ``"PA"``, ``"RGBa"``,
      ``"La"``, palette images with a transparent index or an RGBA palette,
      ``"L"``/``"RGB"`` with a PNG ``tRNS`` colour key): composited over a
      **white** background, ``out = round(c * a / 255 + 255 * (1 - a / 255))``.
    * ``"P"`` without transparency, ``"CMYK"``, ``"YCbCr"``, ``"LAB"``,
      ``"HSV"``, ``"RGBX"`` and any other mode Pillow can convert: converted
      to RGB by Pillow.
    * 16-bit greyscale (``"I;16"``, ``"I;16L"``, ``"I;16B"``, ``"I;16N"``,
      e.g. 16-bit PNG): ``round(value / 257)``, so 0..65535 maps to 0..255.
    * ``"I"`` (32-bit integer): clipped to 0..65535, then ``round(value / 257)``.
    * ``"F"`` (32-bit float): if the maximum is <= 1 the values are taken as
      intensities in [0, 1] (negatives clipped to 0) and scaled by 255;
      otherwise they are clipped to 0..255. Rounded. NaN or infinite values
      raise :class:`ImageLoadError`.
    * 16-bit-per-channel colour PNGs: Pillow (>= 10, including 13) opens them
      directly as 8-bit ``"RGB"`` / ``"RGBA"``, keeping the high byte
      (``value >> 8``); they are then handled as above.
    * Transparency of the ``"I"``, ``"I;16"`` and ``"F"`` modes is ignored.

    **Arrays** may be ``(H, W)`` (grey), ``(H, W, 1)`` (grey),
    ``(H, W, 2)`` (grey + alpha), ``(H, W, 3)`` (RGB) or ``(H, W, 4)``
    (RGBA); alpha is composited over white as above. Values by dtype:

    * ``uint8``: as is;
    * ``uint16``: ``round(value / 257)`` (assumed to span 0..65535);
    * ``bool``: False -> 0, True -> 255;
    * floating: must lie in [0, 1] (NaN, infinities or values outside raise
      :class:`ImageLoadError`), then ``round(value * 255)``;
    * other integers: accepted only if all values lie in 0..255.

    **Crop**: its image is loaded as above (at full resolution, after EXIF
    transposition), then the box, clipped to the image, is cut out.
    """
    if isinstance(item, Crop):
        return _apply_crop(load_image(item.image, index=index, strict=strict,
                                      max_pixels=max_pixels), item, index)
    if _is_path(item):
        return _load_path(item, index, strict, reduce_to, max_pixels)
    if _is_encoded(item):
        return _load_encoded(item, index, strict, reduce_to, max_pixels)
    if isinstance(item, Image.Image):
        return _load_pil(item, index)
    if isinstance(item, np.ndarray):
        out = _array_to_rgb(item, item, index)
        if np.shares_memory(out, item):
            out = out.copy()
        return out
    raise _type_error(item, index)


# --------------------------------------------------------------------------
# Cache keys
# --------------------------------------------------------------------------


def _hasher():
    return hashlib.blake2b(digest_size=16)


def image_key(item, *, index=None):
    """Return a stable identity / content key of an input item.

    Feature caches use this key to recognise an image they have already
    processed, so it changes whenever the pixels :func:`load_image` would
    return may change.

    Parameters
    ----------
    item : str, os.PathLike, bytes, file object, PIL.Image.Image, ndarray or Crop
        The image.
    index : int or None, default=None
        Position of the item in its list; only used in error messages.

    Returns
    -------
    key : str
        * path: ``"path:<absolute path>:<size in bytes>:<mtime in ns>"``
          (cheap: the file is not read; rewriting the file changes its size
          or modification time and hence the key);
        * array: ``"array:"`` + BLAKE2b hash of dtype, shape and bytes;
        * PIL image: ``"pil:"`` + BLAKE2b hash of mode, size, pixel bytes,
          palette, transparency and EXIF orientation;
        * bytes, seekable file object: ``"bytes:"`` + BLAKE2b hash of the data;
        * Crop: ``"crop:<key of its image>:<box>"``.

    Raises
    ------
    ImageLoadError
        If a path cannot be stat'ed (e.g. missing file), bytes are empty or an
        array has dtype ``object``.
    TypeError
        If the item is of an unsupported type, or an unseekable file object.
    """
    if isinstance(item, Crop):
        return f"crop:{image_key(item.image, index=index)}:{item.box!r}"
    if _is_path(item):
        p = os.path.abspath(os.fsdecode(os.fspath(item)))
        try:
            st = os.stat(p)
        except OSError as exc:
            reason = "file not found" if isinstance(exc, FileNotFoundError) else str(exc)
            raise _fail(item, index, reason) from None
        return f"path:{p}:{st.st_size}:{st.st_mtime_ns}"
    if _is_encoded(item):
        if not isinstance(item, (bytes, bytearray, memoryview)) and not getattr(
                item, "seekable", lambda: False)():  # reading it would consume it
            raise TypeError(f"{describe(item, index)}: an unseekable file object has no key")
        return "bytes:" + hashlib.blake2b(_read_encoded(item, index), digest_size=16).hexdigest()
    if isinstance(item, np.ndarray):
        if item.dtype.hasobject:
            raise _fail(item, index, f"unsupported array dtype {item.dtype}")
        h = _hasher()
        h.update(f"{item.dtype.str}|{item.shape}|".encode())
        h.update(np.ascontiguousarray(item).tobytes() if item.size else b"")
        return "array:" + h.hexdigest()
    if isinstance(item, Image.Image):
        h = _hasher()
        h.update(f"{item.mode}|{item.size}|".encode())
        h.update(item.tobytes())
        if item.mode in ("P", "PA"):
            palette = item.palette
            if palette is not None:
                h.update(f"|{palette.mode}|".encode())
                h.update(bytes(palette.tobytes()))
        h.update(repr(item.info.get("transparency")).encode())
        try:
            orientation = item.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:
            orientation = 1
        h.update(f"|orientation={orientation}".encode())
        return "pil:" + h.hexdigest()
    raise _type_error(item, index)
