"""UKBench: every image a query, scored by the N-S score."""

from __future__ import annotations

import re
import warnings

import numpy as np

from ._base import RetrievalBenchmark, dataset_root, image_dir, leave_one_out
from ._download import download_dataset

__all__ = ["load_ukbench"]


_UKBENCH_NAME = re.compile(r"^ukbench(\d{5})\.jpg$", re.IGNORECASE)


def load_ukbench(root, *, download=False):
    """UKBench (Nistér & Stewénius, 2006).

    10,200 images of 2,550 objects, 4 consecutive images each
    (``ukbench00000.jpg`` ... ; object = number // 4).  Every image is a
    query.  :meth:`RetrievalBenchmark.evaluate` reports the N-S score (the
    number of the object's 4 images in the first 4 results, **the query
    included**, as the benchmark defines it; 4 is perfect) and the mAP with
    the query excluded from its own ranking.

    Parameters
    ----------
    root : str or os.PathLike
        Directory with the images (directly or in ``full/``).
    download : bool, default=False
        Fetch the archive into ``root`` first.

    Returns
    -------
    RetrievalBenchmark
    """
    if download:
        download_dataset("ukbench", root)
    root = dataset_root(root, "ukbench")
    place, files = image_dir(
        root, "ukbench", ("full", "jpg"), _UKBENCH_NAME,
        "Get ukbench.zip (https://archive.org/details/ukbench) and extract it there.")
    numbers = np.array([int(_UKBENCH_NAME.match(f.name).group(1)) for f in files])
    groups = numbers // 4
    if len(files) != 10200:
        warnings.warn(
            f"ukbench: found {len(files)} images in {place}, the benchmark has 10200; "
            "results will not be comparable with published ones", UserWarning, stacklevel=2)
    queries = np.arange(len(files), dtype=np.int64)
    names = [f.name for f in files]
    return RetrievalBenchmark(
        name="ukbench", root=str(place), images=[str(f) for f in files], image_names=names,
        queries=[str(f) for f in files], query_names=names,
        ground_truth={"default": leave_one_out(groups, queries)},
        query_indices=queries, labels=groups, query_labels=groups, ns_score=True,
    )
