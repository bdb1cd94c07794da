"""After the first search: query expansion, database-side augmentation, diffusion,
k-reciprocal re-ranking, region re-ranking, online class aggregation.

Each estimator searches a database (most wrap a retriever) and is itself the last
step of a pipeline.
"""

from ._diffusion import DiffusionRetriever
from ._expansion import QueryExpansionRetriever
from ._kreciprocal import KReciprocalRetriever
from ._online_cam import OnlineCAMRetriever
from ._rerank import RegionReranker, cam_boxes

__all__ = ["DiffusionRetriever", "KReciprocalRetriever", "OnlineCAMRetriever",
           "QueryExpansionRetriever", "RegionReranker", "cam_boxes"]
