"""Container for the ragged convolutional feature maps of a collection.

Every image gives one ``C x H x W`` float map per input scale, with ``H`` and
``W`` that depend on the image's size.  :class:`FeatureMaps` holds them as a
sequence of length ``n_images`` whose items are tuples of per-scale arrays, so
that it passes through :class:`~sklearn.pipeline.Pipeline` and
:class:`~sklearn.model_selection.GridSearchCV` (it has ``shape``, ``len`` and
fancy indexing that returns a :class:`FeatureMaps`).

Maps live either in memory or in a disk store (one append-only file, read
back image by image with positioned reads), and may be kept as float16 to halve their
size; consumers (the poolers) read one image at a time, so a disk-backed
collection is never loaded whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from numbers import Integral

from typing import NamedTuple

import numpy as np

__all__ = ["ClassActivations", "FeatureMaps", "class_activations", "iter_maps", "check_maps"]


class ClassActivations(NamedTuple):
    """Class activation maps of one image (see ``ConvFeatureExtractor(cams=K)``).

    Attributes
    ----------
    classes : ndarray of shape (K,)
        The image's top-K predicted classes, most probable first.
    scores : ndarray of shape (K,)
        Their probabilities (softmax of the classifier, averaged over scales).
    maps : tuple of ndarray
        Per scale, a ``(K, H, W)`` float32 array: the CAM of each class on the
        grid of the feature maps of that scale, normalised to [0, 1].
    """

    classes: np.ndarray
    scores: np.ndarray
    maps: tuple


class _DiskStore:
    """Append-only binary file of arrays, read back with positioned reads.

    The file lives in ``directory``; when the store created its own temporary
    directory it is removed when the last :class:`FeatureMaps` using it is
    garbage collected.
    """

    def __init__(self, directory=None):
        if directory is None:
            self.directory = tempfile.mkdtemp(prefix="skretrieval-maps-")
            self._cleanup = weakref.finalize(
                self, shutil.rmtree, self.directory, ignore_errors=True
            )
        else:
            os.makedirs(directory, exist_ok=True)
            self.directory = str(directory)
            self._cleanup = None
        fd, self.path = tempfile.mkstemp(
            prefix="maps-", suffix=".bin", dir=self.directory
        )
        os.close(fd)
        self._size = 0
        self._lock = threading.Lock()

    def append(self, array):
        array = np.ascontiguousarray(array)
        with self._lock:
            offset = self._size
            with open(self.path, "ab") as fh:
                fh.write(array.tobytes())
            self._size += array.nbytes
        return ("disk", offset, array.shape, array.dtype.str)

    def read(self, ref):
        # A positioned read, not a memory map: what was read is not kept
        # mapped in the process, so reading a whole collection image by
        # image leaves the resident memory at one image (the file's pages
        # stay in the kernel's page cache, which the kernel reclaims).
        _, offset, shape, dtype = ref
        count = int(np.prod(shape))
        arr = np.fromfile(self.path, dtype=np.dtype(dtype), count=count, offset=offset)
        if arr.size != count:
            raise OSError(f"feature-map file {self.path} is truncated (or was removed)")
        arr = arr.reshape(shape)
        arr.flags.writeable = False
        return arr

    @property
    def nbytes(self):
        return self._size

    def __getstate__(self):
        # A pickled store points at the same file; it never deletes it.
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_cleanup"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


class FeatureMaps:
    """Ragged per-image, per-scale convolutional feature maps.

    ``maps[i]`` is a tuple with one ``(C, H_s, W_s)`` float32 array per scale
    of image ``i`` (scales in the order of ``scales``).  Indexing with a slice,
    an integer array or a boolean mask returns a new :class:`FeatureMaps` that
    shares the storage.  ``len(maps)`` and ``maps.shape == (n_images,)`` make
    it a valid ``X`` for scikit-learn's model selection tools.

    Parameters
    ----------
    entries : list of tuple of ndarray
        One tuple of ``(C, H, W)`` arrays per image.  Arrays may be float16 to
        save memory; they are returned as float32.
    scales : tuple of float, default=(1.0,)
        The scale multiplier of each tuple position.
    layer : str, default=None
        Name of the backbone layer the maps come from.
    store : {"memory", "disk"} or path, default="memory"
        Where to keep the arrays: in RAM, or in a file of a temporary (or
        the given) directory, read back image by image.
    dtype : {"float32", "float16"}, default="float32"
        Storage precision.

    Attributes
    ----------
    n_channels : int
        Number of channels ``C`` (``None`` when empty).
    """

    def __init__(self, entries=(), *, scales=(1.0,), layer=None, store="memory",
                 dtype="float32"):
        self.scales = tuple(float(s) for s in scales)
        self.layer = layer
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float16):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self._store = None
        if store != "memory":
            self._store = _DiskStore(None if store == "disk" else store)
        self._refs = []
        self._cams = None  # per image (classes, scores, per-scale CAM refs)
        self.n_channels = None
        for entry in entries:
            self.append(entry)

    # -- construction -----------------------------------------------------
    @classmethod
    def _view(cls, parent, refs, cams=None):
        new = cls.__new__(cls)
        new.scales = parent.scales
        new.layer = parent.layer
        new.dtype = parent.dtype
        new._store = parent._store
        new._refs = refs
        new._cams = cams
        new.n_channels = parent.n_channels
        return new

    def _keep(self, arr):
        """Store one array (an own read-only copy in RAM, or in the file)."""
        if self._store is None:
            # an own, read-only copy: later edits of the caller's array, or
            # in-place work of a consumer, cannot change the collection
            arr = np.array(arr, dtype=self.dtype, copy=True)
            arr.setflags(write=False)
            return arr
        return self._store.append(np.asarray(arr).astype(self.dtype, copy=False))

    def append(self, entry, cams=None):
        """Add one image: a tuple with a ``(C, H, W)`` array per scale.

        ``cams`` (optional, for every image or for none) is the image's
        :class:`ClassActivations`, or a ``(classes, scores, maps)`` tuple with
        one ``(K, H, W)`` CAM array per scale on the grid of the maps.
        """
        if isinstance(entry, np.ndarray):
            entry = (entry,)
        entry = tuple(entry)
        if len(entry) != len(self.scales):
            raise ValueError(
                f"expected {len(self.scales)} maps (one per scale), got {len(entry)}"
            )
        if (cams is not None) != self.has_cams and len(self._refs):
            raise ValueError("either every image of a FeatureMaps has class activation "
                             "maps or none has")
        if cams is not None:
            cams = self._check_cams(entry, cams)
        refs = []
        for arr in entry:
            arr = np.asarray(arr)
            if arr.ndim != 3:
                raise ValueError(f"a feature map must be C x H x W, got shape {arr.shape}")
            if self.n_channels is None:
                self.n_channels = arr.shape[0]
            elif arr.shape[0] != self.n_channels:
                raise ValueError(
                    f"all maps must have {self.n_channels} channels, got {arr.shape[0]}"
                )
            refs.append(self._keep(arr))
        self._refs.append(tuple(refs))
        if cams is not None:
            if self._cams is None:
                self._cams = []
            classes, scores, maps = cams
            self._cams.append((classes, scores, tuple(self._keep(m) for m in maps)))

    def _check_cams(self, entry, cams):
        classes, scores, maps = cams
        classes = np.asarray(classes, dtype=np.int64).ravel()
        scores = np.asarray(scores, dtype=np.float32).ravel()
        maps = tuple(maps)
        if scores.shape != classes.shape or len(maps) != len(entry):
            raise ValueError("cams must be (classes, scores, one CAM array per scale) "
                             "with as many scores as classes")
        for arr, cam in zip(entry, maps):
            cam = np.asarray(cam)
            if cam.ndim != 3 or cam.shape[0] != classes.size or cam.shape[1:] != arr.shape[1:]:
                raise ValueError(
                    f"CAMs of shape {cam.shape} do not match {classes.size} classes on "
                    f"a {arr.shape[1]}x{arr.shape[2]} map grid")
        for a in (classes, scores):
            a.setflags(write=False)
        return classes, scores, maps

    @property
    def has_cams(self):
        """Whether the images carry class activation maps."""
        return self._cams is not None

    def class_activations(self, i):
        """The :class:`ClassActivations` of image ``i``."""
        if self._cams is None:
            raise ValueError(
                "these feature maps carry no class activation maps: extract them with "
                "ConvFeatureExtractor(cams=K)")
        classes, scores, refs = self._cams[i]
        return ClassActivations(classes, scores, tuple(self._load(r) for r in refs))

    def extend(self, other):
        """Append every image of another :class:`FeatureMaps` (same scales)."""
        if tuple(other.scales) != self.scales:
            raise ValueError(f"scales differ: {other.scales} vs {self.scales}")
        for i in range(len(other)):
            self.append(other[i], other.class_activations(i) if other.has_cams else None)
        return self

    # -- sequence protocol --------------------------------------------------
    def __len__(self):
        return len(self._refs)

    @property
    def shape(self):
        return (len(self._refs),)

    @property
    def nbytes(self):
        """Bytes held by the maps of this collection (in RAM or on disk)."""
        total = 0
        for refs in self._refs:
            for ref in refs:
                if isinstance(ref, np.ndarray):
                    total += ref.nbytes
                else:
                    total += int(np.prod(ref[2])) * np.dtype(ref[3]).itemsize
        for _, _, refs in self._cams or ():
            for ref in refs:
                total += (ref.nbytes if isinstance(ref, np.ndarray)
                          else int(np.prod(ref[2])) * np.dtype(ref[3]).itemsize)
        return total

    def _load(self, ref):
        arr = ref if isinstance(ref, np.ndarray) else self._store.read(ref)
        return np.asarray(arr, dtype=np.float32)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            # sklearn's _safe_indexing uses ``X[indices, ...]``
            if len(key) == 2 and key[1] is Ellipsis:
                key = key[0]
            else:
                raise IndexError(f"FeatureMaps supports 1-D indexing only, got {key!r}")
        if isinstance(key, (Integral, np.integer)):
            return tuple(self._load(ref) for ref in self._refs[key])
        if isinstance(key, slice):
            return self._view(self, self._refs[key],
                              None if self._cams is None else self._cams[key])
        key = np.asarray(key)
        if key.size == 0:
            return self._view(self, [], None if self._cams is None else [])
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(
                    f"boolean index of shape {key.shape} for {len(self)} items"
                )
            key = np.flatnonzero(key)
        if key.ndim != 1 or not np.issubdtype(key.dtype, np.integer):
            raise IndexError(f"cannot index FeatureMaps with {key!r}")
        return self._view(self, [self._refs[int(i)] for i in key],
                          None if self._cams is None else [self._cams[int(i)] for i in key])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self):
        where = "memory" if self._store is None else f"disk:{self._store.path}"
        return (
            f"FeatureMaps(n_images={len(self)}, n_channels={self.n_channels}, "
            f"scales={self.scales}, layer={self.layer!r}, dtype={self.dtype.name}, "
            f"store={where}{', cams' if self.has_cams else ''})"
        )


def iter_maps(X):
    """Yield, for each image of ``X``, a tuple of ``(C, H, W)`` float32 maps.

    ``X`` may be a :class:`FeatureMaps`, a 4-D array ``(n, C, H, W)``, or a
    list whose items are ``(C, H, W)`` arrays (one scale) or sequences of them
    (several scales).
    """
    if isinstance(X, FeatureMaps):
        yield from X
        return
    if isinstance(X, np.ndarray) and X.ndim == 4:
        for x in X:
            yield (np.asarray(x, dtype=np.float32),)
        return
    for i, item in enumerate(X):
        if not isinstance(item, (list, tuple)):
            item = (item,)
        out = []
        for arr in item:
            arr = np.asarray(arr, dtype=np.float32)
            if arr.ndim != 3:
                raise ValueError(
                    f"item {i}: expected C x H x W feature maps, got shape {arr.shape}"
                )
            out.append(arr)
        if not out:
            raise ValueError(f"item {i}: no feature map")
        yield tuple(out)


def check_maps(X):
    """Validate ``X`` as feature maps and return its number of images.

    Raises a :class:`TypeError` naming the problem when ``X`` is not one of the
    forms :func:`iter_maps` accepts, and a :class:`ValueError` when it is empty.
    """
    if isinstance(X, FeatureMaps):
        n = len(X)
    elif isinstance(X, np.ndarray):
        if X.ndim != 4:
            raise ValueError(
                "feature maps as an array must be 4-D (n_images, C, H, W), got "
                f"shape {X.shape}; 2-D descriptors go to PCAWhitener or "
                "NearestNeighborRetriever, images go to ConvFeatureExtractor"
            )
        n = X.shape[0]
    elif isinstance(X, (list, tuple)):
        n = len(X)
    else:
        raise TypeError(
            "expected FeatureMaps, a 4-D array or a list of C x H x W arrays, "
            f"got {type(X).__name__}"
        )
    if n == 0:
        raise ValueError("no feature maps: X is empty")
    return n


def class_activations(weight, bias, top_k, entry, cam_maps):
    """Top classes, their probabilities and CAMs of one image, on the grid of its maps.

    Parameters
    ----------
    weight : ndarray of shape (n_classes, C)
    bias : ndarray of shape (n_classes,)
        The linear classifier on the globally averaged ``cam_maps``.
    top_k : int
        Classes kept (ranked by the softmax averaged over the scales).
    entry : tuple of ndarray
        The image's maps, one per scale (their grids are the CAMs' grids).
    cam_maps : sequence of ndarray of shape (C, h, w)
        The maps the classifier reads, one per scale.

    Returns
    -------
    classes : ndarray of int
    probabilities : ndarray of float32
    cams : tuple of ndarray
        Per scale, ``(top_k, H, W)`` maps min-max normalised to [0, 1].
    """
    import torch

    W, b = weight, bias
    probs = np.zeros(W.shape[0])
    for F in cam_maps:
        logits = W @ np.asarray(F, np.float32).mean(axis=(1, 2)) + b
        e = np.exp(logits - logits.max())
        probs += e / e.sum()
    probs /= len(cam_maps)
    top = np.argsort(-probs, kind="stable")[:top_k]
    cams = []
    for fmap, F in zip(entry, cam_maps):
        C, h, w = F.shape
        cam = (W[top] @ np.asarray(F, np.float32).reshape(C, -1)).reshape(-1, h, w)
        if (h, w) != fmap.shape[1:]:
            cam = torch.nn.functional.interpolate(
                torch.from_numpy(cam)[None], size=fmap.shape[1:], mode="bilinear",
                align_corners=False)[0].numpy()
        lo = cam.min(axis=(1, 2), keepdims=True)
        span = cam.max(axis=(1, 2), keepdims=True) - lo
        cam = np.where(span > 0, (cam - lo) / np.where(span > 0, span, 1), 1.0)
        cams.append(cam.astype(np.float32))
    return top, probs[top].astype(np.float32), tuple(cams)
