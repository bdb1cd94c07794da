"""After the first search: query expansion, database-side augmentation, region re-ranking,
online class aggregation.

Each estimator searches a database (most wrap a retriever) and is itself the last
step of a pipeline.
"""

from ._expansion import QueryExpansionRetriever
from ._online_cam import OnlineCAMRetriever
from ._rerank import RegionReranker, cam_boxes

__all__ = ["OnlineCAMRetriever", "QueryExpansionRetriever", "RegionReranker", "cam_boxes"]
