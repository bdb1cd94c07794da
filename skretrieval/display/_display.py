"""Figures of retrieval results, in the style of scikit-learn's ``*Display``.

:class:`RetrievalDisplay` draws queries and their top-``k`` results in a
grid, one row per query: the query first (blue frame), then its results
framed by relevance -- green for a positive, orange for a junk item, red for
a negative and grey when the relevance is unknown -- in the style of Fig. 1 of
Babenko et al., "Neural codes for image retrieval" (ECCV 2014).

Like the displays of scikit-learn (:class:`sklearn.metrics.ConfusionMatrixDisplay`,
:class:`sklearn.inspection.PartialDependenceDisplay`), it is built with
:meth:`RetrievalDisplay.from_estimator` (a fitted retrieval pipeline) or
:meth:`RetrievalDisplay.from_predictions` (rankings computed elsewhere), and
drawn by :meth:`RetrievalDisplay.plot`, which stores the matplotlib objects
in attributes ending with an underscore.  matplotlib is an optional
dependency (``pip install skretrieval[demo]``), imported only when drawing.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..extraction._images import Crop, load_image
from ..utils._arrays import similarities_from_distances
from ._checks import (
    Relevance,
    check_int,
    check_names,
    check_rankings,
    check_scores,
    select_queries,
)

__all__ = ["RetrievalDisplay"]

_INSTALL_HINT = "pip install skretrieval[demo]"

QUERY_COLOUR = "tab:blue"
# frame colours by relevance (None: unknown)
_FRAME_COLOURS = {1: "tab:green", -1: "tab:orange", 0: "tab:red", None: "tab:gray"}
_TITLE_COLOURS = {1: "black", -1: "tab:orange", 0: "tab:red", None: "black"}
_FRAME_WIDTH = 4
_WSPACE = 0.06


def _check_matplotlib(caller):
    """Import and return ``matplotlib.pyplot``, or raise a helpful ImportError.

    No backend is forced: matplotlib chooses its default one (Agg where
    there is no display), and a backend chosen by the user is kept.
    """
    try:
        import matplotlib  # noqa: F401
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            f"{caller} needs matplotlib, which is not installed; install it with "
            f"`{_INSTALL_HINT}`"
        ) from exc
    return plt


def _root_figure(obj):
    """The top-level Figure of an Axes, a SubFigure or a Figure."""
    from matplotlib.figure import Figure

    while not isinstance(obj, Figure):
        obj = obj.figure
    return obj


def _frame(ax, colour, width=_FRAME_WIDTH):
    """Hide the ticks of ``ax`` and draw its four spines as a coloured frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def _as_image_list(images, name):
    """A list of image items (paths, PIL images, arrays, Crops)."""
    if isinstance(images, (str, bytes, os.PathLike, Image.Image, Crop)):
        raise TypeError(
            f"{name} must be a list of images (paths, PIL images, arrays or "
            f"Crop objects), got a single {type(images).__name__}"
        )
    if isinstance(images, np.ndarray) and images.ndim < 3:
        raise TypeError(
            f"{name} must be a list of images or a stack of arrays of shape "
            f"(n_images, H, W[, C]), got an array of shape {images.shape}"
        )
    try:
        return list(images)
    except TypeError:
        raise TypeError(
            f"{name} must be a list of images, got {type(images).__name__}"
        ) from None


