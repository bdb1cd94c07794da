"""The benchmarks by name: one table of :class:`DatasetSpec` rows.

:data:`BENCHMARKS` maps the name :func:`load_dataset` and the command line
take (``--dataset roxford5k``) to a :class:`DatasetSpec`: the loader and the
arguments that pick the benchmark among those the loader knows.
:data:`DATASETS` is the live view of its names.  A new benchmark is one loader
module and one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..utils._tables import TableNames
from ._coil import load_coil
from ._holidays import load_holidays
from ._oxford import load_oxford5k, load_paris6k, load_revisited
from ._ukbench import load_ukbench

__all__ = ["BENCHMARKS", "DATASETS", "DatasetSpec", "load_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """A row of the benchmark table.

    Parameters
    ----------
    name : str
        The benchmark's name.
    loader : callable
        ``loader(*args, root, **fixed, **kwargs)`` returns the
        :class:`~skretrieval.datasets.RetrievalBenchmark`.
    args : tuple, default=()
        Positional arguments before ``root`` (``load_revisited``'s name).
    fixed : dict, default={}
        Keyword arguments that pick the benchmark (``name="coil20"``).
    """

    name: str
    loader: Callable
    args: tuple = ()
    fixed: dict = field(default_factory=dict)

    def load(self, root, **kwargs):
        """The benchmark in ``root``; ``kwargs`` go to the loader."""
        return self.loader(*self.args, root, **self.fixed, **kwargs)


BENCHMARKS = {
    spec.name: spec
    for spec in (
        DatasetSpec("oxford5k", load_oxford5k),
        DatasetSpec("paris6k", load_paris6k),
        DatasetSpec("roxford5k", load_revisited, args=("roxford5k",)),
        DatasetSpec("rparis6k", load_revisited, args=("rparis6k",)),
        DatasetSpec("holidays", load_holidays),
        DatasetSpec("ukbench", load_ukbench),
        DatasetSpec("coil100", load_coil, fixed={"name": "coil100"}),
        DatasetSpec("coil20", load_coil, fixed={"name": "coil20"}),
    )
}

#: The benchmark names :func:`load_dataset` knows (read from :data:`BENCHMARKS`).
DATASETS = TableNames(BENCHMARKS)


def load_dataset(name, root, **kwargs):
    """Load a benchmark by name (one of :data:`DATASETS`).

    Parameters
    ----------
    name : str
        ``"oxford5k"``, ``"paris6k"``, ``"roxford5k"``, ``"rparis6k"``,
        ``"holidays"``, ``"ukbench"``, ``"coil100"`` or ``"coil20"``.
    root : str or os.PathLike
        Its directory.
    **kwargs
        Passed to the loader (``distractors=``, ``rotated=``, ``download=``...).

    Returns
    -------
    RetrievalBenchmark
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return BENCHMARKS[name].load(root, **kwargs)
