"""The benchmarks by name: :data:`DATASETS` and :func:`load_dataset`."""

from __future__ import annotations

from ._base import DATASETS
from ._coil import load_coil
from ._holidays import load_holidays
from ._oxford import load_oxford5k, load_paris6k, load_revisited
from ._ukbench import load_ukbench

__all__ = ["DATASETS", "load_dataset"]


# ---------------------------------------------------------------------------
# by name
# ---------------------------------------------------------------------------
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
    if name == "oxford5k":
        return load_oxford5k(root, **kwargs)
    if name == "paris6k":
        return load_paris6k(root, **kwargs)
    if name in ("roxford5k", "rparis6k"):
        return load_revisited(name, root, **kwargs)
    if name == "holidays":
        return load_holidays(root, **kwargs)
    if name == "ukbench":
        return load_ukbench(root, **kwargs)
    if name in ("coil100", "coil20"):
        return load_coil(root, name=name, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
