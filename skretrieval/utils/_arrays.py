"""Array helpers shared by the poolers, the re-rankers and the retrievers."""

from __future__ import annotations

import numpy as np

__all__ = ["l2_normalize"]


def l2_normalize(V, axis=-1):
    """L2-normalise ``V`` along ``axis``; an all-zero vector stays zero.

    Parameters
    ----------
    V : ndarray
        A vector, or an array of vectors along ``axis``.
    axis : int, default=-1
        The axis of the vectors.

    Returns
    -------
    ndarray
        ``V / ||V||`` of the dtype of ``V`` (float), zero where the norm is 0.

    Examples
    --------
    >>> import numpy as np
    >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]])
    """
    V = np.asarray(V)
    norms = np.sqrt(np.sum(V * V, axis=axis, keepdims=True))
    return V / np.where(norms > 0, norms, 1).astype(V.dtype, copy=False)
