"""The poolers by name: one list for the command line and the demo.

:data:`POOLERS` maps the short name the command line takes (``--pooler
gem``) to a :class:`PoolerSpec`: the display name the demo prints and the
estimator class.  The torch layers of :mod:`skretrieval.nn` use the same short
names (``skretrieval.nn.POOLINGS``, the poolers with a torch layer).
"""

from __future__ import annotations

from typing import NamedTuple

from ._global import GeMPooler, MACPooler, SPoCPooler
from ._regional import CroWPooler, RMACPooler

__all__ = ["POOLERS", "PoolerSpec", "make_pooler"]


class PoolerSpec(NamedTuple):
    """A pooler of the registry: short name, display name, estimator class."""

    name: str
    display_name: str
    estimator: type


# in the order the demo prints them
POOLERS = {
    spec.name: spec
    for spec in (
        PoolerSpec("spoc", "SPoC", SPoCPooler),
        PoolerSpec("mac", "MAC", MACPooler),
        PoolerSpec("gem", "GeM", GeMPooler),
        PoolerSpec("rmac", "R-MAC", RMACPooler),
        PoolerSpec("crow", "CroW", CroWPooler),
    )
}


def make_pooler(name, **params):
    """A new pooler of the registry, by short name, with ``params``.

    Examples
    --------
    >>> from skretrieval.pooling._registry import make_pooler
    >>> make_pooler("gem", p=2.0)
    GeMPooler(p=2.0)
    """
    try:
        spec = POOLERS[name]
    except KeyError:
        raise ValueError(f"pooler must be one of {sorted(POOLERS)}, got {name!r}") from None
    return spec.estimator(**params)
