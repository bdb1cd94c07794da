"""INRIA Holidays: 500 queries, each excluded from its own ranking."""

from __future__ import annotations

import re
import warnings

import numpy as np

from ._base import DatasetError, RetrievalBenchmark, dataset_root, image_dir, leave_one_out
from ._download import download_dataset

__all__ = ["load_holidays"]


_HOLIDAYS_NAME = re.compile(r"^(\d{4})(\d{2})\.jpg$", re.IGNORECASE)
_HOLIDAYS_GET = (
    "Get jpg1.tar.gz and jpg2.tar.gz from ftp://ftp.inrialpes.fr/pub/lear/douze/data/ "
    "(INRIA Holidays, https://lear.inrialpes.fr/~jegou/data.php) and extract them there."
)


def load_holidays(root, *, rotated=False, download=False):
    """INRIA Holidays (Jégou et al., 2008).

    1,491 images in 500 groups; the group is the first four digits of the
    file name and its query is ``XXXX00.jpg``.  Each query ranks the whole
    database, itself excluded (it is marked junk); positives are the other
    images of its group.

    About 5% of the Holidays photos are stored sideways.  Much of the
    literature (e.g. Gordo et al., Babenko & Lempitsky) evaluates on a
    manually rotated copy; pass ``rotated=True`` to read it from
    ``ROOT/jpg_rotated`` (same file names, upright pixels).  Say which one
    you used when you report numbers: rotation is worth several points of
    mAP.

    Parameters
    ----------
    root : str or os.PathLike
        Directory with the images (directly, or in ``jpg/``).
    rotated : bool, default=False
        Use the manually rotated images in ``ROOT/jpg_rotated`` (or
        ``ROOT/rotated``).
    download : bool, default=False
        Fetch the official archives into ``root`` first.

    Returns
    -------
    RetrievalBenchmark
    """
    if download:
        download_dataset("holidays", root)
    root = dataset_root(root, "holidays")
    subdirs = ("jpg_rotated", "rotated") if rotated else ("jpg",)
    if rotated:
        place = next((root / s for s in subdirs if (root / s).is_dir()), None)
        if place is None:
            raise DatasetError(
                f"holidays: rotated=True but neither {root / 'jpg_rotated'} nor "
                f"{root / 'rotated'} exists; put the manually rotated images there"
            )
        files = sorted(f for f in place.iterdir() if _HOLIDAYS_NAME.match(f.name))
        if not files:
            raise DatasetError(f"holidays: no image named like 123400.jpg in {place}")
    else:
        place, files = image_dir(root, "holidays", subdirs, _HOLIDAYS_NAME, _HOLIDAYS_GET)
    groups = np.array([int(_HOLIDAYS_NAME.match(f.name).group(1)) for f in files])
    queries = np.array([i for i, f in enumerate(files)
                        if _HOLIDAYS_NAME.match(f.name).group(2) == "00"], dtype=np.int64)
    lonely = sorted(set(groups) - set(groups[queries]))
    if lonely:
        raise DatasetError(
            f"holidays: groups without a query image (XXXX00.jpg) in {place}: "
            + ", ".join(f"{g:04d}" for g in lonely[:5])
        )
    if len(files) != 1491:
        warnings.warn(
            f"holidays: found {len(files)} images in {place}, the benchmark has 1491; "
            "results will not be comparable with published ones", UserWarning, stacklevel=2)
    names = [f.name for f in files]
    return RetrievalBenchmark(
        name="holidays", root=str(place), images=[str(f) for f in files], image_names=names,
        queries=[str(files[q]) for q in queries], query_names=[names[q] for q in queries],
        ground_truth={"default": leave_one_out(groups, queries)},
        query_indices=queries, labels=groups, query_labels=groups[queries],
        info={"rotated": bool(rotated)},
    )
