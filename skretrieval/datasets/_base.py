"""The structure every benchmark loader returns, and the helpers they share.

Loaders for the standard instance-retrieval benchmarks (one module per
family: :mod:`._oxford`, :mod:`._holidays`, :mod:`._ukbench`, :mod:`._coil`;
:mod:`._registry` by name, :mod:`._download` for the archives).

Every loader reads a local directory in the benchmark's standard layout and
returns a :class:`RetrievalBenchmark`: the database images (paths), the
queries (paths, or :class:`~skretrieval.Crop` objects for the benchmarks whose
queries are regions), and the ground truth of every evaluation protocol as
per-query index sets (:class:`GroundTruth`) that plug into
:func:`skretrieval.metrics.mean_average_precision` and into
:class:`~skretrieval.metrics.RetrievalMAP`.

=============  ==========================================================  =========
name           protocol                                                    loader
=============  ==========================================================  =========
``oxford5k``   55 cropped queries; positives = good + ok, junk ignored     :func:`load_oxford5k`
``paris6k``    same (20 corrupt images left out, as the community does)    :func:`load_paris6k`
``roxford5k``  revisitop Easy / Medium / Hard, mAP and mP@1,5,10            :func:`load_revisited`
``rparis6k``   same                                                        :func:`load_revisited`
``holidays``   500 queries ``XXXX00.jpg``, query excluded from its ranking  :func:`load_holidays`
``ukbench``    every image a query; N-S score (query counted) and mAP      :func:`load_ukbench`
``coil100``    every view a query (leave-one-out), object id = label       :func:`load_coil`
``coil20``     same                                                        :func:`load_coil`
=============  ==========================================================  =========

No image is ever downloaded unless ``download=True`` is passed (see
:func:`download_dataset`); without it a loader checks the directory and says exactly
what is missing and where to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..extraction._images import Crop
from ..metrics._ranking import revisitop_map, ukbench_score

__all__ = [
    "DatasetError",
    "GroundTruth",
    "RetrievalBenchmark",
    "dataset_root",
    "image_dir",
    "index_images",
    "leave_one_out",
    "missing_message",
    "query_crop",
    "to_ids",
]



class DatasetError(FileNotFoundError):
    """A benchmark directory is missing files or is not in the expected layout."""


# ---------------------------------------------------------------------------
# the returned structure
# ---------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """Relevance of the database images to every query, for one protocol.

    Parameters
    ----------
    positives : list of ndarray of int
        ``positives[i]``: database indices relevant to query ``i``.
    junk : list of ndarray of int
        ``junk[i]``: database indices ignored for query ``i`` (removed from its
        ranking before the AP is computed: neither hit nor miss).
    name : str, default="default"
        Name of the protocol (``"easy"``, ``"medium"``, ``"hard"``, ...).

    Examples
    --------
    >>> from skretrieval.datasets import GroundTruth
    >>> gt = GroundTruth([[0, 2]], [[1]])
    >>> gt.evaluate([[0, 1, 2, 3]])["mAP"]
    1.0
    """

    positives: list
    junk: list
    name: str = "default"

    def __post_init__(self):
        self.positives = [np.asarray(p, dtype=np.int64).ravel() for p in self.positives]
        self.junk = [np.asarray(j, dtype=np.int64).ravel() for j in self.junk]
        if len(self.positives) != len(self.junk):
            raise ValueError(
                f"GroundTruth needs one junk set per query: {len(self.positives)} "
                f"positive sets, {len(self.junk)} junk sets"
            )

    def __len__(self):
        return len(self.positives)

    def subset(self, queries):
        """The ground truth of some queries only (in the given order)."""
        queries = np.asarray(queries, dtype=np.int64).ravel()
        return GroundTruth([self.positives[q] for q in queries],
                           [self.junk[q] for q in queries], self.name)

    def evaluate(self, rankings, ks=(1, 5, 10)):
        """mAP and revisitop's mP@k of rankings of the database.

        Parameters
        ----------
        rankings : array-like of int of shape (n_queries, n_ranked)
            One ranking of database indices per query, best first.
        ks : sequence of int, default=(1, 5, 10)
            Cut-offs of the precision (revisitop's ``kappas``).

        Returns
        -------
        results : dict
            ``"mAP"`` (float), ``"ap"`` (per-query AP), and ``"mP@k"`` for
            every ``k`` in ``ks``; see
            :func:`skretrieval.metrics.revisitop_map`.
        """
        m, ap, mpr, _ = revisitop_map(rankings, self.positives, self.junk, ks=ks)
        out = {"mAP": m, "ap": ap}
        for k, p in zip(ks, np.atleast_1d(mpr)):
            out[f"mP@{k}"] = float(p)
        return out


@dataclass
class RetrievalBenchmark:
    """A retrieval benchmark: database, queries and ground truth.

    Attributes
    ----------
    name : str
        Benchmark name, e.g. ``"roxford5k"``.
    root : str
        The directory it was read from.
    images : list of str
        Paths of the database images, in database-index order.
    image_names : list of str
        Their names as the ground truth spells them (no directory, no
        extension for Oxford / Paris).
    queries : list of str or Crop
        The query items, ready for :class:`~skretrieval.ConvFeatureExtractor`:
        a :class:`~skretrieval.Crop` (full-resolution crop of the query box)
        for Oxford / Paris, a path otherwise.
    query_names : list of str
        Names of the query images.
    ground_truth : dict of str to GroundTruth
        One entry per evaluation protocol, in the order they are reported.
    query_indices : ndarray of int or None
        When the queries are database images (Holidays, UKBench, COIL):
        the database index of every query, which its ground truth marks as
        junk (a query is not its own result). None otherwise.
    labels : ndarray or None
        Label (object / group id) of every database image, when the
        benchmark is defined by labels; usable as ``y`` in ``fit`` and with
        the label-based :class:`~skretrieval.metrics.RetrievalMAP`.
    query_labels : ndarray or None
        Labels of the queries.
    paired : str or None
        The benchmark the literature learns whitening on for this one
        (``"paris6k"`` for ``"oxford5k"`` and back, ...).
    ns_score : bool
        Whether :meth:`evaluate` also reports UKBench's N-S score.
    info : dict
        Notes on the loading (excluded files, counts, layout).
    """

    name: str
    root: str
    images: list
    image_names: list
    queries: list
    query_names: list
    ground_truth: dict
    query_indices: np.ndarray | None = None
    labels: np.ndarray | None = None
    query_labels: np.ndarray | None = None
    paired: str | None = None
    ns_score: bool = False
    info: dict = field(default_factory=dict)

    @property
    def protocols(self):
        """Names of the evaluation protocols, in report order."""
        return list(self.ground_truth)

    @property
    def n_images(self):
        return len(self.images)

    @property
    def n_queries(self):
        return len(self.queries)

    def __repr__(self):
        return (f"RetrievalBenchmark(name={self.name!r}, n_images={self.n_images}, "
                f"n_queries={self.n_queries}, protocols={self.protocols})")

    def subset(self, mask, name=None):
        """The benchmark restricted to some database images (label benchmarks).

        For the leave-one-out benchmarks defined by labels (COIL, UKBench,
        Holidays): keep the images selected by ``mask`` (boolean mask or
        indices), their queries, and rebuild the ground truth among them.
        Use it to split a collection by object, e.g. learn the vocabulary
        and the whitening on half of the COIL-100 objects and evaluate on
        the other half.

        Parameters
        ----------
        mask : array-like of bool of shape (n_images,) or of int
            The database images to keep.
        name : str, default=None
            Name of the new benchmark (default: ``"<name>[subset]"``).

        Returns
        -------
        RetrievalBenchmark
        """
        if self.labels is None or self.query_indices is None:
            raise ValueError(
                f"{self.name} is not a label-defined leave-one-out benchmark: its "
                "ground truth cannot be rebuilt for a subset of the images")
        keep = np.asarray(mask)
        keep = np.flatnonzero(keep) if keep.dtype == bool else np.unique(keep.astype(np.int64))
        if keep.size == 0 or keep.max() >= self.n_images:
            raise ValueError(f"mask selects no image, or one beyond the {self.n_images} of "
                             f"{self.name}")
        new_index = np.full(self.n_images, -1, dtype=np.int64)
        new_index[keep] = np.arange(keep.size)
        queries = new_index[self.query_indices]
        queries = queries[queries >= 0]
        labels = self.labels[keep]
        protocol = next(iter(self.ground_truth))
        return RetrievalBenchmark(
            name=name or f"{self.name}[subset]", root=self.root,
            images=[self.images[i] for i in keep],
            image_names=[self.image_names[i] for i in keep],
            queries=[self.images[keep[q]] for q in queries],
            query_names=[self.image_names[keep[q]] for q in queries],
            ground_truth={protocol: leave_one_out(labels, queries)},
            query_indices=queries, labels=labels, query_labels=labels[queries],
            paired=self.paired, ns_score=self.ns_score,
            info=dict(self.info, subset_of=self.name),
        )

    def evaluate(self, rankings, ks=(1, 5, 10)):
        """Score rankings of the database under every protocol.

        Parameters
        ----------
        rankings : array-like of int of shape (n_queries, n_ranked)
            Ranking of the database for every query, best first (the ``ind``
            of ``NearestNeighborRetriever.kneighbors(queries, "all")``).
        ks : sequence of int, default=(1, 5, 10)
            Cut-offs of revisitop's mean precision mP@k.

        Returns
        -------
        results : dict of str to dict
            Per protocol: ``"mAP"``, ``"ap"`` and ``"mP@k"``; UKBench adds
            ``"N-S"`` (mean number of the 4 group images, the query included,
            in the first 4 results).
        """
        rankings = np.asarray(rankings)
        if rankings.ndim != 2 or rankings.shape[0] != self.n_queries:
            raise ValueError(
                f"rankings must have one row per query of {self.name} "
                f"({self.n_queries}), got an array of shape {rankings.shape}"
            )
        out = {}
        for protocol, gt in self.ground_truth.items():
            out[protocol] = gt.evaluate(rankings, ks=ks)
        if self.ns_score:
            gt = next(iter(self.ground_truth.values()))
            # N-S counts the query itself: the ranking of the whole
            # database with the query in it, positives = its whole group.
            group = [np.union1d(p, [q]) for p, q in zip(gt.positives, self.query_indices)]
            out[next(iter(out))]["N-S"] = ukbench_score(rankings, group)
        return out


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def dataset_root(root, name):
    if root is None:
        raise DatasetError(f"{name}: no root directory given")
    path = Path(os.fspath(root)).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{name}: root directory {str(path)!r} does not exist")
    return path


def index_images(folder, extensions=(".jpg",)):
    """Map stem -> path of every image file under ``folder`` (recursively)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for f in sorted(filenames):
            stem, ext = os.path.splitext(f)
            if ext.lower() in extensions:
                found.setdefault(stem, os.path.join(dirpath, f))
    return found


def missing_message(name, missing, total, where, get):
    shown = ", ".join(sorted(missing)[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (f"{name}: {len(missing)} of the {total} images named by the ground truth "
            f"are missing under {where} (e.g. {shown}{more}). {get}")


def to_ids(names, index):
    return np.array([index[n] for n in names], dtype=np.int64)


def _pil_box(box):
    """Round a float box as PIL's ``Image.crop`` does (revisitop crops with it)."""
    return tuple(int(round(float(v))) for v in box)


def query_crop(path, box, name):
    box = _pil_box(box)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DatasetError(f"query {name}: empty box {box} after rounding")
    return Crop(path, box=box)


# ---------------------------------------------------------------------------
# benchmarks whose queries are database images
# ---------------------------------------------------------------------------
def leave_one_out(labels, queries):
    """Positives: same label, the query excluded; junk: the query itself."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    positives, junk = [], []
    for q in queries:
        lo = np.searchsorted(sorted_labels, labels[q], "left")
        hi = np.searchsorted(sorted_labels, labels[q], "right")
        members = np.sort(order[lo:hi])
        positives.append(members[members != q])
        junk.append(np.array([q], dtype=np.int64))
    return GroundTruth(positives, junk, "default")


def image_dir(root, name, subdirs, pattern, get):
    for place in [root] + [root / s for s in subdirs]:
        if place.is_dir():
            files = sorted(f for f in place.iterdir() if pattern.match(f.name))
            if files:
                return place, files
    raise DatasetError(
        f"{name}: no image named like {pattern.pattern} in {root}"
        + "".join(f" or {root / s}" for s in subdirs) + f". {get}"
    )
