"""The items of a retriever's database: ids, labels and content fingerprints.

:class:`ItemIds` (the ids and the next free integer id) and
:class:`LabelCodes` (the sorted classes of the labels, each item's code and
each class's count) are made from explicit values: the retriever keeps them
as its plain attributes (``ids_``, ``_next_id``, ``y_``, ``_classes``,
``_y_codes``, ``_class_counts``), which its pickles and saved files hold.
"""

from numbers import Integral
from typing import NamedTuple

import numpy as np

__all__ = ["ItemIds", "LabelCodes", "check_fingerprints", "concatenate_fingerprints",
           "concatenate_labels"]


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


class ItemIds:
    """The ids of a database's items: their look-up and the checks of new ones.

    Parameters
    ----------
    ids : ndarray of shape (n_samples,) or None
        The ids of the database (``ids_``), or None for a new database.
    next_id : int, default=0
        The integer id after the largest one given so far (``_next_id``).
    """

    def __init__(self, ids=None, next_id=0):
        self.ids = ids
        self.next_id = next_id

    def rows_of(self, ids):
        """Row numbers of database items given by id.

        Parameters
        ----------
        ids : array-like of shape (n_ids,) or scalar
            Ids of the database.

        Returns
        -------
        rows : ndarray of shape (n_ids,), dtype intp, or int
            Their rows (an int for a scalar id).

        Raises
        ------
        ValueError
            If an id is not in the database.
        """
        ids = np.asarray(ids)
        scalar = ids.ndim == 0
        ids = ids.reshape(-1)
        order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[order]
        found = np.zeros(ids.shape[0], dtype=bool)
        pos = np.zeros(ids.shape[0], dtype=np.intp)
        if ids.shape[0] and _id_kind(ids) == _id_kind(self.ids):
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

    def new_ids(self, ids, n_samples):
        """Validated ids of ``n_samples`` new items.

        Parameters
        ----------
        ids : array-like of shape (n_samples,) or None
            The ids given (ints or strings), or None: consecutive ints from
            0 for a new database, else from ``next_id``.
        n_samples : int
            The number of new items.

        Returns
        -------
        ids : ndarray of shape (n_samples,)
            int64 or str ids.

        Raises
        ------
        ValueError
            If the ids are not unique, not ints or strings, of another kind
            than the database's, or already in the database.
        """
        reset = self.ids is None
        if ids is None:
            if not reset and _id_kind(self.ids) != "int":
                raise ValueError(
                    "This database has non-integer ids: pass the ids of the new "
                    "items."
                )
            start = 0 if reset else self.next_id
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
            if kind != _id_kind(self.ids):
                raise ValueError(
                    f"ids of the new items must be of the kind of ids_ ({_id_kind(self.ids)}"
                    f" ids), got {kind} ids."
                )
            taken = ids[np.isin(ids, self.ids)]
            if taken.shape[0]:
                raise ValueError(
                    f"{taken.shape[0]} id(s) already in the database: "
                    f"{taken[:5].tolist()}; remove() them first to replace them."
                )
        return ids


class LabelCodes(NamedTuple):
    """The labels of a database as codes: ``classes`` (sorted, unique),
    ``codes`` (each item's class, intp) and ``counts`` (items per class)."""

    classes: np.ndarray
    codes: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, y):
        """The codes of the labels ``y``.

        Parameters
        ----------
        y : ndarray of shape (n_samples,)
            Labels of one sortable type.

        Returns
        -------
        codes : LabelCodes

        Raises
        ------
        ValueError
            If the labels cannot be sorted (mixed types).
        """
        try:
            classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
        except TypeError as exc:
            raise ValueError(
                "The labels y must be of one sortable type (e.g. all ints "
                f"or all strings): {exc}"
            ) from exc
        return cls(classes, codes.reshape(-1).astype(np.intp, copy=False), counts)

    def encode(self, y):
        """Codes of query labels ``y`` among the classes (-1: absent).

        Parameters
        ----------
        y : ndarray of shape (n_queries,)
            Query labels.

        Returns
        -------
        codes : ndarray of shape (n_queries,)
        """
        classes = self.classes
        pos = np.clip(np.searchsorted(classes, y), 0, classes.shape[0] - 1)
        found = np.asarray(classes[pos] == y, dtype=bool)
        return np.where(found, pos, -1)


def concatenate_labels(old, y):
    """The labels ``old`` of a database followed by those ``y`` of new items.

    Parameters
    ----------
    old, y : ndarray
        Labels of the database and of the new items.

    Returns
    -------
    labels : ndarray

    Raises
    ------
    ValueError
        If one is strings (or numbers) and the other not.
    """
    if old.shape[0] and y.shape[0] and (
        (old.dtype.kind in "US") != (y.dtype.kind in "US")
        or (old.dtype.kind in "iub") != (y.dtype.kind in "iub")
    ):
        raise ValueError(
            "The labels y must be of one sortable type (e.g. all ints or all "
            f"strings): the database has {old.dtype} labels, got {y.dtype}."
        )
    return np.concatenate([old, y])


def check_fingerprints(fingerprints, n_samples):
    """Validated fingerprints (a str array) of ``n_samples`` items, or None.

    Parameters
    ----------
    fingerprints : array-like of str of shape (n_samples,) or None
        Content fingerprints of the items.
    n_samples : int
        The number of items.

    Returns
    -------
    fingerprints : ndarray of str or None

    Raises
    ------
    ValueError
        If they are not ``n_samples`` strings.
    """
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


def concatenate_fingerprints(old, n_old, new, n_new):
    """The fingerprints of a database followed by those of new items.

    Parameters
    ----------
    old : ndarray of str of shape (n_old,) or None
        The database's fingerprints (``fingerprints_``), or None if it has none.
    n_old : int
        The number of items in the database.
    new : ndarray of str of shape (n_new,) or None
        The new items' fingerprints (as :func:`check_fingerprints` returns them).
    n_new : int
        The number of new items.

    Returns
    -------
    fingerprints : ndarray of str of shape (n_old + n_new,) or None
        None when neither side has fingerprints; otherwise the items without
        one get ``""`` (unknown content).
    """
    if old is None and new is None:
        return None
    return np.concatenate([
        np.full(n_old, "") if old is None else old,
        np.full(n_new, "") if new is None else new,
    ])
