"""scikit-learn API compliance of the whiteners and the retrievers."""

import numpy as np
from numpy.testing import assert_array_equal
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from skretrieval import (
    DiffusionRetriever,
    KReciprocalRetriever,
    LearnedWhitener,
    NearestNeighborRetriever,
    PCAWhitener,
    QueryExpansionRetriever,
)
from skretrieval.metrics import RetrievalMAP

ESTIMATORS = [
    PCAWhitener(),
    PCAWhitener(n_components=2, whiten_power=0.5),
    PCAWhitener(whiten=False, l2_after=False),
    NearestNeighborRetriever(),
    NearestNeighborRetriever(n_neighbors=2, metric="euclidean", chunk_size=3),
    NearestNeighborRetriever(n_neighbors=2, metric="inner_product"),
    QueryExpansionRetriever(),
    QueryExpansionRetriever(NearestNeighborRetriever(n_neighbors=2), qe_k=2, dba_k=2),
    # needs y (target_tags.required): the checks then fit it with labels
    LearnedWhitener(),
    LearnedWhitener(n_components=2, inter_class="all", l2_before=False),
    DiffusionRetriever(NearestNeighborRetriever(n_neighbors=2), k=3, query_k=2, n_rerank=5),
    DiffusionRetriever(method="spectral", k=3, query_k=2, n_components=4, random_state=0),
    KReciprocalRetriever(NearestNeighborRetriever(n_neighbors=2), n_rerank=6, k1=3, k2=2),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_tags():
    whitener_tags = PCAWhitener().__sklearn_tags__()
    assert whitener_tags.transformer_tags.preserves_dtype == ["float32"]
    retriever_tags = NearestNeighborRetriever().__sklearn_tags__()
    assert retriever_tags.estimator_type is None
    assert not retriever_tags.target_tags.required
    assert LearnedWhitener().__sklearn_tags__().target_tags.required


def test_frozen_whitener_survives_grid_search():
    # GridSearchCV clones the pipeline: a FrozenEstimator clones to itself,
    # so the whitening learned on another collection is kept in every fold.
    rng = np.random.RandomState(0)
    centers = rng.rand(6, 12)
    X_other = np.abs(rng.randn(80, 12))
    y = np.arange(90) % 6
    X = centers[y] + 0.05 * rng.rand(90, 12)
    whitener = PCAWhitener(n_components=6).fit(X_other)
    components = whitener.components_.copy()

    pipe = make_pipeline(FrozenEstimator(whitener), NearestNeighborRetriever())
    assert clone(pipe)[0].estimator is whitener
    search = GridSearchCV(
        pipe,
        {"nearestneighborretriever__metric": ["cosine", "euclidean"]},
        cv=KFold(3, shuffle=True, random_state=0),
    )
    for scoring in (None, RetrievalMAP(), RetrievalMAP(k=5)):
        search.set_params(scoring=scoring).fit(X, y)
        best = search.best_estimator_
        assert_array_equal(best[0].estimator.components_, components)
        assert 0.0 <= search.best_score_ <= 1.0
