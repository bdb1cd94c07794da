"""Array helpers shared by the poolers, the re-rankers and the retrievers: the one
row normaliser, and the conversions between search distances and similarities."""

from __future__ import annotations

import numpy as np

__all__ = ["distances_from_similarities", "l2_normalize", "similarities_from_distances"]


def l2_normalize(V, axis=-1, *, tiny_as_zero=False):
    """L2-normalise ``V`` along ``axis``; an all-zero vector stays zero.

    The one row normaliser of the package: the poolers, the re-rankers and
    the retriever (its database rows and its queries) all call it.

    Parameters
    ----------
    V : ndarray
        A vector, or an array of vectors along ``axis``.
    axis : int, default=-1
        The axis of the vectors.
    tiny_as_zero : bool, default=False
        Whether vectors of norm below ``10 eps`` (of the dtype) count as
        zero, i.e. are left as they are, as
        :func:`sklearn.preprocessing.normalize` leaves them (the retriever's
        rule for its database and queries).

    Returns
    -------
    ndarray
        ``V / ||V||`` (a new array) of the dtype of ``V`` (float), zero where
        the norm is 0.

    Examples
    --------
    >>> import numpy as np
    >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]])
    """
    V = np.asarray(V)
    norms = np.sqrt(np.sum(V * V, axis=axis, keepdims=True))
    if tiny_as_zero:
        norms[norms < 10 * np.finfo(norms.dtype).eps] = 1
    else:
        norms[norms == 0] = 1
    return V / norms.astype(V.dtype, copy=False)


def _flip(values, metric, what):
    """``1 - values`` for the cosine metric, else ``-values``, as floats (ints
    become float64): the map between distances and similarities, its own
    inverse."""
    values = np.asarray(values)
    if values.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be numbers, got dtype {values.dtype}")
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    if metric == "cosine":
        return values.dtype.type(1.0) - values
    return -values


def similarities_from_distances(distances, metric="cosine"):
    """Similarities (higher is better) from nearest-neighbour distances.

    The inverse of :func:`distances_from_similarities`.

    Parameters
    ----------
    distances : array-like of float
        Distances as returned by a retriever's ``kneighbors`` (smaller is
        closer).

    metric : str, default="cosine"
        The retriever's metric.  ``"cosine"``: ``1 - distance``, the cosine
        similarity; any other (``"inner_product"``, ``"euclidean"``, or the
        metrics of scikit-learn's neighbours estimators): ``-distance``, i.e.
        the inner product for ``"inner_product"`` and minus the Euclidean
        distance for ``"euclidean"``.

    Returns
    -------
    similarities : ndarray of the same shape
        Of the dtype of ``distances`` (float32 stays float32; ints give
        float64).

    Raises
    ------
    TypeError
        If ``distances`` are not numbers.

    Examples
    --------
    >>> import numpy as np
    >>> similarities_from_distances(np.array([0.0, 0.25]))
    array([1.  , 0.75])
    >>> similarities_from_distances(np.array([-2.0, 1.0]), "inner_product")
    array([ 2., -1.])
    """
    return _flip(distances, metric, "distances")


def distances_from_similarities(similarities, metric="cosine"):
    """Distances (smaller is closer) from similarities, in a retriever's convention.

    The inverse of :func:`similarities_from_distances`.

    Parameters
    ----------
    similarities : array-like of float
        Similarities (higher is better).

    metric : str, default="cosine"
        The retriever's metric.  ``"cosine"``: ``1 - similarity``; any other:
        ``-similarity``.

    Returns
    -------
    distances : ndarray of the same shape
        Of the dtype of ``similarities`` (ints give float64).

    Raises
    ------
    TypeError
        If ``similarities`` are not numbers.

    Examples
    --------
    >>> import numpy as np
    >>> distances_from_similarities(np.array([1.0, 0.75]))
    array([0.  , 0.25])
    """
    return _flip(similarities, metric, "similarities")
