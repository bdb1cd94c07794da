"""Tests of skretrieval.PCAWhitener."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import normalize
from sklearn.utils._param_validation import InvalidParameterError

from skretrieval import NearestNeighborRetriever, PCAWhitener


def _data(n_samples=300, n_features=20, seed=0):
    rng = np.random.RandomState(seed)
    # correlated, positive features, like pooled ReLU activations
    mixing = rng.rand(n_features, n_features)
    return np.abs(rng.randn(n_samples, n_features) @ mixing) + 0.1


def _manual_whitening(X_train, X, n_components, power, eps=1e-8):
    """Reference: L2, centre, eigenvectors of the covariance, scale, L2."""
    Xn = X_train / np.linalg.norm(X_train, axis=1, keepdims=True)
    mean = Xn.mean(axis=0)
    cov = np.cov(Xn, rowvar=False)  # ddof=1, as sklearn's explained_variance_
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:n_components]
    eigval, eigvec = eigval[order], eigvec[:, order]
    Z = (X / np.linalg.norm(X, axis=1, keepdims=True) - mean) @ eigvec
    Z *= (eigval + eps) ** (-power / 2)
    return Z / np.linalg.norm(Z, axis=1, keepdims=True), eigval, eigvec


@pytest.mark.parametrize("power", [1.0, 0.5, 0.0])
def test_matches_manual_computation(power):
    X_train, X_test = _data(seed=0), _data(n_samples=50, seed=1)
    whitener = PCAWhitener(n_components=10, whiten_power=power).fit(X_train)
    Z_ref, eigval, eigvec = _manual_whitening(X_train, X_test, 10, power)

    assert whitener.n_components_ == 10
    assert_allclose(whitener.explained_variance_, eigval, rtol=1e-6)
    # eigenvectors are defined up to their sign
    signs = np.sign(np.sum(whitener.components_ * eigvec.T, axis=1))
    assert_allclose(whitener.components_, signs[:, None] * eigvec.T, atol=1e-6)

    Z = whitener.transform(X_test)
    assert Z.dtype == np.float32
    assert Z.shape == (50, 10)
    assert_allclose(Z, Z_ref * signs, atol=1e-5)


def test_fitted_attributes():
    X = _data()
    whitener = PCAWhitener(n_components=5, eps=1e-6).fit(X)
    assert isinstance(whitener.pca_, PCA)
    assert whitener.components_.shape == (5, X.shape[1])
    assert whitener.mean_.shape == (X.shape[1],)
    assert_allclose(whitener.mean_, normalize(X).mean(axis=0))
    assert_allclose(
        whitener.scale_, (whitener.explained_variance_ + 1e-6) ** -0.5, rtol=1e-12
    )
    assert whitener.n_features_in_ == X.shape[1]


def test_no_whitening_is_pca_projection():
    X_train, X_test = _data(seed=0), _data(n_samples=40, seed=2)
    whitener = PCAWhitener(n_components=8, whiten=False, whiten_power=0.7)
    Z = whitener.fit(X_train).transform(X_test)
    pca = PCA(n_components=8).fit(normalize(X_train))
    Z_ref = normalize(pca.transform(normalize(X_test)))
    assert_allclose(Z, Z_ref, atol=1e-6)
    assert_array_equal(whitener.scale_, np.ones(8))


def test_whitened_training_data_has_identity_covariance():
    X = _data()
    Z = PCAWhitener(n_components=10, l2_after=False).fit_transform(X)
    assert_allclose(Z.mean(axis=0), 0.0, atol=1e-4)
    assert_allclose(np.cov(Z, rowvar=False), np.eye(10), atol=1e-4)


def test_partial_whitening_shrinks_eigenvalues():
    X = _data()
    whitener = PCAWhitener(n_components=6, l2_after=False, whiten_power=0.5)
    Z = whitener.fit_transform(X).astype(np.float64)
    lam = whitener.explained_variance_
    expected = np.diag(lam * (lam + whitener.eps) ** -0.5)
    assert_allclose(np.cov(Z, rowvar=False), expected, rtol=1e-4, atol=1e-7)


def test_without_l2_normalisations():
    X_train, X_test = _data(seed=0), _data(n_samples=30, seed=3)
    whitener = PCAWhitener(n_components=4, whiten=False, l2_before=False)
    whitener.set_params(l2_after=False).fit(X_train)
    pca = PCA(n_components=4).fit(X_train)
    # float32 against sklearn's float64 projection, of values up to ~10 (no L2)
    assert_allclose(whitener.transform(X_test), pca.transform(X_test), rtol=1e-5, atol=1e-5)


def test_n_components_as_variance_fraction_and_default():
    X = _data()
    whitener = PCAWhitener(n_components=0.9).fit(X)
    ratio = np.cumsum(whitener.pca_.explained_variance_ratio_)
    assert ratio[-1] >= 0.9
    assert whitener.n_components_ == 1 or ratio[-2] < 0.9
    assert PCAWhitener().fit(X).n_components_ == X.shape[1]


def test_dtypes_and_norms():
    X = _data()
    whitener = PCAWhitener(n_components=6).fit(X)
    for dtype in (np.float64, np.float32, np.int64):
        Z = whitener.transform(X.astype(dtype))
        assert Z.dtype == np.float32
        assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)
    # float32 and float64 inputs give the same result
    assert_allclose(
        whitener.transform(X.astype(np.float32)), whitener.transform(X), atol=1e-5
    )
    # the PCA is fitted in float64 even from float32 data
    assert PCAWhitener(n_components=6).fit(X.astype(np.float32)).mean_.dtype == (
        np.float64
    )


def test_zero_rows_without_warnings():
    # the L2 normalisation leaves zero rows zero (no division by zero); they
    # are then centred, so they map to the whitened -mean
    X = _data()
    X_zero = X.copy()
    X_zero[[3, 7]] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whitener = PCAWhitener(n_components=5).fit(X_zero)
        Z = whitener.transform(np.zeros((2, X.shape[1])))
    assert_allclose(whitener.mean_, normalize(X_zero).mean(axis=0))
    assert np.all(np.isfinite(Z))
    assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)


def test_zero_projection_stays_zero_without_warnings():
    # a sample equal to the mean projects to zero; the final L2 keeps it zero
    X = _data()
    whitener = PCAWhitener(n_components=5, l2_before=False).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Z = whitener.transform(whitener.mean_[np.newaxis, :])
    assert_allclose(Z, 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "value, message", [(np.nan, "Input X contains NaN"), (np.inf, "infinity")]
)
def test_non_finite_input_errors(value, message):
    X = _data()
    X_bad = X.copy()
    X_bad[2, 3] = value
    with pytest.raises(ValueError, match=message):
        PCAWhitener().fit(X_bad)
    whitener = PCAWhitener(n_components=3).fit(X)
    with pytest.raises(ValueError, match=message):
        whitener.transform(X_bad)


def test_input_errors():
    X = _data()
    with pytest.raises(ValueError, match="1 sample"):
        PCAWhitener().fit(X[:1])
    with pytest.raises(ValueError, match="0 sample"):
        PCAWhitener().fit(X[:0])
    whitener = PCAWhitener(n_components=3).fit(X)
    with pytest.raises(ValueError, match="X has 5 features, but PCAWhitener"):
        whitener.transform(X[:, :5])
    with pytest.raises(NotFittedError):
        PCAWhitener().transform(X)
    with pytest.raises(InvalidParameterError, match="whiten_power"):
        PCAWhitener(whiten_power=-1.0).fit(X)
    with pytest.raises(InvalidParameterError, match="n_components"):
        PCAWhitener(n_components=1.5).fit(X)
    with pytest.raises(ValueError, match="n_components=100"):
        PCAWhitener(n_components=100).fit(X)


def test_feature_names_out():
    X = _data()
    whitener = PCAWhitener(n_components=4)
    with pytest.raises(NotFittedError):
        whitener.get_feature_names_out()
    whitener.fit(X)
    assert_array_equal(
        whitener.get_feature_names_out(),
        ["pcawhitener0", "pcawhitener1", "pcawhitener2", "pcawhitener3"],
    )


def test_set_output_default_is_ndarray():
    X = _data()
    Z = PCAWhitener(n_components=3).set_output(transform="default").fit_transform(X)
    assert isinstance(Z, np.ndarray)


def test_set_output_pandas():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(_data(), columns=[f"f{i}" for i in range(20)])
    whitener = PCAWhitener(n_components=3).set_output(transform="pandas")
    Z = whitener.fit_transform(X)
    assert isinstance(Z, pd.DataFrame)
    assert list(Z.columns) == ["pcawhitener0", "pcawhitener1", "pcawhitener2"]
    assert_array_equal(whitener.feature_names_in_, X.columns)


def test_frozen_whitener_in_pipeline_keeps_its_training():
    # Learn the whitening on collection A, search collection B (the
    # Paris6k -> Oxford5k protocol).
    X_a, X_b = _data(seed=10), _data(n_samples=200, seed=11)
    y_b = np.arange(200) % 7
    whitener = PCAWhitener(n_components=8).fit(X_a)
    components = whitener.components_.copy()
    mean = whitener.mean_.copy()

    pipe = make_pipeline(
        FrozenEstimator(whitener), NearestNeighborRetriever(n_neighbors=5)
    )
    pipe.fit(X_b, y_b)

    frozen = pipe[0].estimator
    assert frozen is whitener
    assert_array_equal(frozen.components_, components)
    assert_array_equal(frozen.mean_, mean)
    # the database holds B transformed with A's whitening
    assert_allclose(pipe[-1].X_fit_, normalize(whitener.transform(X_b)), atol=1e-6)
    # ... which differs from a whitening learned on B
    refit = PCAWhitener(n_components=8).fit(X_b)
    assert not np.allclose(np.abs(refit.components_), np.abs(components), atol=1e-3)
    assert 0.0 <= pipe.score(X_b, y_b) <= 1.0
