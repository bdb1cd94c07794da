"""The items of a retriever's database: ids, labels and content fingerprints."""

from numbers import Integral

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["DatabaseItemsMixin"]


def _id_kind(ids):
    """'int', 'str' or 'other': ids of different kinds cannot be mixed."""
    kind = ids.dtype.kind
    if kind in "iu":
        return "int"
    if kind in "US":
        return "str"
    if kind == "O" and all(isinstance(v, str) for v in ids.tolist()):
        return "str"
    return "other"


class DatabaseItemsMixin:
    """Ids (``ids_``), labels (``y_`` and their codes) and fingerprints of the
    database items of :class:`NearestNeighborRetriever`: their checks and
    their look-up by id."""

    def rows_of(self, ids):
        """Row numbers of database items given by id.

        Parameters
        ----------
        ids : array-like of shape (n_ids,) or scalar
            Values of ``ids_``.

        Returns
        -------
        rows : ndarray of shape (n_ids,), dtype intp
            Their rows in ``X_fit_`` (the indices :meth:`kneighbors`
            returns).

        Raises
        ------
        ValueError
            If an id is not in the database.
        """
        check_is_fitted(self)
        ids = np.asarray(ids)
        scalar = ids.ndim == 0
        ids = ids.reshape(-1)
        order = np.argsort(self.ids_, kind="stable")
        sorted_ids = self.ids_[order]
        found = np.zeros(ids.shape[0], dtype=bool)
        pos = np.zeros(ids.shape[0], dtype=np.intp)
        if ids.shape[0] and _id_kind(ids) == _id_kind(self.ids_):
            pos = np.clip(np.searchsorted(sorted_ids, ids), 0, sorted_ids.shape[0] - 1)
            found = np.asarray(sorted_ids[pos] == ids, dtype=bool)
        if not np.all(found):
            missing = ids[~found]
            raise ValueError(
                f"{missing.shape[0]} id(s) not in the database: "
                f"{', '.join(repr(v) for v in missing[:5].tolist())}"
                + (", ..." if missing.shape[0] > 5 else "")
            )
        rows = order[pos].astype(np.intp, copy=False)
        return rows[0] if scalar else rows

    def _set_labels(self, y):
        """Store the labels ``y`` (or None) and their codes."""
        if y is None:
            self.y_ = None
            return
        try:
            classes, codes, counts = np.unique(
                y, return_inverse=True, return_counts=True
            )
        except TypeError as exc:
            raise ValueError(
                "The labels y must be of one sortable type (e.g. all ints "
                f"or all strings): {exc}"
            ) from exc
        self.y_ = y
        self._classes = classes
        self._y_codes = codes.reshape(-1).astype(np.intp, copy=False)
        self._class_counts = counts

    def _concatenate_labels(self, y):
        old = self.y_
        if old.shape[0] and y.shape[0] and (
            (old.dtype.kind in "US") != (y.dtype.kind in "US")
            or (old.dtype.kind in "iub") != (y.dtype.kind in "iub")
        ):
            raise ValueError(
                "The labels y must be of one sortable type (e.g. all ints or all "
                f"strings): the database has {old.dtype} labels, got {y.dtype}."
            )
        return np.concatenate([old, y])

    def _new_ids(self, ids, n_samples, reset):
        """Validated ids of ``n_samples`` new items."""
        if ids is None:
            if not reset and _id_kind(self.ids_) != "int":
                raise ValueError(
                    "This database has non-integer ids: pass the ids of the new "
                    "items."
                )
            start = 0 if reset else self._next_id
            return np.arange(start, start + n_samples, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.shape[0] != n_samples:
            raise ValueError(
                f"ids must be a 1-d array of {n_samples} values (one per item), "
                f"got shape {ids.shape}."
            )
        kind = _id_kind(ids)
        if kind == "other" or ids.dtype.kind == "O" and kind != "str":
            if not all(isinstance(v, Integral) for v in ids.tolist()):
                raise ValueError(
                    "ids must be ints or strings, got an array of dtype "
                    f"{ids.dtype}."
                )
            ids = ids.astype(np.int64)
            kind = "int"
        if kind == "str" and ids.dtype.kind == "S":
            ids = ids.astype(str)
        unique, counts = np.unique(ids, return_counts=True)
        if unique.shape[0] != n_samples:
            dup = unique[counts > 1][:5].tolist()
            raise ValueError(f"ids must be unique; repeated: {dup}")
        if not reset:
            if kind != _id_kind(self.ids_):
                raise ValueError(
                    f"ids of the new items must be of the kind of ids_ ({_id_kind(self.ids_)}"
                    f" ids), got {kind} ids."
                )
            taken = ids[np.isin(ids, self.ids_)]
            if taken.shape[0]:
                raise ValueError(
                    f"{taken.shape[0]} id(s) already in the database: "
                    f"{taken[:5].tolist()}; remove() them first to replace them."
                )
        return ids

    @staticmethod
    def _check_fingerprints(fingerprints, n_samples):
        """Validated fingerprints (a str array) of ``n_samples`` items, or None."""
        if fingerprints is None:
            return None
        values = np.asarray(fingerprints)
        if values.ndim != 1 or values.shape[0] != n_samples:
            raise ValueError(
                f"fingerprints must be a 1-d array of {n_samples} strings (one per "
                f"item), got shape {values.shape}."
            )
        if values.shape[0] and not all(isinstance(v, str) for v in values.tolist()):
            raise ValueError("fingerprints must be strings (e.g. content hashes).")
        return values.astype(str)

    def _encode_query_labels(self, y):
        """Codes of query labels among the database labels (-1: absent)."""
        classes = self._classes
        pos = np.clip(np.searchsorted(classes, y), 0, classes.shape[0] - 1)
        found = np.asarray(classes[pos] == y, dtype=bool)
        return np.where(found, pos, -1)
