"""After the first search: query expansion, database-side augmentation, region re-ranking.

Each estimator wraps a retriever and is itself the last step of a pipeline.
"""

from ._expansion import QueryExpansionRetriever
from ._rerank import RegionReranker, cam_boxes

__all__ = ["QueryExpansionRetriever", "RegionReranker", "cam_boxes"]
