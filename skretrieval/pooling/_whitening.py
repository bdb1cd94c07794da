"""PCA whitening of global image descriptors.

The standard post-processing of CNN retrieval descriptors: L2-normalise,
project on the principal components of a training collection (centred on its
mean), optionally whiten (divide every component by a power of its standard
deviation), and L2-normalise again.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.decomposition import PCA
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ..utils._arrays import l2_normalize
from ..utils._state import Attr, StateSpec

__all__ = ["PCAWhitener"]


class PCAWhitener(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """L2-normalisation, PCA, whitening and L2-normalisation of descriptors.

    The post-processing that turns pooled convolutional activations into
    good global descriptors for instance retrieval [1]_ [2]_ [3]_: every
    descriptor is L2-normalised, centred on the mean of the training
    descriptors and projected on their ``n_components`` leading principal
    components; each component is then divided by a power of its standard
    deviation (whitening), and the result is L2-normalised again.

    With eigenvalues :math:`\\lambda_i` of the training covariance, principal
    directions :math:`u_i` and mean :math:`\\mu`, the ``i``-th output
    coordinate of a descriptor :math:`x` is, before the final normalisation,

    .. math::

        z_i = (\\lambda_i + \\varepsilon)^{-p/2} \\, u_i^\\top
              \\left(\\frac{x}{\\lVert x \\rVert} - \\mu\\right)

    where :math:`p` is ``whiten_power`` (``p = 0`` when ``whiten=False``).

    Parameters
    ----------
    n_components : int, float or None, default=None
        Number of components to keep, as in :class:`~sklearn.decomposition.PCA`:
        an int keeps that many components; a float in ``(0, 1)`` keeps the
        fewest components that explain that fraction of the variance (needs
        ``svd_solver`` in ``{"auto", "full", "covariance_eigh"}``); ``None``
        keeps ``min(n_samples, n_features)`` components.

    whiten : bool, default=True
        Whether to divide every component by a power of its standard deviation.
        ``False`` gives a plain PCA projection (dimensionality reduction).

    whiten_power : float, default=1.0
        Power ``p`` of the eigenvalue shrinkage: component ``i`` is scaled by
        ``(explained_variance_[i] + eps) ** (-p / 2)``.  ``1`` is full
        whitening, ``0`` is plain PCA and intermediate values (e.g. ``0.5``)
        shrink the whitening, which often works better on large collections.
        Only used if ``whiten=True``.

    l2_before : bool, default=True
        Whether to L2-normalise the input descriptors before the PCA (both when
        fitting and when transforming).

    l2_after : bool, default=True
        Whether to L2-normalise the projected descriptors, so that the inner
        product of two outputs is their cosine similarity.

    eps : float, default=1e-8
        Regulariser added to the eigenvalues before whitening, which keeps the
        division finite for components of (near) zero variance.

    svd_solver : {"auto", "full", "covariance_eigh", "arpack", "randomized"}, \
            default="auto"
        Solver of the internal :class:`~sklearn.decomposition.PCA`.

    random_state : int, RandomState instance or None, default=None
        Used by the ``"arpack"`` and ``"randomized"`` solvers.  Pass an int for
        reproducible results across multiple function calls.
        See ``random_state`` in the scikit-learn glossary.

    Attributes
    ----------
    pca_ : :class:`~sklearn.decomposition.PCA`
        The PCA fitted on the (L2-normalised) training descriptors.

    components_ : ndarray of shape (n_components, n_features_in)
        Principal axes, sorted by decreasing explained variance (float64).

    mean_ : ndarray of shape (n_features_in,)
        Mean of the (L2-normalised) training descriptors (float64).

    explained_variance_ : ndarray of shape (n_components,)
        Variance of the training descriptors along each component, i.e. the
        eigenvalues of their covariance matrix (float64).

    n_components_ : int
        Number of components kept, i.e. the dimension of the output.

    scale_ : ndarray of shape (n_components,)
        Factor applied to each component before the final normalisation:
        ``(explained_variance_ + eps) ** (-whiten_power / 2)``, or ones when
        ``whiten=False``.

    n_features_in_ : int
        Number of features seen during ``fit``.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``. Defined only when `X`
        has feature names that are all strings.

    See Also
    --------
    sklearn.decomposition.PCA : Principal component analysis.
    sklearn.preprocessing.Normalizer : Scales samples to unit norm.
    NearestNeighborRetriever : Nearest-neighbour search over the descriptors.

    Notes
    -----
    **Output dtype.**  :meth:`transform` always returns ``float32``: global
    descriptors are stored and searched in single precision (see
    :class:`NearestNeighborRetriever`), and the unit-norm outputs need no more
    precision.  Hence the estimator tags declare that ``float32`` is preserved
    (``preserves_dtype=["float32"]``), while ``float64`` inputs give ``float32``
    outputs.  The PCA itself is always fitted in ``float64``, because the small
    eigenvalues that whitening divides by are the least accurate ones.  Rows
    of zero norm are left as zeros by both normalisations, without warnings.

    **Learning the whitening on another collection.**  In the literature the
    whitening is learned on a collection *different* from the one searched,
    e.g. on Paris6k descriptors when evaluating on Oxford5k and conversely
    [2]_ [3]_, so that it does not adapt to the test database.  To use such a
    whitener inside a :class:`~sklearn.pipeline.Pipeline` that is fitted on the
    database, fit it beforehand and wrap it in
    :class:`~sklearn.frozen.FrozenEstimator`, whose ``fit`` does nothing::

        from sklearn.frozen import FrozenEstimator
        from sklearn.pipeline import make_pipeline

        whitener = PCAWhitener(n_components=512).fit(X_paris)
        pipe = make_pipeline(FrozenEstimator(whitener),
                             NearestNeighborRetriever())
        pipe.fit(X_oxford, y_oxford)  # keeps the whitening learned on Paris

    Whitening needs more training descriptors than components: with
    ``n_samples <= n_components_`` the trailing components have (near) zero
    variance and whitening amplifies them by up to ``eps ** -0.5``; reduce
    ``n_components`` or ``whiten_power`` in that case.

    References
    ----------
    .. [1] H. Jégou and O. Chum, "Negative evidences and co-occurrences in
       image retrieval: the benefit of PCA and whitening", ECCV 2012.
    .. [2] A. Babenko and V. Lempitsky, "Aggregating local deep features for
       image retrieval", ICCV 2015.
    .. [3] F. Radenović, G. Tolias and O. Chum, "Fine-tuning CNN image
       retrieval with no human annotation", TPAMI 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import PCAWhitener
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(100, 16)
    >>> whitener = PCAWhitener(n_components=8).fit(X)
    >>> Xt = whitener.transform(X)
    >>> Xt.shape, Xt.dtype
    ((100, 8), dtype('float32'))
    >>> np.allclose(np.linalg.norm(Xt, axis=1), 1.0)
    True
    >>> whitener.get_feature_names_out()[:3]
    array(['pcawhitener0', 'pcawhitener1', 'pcawhitener2'], dtype=object)
    """

    _parameter_constraints: dict = {
        "n_components": [
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="neither"),
            None,
        ],
        "whiten": ["boolean"],
        "whiten_power": [Interval(Real, 0, None, closed="left")],
        "l2_before": ["boolean"],
        "l2_after": ["boolean"],
        "eps": [Interval(Real, 0, None, closed="left")],
        "svd_solver": [
            StrOptions({"auto", "full", "covariance_eigh", "arpack", "randomized"})
        ],
        "random_state": ["random_state"],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = StateSpec({
        "n_features_in_": Attr("int", values=(1, None)),
        "feature_names_in_": Attr("array", dtype="UO", shape=("n_features_in_",),
                                  optional=True),
        "pca_": Attr("estimator", classes=(PCA,)),
        "components_": Attr("array", dtype="f", shape=("n_components_", "n_features_in_")),
        "mean_": Attr("array", dtype="f", shape=("n_features_in_",)),
        "explained_variance_": Attr("array", dtype="f", shape=("n_components_",)),
        "n_components_": Attr("int", values=(1, None)),
        "scale_": Attr("array", dtype="f", shape=("n_components_",)),
    })

    def __init__(
        self,
        n_components=None,
        *,
        whiten=True,
        whiten_power=1.0,
        l2_before=True,
        l2_after=True,
        eps=1e-8,
        svd_solver="auto",
        random_state=None,
    ):
        self.n_components = n_components
        self.whiten = whiten
        self.whiten_power = whiten_power
        self.l2_before = l2_before
        self.l2_after = l2_after
        self.eps = eps
        self.svd_solver = svd_solver
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the mean, principal components and whitening of `X`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training descriptors (at least 2).

        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted whitener.
        """
        X = validate_data(
            self, X, dtype=np.float64, ensure_min_samples=2
        )
        if self.l2_before:
            X = l2_normalize(X, tiny_as_zero=True)
        pca = PCA(
            n_components=self.n_components,
            whiten=False,
            svd_solver=self.svd_solver,
            random_state=self.random_state,
        )
        self.pca_ = pca.fit(X)
        self.components_ = pca.components_
        self.mean_ = pca.mean_
        self.explained_variance_ = pca.explained_variance_
        self.n_components_ = int(pca.n_components_)
        if self.whiten:
            self.scale_ = np.power(
                self.explained_variance_ + self.eps, -self.whiten_power / 2.0
            )
        else:
            self.scale_ = np.ones_like(self.explained_variance_)
        return self

    def transform(self, X):
        """Project and whiten descriptors.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in)
            Descriptors to transform.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components), dtype float32
            Whitened descriptors, of unit L2 norm if ``l2_after=True`` (rows
            that are zero stay zero).
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        dtype = X.dtype
        if self.l2_before:
            X = l2_normalize(X, tiny_as_zero=True)  # a copy, centred in place below
            X -= self.mean_.astype(dtype)
        else:
            X = X - self.mean_.astype(dtype)
        projection = (self.components_.T * self.scale_).astype(dtype)
        X_new = X @ projection
        if self.l2_after:
            X_new = l2_normalize(X_new, tiny_as_zero=True)
        return X_new.astype(np.float32, copy=False)

    @property
    def _n_features_out(self):
        """Number of output features, used by ``get_feature_names_out``."""
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
