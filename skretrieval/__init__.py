"""skretrieval: scikit-learn estimators for instance image retrieval with CNN features.

Build a retrieval system as a Pipeline::

    ConvFeatureExtractor -> a pooler -> PCAWhitener -> NearestNeighborRetriever

and score it with :class:`RetrievalMAP` in ``GridSearchCV``.
"""

__version__ = "0.1.0"

from ._images import Crop, ImageLoadError, check_images, list_images, load_image
from ._maps import ClassActivations, FeatureMaps
from ._backbones import WeightsNotFoundError, layer_names, weights_search_dirs
from ._cache import clear_memory_cache, forward_pass_count
from ._extractor import ConvFeatureExtractor
from ._distributed import DistributedExtractionError
from ._pooling import CroWPooler, GeMPooler, MACPooler, RMACPooler, SPoCPooler, region_grid
from ._whitening import PCAWhitener
from ._vlad import VLADEncoder
from ._retriever import NearestNeighborRetriever
from ._expansion import QueryExpansionRetriever
from ._files import IndexLockedError
from ._indexing import (
    IndexFile,
    IndexUpdate,
    add_to_index,
    edit_index,
    item_fingerprint,
    load_index,
    save_index,
)
from ._cam import CAMWeighter, ClassVectors, OnlineCAMRetriever
from ._rerank import RegionReranker, cam_boxes
from .metrics import RetrievalMAP
from .display import RetrievalDisplay
from ._deepnet import RetrievalNet
from ._trainer import RetrievalNetTrainer
from .losses import APLoss, ContrastiveLoss, TripletLoss

__all__ = [
    "APLoss",
    "ContrastiveLoss",
    "RetrievalNet",
    "RetrievalNetTrainer",
    "TripletLoss",
    "CAMWeighter",
    "ClassActivations",
    "ClassVectors",
    "OnlineCAMRetriever",
    "RegionReranker",
    "cam_boxes",
    "ConvFeatureExtractor",
    "DistributedExtractionError",
    "Crop",
    "CroWPooler",
    "FeatureMaps",
    "GeMPooler",
    "ImageLoadError",
    "IndexFile",
    "IndexLockedError",
    "IndexUpdate",
    "MACPooler",
    "NearestNeighborRetriever",
    "PCAWhitener",
    "QueryExpansionRetriever",
    "RMACPooler",
    "RetrievalDisplay",
    "RetrievalMAP",
    "SPoCPooler",
    "VLADEncoder",
    "WeightsNotFoundError",
    "add_to_index",
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
