"""Container for the ragged local features (keypoints and descriptors) of a collection.

Every image gives its own number of local features: keypoints ``(x, y,
scale, angle)`` and one descriptor each.  :class:`LocalFeatures` holds them
as a sequence of length ``n_images`` whose items are ``(keypoints,
descriptors)`` pairs, so that it passes through
:class:`~sklearn.pipeline.Pipeline` and
:class:`~sklearn.model_selection.GridSearchCV` (it has ``shape``, ``len``
and fancy indexing that returns a :class:`LocalFeatures`), like
:class:`~skretrieval.FeatureMaps` does for conv maps.
"""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np

__all__ = ["KEYPOINT_FIELDS", "LocalFeatures", "as_local_features"]

#: The columns of a keypoint array.
KEYPOINT_FIELDS = ("x", "y", "scale", "angle")


def _frozen(arr, dtype):
    arr = np.array(arr, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


class LocalFeatures:
    """Ragged per-image local features: keypoints and descriptors.

    ``features[i]`` is a pair ``(keypoints, descriptors)`` of image ``i``:
    a ``(n_i, 4)`` float32 array of ``(x, y, scale, angle)`` (pixels of the
    image as the extractor saw it, the scale a diameter in pixels, the angle
    in degrees, -1 when undefined) and a ``(n_i, d)`` float32 array.  An
    image may have no feature (``n_i = 0``).  Indexing with a slice, an
    integer array or a boolean mask returns a new :class:`LocalFeatures`
    sharing the arrays; ``len(features)`` and ``features.shape ==
    (n_images,)`` make it a valid ``X`` for scikit-learn's model selection.

    Parameters
    ----------
    entries : iterable of (keypoints, descriptors), default=()
        One pair per image.  Keypoints may have 2 columns (``x, y``; scale
        and angle are then -1).
    n_dims : int, default=None
        The descriptor size, needed only when every image is empty (else
        read from the first descriptors).
    kind : str, default=None
        What made them (e.g. ``"rootsift"``), for ``repr`` and checks.

    Attributes
    ----------
    n_dims : int or None
        Descriptor size (None while unknown).

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.local import LocalFeatures
    >>> f = LocalFeatures([(np.zeros((3, 4)), np.ones((3, 8))),
    ...                    (np.zeros((0, 4)), np.zeros((0, 8)))])
    >>> f.counts.tolist(), f[[1, 0]].counts.tolist()
    ([3, 0], [0, 3])
    """

    def __init__(self, entries=(), *, n_dims=None, kind=None):
        self.n_dims = None if n_dims is None else int(n_dims)
        self.kind = kind
        self._entries = []
        for entry in entries:
            self.append(*entry)

    @classmethod
    def _view(cls, parent, entries):
        new = cls.__new__(cls)
        new.n_dims, new.kind, new._entries = parent.n_dims, parent.kind, entries
        return new

    def append(self, keypoints, descriptors):
        """Add one image: ``(n, 4)`` (or ``(n, 2)``) keypoints and ``(n, d)`` descriptors."""
        kp = np.asarray(keypoints, dtype=np.float32)
        desc = np.asarray(descriptors, dtype=np.float32)
        if kp.ndim == 1 and kp.size == 0:
            kp = kp.reshape(0, 4)
        if desc.ndim == 1 and desc.size == 0:
            desc = desc.reshape(0, self.n_dims or 0)
        if kp.ndim != 2 or kp.shape[1] not in (2, 4):
            raise ValueError(f"keypoints must be (n, 4) (x, y, scale, angle) or (n, 2), "
                             f"got shape {kp.shape}")
        if desc.ndim != 2 or len(desc) != len(kp):
            raise ValueError(f"descriptors must be (n, d) with one row per keypoint: "
                             f"{desc.shape} for {len(kp)} keypoints")
        if kp.shape[1] == 2:
            kp = np.concatenate([kp, np.full((len(kp), 2), -1, np.float32)], 1)
        if len(desc) or desc.shape[1]:
            if self.n_dims is None:
                self.n_dims = desc.shape[1]
            elif desc.shape[1] != self.n_dims:
                if len(desc) == 0:
                    desc = desc.reshape(0, self.n_dims)
                else:
                    raise ValueError(f"all descriptors must have {self.n_dims} "
                                     f"dimensions, got {desc.shape[1]}")
        if not (np.isfinite(kp).all() and np.isfinite(desc).all()):
            raise ValueError("keypoints and descriptors must be finite")
        self._entries.append((_frozen(kp, np.float32), _frozen(desc, np.float32)))

    # -- sequence protocol --------------------------------------------------
    def __len__(self):
        return len(self._entries)

    @property
    def shape(self):
        return (len(self._entries),)

    @property
    def counts(self):
        """Number of features of every image, ``(n_images,)`` int64."""
        return np.array([len(k) for k, _ in self._entries], dtype=np.int64)

    @property
    def nbytes(self):
        """Bytes of the keypoint and descriptor arrays."""
        return sum(k.nbytes + d.nbytes for k, d in self._entries)

    def _empty(self):
        return (np.zeros((0, 4), np.float32), np.zeros((0, self.n_dims or 0), np.float32))

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if len(key) == 2 and key[1] is Ellipsis:  # sklearn's _safe_indexing
                key = key[0]
            else:
                raise IndexError(f"LocalFeatures supports 1-D indexing only, got {key!r}")
        if isinstance(key, (Integral, np.integer)):
            kp, desc = self._entries[key]
            if len(kp) == 0 and desc.shape[1] != (self.n_dims or 0):
                return self._empty()
            return kp, desc
        if isinstance(key, slice):
            return self._view(self, self._entries[key])
        key = np.asarray(key)
        if key.size == 0:
            return self._view(self, [])
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for {len(self)} items")
            key = np.flatnonzero(key)
        if key.ndim != 1 or not np.issubdtype(key.dtype, np.integer):
            raise IndexError(f"cannot index LocalFeatures with {key!r}")
        return self._view(self, [self._entries[int(i)] for i in key])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def extend(self, other):
        """Append every image of another :class:`LocalFeatures` (same ``n_dims``)."""
        for kp, desc in other:
            self.append(kp, desc)
        return self

    def concatenated(self):
        """Every image's features stacked: ``(keypoints, descriptors, offsets)``.

        Image ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
        """
        counts = self.counts
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if not len(self):
            kp, desc = self._empty()
            return kp, desc, offsets
        kps, descs = zip(*self)
        return np.concatenate(kps), np.concatenate(descs), offsets

    # -- files ----------------------------------------------------------------
    def to_arrays(self):
        """The collection as plain arrays (``keypoints``, ``descriptors``, ``offsets``)."""
        kp, desc, offsets = self.concatenated()
        return {"keypoints": kp, "descriptors": desc, "offsets": offsets}

    @classmethod
    def from_arrays(cls, keypoints, descriptors, offsets, *, kind=None):
        """The inverse of :meth:`to_arrays` (checks the offsets)."""
        offsets = np.asarray(offsets)
        if (offsets.ndim != 1 or len(offsets) == 0 or not np.issubdtype(offsets.dtype, np.integer)
                or offsets[0] != 0 or np.any(np.diff(offsets) < 0)
                or offsets[-1] != len(keypoints)):
            raise ValueError("offsets must be a non-decreasing int array from 0 to the "
                             "number of keypoints")
        descriptors = np.asarray(descriptors)
        out = cls(n_dims=descriptors.shape[1] if descriptors.ndim == 2 else None, kind=kind)
        for a, b in zip(offsets[:-1], offsets[1:]):
            out.append(keypoints[a:b], descriptors[a:b])
        return out

    def save(self, path):
        """Write the features to an ``.npz`` file (no pickle)."""
        arrays = self.to_arrays()
        arrays["kind"] = np.array("" if self.kind is None else str(self.kind))
        np.savez(os.fspath(path), **arrays)

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save` (never unpickles)."""
        with np.load(os.fspath(path), allow_pickle=False) as z:
            kind = str(z["kind"]) or None if "kind" in z else None
            return cls.from_arrays(z["keypoints"], z["descriptors"], z["offsets"], kind=kind)

    def __repr__(self):
        return (f"LocalFeatures(n_images={len(self)}, n_features={int(self.counts.sum())}, "
                f"n_dims={self.n_dims}, kind={self.kind!r})")


def as_local_features(X, what="X"):
    """``X`` as :class:`LocalFeatures`: itself, or a list of ``(keypoints, descriptors)``.

    Raises a :class:`TypeError` naming what was given otherwise, and a
    :class:`ValueError` when it is empty.
    """
    if not isinstance(X, LocalFeatures):
        if isinstance(X, (list, tuple)) and all(
                isinstance(e, (list, tuple)) and len(e) == 2 for e in X):
            X = LocalFeatures(X)
        else:
            raise TypeError(
                f"{what} must be LocalFeatures (from SIFTExtractor or DeepLocalFeatures) "
                f"or a list of (keypoints, descriptors) pairs, got {type(X).__name__}")
    if len(X) == 0:
        raise ValueError(f"no image: {what} is empty")
    return X
