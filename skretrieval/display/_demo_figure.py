"""A quick figure of rankings over one collection (:func:`plot_rankings`).

Queries and their top results with green / red frames for relevant /
non-relevant results, in the style of Fig. 1 of Babenko et al., "Neural codes
for image retrieval" (ECCV 2014); a thin wrapper of
:meth:`RetrievalDisplay.from_predictions`.
"""

from __future__ import annotations

import numpy as np

from ._display import RetrievalDisplay

__all__ = ["plot_rankings"]

_INSTALL_HINT = "pip install skretrieval[demo]"


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "plotting the demo figure needs matplotlib, which is not installed; "
            f"install it with `{_INSTALL_HINT}`"
        ) from exc
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _default_queries(labels, n_queries):
    """One query per scene where possible, cycling through the views.

    Negative numeric labels (the distractors of the demo collection) are
    never picked, unless every label is negative.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if np.issubdtype(classes.dtype, np.number) and (classes >= 0).any():
        classes = classes[classes >= 0]
    picks = []
    for j in range(n_queries):
        members = np.flatnonzero(labels == classes[(j * len(classes)) // n_queries])
        picks.append(members[j % len(members)])
    return np.asarray(picks)


def plot_rankings(images, labels, rankings, *, n_queries=6, k=5, path=None,
                  similarities=None, queries=None, names=None, title=None):
    """Draw queries and their top-``k`` results, framed by relevance.

    Every row shows a query (blue frame) followed by its ``k`` first results;
    a result is framed green when it has the query's label (relevant) and red
    otherwise, as in Fig. 1 of Babenko et al. (2014).  The titles give the
    rank of each result, its similarity when ``similarities`` is given, and
    the image names when ``names`` is given.  A thin wrapper of
    :meth:`skretrieval.RetrievalDisplay.from_predictions` (the collection
    being both the queries and the database, relevance from the labels) that
    uses the Agg backend.

    Parameters
    ----------
    images : list of ndarray of shape (H, W, 3), dtype uint8
        The collection (queries and database).
    labels : array-like of shape (n_images,)
        Label of every image; equal labels mean relevant.
    rankings : array-like of int of shape (n_images, >= k)
        ``rankings[q]`` is the ranking of the collection for image ``q`` as
        the query, best first (e.g. the leave-one-out ``ind`` of
        ``NearestNeighborRetriever.kneighbors()``).
    n_queries : int, default=6
        Number of rows, when ``queries`` is None.
    k : int, default=5
        Number of results shown per query.
    path : str or os.PathLike, default=None
        If given, the figure is saved there as a PNG.
    similarities : array-like of shape (n_images, >= k), default=None
        Similarity of every ranked item (e.g. ``1 - distance``), shown in the
        titles.
    queries : sequence of int, default=None
        Indices of the query images to show (rows of ``rankings``); None picks
        ``n_queries`` of them, from different labels where possible (never
        from a negative numeric label, which marks a distractor, unless all
        labels are negative).
    names : list of str, default=None
        Names of the images, shown under the query and result titles.
    title : str, default=None
        Title of the whole figure.

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure (drawn with the non-interactive Agg backend).

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install skretrieval[demo]``).
    """
    _pyplot()  # the Agg backend: files only, never a window

    labels = np.asarray(labels)
    rankings = np.asarray(rankings)
    if rankings.ndim != 2 or rankings.shape[0] != len(images):
        raise ValueError(
            "rankings must have one row per image, shape (n_images, >= k); got "
            f"shape {rankings.shape} for {len(images)} images"
        )
    if labels.shape[0] != len(images):
        raise ValueError(f"{labels.shape[0]} labels for {len(images)} images")
    k = min(int(k), rankings.shape[1])
    if k < 1:
        raise ValueError("k must be at least 1 and rankings must not be empty")
    if queries is None:
        queries = _default_queries(labels, int(n_queries))
    queries = [int(q) for q in queries]
    if not queries:
        raise ValueError("no query to plot (n_queries must be at least 1)")
    display = RetrievalDisplay.from_predictions(
        rankings, images, images, query_labels=labels, database_labels=labels,
        similarities=similarities, k=k, queries=queries, query_names=names,
        database_names=names, title=title, path=path,
    )
    return display.figure_