class RetrievalDisplay:
    """Queries and their top-``k`` results, framed by relevance.

    It is recommended to create a display with :meth:`from_estimator` or
    :meth:`from_predictions`; the constructor only stores (and checks) the
    data of the rows to draw, and :meth:`plot` draws them.  Every row shows
    a query (blue frame, title ``"query"``) followed by its ``k`` results,
    framed by relevance: **green** for a positive, **orange** for a junk item
    (ignored by the metrics, e.g. the "junk" images of Oxford / Paris),
    **red** for a negative and **grey** when the relevance is unknown.  The
    titles give the rank of each result (``#1``, ``#2``...), its similarity
    when known, and the image names when given.

    Images are loaded only when drawn, and only those shown, then reduced so
    that their longest side is at most ``image_size`` pixels (see
    :meth:`plot`), so that a grid of large photographs stays cheap.

    Parameters
    ----------
    rankings : array-like of int of shape (n_queries, k)
        ``rankings[i]`` holds the indices in ``database_images`` of the
        results of query ``i``, best first.
    query_images : list of images of length n_queries
        The queries: anything :func:`skretrieval.load_image` accepts (paths,
        PIL images, arrays, :class:`skretrieval.Crop` -- a crop shows the
        cropped region only).
    database_images : list of images
        The database that ``rankings`` indexes; only the ranked images are
        ever loaded.
    relevance : array-like of int of shape (n_queries, k), default=None
        ``1`` for a positive, ``0`` for a negative, ``-1`` for a junk result;
        ``None`` means unknown (grey frames).
    similarities : array-like of float of shape (n_queries, k), default=None
        Score of every result, shown in its title after ``score_name``.
    query_names : list of str of length n_queries, default=None
        Names shown under the query titles.
    database_names : list of str of length n_database, default=None
        Names shown under the result titles.
    score_name : str, default="sim"
        Label of ``similarities`` in the titles (``"dist"`` for distances).

    Attributes
    ----------
    axes_ : ndarray of matplotlib Axes of shape (n_queries, k + 1)
        ``axes_[i, 0]`` shows query ``i`` and ``axes_[i, r]`` its ``r``-th
        result.
    images_ : ndarray of matplotlib AxesImage of shape (n_queries, k + 1)
        The drawn images.
    bounding_ax_ : matplotlib Axes or None
        The axes that holds the grid when ``plot`` was given a single axes,
        else ``None``.
    figure_ : matplotlib Figure
        The (top-level) figure of the grid.

    See Also
    --------
    RetrievalDisplay.from_estimator : Search a fitted pipeline and draw.
    RetrievalDisplay.from_predictions : Draw rankings computed elsewhere.
    skretrieval.metrics.mean_average_precision : The metric that positives
        and junk refer to.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import RetrievalDisplay
    >>> rng = np.random.default_rng(0)
    >>> database = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(4)]
    >>> display = RetrievalDisplay(
    ...     [[2, 0, 3]], [database[2]], database,
    ...     relevance=[[1, -1, 0]], similarities=[[1.0, 0.5, 0.2]],
    ... ).plot()
    >>> display.axes_.shape
    (1, 4)
    >>> display.axes_[0, 1].get_title()
    '#1  sim 1.000'
    """

    def __init__(self, rankings, query_images, database_images, *, relevance=None,
                 similarities=None, query_names=None, database_names=None,
                 score_name="sim"):
        self.query_images = _as_image_list(query_images, "query_images")
        self.database_images = _as_image_list(database_images, "database_images")
        self.rankings = check_rankings(rankings, len(self.database_images))
        n_queries, k = self.rankings.shape
        if n_queries != len(self.query_images):
            raise ValueError(
                f"rankings must have one row per query image: {n_queries} rows "
                f"for {len(self.query_images)} query images"
            )
        if n_queries < 1 or k < 1:
            raise ValueError(
                f"nothing to draw: rankings of shape {self.rankings.shape} (need at "
                "least one query and k >= 1 results)"
            )
        if relevance is not None:
            relevance = np.asarray(relevance)
            if relevance.shape != self.rankings.shape:
                raise ValueError(
                    f"relevance of shape {relevance.shape} does not match the "
                    f"rankings of shape {self.rankings.shape}"
                )
            bad = ~np.isin(relevance, (-1, 0, 1))
            if bad.any():
                raise ValueError(
                    "relevance must hold 1 (positive), 0 (negative) or -1 (junk); "
                    f"got {np.unique(relevance[bad]).tolist()}"
                )
            relevance = relevance.astype(np.int8)
        self.relevance = relevance
        if similarities is not None:
            similarities = np.asarray(similarities, dtype=float)
            if similarities.shape != self.rankings.shape:
                raise ValueError(
                    f"similarities of shape {similarities.shape} do not match the "
                    f"rankings of shape {self.rankings.shape}"
                )
        self.similarities = similarities
        self.query_names = check_names(query_names, n_queries, "query_names")
        self.database_names = check_names(
            database_names, len(self.database_images), "database_names")
        self.score_name = str(score_name)
        self._thumbnails = {}

    # ------------------------------------------------------------------
    # drawing
    # ------------------------------------------------------------------
    def _thumbnail(self, which, index, image_size):
        """The image, loaded once and reduced to ``image_size`` (longest side)."""
        key = (which, index, image_size)
        if key not in self._thumbnails:
            items = self.query_images if which == "query" else self.database_images
            img = load_image(items[index], index=index)
            h, w = img.shape[:2]
            if image_size is not None and max(h, w) > image_size:
                s = image_size / max(h, w)
                size = (max(1, round(w * s)), max(1, round(h * s)))
                img = np.asarray(Image.fromarray(img).resize(
                    size, Image.LANCZOS, reducing_gap=3.0))
            self._thumbnails[key] = img
        return self._thumbnails[key]

    def _make_axes(self, plt, ax, fig, n_rows, n_cols, hspace, title):
        """Create or check the grid of axes; return (axes, figure, bounding)."""
        from matplotlib.axes import Axes
        from matplotlib.figure import FigureBase

        if ax is not None and fig is not None:
            raise ValueError("give ax or fig, not both")
        if fig is not None:
            if not isinstance(fig, FigureBase):
                raise TypeError(
                    f"fig must be a matplotlib Figure or SubFigure, got "
                    f"{type(fig).__name__}")
            axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={
                "wspace": _WSPACE, "hspace": hspace})
            if title:
                fig.suptitle(title, fontsize=11)
            return axes, _root_figure(fig), None
        if ax is None:
            text_lines = 2 if self._has_names() else 1
            row_height = 1.45 + 0.16 * text_lines  # inches: a 3:2 image, title, gap
            top_margin = 0.12 + 0.16 * text_lines + (0.35 if title else 0.0)
            height = row_height * n_rows + top_margin
            figure, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                                        figsize=(2.1 * n_cols, height))
            figure.subplots_adjust(left=0.015, right=0.985, bottom=0.06 / height,
                                   top=1 - top_margin / height, wspace=_WSPACE,
                                   hspace=hspace)
            if title:
                figure.suptitle(title, fontsize=11, y=1 - 0.08 / height, va="top")
            return axes, figure, None
        if isinstance(ax, Axes):
            # as PartialDependenceDisplay: a single axes bounds the grid
            if not ax.axison:
                raise ValueError(
                    "The ax was already used in another plot function, please "
                    "set ax=display.axes_ instead"
                )
            spec = ax.get_subplotspec()
            if spec is None:
                raise ValueError(
                    "a single ax must be a subplot (plt.subplots, "
                    "fig.add_subplot) to hold the grid; pass an array of "
                    f"{n_rows * n_cols} axes instead"
                )
            from matplotlib.gridspec import GridSpecFromSubplotSpec

            ax.set_axis_off()
            grid = GridSpecFromSubplotSpec(n_rows, n_cols, subplot_spec=spec,
                                           wspace=_WSPACE, hspace=hspace)
            parent = spec.get_gridspec().figure or ax.figure
            axes = np.empty((n_rows, n_cols), dtype=object)
            for i, cell in enumerate(grid):
                axes.flat[i] = parent.add_subplot(cell)
            if title:
                text_lines = 2 if self._has_names() else 1
                ax.set_title(title, fontsize=11, pad=6 + 12 * text_lines)
            return axes, _root_figure(ax), ax
        axes = np.asarray(ax, dtype=object)
        if axes.size != n_rows * n_cols:
            raise ValueError(
                f"Expected ax to have {n_rows * n_cols} axes ({n_rows} queries x "
                f"{n_cols} columns: the query and k={n_cols - 1} results), got "
                f"{axes.size}"
            )
        if not all(isinstance(a, Axes) for a in axes.flat):
            raise TypeError("ax must be None, a matplotlib Axes or an array of Axes")
        axes = axes.reshape(n_rows, n_cols)
        figure = _root_figure(axes[0, 0])
        if title:
            figure.suptitle(title, fontsize=11)
        return axes, figure, None

    def _has_names(self):
        return self.query_names is not None or self.database_names is not None

    def plot(self, *, ax=None, fig=None, title=None, image_size=256):
        """Draw the queries and their results.

        Parameters
        ----------
        ax : matplotlib Axes or array-like of Axes, default=None
            Where to draw:

            - ``None``: a new figure sized for the grid
              (:func:`matplotlib.pyplot.subplots`);
            - a single Axes (a subplot): it is turned off and its area is
              divided into the grid (as
              :class:`sklearn.inspection.PartialDependenceDisplay` does);
            - an array-like of ``n_queries * (k + 1)`` Axes: drawn into them,
              row by row.
        fig : matplotlib Figure or SubFigure, default=None
            Draw the grid over the whole area of this (empty) figure, which
            keeps its size.  Cannot be combined with ``ax``.
        title : str, default=None
            Title of the grid (the figure's suptitle, or the title of the
            bounding axes).
        image_size : int or None, default=256
            Longest side, in pixels, to which larger images are reduced
            before drawing; ``None`` draws them at full size.

        Returns
        -------
        display : RetrievalDisplay
            The object, with ``axes_``, ``images_``, ``bounding_ax_`` and
            ``figure_`` set.

        Raises
        ------
        ImportError
            If matplotlib is not installed (``pip install skretrieval[demo]``).
        ValueError
            If both ``ax`` and ``fig`` are given, if an array of axes does not
            hold ``n_queries * (k + 1)`` axes, or if ``ax`` was already used as
            the bounding axes of another grid.
        skretrieval.ImageLoadError
            If a drawn image cannot be loaded.
        """
        plt = _check_matplotlib("RetrievalDisplay.plot")
        if image_size is not None:
            image_size = check_int(image_size, "image_size")
        n_rows, k = self.rankings.shape
        n_cols = k + 1
        text_lines = 2 if self._has_names() else 1
        hspace = 0.16 * text_lines / 1.45 + 0.08
        axes, figure, bounding = self._make_axes(plt, ax, fig, n_rows, n_cols,
                                                 hspace, title)
        images = np.empty((n_rows, n_cols), dtype=object)
        for row in range(n_rows):
            a = axes[row, 0]
            images[row, 0] = a.imshow(self._thumbnail("query", row, image_size))
            _frame(a, QUERY_COLOUR, _FRAME_WIDTH + 1)
            head = "query"
            if self.query_names is not None:
                head += f"\n{self.query_names[row]}"
            a.set_title(head, fontsize=9, fontweight="bold", color=QUERY_COLOUR)
            for r in range(k):
                idx = int(self.rankings[row, r])
                a = axes[row, r + 1]
                images[row, r + 1] = a.imshow(self._thumbnail("database", idx,
                                                              image_size))
                rel = None if self.relevance is None else int(self.relevance[row, r])
                _frame(a, _FRAME_COLOURS[rel])
                head = f"#{r + 1}"
                if self.similarities is not None:
                    head += f"  {self.score_name} {self.similarities[row, r]:.3f}"
                if self.database_names is not None:
                    head += f"\n{self.database_names[idx]}"
                a.set_title(head, fontsize=8, color=_TITLE_COLOURS[rel])
        self.axes_ = axes
        self.images_ = images
        self.bounding_ax_ = bounding
        self.figure_ = figure
        return self

    # ------------------------------------------------------------------
    # constructors
    # ------------------------------------------------------------------
    @classmethod
    def _from_selected(cls, rankings, queries, query_images, database_images,
                       relevance, similarities, query_names, database_names,
                       score_name, ax, fig, title, image_size, path):
        """Build (rows ``queries`` of the query collection), plot, save."""
        display = cls(
            rankings,
            [query_images[q] for q in queries],
            database_images,
            relevance=relevance,
            similarities=similarities,
            query_names=None if query_names is None else [query_names[q] for q in queries],
            database_names=database_names,
            score_name=score_name,
        )
        display.plot(ax=ax, fig=fig, title=title, image_size=image_size)
        if path is not None:
            display.figure_.savefig(os.fspath(path), format="png", dpi=100)
        return display

    @classmethod
    def from_predictions(cls, rankings, query_images, database_images, *,
                         positives=None, junk=None, query_labels=None,
                         database_labels=None, similarities=None, k=5, queries=None,
                         n_queries=6, query_names=None, database_names=None,
                         score_name="sim", ax=None, fig=None, title=None,
                         image_size=256, path=None):
        """Draw rankings computed elsewhere, framed by their relevance.

        The relevance of every result comes from ``positives`` / ``junk``
        (per-query lists of database indices, e.g. the ground truth of
        Oxford / Paris), or from labels (a result is positive when its
        database label equals the query's label, negative otherwise); with
        neither, the frames are grey.

        Parameters
        ----------
        rankings : array-like of int of shape (n_query_images, >= k)
            ``rankings[q]`` holds the database indices ranked for query
            ``q``, best first (e.g. the ``ind`` of
            :meth:`NearestNeighborRetriever.kneighbors`).
        query_images : list of images of length n_query_images
            Anything :func:`skretrieval.load_image` accepts, including
            :class:`skretrieval.Crop`.  Only the drawn queries are loaded.
        database_images : list of images
            The images ``rankings`` indexes.  Only the drawn results are
            loaded.
        positives : list of iterables of int, default=None
            ``positives[q]``: the database indices relevant to query ``q``.
        junk : list of iterables of int, default=None
            ``junk[q]``: the database indices to ignore for query ``q``
            (orange frames).  Needs ``positives`` or the labels.  With the
            labels, junk takes precedence over a matching label; with
            ``positives``, an index in both raises a ValueError.
        query_labels : array-like of shape (n_query_images,), default=None
            Labels of the queries; with ``database_labels``, equal labels
            mean positive.  Not combinable with ``positives``.
        database_labels : array-like of shape (n_database,), default=None
            Labels of the database images.
        similarities : array-like of float of shape (n_query_images, >= k), default=None
            Score of every ranked item (e.g. ``1 - distance``), shown in the
            titles.
        k : int, default=5
            Number of results drawn per query (at most the number of columns
            of ``rankings``).
        queries : sequence of int, default=None
            Indices of the queries to draw (rows of ``rankings``), one row
            each, in this order; ``None`` draws the first ``n_queries``.
        n_queries : int, default=6
            Number of rows when ``queries`` is None.
        query_names, database_names : list of str, default=None
            Names shown under the titles.
        score_name : str, default="sim"
            Label of ``similarities`` in the titles.
        ax, fig, title, image_size
            Passed to :meth:`plot`.
        path : str or os.PathLike, default=None
            If given, the figure is saved there as a PNG (100 dpi).

        Returns
        -------
        display : RetrievalDisplay
            The drawn display.

        Raises
        ------
        ImportError
            If matplotlib is not installed (``pip install skretrieval[demo]``).
        ValueError
            If the shapes do not match, ``k < 1`` or ``k`` exceeds the ranking
            length, a query index is out of range, ``positives`` and labels
            are both given, or an index is both positive and junk.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import RetrievalDisplay
        >>> rng = np.random.default_rng(0)
        >>> database = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(5)]
        >>> rankings = np.array([[0, 3, 1, 4], [1, 2, 0, 3]])
        >>> display = RetrievalDisplay.from_predictions(
        ...     rankings, database[:2], database, positives=[[0, 1], [1]],
        ...     junk=[[3], []], k=3)
        >>> display.relevance
        array([[ 1, -1,  1],
               [ 1,  0,  0]], dtype=int8)
        """
        _check_matplotlib(f"{cls.__name__}.from_predictions")
        query_images = _as_image_list(query_images, "query_images")
        database_images = _as_image_list(database_images, "database_images")
        n_total, n_database = len(query_images), len(database_images)
        rankings = np.asarray(rankings)
        if rankings.ndim != 2 or rankings.shape[0] != n_total:
            raise ValueError(
                "rankings must have one row per query image, shape "
                f"(n_query_images, >= k); got shape {rankings.shape} for {n_total} "
                "query images"
            )
        k = check_int(k, "k")
        if k > rankings.shape[1]:
            raise ValueError(
                f"k={k} but rankings has only {rankings.shape[1]} columns"
            )
        source = Relevance(n_total, n_database, positives=positives, junk=junk,
                            query_labels=query_labels, database_labels=database_labels)
        query_names = check_names(query_names, n_total, "query_names")
        if similarities is not None:
            similarities = check_scores(similarities, (n_total, k))
        queries = select_queries(queries, n_queries, n_total)
        selected = check_rankings(rankings[queries, :k], n_database)
        return cls._from_selected(
            selected, queries, query_images, database_images,
            source(queries, selected),
            None if similarities is None else similarities[queries],
            query_names, database_names, score_name, ax, fig, title, image_size, path)

    @classmethod
    def from_estimator(cls, estimator, query_images, database_images, *,
                       positives=None, junk=None, query_labels=None,
                       database_labels=None, k=5, queries=None, n_queries=6,
                       query_names=None, database_names=None, ax=None, fig=None,
                       title=None, image_size=256, path=None):
        """Search the queries with a fitted retrieval pipeline and draw them.

        The selected queries are transformed by ``estimator[:-1]`` (e.g.
        extractor, pooler, whitening) and searched with the final
        :class:`NearestNeighborRetriever` (its :meth:`~NearestNeighborRetriever.kneighbors`).  The
        titles show the similarity: ``1 - distance`` for the ``"cosine"``
        metric, the inner product for ``"inner_product"``, and the distance
        (``dist``) for ``"euclidean"``.

        Parameters
        ----------
        estimator : sklearn.pipeline.Pipeline
            A fitted pipeline ending with a
            :class:`~skretrieval.NearestNeighborRetriever`, fitted on
            ``database_images``.
        query_images : list of images
            Anything :func:`skretrieval.load_image` accepts, including
            :class:`skretrieval.Crop`.  Only the selected queries are
            transformed and loaded.
        database_images : list of images
            The images the pipeline was fitted on, in the same order; only
            the drawn results are loaded.
        positives, junk : list of iterables of int, default=None
            Per-query database indices of the positives / junk items, as in
            :meth:`from_predictions`.
        query_labels : array-like of shape (n_query_images,), default=None
            Labels of the queries; a result is positive when its database
            label is equal.
        database_labels : array-like of shape (n_database,), default=None
            Labels of the database images; ``None`` uses the labels the
            retriever was fitted with (its ``y_``) when ``query_labels`` is
            given.
        k : int, default=5
            Number of results drawn per query.
        queries : sequence of int, default=None
            Indices of the queries to draw; ``None`` draws the first
            ``n_queries``.
        n_queries : int, default=6
            Number of rows when ``queries`` is None.
        query_names, database_names : list of str, default=None
            Names shown under the titles.
        ax, fig, title, image_size
            Passed to :meth:`plot`.
        path : str or os.PathLike, default=None
            If given, the figure is saved there as a PNG (100 dpi).

        Returns
        -------
        display : RetrievalDisplay
            The drawn display.

        Raises
        ------
        ImportError
            If matplotlib is not installed (``pip install skretrieval[demo]``).
        TypeError
            If ``estimator`` is not a pipeline ending with a retriever.
        ValueError
            If ``database_images`` does not match the fitted database, ``k`` is
            not in ``[1, n_database]``, a query index is out of range, or the
            relevance inputs do not match (see :meth:`from_predictions`).

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn.pipeline import make_pipeline
        >>> from skretrieval import (ConvFeatureExtractor, GeMPooler,
        ...                          NearestNeighborRetriever, RetrievalDisplay)
        >>> rng = np.random.default_rng(0)
        >>> images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
        >>> pipe = make_pipeline(
        ...     ConvFeatureExtractor(weights=None, max_size=64, device="cpu"),
        ...     GeMPooler(), NearestNeighborRetriever()).fit(images, [0, 0, 1, 1])
        >>> display = RetrievalDisplay.from_estimator(
        ...     pipe, images[:2], images, query_labels=[0, 0], k=2)
        >>> display.axes_.shape, display.score_name
        ((2, 3), 'sim')
        """
        _check_matplotlib(f"{cls.__name__}.from_estimator")
        from sklearn.utils.validation import check_is_fitted

        steps = getattr(estimator, "steps", None)
        retriever = estimator[-1] if steps else None
        if retriever is None or not hasattr(retriever, "kneighbors"):
            raise TypeError(
                "estimator must be a fitted Pipeline ending with a "
                f"NearestNeighborRetriever, got {type(estimator).__name__}"
            )
        check_is_fitted(retriever)
        query_images = _as_image_list(query_images, "query_images")
        database_images = _as_image_list(database_images, "database_images")
        n_total, n_database = len(query_images), len(database_images)
        if n_database != retriever.n_samples_fit_:
            raise ValueError(
                f"database_images has {n_database} images but the retriever was "
                f"fitted on {retriever.n_samples_fit_}; pass the images the "
                "pipeline was fitted on, in the same order"
            )
        k = check_int(k, "k")
        if k > n_database:
            raise ValueError(f"k={k} but the database has only {n_database} images")
        if (database_labels is None and query_labels is not None
                and positives is None):
            database_labels = getattr(retriever, "y_", None)
            if database_labels is None:
                raise ValueError(
                    "query_labels needs the database labels, but the retriever "
                    "was fitted without them; pass database_labels"
                )
        source = Relevance(n_total, n_database, positives=positives, junk=junk,
                            query_labels=query_labels, database_labels=database_labels)
        query_names = check_names(query_names, n_total, "query_names")
        queries = select_queries(queries, n_queries, n_total)
        selected = [query_images[q] for q in queries]
        X = estimator[:-1].transform(selected) if len(steps) > 1 else selected
        dist, ind = retriever.kneighbors(X, n_neighbors=k)
        dist = np.asarray(dist, dtype=float)
        metric = getattr(retriever, "metric", "cosine")
        if metric in ("cosine", "inner_product"):
            scores, score_name = similarities_from_distances(dist, metric), "sim"
        else:
            scores, score_name = dist, "dist"
        ind = np.asarray(ind, dtype=np.intp)
        return cls._from_selected(
            ind, queries, query_images, database_images, source(queries, ind),
            scores, query_names, database_names, score_name, ax, fig, title,
            image_size, path)
