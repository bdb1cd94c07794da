"""The whitelist and declarations of the model format, its constants and errors.

The format itself is documented in :mod:`skretrieval.persistence`.
"""

from __future__ import annotations

import platform

import numpy as np
import sklearn
import torch
import torchvision
from sklearn.decomposition import PCA
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from ..utils._tables import LiveMapping
from ..utils._version import __version__
from ..extraction._extractor import ConvFeatureExtractor
from ..neighbors._retriever import NearestNeighborRetriever
from ..nn._trainer import RetrievalNetTrainer
from ..pooling._cam import CAMWeighter
from ..reranking._online_cam import OnlineCAMRetriever
from ..pooling._learned_whitening import LearnedWhitener
from ..pooling._registry import pooler_classes
from ..pooling._vlad import VLADEncoder
from ..pooling._whitening import PCAWhitener
from ..reranking._diffusion import DiffusionRetriever
from ..reranking._expansion import QueryExpansionRetriever
from ..reranking._kreciprocal import KReciprocalRetriever
from ..reranking._rerank import RegionReranker
from ..reranking._spatial import SpatialVerificationReranker
from ..local._asmk import ASMKRetriever
from ..local._deep import DeepLocalFeatures
from ..local._sift import SIFTExtractor
from ..reranking._local_verification import LocalVerificationReranker
from ..pretrained._heads import MultiScaleHead
from ..utils._state import Attr, PathParam, StateSpec

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "MANIFEST_CHECKSUM",
    "MAX_ARRAY_BYTES",
    "MAX_COMPRESSION_RATIO",
    "MAX_MANIFEST_BYTES",
    "NAME_OF_CLASS",
    "NODE_KEYS",
    "READABLE_VERSIONS",
    "SKLEARN_STATE",
    "SUPPORTED_CLASSES",
    "ModelFormatError",
    "VersionMismatchWarning",
    "class_hook",
    "short",
    "spec_home",
    "state_spec",
    "versions",
]

FORMAT_NAME = "skretrieval-model"
#: The format version :func:`save_pipeline` writes.
FORMAT_VERSION = 2
#: The format versions :func:`load_pipeline` reads (1: no ``manifest.sha256``).
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
MANIFEST_CHECKSUM = "manifest.sha256"
#: Default bound of ``load_pipeline(max_bytes=...)``: total uncompressed bytes
#: of the arrays of a model (16 GiB).
MAX_ARRAY_BYTES = 16 * 2**30
#: Largest ``manifest.json`` read (64 MiB; arrays are not in it).
MAX_MANIFEST_BYTES = 64 * 2**20
#: Compressed zip members may expand at most this many times (plus 1 MiB).
MAX_COMPRESSION_RATIO = 100

# The supported classes but the poolers.
_FIXED_CLASSES = {
    "skretrieval.ConvFeatureExtractor": ConvFeatureExtractor,
    "skretrieval.VLADEncoder": VLADEncoder,
    "skretrieval.CAMWeighter": CAMWeighter,
    "skretrieval.PCAWhitener": PCAWhitener,
    "skretrieval.LearnedWhitener": LearnedWhitener,
    "skretrieval.NearestNeighborRetriever": NearestNeighborRetriever,
    "skretrieval.QueryExpansionRetriever": QueryExpansionRetriever,
    "skretrieval.DiffusionRetriever": DiffusionRetriever,
    "skretrieval.KReciprocalRetriever": KReciprocalRetriever,
    "skretrieval.OnlineCAMRetriever": OnlineCAMRetriever,
    "skretrieval.RegionReranker": RegionReranker,
    "skretrieval.SpatialVerificationReranker": SpatialVerificationReranker,
    "skretrieval.SIFTExtractor": SIFTExtractor,
    "skretrieval.DeepLocalFeatures": DeepLocalFeatures,
    "skretrieval.ASMKRetriever": ASMKRetriever,
    "skretrieval.LocalVerificationReranker": LocalVerificationReranker,
    "skretrieval.RetrievalNetTrainer": RetrievalNetTrainer,
    "skretrieval.pretrained.MultiScaleHead": MultiScaleHead,
    "sklearn.pipeline.Pipeline": Pipeline,
    "sklearn.frozen.FrozenEstimator": FrozenEstimator,
    "sklearn.preprocessing.Normalizer": Normalizer,
    "sklearn.preprocessing.StandardScaler": StandardScaler,
    "sklearn.decomposition.PCA": PCA,
}
#: The only classes :func:`load_pipeline` instantiates, by manifest name: those
#: above and the poolers of the pooler table (``skretrieval.pooling._registry.POOLERS``),
#: read when used, so that a pooler added to the table is saved and loaded with no
#: other change.
SUPPORTED_CLASSES = LiveMapping(lambda: {**_FIXED_CLASSES, **pooler_classes()})
#: The manifest name of every supported class (read when used, like it).
NAME_OF_CLASS = LiveMapping(lambda: {cls: name for name, cls in SUPPORTED_CLASSES.items()})

