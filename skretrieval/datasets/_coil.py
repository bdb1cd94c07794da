"""COIL-100 and COIL-20: every view a query (leave-one-out), object id = label."""

from __future__ import annotations

import re
import warnings

import numpy as np

from ._base import RetrievalBenchmark, dataset_root, image_dir, leave_one_out
from ._download import download_dataset

__all__ = ["load_coil"]


_COIL_NAME = re.compile(r"^obj(\d+)__(\d+)\.png$", re.IGNORECASE)
_COIL = {
    "coil100": (7200, "coil20",
                "Get coil-100.zip from https://www.cs.columbia.edu/CAVE/databases/"
                "SLAM_coil-20_coil-100/coil-100/coil-100.zip and extract it there."),
    "coil20": (1440, "coil100",
               "Get coil-20-proc.zip from https://www.cs.columbia.edu/CAVE/databases/"
               "SLAM_coil-20_coil-100/coil-20/coil-20-proc.zip and extract it there."),
}


def load_coil(root, *, name="coil100", download=False):
    """COIL-100 or COIL-20 (Nene et al., 1996), leave-one-out.

    Views of objects on a turntable, ``obj<ID>__<view>.png``; the label is
    the object id.  Every view is a query against all the others (itself
    excluded); positives = the other views of its object.

    Parameters
    ----------
    root : str or os.PathLike
        Directory with the PNG files (directly, or in ``coil-100/`` or
        ``coil-20-proc/``).
    name : {"coil100", "coil20"}, default="coil100"
        Which collection (sets the expected size and the download).
    download : bool, default=False
        Fetch the archive into ``root`` first.

    Returns
    -------
    RetrievalBenchmark
        With ``labels``: a label-based benchmark, also usable with the
        label :class:`~skretrieval.metrics.RetrievalMAP` and
        ``NearestNeighborRetriever.score(None, None)``.
    """
    if name not in _COIL:
        raise ValueError(f"name must be 'coil100' or 'coil20', got {name!r}")
    n_expected, paired, get = _COIL[name]
    if download:
        download_dataset(name, root)
    root = dataset_root(root, name)
    place, files = image_dir(root, name, ("coil-100", "coil-20-proc", "coil-20"),
                              _COIL_NAME, get)
    key = [(int(_COIL_NAME.match(f.name).group(1)), int(_COIL_NAME.match(f.name).group(2)))
           for f in files]
    order = sorted(range(len(files)), key=key.__getitem__)
    files = [files[i] for i in order]
    labels = np.array([key[i][0] for i in order])
    if len(files) != n_expected:
        warnings.warn(
            f"{name}: found {len(files)} images in {place}, the collection has "
            f"{n_expected}", UserWarning, stacklevel=2)
    queries = np.arange(len(files), dtype=np.int64)
    names = [f.name for f in files]
    return RetrievalBenchmark(
        name=name, root=str(place), images=[str(f) for f in files], image_names=names,
        queries=[str(f) for f in files], query_names=names,
        ground_truth={"default": leave_one_out(labels, queries)},
        query_indices=queries, labels=labels, query_labels=labels, paired=paired,
    )
