"""What every retriever and re-ranker shares: the checks of its arguments
(``n_neighbors``, labels, a similarity search), ``predict`` and the label
``score`` of a ranking."""

from numbers import Integral

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ..metrics._ranking import mean_average_precision

__all__ = ["RetrieverMixin", "WrappingRetrieverMixin", "check_labels_fitted",
           "check_similarity_search", "label_score", "resolve_n_neighbors",
           "retriever_metric", "through_wrappers"]


def through_wrappers(retriever, name, kind, default):
    """The first ``name`` attribute of type ``kind`` of a retriever or of the
    ones it wraps (``retriever_``, else ``retriever``), else ``default``.

    Parameters
    ----------
    retriever : object or None
        A retriever, possibly wrapping others.
    name : str
        The attribute looked up.
    kind : type or tuple of types
        The type the attribute must have (a bool never counts).
    default : object
        The value when no retriever has it.

    Returns
    -------
    value : object
    """
    for _ in range(16):
        if retriever is None:
            break
        value = getattr(retriever, name, None)
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        retriever = getattr(retriever, "retriever_", getattr(retriever, "retriever", None))
    return default


def retriever_metric(retriever):
    """The metric of a retriever, looked up through wrappers (default "cosine").

    Parameters
    ----------
    retriever : object or None
        A retriever, possibly wrapping others; None is the default retriever.

    Returns
    -------
    metric : str
    """
    return through_wrappers(retriever, "metric", str, "cosine")


def check_similarity_search(retriever, what):
    """Refuse a Euclidean retriever for a method that compares similarities.

    Parameters
    ----------
    retriever : object or None
        The retriever (or wrapper) the method would search with.
    what : str
        The method, for the message (e.g. ``"diffusion"``).

    Raises
    ------
    ValueError
        If the retriever's metric (through wrappers) is ``"euclidean"``.
    """
    if retriever_metric(retriever) == "euclidean":
        raise ValueError(f"{what} needs a similarity search (it compares similarities, "
                         "not Euclidean distances): use a retriever with "
                         "metric='cosine' or 'inner_product'")


def check_labels_fitted(estimator, method):
    """Refuse ``method`` of an estimator fitted without database labels.

    Parameters
    ----------
    estimator : object
        A fitted retriever or re-ranker, with ``y_`` (None: no labels).
    method : str
        The method that needs them (e.g. ``"predict"``).

    Raises
    ------
    ValueError
        If ``estimator.y_`` is None.
    """
    if estimator.y_ is None:
        raise ValueError(
            f"{type(estimator).__name__}.{method}() needs the database labels, but "
            "it was fitted without them: fit with y, i.e. call fit(X, y)."
        )


def resolve_n_neighbors(n_neighbors, n_available, *, default, exclude_self=False,
                        n_queries=None, full_refusal=None, clip=False):
    """Check a ``n_neighbors`` argument and return it as an int.

    Parameters
    ----------
    n_neighbors : int, "all" or None
        The argument: None takes ``default``, ``"all"`` every available item.
    n_available : int
        The items a query can return (the database, less the query itself
        when ``exclude_self``).
    default : int
        The value of ``n_neighbors=None``.
    exclude_self : bool, default=False
        Whether the queries are database items left out of their own
        rankings (for the message).
    n_queries : int, default=None
        The number of queries (for the message), if known.
    full_refusal : str, default=None
        If given, ``"all"`` is refused with this message (a search that
        cannot rank the whole database).
    clip : bool, default=False
        Whether an int above ``n_available`` gives ``n_available`` instead
        of an error.

    Returns
    -------
    k : int
        In ``[1, n_available]``.

    Raises
    ------
    TypeError
        If ``n_neighbors`` is neither None, a str nor an int.
    ValueError
        If it is another str than ``"all"``, not positive, or above
        ``n_available`` (without ``clip``).
    """
    if n_neighbors is None:
        n_neighbors = default
    elif isinstance(n_neighbors, str):
        if n_neighbors != "all":
            raise ValueError(
                f"n_neighbors must be a positive int, 'all' or None, got {n_neighbors!r}."
            )
        if full_refusal is not None:
            raise ValueError(full_refusal)
        return n_available
    if not isinstance(n_neighbors, Integral) or isinstance(n_neighbors, bool):
        raise TypeError(
            f"n_neighbors does not take {type(n_neighbors).__name__} value, enter integer value"
        )
    n_neighbors = int(n_neighbors)
    if n_neighbors <= 0:
        raise ValueError(f"Expected n_neighbors > 0. Got {n_neighbors}")
    if n_neighbors <= n_available:
        return n_neighbors
    if clip:
        return n_available
    if exclude_self:
        raise ValueError(
            "Expected n_neighbors < n_samples_fit when X is None (each database item is "
            f"excluded from its own ranking), but n_neighbors = {n_neighbors}, "
            f"n_samples_fit = {n_available + 1}"
        )
    raise ValueError(
        f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {n_neighbors}, "
        f"n_samples_fit = {n_available}"
        + ("" if n_queries is None else f", n_samples = {n_queries}")
    )


def label_score(estimator, X, y, n_neighbors):
    """Label mAP of the queries ``X`` of a fitted retriever with database labels.

    The shared ``score``: a database item is relevant to a query of the same
    label; leave-one-out when ``X`` is None.

    Parameters
    ----------
    estimator : object
        A fitted retriever, with ``y_`` and ``kneighbors``.
    X : array-like or None
        Queries, or None (every database item against the others).
    y : array-like or None
        Their labels (None with ``X=None``).
    n_neighbors : int, "all" or None
        Ranking depth (None: the whole database).

    Returns
    -------
    score : float
    """
    check_labels_fitted(estimator, "score")
    if X is None:
        if y is not None:
            raise ValueError("y must be None when X is None (leave-one-out)")
        y = estimator.y_
    ind = estimator.kneighbors(X, n_neighbors="all" if n_neighbors is None else n_neighbors,
                               return_distance=False)
    positives = []
    for q, label in enumerate(np.asarray(y)):
        same = np.flatnonzero(estimator.y_ == label)
        positives.append(same[same != q] if X is None else same)
    return mean_average_precision(ind, positives)


class RetrieverMixin:
    """``predict`` and ``score`` of an estimator with ``kneighbors`` and labels ``y_``.

    ``_fitted_attr`` names the attribute :func:`check_is_fitted` looks for
    (None: any fitted attribute).  :meth:`score` is the label mAP of
    :func:`label_score` (the full rankings of ``kneighbors(X, "all")``).
    """

    _fitted_attr = None

    def predict(self, X=None):
        """Labels of the top results, shape (n_queries, n_neighbors)."""
        check_is_fitted(self, self._fitted_attr)
        check_labels_fitted(self, "predict")
        return self.y_[self.kneighbors(X, return_distance=False)]

    def score(self, X=None, y=None, n_neighbors=None):
        """Label mAP of the queries (leave-one-out when ``X`` is None)."""
        check_is_fitted(self, self._fitted_attr)
        return label_score(self, X, y, n_neighbors)


class WrappingRetrieverMixin(RetrieverMixin):
    """A :class:`RetrieverMixin` that searches with a fitted ``retriever_``."""

    @property
    def n_samples_fit_(self):
        return self.retriever_.n_samples_fit_