_FEATURE_NAMES = Attr("array", dtype="UO", shape=("n_features_in_",), optional=True)
_PCA_VECTOR = Attr("array", dtype="f", shape=("n_components_",))
_SCALER_VECTOR = Attr("array", dtype="f", shape=("n_features_in_",), none=True)

#: The persisted state of the scikit-learn classes of the whitelist (the
#: skretrieval estimators declare theirs in ``_state_spec``).
SKLEARN_STATE = {
    Pipeline: StateSpec(paths={"memory": PathParam(None)}, steps="steps"),
    FrozenEstimator: StateSpec(),
    Normalizer: StateSpec({
        "n_features_in_": Attr("int", optional=True),
        "feature_names_in_": _FEATURE_NAMES,
    }),
    StandardScaler: StateSpec({
        "n_features_in_": Attr("int"),
        "feature_names_in_": _FEATURE_NAMES,
        "n_samples_seen_": Attr(("float", "array"), dtype="iuf", shape=("n_features_in_",)),
        "mean_": _SCALER_VECTOR,
        "var_": _SCALER_VECTOR,
        "scale_": _SCALER_VECTOR,
    }),
    PCA: StateSpec({
        "n_features_in_": Attr("int"),
        "feature_names_in_": _FEATURE_NAMES,
        "_fit_svd_solver": Attr("str", optional=True),
        "mean_": Attr("array", dtype="f", shape=("n_features_in_",)),
        "n_samples_": Attr("int"),
        "n_components_": Attr("int"),
        "components_": Attr("array", dtype="f", shape=("n_components_", "n_features_in_")),
        "explained_variance_": _PCA_VECTOR,
        "explained_variance_ratio_": _PCA_VECTOR,
        "singular_values_": _PCA_VECTOR,
        "noise_variance_": Attr("float"),
    }),
}

NODE_KEYS = {"class", "params", "attributes", "arrays", "steps"}


class ModelFormatError(ValueError):
    """A model file is not a valid, supported skretrieval model."""


class VersionMismatchWarning(UserWarning):
    """A model file was written with other versions of the libraries."""


def versions():
    return {
        "skretrieval": __version__,
        "sklearn": sklearn.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def short(value, n=80):
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def state_spec(cls):
    """The :class:`~skretrieval.utils._state.StateSpec` of a supported class."""
    spec = SKLEARN_STATE.get(cls)
    if spec is None:
        spec = getattr(cls, "_state_spec", None)
    if not isinstance(spec, StateSpec):  # pragma: no cover - a declaration is missing
        raise TypeError(f"{cls.__qualname__} declares no persisted state (_state_spec)")
    return spec


def spec_home(cls):
    if cls in SKLEARN_STATE:
        return f"skretrieval.persistence._registry.SKLEARN_STATE[{cls.__name__}]"
    return f"{cls.__name__}._state_spec"


def class_hook(est, name):
    """A persistence hook of ``est``'s class (never a delegated attribute:
    FrozenEstimator forwards unknown attributes to its estimator)."""
    return getattr(type(est), name, None)
