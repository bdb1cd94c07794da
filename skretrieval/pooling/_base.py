"""Shared machinery of the poolers: map checks, multi-scale combination, output.

:class:`BasePooler` validates the ragged per-image, per-scale ``(C, H, W)``
feature maps, pools each scale with the subclass's ``_pool_map``, combines
the scales (``scale_combination``) and normalises.  :func:`inspect_maps` and
:func:`check_image` are the map checks, also used by
:class:`~skretrieval.VLADEncoder`; :func:`fill_doc` fills the parameter
documentation the poolers share.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from ..extraction._maps import FeatureMaps, check_maps, iter_maps
from ..utils._arrays import l2_normalize
from ..utils._state import Attr, StateSpec

__all__ = ["BasePooler", "check_image", "fill_doc", "inspect_maps"]


# ---------------------------------------------------------------------------
# map checks
# ---------------------------------------------------------------------------
def inspect_maps(X):
    """Validate ``X`` cheaply and return ``(n_channels, n_scales)``.

    A :class:`FeatureMaps` and a 4-D array are described by their metadata
    (nothing is read from disk); the items of a list are checked one by one.
    """
    check_maps(X)
    if isinstance(X, FeatureMaps):
        return int(X.n_channels), len(X.scales)
    if isinstance(X, np.ndarray):  # 4-D, checked by check_maps
        return int(X.shape[1]), 1
    n_channels = n_scales = None
    for i, maps in enumerate(iter_maps(X)):
        if n_scales is None:
            n_channels, n_scales = maps[0].shape[0], len(maps)
        elif len(maps) != n_scales:
            raise ValueError(
                f"image {i} has feature maps at {len(maps)} scales, but image 0 "
                f"has {n_scales}; every image must have the same number of scales"
            )
        for s, x in enumerate(maps):
            if x.shape[0] != n_channels:
                raise ValueError(
                    f"image {i} (scale {s}) has {x.shape[0]} channels, expected "
                    f"{n_channels}"
                )
    return int(n_channels), int(n_scales)


def check_image(maps, index, n_channels):
    """Check the per-scale maps of image ``index``: channels, size, finiteness."""
    for s, x in enumerate(maps):
        if x.shape[0] != n_channels:
            raise ValueError(
                f"image {index} (scale {s}) has {x.shape[0]} channels, expected "
                f"{n_channels}"
            )
        if x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(
                f"image {index} (scale {s}) has an empty feature map of shape "
                f"{x.shape}"
            )
        if not np.isfinite(x).all():
            raise ValueError(
                f"the feature maps of image {index} (scale {s}) contain NaN or "
                "infinite values"
            )


# ---------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------
class BasePooler(TransformerMixin, BaseEstimator):
    """Shared machinery of the poolers (validation, multi-scale, output).

    Subclasses implement ``_pool_map(x)``: a ``(C, H, W)`` float32 map (which
    may be a read-only view of the caller's data: never modify it) to a
    ``(C,)`` float64 vector, before any normalisation.
    """

    _parameter_constraints: dict = {
        "normalize": ["boolean"],
        "scale_combination": [StrOptions({"sum", "concat"})],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py),
    # the same for every pooler.
    _state_spec = StateSpec({
        "n_channels_": Attr("int", values=(1, None)),
        "n_scales_": Attr("int", values=(1, None)),
    })

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    # -- fitting ---------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the feature maps and record their number of channels.

        The pooler has nothing to learn: ``transform`` works without ``fit``.
        Fitting records ``n_channels_`` and ``n_scales_``, which
        :meth:`get_feature_names_out` needs, and makes later calls to
        ``transform`` check that their maps have the same number of channels.
        The values themselves are not read (a disk store is not scanned); NaN
        and infinite values are detected by ``transform``.

        Parameters
        ----------
        X : FeatureMaps, ndarray of shape (n_images, C, H, W) or list
            Feature maps: a :class:`~skretrieval.FeatureMaps`, a 4-D array, a
            list of ``(C, H, W)`` arrays, or a list of per-image sequences of
            ``(C, H, W)`` arrays (one per scale).
        y : None
            Ignored.

        Returns
        -------
        self : object
            The pooler.
        """
        self.n_channels_, self.n_scales_ = inspect_maps(X)
        return self

    # -- transforming ----------------------------------------------------
    def transform(self, X):
        """Pool the feature maps of each image into one descriptor.

        Parameters
        ----------
        X : FeatureMaps, ndarray of shape (n_images, C, H, W) or list
            Feature maps: a :class:`~skretrieval.FeatureMaps`, a 4-D array, a
            list of ``(C, H, W)`` arrays, or a list of per-image sequences of
            ``(C, H, W)`` arrays (one per scale).  All maps must have the same
            number of channels ``C``; ``H`` and ``W`` may vary.

        Returns
        -------
        X_new : ndarray of shape (n_images, n_features), dtype=float32
            One descriptor per image; ``n_features`` is ``C``, or ``C *
            n_scales`` with ``scale_combination="concat"``.
        """
        self._validate_params()
        n_images = check_maps(X)
        n_channels = getattr(self, "n_channels_", None)
        n_scales = getattr(self, "n_scales_", None)
        concat = self.scale_combination == "concat"
        out = None
        for i, maps in enumerate(iter_maps(X)):
            if n_channels is None:
                n_channels = maps[0].shape[0]
            if concat:
                if n_scales is None:
                    n_scales = len(maps)
                elif len(maps) != n_scales:
                    raise ValueError(
                        f"image {i} has feature maps at {len(maps)} scales, "
                        f"expected {n_scales}: scale_combination='concat' needs "
                        "the same number of scales for every image"
                    )
            check_image(maps, i, n_channels)
            vec = self._describe(maps)
            if out is None:
                out = np.empty((n_images, vec.shape[0]), dtype=np.float32)
            out[i] = vec
        return out

    def _describe(self, maps):
        """Pool every scale of one image and combine them (float64 vector)."""
        vecs = [self._pool_map(x) for x in maps]
        if self.normalize:
            vecs = [l2_normalize(v) for v in vecs]
        if self.scale_combination == "concat":
            vec = np.concatenate(vecs)
        else:
            vec = np.sum(vecs, axis=0)
        return l2_normalize(vec) if self.normalize else vec

    def _pool_map(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- feature names ---------------------------------------------------
    def get_feature_names_out(self, input_features=None):
        """Get output feature names for transformation.

        The names are the lowercased class name followed by the feature
        index, e.g. ``["gempooler0", "gempooler1", ...]``.  With
        ``scale_combination="concat"`` the features are ordered scale by scale
        (features ``s * C`` to ``(s + 1) * C - 1`` come from scale ``s``).

        Parameters
        ----------
        input_features : None
            Ignored (the input has no feature names); present for API
            consistency.

        Returns
        -------
        feature_names_out : ndarray of str objects
            Transformed feature names.
        """
        check_is_fitted(
            self,
            ["n_channels_", "n_scales_"],
            msg=(
                "This %(name)s instance is not fitted yet: the feature names "
                "depend on the number of channels, which 'fit' records "
                "(transform itself works without fit)."
            ),
        )
        n_out = self.n_channels_
        if self.scale_combination == "concat":
            n_out *= self.n_scales_
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(n_out)], dtype=object)


