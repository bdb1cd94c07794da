"""Figures of retrieval results in the style of scikit-learn's displays (matplotlib optional).

:class:`RetrievalDisplay` draws queries and their top results framed by
relevance; :func:`plot_rankings` draws a quick grid of rankings.
"""

from ._demo_figure import plot_rankings
from ._display import RetrievalDisplay

__all__ = ["RetrievalDisplay", "plot_rankings"]
