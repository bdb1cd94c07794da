"""skretrieval: scikit-learn estimators for instance image retrieval with CNN features.

Build a retrieval system as a Pipeline::

    ConvFeatureExtractor -> a pooler -> PCAWhitener -> NearestNeighborRetriever

and score it with :class:`RetrievalMAP` in ``GridSearchCV``.

The subpackages, one per concept: :mod:`skretrieval.extraction` (images to
feature maps), :mod:`skretrieval.pooling` (maps to descriptors, whitening),
:mod:`skretrieval.neighbors` (search), :mod:`skretrieval.index` (index files),
:mod:`skretrieval.reranking` (query expansion, region re-ranking),
:mod:`skretrieval.local` (SIFT and deep local features, ASMK),
:mod:`skretrieval.nn` (torch layers, losses, the trainer),
:mod:`skretrieval.metrics`, :mod:`skretrieval.datasets`,
:mod:`skretrieval.display`, :mod:`skretrieval.persistence`,
:mod:`skretrieval.pairs` and :mod:`skretrieval.cli`.
"""

from .utils._version import __version__
from .utils import _legacy

_legacy.install()

from .extraction import (  # noqa: E402
    ClassActivations,
    ConvFeatureExtractor,
    Crop,
    DistributedExtractionError,
    FeatureMaps,
    ImageLoadError,
    WeightsNotFoundError,
    check_images,
    clear_memory_cache,
    forward_pass_count,
    layer_names,
    list_images,
    load_image,
    weights_search_dirs,
)
from .pooling import (  # noqa: E402
    CAMWeighter,
    ClassVectors,
    CroWPooler,
    GeMPooler,
    LearnedWhitener,
    MACPooler,
    PCAWhitener,
    RMACPooler,
    SPoCPooler,
    VLADEncoder,
    region_grid,
)
from .neighbors import NearestNeighborRetriever  # noqa: E402
from .local import ASMKRetriever, DeepLocalFeatures, LocalFeatures, SIFTExtractor  # noqa: E402
from .index import (  # noqa: E402
    IndexFile,
    IndexUpdate,
    add_to_index,
    edit_index,
    item_fingerprint,
    load_index,
    save_index,
)
from .reranking import (  # noqa: E402
    DiffusionRetriever,
    KReciprocalRetriever,
    LocalVerificationReranker,
    OnlineCAMRetriever,
    QueryExpansionRetriever,
    RegionReranker,
    SpatialVerificationReranker,
    cam_boxes,
)
from .utils import IndexLockedError  # noqa: E402
from .metrics import RetrievalMAP  # noqa: E402
from .display import RetrievalDisplay  # noqa: E402
from .nn import RetrievalNet, RetrievalNetTrainer  # noqa: E402

__all__ = [
    "ASMKRetriever",
    "CAMWeighter",
    "ClassActivations",
    "ClassVectors",
    "ConvFeatureExtractor",
    "Crop",
    "CroWPooler",
    "DeepLocalFeatures",
    "DiffusionRetriever",
    "DistributedExtractionError",
    "FeatureMaps",
    "GeMPooler",
    "ImageLoadError",
    "IndexFile",
    "IndexLockedError",
    "IndexUpdate",
    "KReciprocalRetriever",
    "LearnedWhitener",
    "LocalFeatures",
    "LocalVerificationReranker",
    "MACPooler",
    "NearestNeighborRetriever",
    "OnlineCAMRetriever",
    "PCAWhitener",
    "QueryExpansionRetriever",
    "RMACPooler",
    "RegionReranker",
    "RetrievalDisplay",
    "RetrievalMAP",
    "RetrievalNet",
    "RetrievalNetTrainer",
    "SIFTExtractor",
    "SPoCPooler",
    "SpatialVerificationReranker",
    "VLADEncoder",
    "WeightsNotFoundError",
    "add_to_index",
    "cam_boxes",
    "check_images",
    "clear_memory_cache",
    "edit_index",
    "forward_pass_count",
    "item_fingerprint",
    "layer_names",
    "list_images",
    "load_image",
    "load_index",
    "region_grid",
    "save_index",
    "weights_search_dirs",
]

def __getattr__(name):
    # names that moved to a subpackage still resolve from the root
    # (utils/_legacy.py: MOVED_NAMES, beside the old module paths)
    return _legacy.moved_name(__name__, name)
