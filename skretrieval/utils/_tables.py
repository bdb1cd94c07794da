"""The names of a table of specs: the one registry pattern of the package.

Every registry of skretrieval is a dict from a short name to a frozen spec
dataclass (the poolers of ``pooling/_registry.py``, the losses of
``nn/_registry.py``, the benchmarks of ``datasets/_registry.py``, the search
backends of ``neighbors/_backends.py``).  :class:`TableNames` is the live view
of such a table's names that parameter checks and command-line choices use,
so a row added later is seen everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

__all__ = ["LiveMapping", "TableNames"]


class TableNames(Set):
    """The names of a table of specs, read when used (a live, ordered set).

    Parameters
    ----------
    table : dict
        Name to spec, e.g. ``skretrieval.pooling.POOLERS``.
    having : str or None, default=None
        Only the specs whose attribute ``having`` is not None (``"layer"``:
        the poolers with a torch layer); None: every spec.

    Examples
    --------
    >>> from skretrieval.pooling._registry import POOLERS
    >>> from skretrieval.utils import TableNames
    >>> TableNames(POOLERS, "layer")
    ('spoc', 'mac', 'gem', 'rmac')
    >>> "crow" in TableNames(POOLERS)
    True
    """

    def __init__(self, table, having=None):
        self._table = table
        self._having = having

    def _names(self):
        return tuple(name for name, spec in self._table.items()
                     if self._having is None or getattr(spec, self._having) is not None)

    def __contains__(self, name):
        return name in self._names()

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())

    def __repr__(self):
        return repr(self._names())

    @classmethod
    def _from_iterable(cls, names):  # the result of &, |, -: a plain frozenset
        return frozenset(names)



class LiveMapping(Mapping):
    """A read-only mapping computed when it is used (a view over tables).

    Parameters
    ----------
    compute : callable
        ``compute()`` returns the dict the mapping is at that moment.

    Examples
    --------
    >>> from skretrieval.utils._tables import LiveMapping
    >>> table = {"a": 1}
    >>> doubled = LiveMapping(lambda: {k: 2 * v for k, v in table.items()})
    >>> table["b"] = 2
    >>> dict(doubled)
    {'a': 2, 'b': 4}
    """

    def __init__(self, compute):
        self._compute = compute

    def __getitem__(self, key):
        return self._compute()[key]

    def __iter__(self):
        return iter(self._compute())

    def __len__(self):
        return len(self._compute())

    def __repr__(self):
        return repr(self._compute())
