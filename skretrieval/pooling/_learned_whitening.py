"""Whitening learned from matching pairs ("Lw", Radenović, Tolias & Chum, TPAMI 2018)."""

from numbers import Integral, Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ..utils._arrays import l2_normalize
from ..utils._state import Attr, StateSpec

__all__ = ["LearnedWhitener", "pair_covariances"]


def pair_covariances(X, y):
    """Mean outer products of the differences of matching and non-matching pairs.

    Over all unordered pairs ``i < j``: ``C_S`` over pairs of the same label,
    ``C_D`` over pairs of different labels, each divided by its number of
    pairs, computed in closed form (``sum_{i<j in c} (x_i - x_j)(x_i - x_j)^T
    = n_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T``) without listing pairs.

    Returns
    -------
    C_S, C_D : ndarray of shape (n_features, n_features)
    n_matching, n_non_matching : int
    """
    X = np.asarray(X, dtype=np.float64)
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    n = X.shape[0]

    def pair_sum(rows, size):
        centred = rows - rows.mean(axis=0)
        return size * (centred.T @ centred)

    within = np.zeros((X.shape[1], X.shape[1]))
    for c in np.flatnonzero(counts > 1):
        within += pair_sum(X[codes == c], counts[c])
    n_matching = int((counts * (counts - 1) // 2).sum())
    n_non_matching = n * (n - 1) // 2 - n_matching
    between = pair_sum(X, n) - within
    C_S = within / max(n_matching, 1)
    C_D = between / max(n_non_matching, 1)
    return C_S, C_D, n_matching, n_non_matching


class LearnedWhitener(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Whitening learned from matching pairs (Radenović, Tolias & Chum, TPAMI 2018).

    The "learned whitening" (Lw) of Radenović et al. [1]_, a linear
    discriminant projection learned from labelled descriptors: with ``P``
    the matching pairs (two descriptors of the same label) and ``N`` the
    non-matching ones,

    .. math::

        C_S = \\frac{1}{|P|} \\sum_{(i, j) \\in P} (x_i - x_j)(x_i - x_j)^\\top,
        \\qquad
        C_D = \\frac{1}{|N|} \\sum_{(i, j) \\in N} (x_i - x_j)(x_i - x_j)^\\top,

    the descriptors are whitened by ``C_S^{-1/2}`` (the intra-class
    variability becomes isotropic) and rotated onto the eigenvectors ``R``
    of ``C_S^{-1/2} C_D C_S^{-1/2}`` by decreasing eigenvalue (the PCA of the
    whitened inter-class covariance); a descriptor becomes

    .. math::

        z = R_{:n}^\\top C_S^{-1/2} \\left(\\frac{x}{\\lVert x \\rVert} - \\mu\\right),
        \\qquad \\hat z = z / \\lVert z \\rVert

    with ``mu`` the mean of the training descriptors and ``n`` =
    ``n_components``.

    Parameters
    ----------
    n_components : int or None, default=None
        Output dimension (at most ``n_features``); None keeps them all.
    inter_class : {"non_matching", "all"}, default="non_matching"
        ``C_D`` over the non-matching pairs (the paper), or the covariance
        of all the training descriptors (cirtorch's ``whitenlearn``).
    shrinkage : float, default=1e-3
        ``C_S`` is regularised as ``C_S + shrinkage * trace(C_S) / D * I``
        before its inverse square root.
    l2_before : bool, default=True
        L2-normalise the inputs (when fitting and transforming).
    l2_after : bool, default=True
        L2-normalise the outputs.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features_in,)
        Mean of the (L2-normalised) training descriptors.
    projection_ : ndarray of shape (n_components, n_features_in)
        ``R^T C_S^{-1/2}`` (rows: the output directions), float64.
    eigenvalues_ : ndarray of shape (n_components,)
        The eigenvalues of the whitened inter-class covariance kept (ratios
        of inter- to intra-class variance along each output direction).
    n_components_ : int
        Output dimension.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``, when all are strings.

    See Also
    --------
    PCAWhitener : The unsupervised whitening.

    Notes
    -----
    **Deviations.**  The pairs are *every* pair of training descriptors of
    the same label (the paper takes the pairs its structure-from-motion
    reconstructions match); both covariances are computed in closed form,
    in ``O(n D^2)``.  The shrinkage of ``C_S`` is not in the paper (which
    has far more pairs than dimensions); it keeps the inverse square root
    finite when labels are few.  cirtorch inverts ``C_S`` by a Cholesky
    factor instead of the symmetric square root: the whitened spaces differ
    by a rotation that the eigenvectors ``R`` absorb, so the projections
    agree.  Each eigenvector's sign is fixed so that its largest entry is
    positive.  :meth:`transform` returns float32.

    Like :class:`PCAWhitener`, it should be learned on a collection other
    than the one searched (e.g. wrapped in
    :class:`~sklearn.frozen.FrozenEstimator`).

    References
    ----------
    .. [1] F. Radenović, G. Tolias and O. Chum, "Fine-tuning CNN image
       retrieval with no human annotation", TPAMI 2018 (Section 3.3.1 of the
       arXiv version, "Learned whitening").
    .. [2] K. Mikolajczyk and J. Matas, "Improving descriptors for fast tree
       matching by optimal linear projection", ICCV 2007.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import LearnedWhitener
    >>> rng = np.random.RandomState(0)
    >>> y = np.repeat(np.arange(10), 5)
    >>> X = rng.rand(10, 16)[y] + 0.1 * rng.rand(50, 16)
    >>> lw = LearnedWhitener(n_components=8).fit(X, y)
    >>> lw.transform(X).shape
    (50, 8)
    >>> lw.get_feature_names_out()[:2]
    array(['learnedwhitener0', 'learnedwhitener1'], dtype=object)
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "inter_class": [StrOptions({"non_matching", "all"})],
        "shrinkage": [Interval(Real, 0, None, closed="left")],
        "l2_before": ["boolean"],
        "l2_after": ["boolean"],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = StateSpec({
        "n_features_in_": Attr("int", values=(1, None)),
        "feature_names_in_": Attr("array", dtype="UO", shape=("n_features_in_",),
                                  optional=True),
        "mean_": Attr("array", dtype="f", shape=("n_features_in_",)),
        "projection_": Attr("array", dtype="f", shape=("n_components_", "n_features_in_")),
        "eigenvalues_": Attr("array", dtype="f", shape=("n_components_",)),
        "n_components_": Attr("int", values=(1, None)),
    })

    def __init__(self, n_components=None, *, inter_class="non_matching", shrinkage=1e-3,
                 l2_before=True, l2_after=True):
        self.n_components = n_components
        self.inter_class = inter_class
        self.shrinkage = shrinkage
        self.l2_before = l2_before
        self.l2_after = l2_after

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the whitening from the pairs of descriptors of the same label.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training descriptors.
        y : array-like of shape (n_samples,)
            Their labels: descriptors of one label are matching pairs
            (required; None raises a ValueError).

        Returns
        -------
        self : LearnedWhitener
        """
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        D = X.shape[1]
        if self.n_components is not None and self.n_components > D:
            raise ValueError(f"n_components={self.n_components} must be at most "
                             f"n_features={D}")
        if self.l2_before:
            X = l2_normalize(X, tiny_as_zero=True)
        C_S, C_D, n_matching, n_non_matching = pair_covariances(X, y)
        if n_matching == 0:
            raise ValueError("LearnedWhitener needs matching pairs: at least one label "
                             "must have two samples")
        if self.inter_class == "all":
            C_D = np.cov(X, rowvar=False, bias=True).reshape(D, D)
        elif n_non_matching == 0:
            raise ValueError("inter_class='non_matching' needs at least two labels "
                             "(use inter_class='all')")
        ridge = self.shrinkage * np.trace(C_S) / D
        lam, V = np.linalg.eigh(C_S + ridge * np.eye(D))
        # directions without intra-class variance: the largest finite gain
        lam = np.maximum(lam, max(lam.max() * np.finfo(np.float64).eps, 1e-12))
        whiten = (V / np.sqrt(lam)) @ V.T  # C_S^{-1/2}, symmetric
        ev, R = np.linalg.eigh(whiten @ C_D @ whiten)
        order = np.argsort(-ev, kind="stable")[: self.n_components or D]
        ev, R = ev[order], R[:, order]
        signs = np.sign(R[np.argmax(np.abs(R), axis=0), np.arange(R.shape[1])])
        R *= np.where(signs == 0, 1.0, signs)
        self.mean_ = X.mean(axis=0)
        self.projection_ = R.T @ whiten
        self.eigenvalues_ = ev
        self.n_components_ = int(R.shape[1])
        return self

    def transform(self, X):
        """Whiten and project descriptors.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in)
            Descriptors to transform.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components), dtype float32
            Of unit L2 norm if ``l2_after`` (zero rows stay zero).
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        if self.l2_before:
            X = l2_normalize(X, tiny_as_zero=True)
        X_new = (X - self.mean_) @ self.projection_.T
        if self.l2_after:
            X_new = l2_normalize(X_new, tiny_as_zero=True)
        return X_new.astype(np.float32, copy=False)

    @property
    def _n_features_out(self):
        """Number of output features, used by ``get_feature_names_out``."""
        return self.projection_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
