"""After the first search: query expansion, database-side augmentation, diffusion,
k-reciprocal re-ranking, region re-ranking, spatial verification (on conv-map cells or on
local features), online class aggregation.

Each estimator searches a database (most wrap a retriever) and is itself the last
step of a pipeline.
"""

from ._diffusion import DiffusionRetriever
from ._expansion import QueryExpansionRetriever
from ._kreciprocal import KReciprocalRetriever
from ._local_verification import (
    FALLBACKS,
    ORDERS,
    LocalVerificationReranker,
    distinct_matches,
    false_alarms,
    verified_order,
    verify_matches,
)
from ._online_cam import OnlineCAMRetriever
from ._rerank import RegionReranker, cam_boxes
from ._spatial import (
    SpatialVerificationReranker,
    count_inliers,
    match_features,
    top_activations,
)

__all__ = [
    "DiffusionRetriever",
    "FALLBACKS",
    "KReciprocalRetriever",
    "LocalVerificationReranker",
    "ORDERS",
    "OnlineCAMRetriever",
    "QueryExpansionRetriever",
    "RegionReranker",
    "SpatialVerificationReranker",
    "cam_boxes",
    "count_inliers",
    "distinct_matches",
    "false_alarms",
    "match_features",
    "top_activations",
    "verified_order",
    "verify_matches",
]
