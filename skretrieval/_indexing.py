"""Growing a fitted retrieval pipeline: add images without refitting it."""

from __future__ import annotations

from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

__all__ = ["add_to_index"]


def add_to_index(pipeline, X, y=None, *, ids=None):
    """Add database items to a fitted retrieval pipeline.

    Transforms ``X`` with all the steps but the last (extractor, pooler,
    whitening...) as they are, without refitting any of them, and adds the
    descriptors to the last step with its ``partial_fit`` (e.g.
    :meth:`NearestNeighborRetriever.partial_fit`).  With an exact
    (``algorithm="brute"``) retriever, the result is the pipeline one would
    get by fitting the retriever on all the items with the upstream steps
    fitted as they are.

    Parameters
    ----------
    pipeline : Pipeline or estimator
        A fitted :class:`~sklearn.pipeline.Pipeline` whose last step has a
        ``partial_fit`` method (or such an estimator alone, which then gets
        ``X`` unchanged).

    X : list or array-like
        The new items, as the first step takes them (image paths, PIL images,
        arrays... for a pipeline starting with a
        :class:`~skretrieval.ConvFeatureExtractor`).

    y : array-like of shape (n_items,), default=None
        Their labels: required if the retriever was fitted with labels.

    ids : array-like of shape (n_items,), default=None
        Their ids (unique, not yet in the database; e.g. image paths).
        ``None`` numbers them after the largest integer id so far.

    Returns
    -------
    pipeline : Pipeline or estimator
        The same object, with the new items in its database.

    See Also
    --------
    NearestNeighborRetriever.partial_fit : The step that stores the items.
    NearestNeighborRetriever.remove : Remove items by id.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from skretrieval import NearestNeighborRetriever, PCAWhitener, add_to_index
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_pipeline(PCAWhitener(n_components=4), NearestNeighborRetriever())
    >>> pipe = pipe.fit(rng.normal(size=(50, 8)))
    >>> _ = add_to_index(pipe, rng.normal(size=(5, 8)))
    >>> pipe[-1].n_samples_fit_, pipe[-1].ids_[-1]
    (55, np.int64(54))
    """
    if isinstance(pipeline, Pipeline):
        last = pipeline._final_estimator
        upstream = pipeline[:-1] if len(pipeline) > 1 else None
    else:
        last, upstream = pipeline, None
    if last is None or last == "passthrough" or not hasattr(last, "partial_fit"):
        raise TypeError(
            f"add_to_index needs a pipeline whose last step has a partial_fit "
            f"method (e.g. NearestNeighborRetriever), got {type(last).__name__}"
        )
    check_is_fitted(last)
    Xt = X if upstream is None else upstream.transform(X)
    last.partial_fit(Xt, y, ids=ids)
    return pipeline