_COMMON_PARAMS_DOC = """\
    normalize : bool, default=True
        L2-normalise the descriptor, as every paper does before comparing
        descriptors by dot product.  With several scales, each scale's
        descriptor is also L2-normalised before they are combined.  With
        ``False`` nothing is normalised (the raw pooled vectors are summed or
        concatenated).
    scale_combination : {"sum", "concat"}, default="sum"
        How the descriptors of the scales of a multi-scale
        :class:`~skretrieval.FeatureMaps` are combined.  ``"sum"``: each
        scale's map is pooled and L2-normalised, the per-scale descriptors are
        summed (the same as averaged once L2-normalised) and L2-normalised, as
        Gordo et al. (2017) and Radenović et al. (2018) build multi-scale
        descriptors; the dimension stays ``C``.  ``"concat"``: the
        L2-normalised per-scale descriptors are concatenated, scale by scale,
        and the result L2-normalised, keeping the scales apart as in the
        multi-scale study of Ng et al. (2015); the dimension is ``C *
        n_scales``.  With a single scale both give the same result.
"""

_COMMON_ATTRS_DOC = """\
    n_channels_ : int
        Number of channels ``C`` of the maps seen in :meth:`fit`.
    n_scales_ : int
        Number of scales per image of the maps seen in :meth:`fit`.
"""

_COMMON_REFS = """\
    .. [Gordo2017] A. Gordo, J. Almazán, J. Revaud and D. Larlus, "End-to-end
       learning of deep visual representations for image retrieval",
       International Journal of Computer Vision 124(2):237-254, 2017.
    .. [Ng2015] J. Y.-H. Ng, F. Yang and L. S. Davis, "Exploiting local
       features from deep networks for image retrieval", CVPR Workshops, 2015.
"""


def fill_doc(cls):
    if cls.__doc__ is None:  # python -OO
        return cls
    cls.__doc__ = (
        cls.__doc__.replace("%(common_params)s", _COMMON_PARAMS_DOC)
        .replace("%(common_attrs)s", _COMMON_ATTRS_DOC)
        .replace("%(common_refs)s", _COMMON_REFS)
    )
    return cls

