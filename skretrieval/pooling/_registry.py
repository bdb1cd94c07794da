"""The poolers by name: one table for the command line, the demo, nn and persistence.

:data:`POOLERS` maps the short name the command line takes (``--pooler
gem``) to a :class:`PoolerSpec`: the display name the demo prints, the
estimator class and, when the pooler can be trained end to end, its torch
layer.  Everything else reads this table:

* the ``--pooler`` choices of the command line and the poolers the demo
  compares;
* :data:`skretrieval.nn.POOLINGS` (the rows with a torch layer), the layer
  :class:`~skretrieval.RetrievalNet` builds for ``pooling=name`` and the
  ``pooling`` values :class:`~skretrieval.RetrievalNetTrainer` accepts;
* the classes :func:`skretrieval.persistence.load_pipeline` instantiates.

A new pooler is one class and one row of :data:`POOLERS` (see
``docs/architecture.md``, "Where a new thing goes").  The views of the table
(``skretrieval.utils.TableNames``, :func:`pooler_classes`) read it when they are used, so
a row added later -- by a plugin, or by a test with ``monkeypatch.setitem`` --
is seen everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..utils._tables import TableNames
from ._global import GeMPooler, MACPooler, SPoCPooler
from ._regional import CroWPooler, RMACPooler
from ._torch import GeM, MAC, RMAC, SPoC

__all__ = ["POOLERS", "PoolerSpec", "make_pooler", "pooler_classes"]


@dataclass(frozen=True)
class PoolerSpec:
    """A row of the pooler table.

    Parameters
    ----------
    name : str
        The short name (``--pooler`` of the command line, ``pooling=`` of the
        trainer).
    display_name : str
        The name the demo prints.
    estimator : type
        The :class:`~skretrieval.pooling._base.BasePooler` subclass.
    layer : callable or None, default=None
        The torch layer: ``layer(**params)`` returns a :class:`torch.nn.Module`
        mapping an ``(N, C, H, W)`` batch to ``(N, C)`` vectors, before any
        normalisation.  None: the pooler cannot be trained end to end.
    layer_params : tuple of str, default=()
        The pooling parameters of :class:`~skretrieval.RetrievalNet` (``"p"``,
        ``"learn_p"``) that ``layer`` takes; the others are not passed.

    Examples
    --------
    >>> from skretrieval.pooling._registry import POOLERS
    >>> POOLERS["gem"].make_layer(p=2.0, learn_p=False)
    GeM(p=2, eps=1e-06)
    >>> POOLERS["mac"].make_layer(p=2.0, learn_p=False)
    MAC()
    """

    name: str
    display_name: str
    estimator: type
    layer: Callable | None = None
    layer_params: tuple = ()

    @property
    def persisted_name(self):
        """The class name in the manifest of a saved model (``skretrieval.<Class>``)."""
        return f"skretrieval.{self.estimator.__name__}"

    def make_layer(self, **params):
        """The torch layer, given the pooling parameters of the network.

        Parameters
        ----------
        **params
            The pooling parameters of the network (``p=``, ``learn_p=``); only
            those named in :attr:`layer_params` are passed to :attr:`layer`.

        Returns
        -------
        layer : torch.nn.Module

        Raises
        ------
        ValueError
            When the pooler has no torch layer.
        """
        if self.layer is None:
            raise ValueError(f"the pooler {self.name!r} has no torch layer; choose one of "
                             f"{tuple(TableNames(POOLERS, 'layer'))}")
        return self.layer(**{k: v for k, v in params.items() if k in self.layer_params})


# in the order the demo prints them
POOLERS = {
    spec.name: spec
    for spec in (
        PoolerSpec("spoc", "SPoC", SPoCPooler, layer=SPoC),
        PoolerSpec("mac", "MAC", MACPooler, layer=MAC),
        PoolerSpec("gem", "GeM", GeMPooler, layer=GeM, layer_params=("p", "learn_p")),
        PoolerSpec("rmac", "R-MAC", RMACPooler, layer=RMAC),
        PoolerSpec("crow", "CroW", CroWPooler),
    )
}


def pooler_classes():
    """The estimator classes of the table, by their persisted name.

    Returns
    -------
    classes : dict
        ``{"skretrieval.<Class>": class}`` in the order of :data:`POOLERS`.
    """
    return {spec.persisted_name: spec.estimator for spec in POOLERS.values()}


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
