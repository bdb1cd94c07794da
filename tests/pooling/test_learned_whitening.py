"""LearnedWhitener (Lw) against a pair-by-pair numpy reference; API and errors."""

import numpy as np
import pytest
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline

from skretrieval import LearnedWhitener, NearestNeighborRetriever, PCAWhitener

from _helpers import assert_rankings_equivalent


def _data(n_per=8, n_classes=6, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per)
    # anisotropic intra-class noise: whitening by it changes the rankings
    noise = rng.normal(size=(len(y), dim)) * np.linspace(0.05, 1.5, dim)
    return rng.normal(size=(n_classes, dim))[y] + noise, y


def _reference(X, y, n_components, inter_class="non_matching", shrinkage=1e-3):
    """Radenović et al.'s Lw, every pair enumerated, numpy eigh."""
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    n, D = X.shape
    pos, neg = [], []
    for i in range(n):
        for j in range(i + 1, n):
            d = np.outer(X[i] - X[j], X[i] - X[j])
            (pos if y[i] == y[j] else neg).append(d)
    C_S = np.mean(pos, axis=0)
    C_D = np.mean(neg, axis=0) if inter_class == "non_matching" else np.cov(X.T, bias=True)
    C_S = C_S + shrinkage * np.trace(C_S) / D * np.eye(D)
    lam, V = np.linalg.eigh(C_S)
    W = V @ np.diag(lam ** -0.5) @ V.T
    ev, R = np.linalg.eigh(W @ C_D @ W)
    top = np.argsort(-ev)[:n_components]
    P = R[:, top].T @ W
    mu = X.mean(axis=0)
    return ev[top], lambda Z: _l2((Z / np.linalg.norm(Z, axis=1, keepdims=True) - mu) @ P.T)


def _l2(Z):
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


@pytest.mark.parametrize("n_components, inter_class", [(None, "non_matching"), (4, "all"),
                                                       (6, "non_matching")])
def test_matches_the_pairwise_reference(n_components, inter_class):
    X, y = _data()
    lw = LearnedWhitener(n_components=n_components, inter_class=inter_class).fit(X, y)
    ev, transform = _reference(X, y, n_components or X.shape[1], inter_class)
    np.testing.assert_allclose(lw.eigenvalues_, ev, rtol=1e-8)
    Q, _ = _data(n_per=2, seed=1)
    ours, ref = lw.transform(Q), transform(Q)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    # eigenvector signs are a convention: compare similarities, then rankings
    np.testing.assert_allclose(ours @ lw.transform(X).T, ref @ transform(X).T, atol=1e-5)
    sims = ref @ transform(X).T
    ind = np.argsort(-sims, axis=1, kind="stable")
    dist, got = NearestNeighborRetriever(n_neighbors=len(X)).fit(lw.transform(X)).kneighbors(
        ours)
    assert_rankings_equivalent(dist, got, 1 - np.take_along_axis(sims, ind, axis=1), ind,
                               atol=1e-5)


def test_whitening_equalises_the_matching_pair_covariance():
    X, y = _data(n_per=20)
    lw = LearnedWhitener(shrinkage=0.0, l2_after=False).fit(X, y)
    Z = lw.transform(X).astype(np.float64)
    diffs = [Z[i] - Z[j] for i in range(len(Z)) for j in range(i + 1, len(Z)) if y[i] == y[j]]
    C = np.mean([np.outer(d, d) for d in diffs], axis=0)
    np.testing.assert_allclose(C, np.eye(X.shape[1]), atol=1e-4)


def test_beats_pca_whitening_on_anisotropic_noise():
    X, y = _data(n_per=10, n_classes=8, seed=2)
    Xq, yq = _data(n_per=3, n_classes=8, seed=2)  # same class centres, new noise
    Xq = Xq + np.random.default_rng(3).normal(size=Xq.shape) * np.linspace(0.05, 1.5, 10)
    scores = {}
    for name, w in (("lw", LearnedWhitener(n_components=8)), ("pca", PCAWhitener(8))):
        pipe = make_pipeline(FrozenEstimator(w.fit(X, y)), NearestNeighborRetriever())
        scores[name] = pipe.fit(X, y).score(Xq, yq)
    assert scores["lw"] > scores["pca"]


def test_set_output_and_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    lw = LearnedWhitener(n_components=3).set_output(transform="pandas").fit(X, y)
    out = lw.transform(X)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["learnedwhitener0", "learnedwhitener1", "learnedwhitener2"]


def test_errors():
    X, y = _data()
    with pytest.raises(ValueError, match="requires y"):
        LearnedWhitener().fit(X)
    with pytest.raises(ValueError, match="matching pairs"):
        LearnedWhitener().fit(X, np.arange(len(X)))
    with pytest.raises(ValueError, match="two labels"):
        LearnedWhitener().fit(X, np.zeros(len(X)))
    LearnedWhitener(inter_class="all").fit(X, np.zeros(len(X)))  # fine with all
    with pytest.raises(ValueError, match="at most n_features"):
        LearnedWhitener(n_components=11).fit(X, y)
    with pytest.raises(ValueError, match="shrinkage"):
        LearnedWhitener(shrinkage=-1).fit(X, y)
