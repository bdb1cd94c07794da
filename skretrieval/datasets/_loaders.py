"""Loaders for the standard instance-retrieval benchmarks.

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

import hashlib
import json
import os
import pickle
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..extraction._images import Crop

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "DatasetError",
    "DownloadError",
    "GROUND_TRUTH_DIGESTS",
    "GroundTruth",
    "PARIS6K_CORRUPT",
    "RetrievalBenchmark",
    "SOURCES",
    "download_dataset",
    "ground_truth_digest",
    "load_coil",
    "load_dataset",
    "load_holidays",
    "load_oxford5k",
    "load_paris6k",
    "load_revisited",
    "load_ukbench",
    "read_oxford_ground_truth",
    "revisited_ground_truth",
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
        from ..metrics._ranking import revisitop_map

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
            ground_truth={protocol: _leave_one_out(labels, queries)},
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
            from ..metrics._ranking import ukbench_score

            gt = next(iter(self.ground_truth.values()))
            # N-S counts the query itself: the ranking of the whole
            # database with the query in it, positives = its whole group.
            group = [np.union1d(p, [q]) for p, q in zip(gt.positives, self.query_indices)]
            out[next(iter(out))]["N-S"] = ukbench_score(rankings, group)
        return out


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff")


def _root(root, name):
    if root is None:
        raise DatasetError(f"{name}: no root directory given")
    path = Path(os.fspath(root)).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{name}: root directory {str(path)!r} does not exist")
    return path


def _index_images(folder, extensions=(".jpg",)):
    """Map stem -> path of every image file under ``folder`` (recursively)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for f in sorted(filenames):
            stem, ext = os.path.splitext(f)
            if ext.lower() in extensions:
                found.setdefault(stem, os.path.join(dirpath, f))
    return found


def _missing_message(name, missing, total, where, get):
    shown = ", ".join(sorted(missing)[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (f"{name}: {len(missing)} of the {total} images named by the ground truth "
            f"are missing under {where} (e.g. {shown}{more}). {get}")


def _to_ids(names, index):
    return np.array([index[n] for n in names], dtype=np.int64)


def _pil_box(box):
    """Round a float box as PIL's ``Image.crop`` does (revisitop crops with it)."""
    return tuple(int(round(float(v))) for v in box)


def _query_crop(path, box, name):
    box = _pil_box(box)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DatasetError(f"query {name}: empty box {box} after rounding")
    return Crop(path, box=box)


# ---------------------------------------------------------------------------
# Oxford5k / Paris6k (the original protocol)
# ---------------------------------------------------------------------------
_OXFORD_GET = (
    "Get the images from https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
    "oxbuild_images-v1.tgz and the ground truth from "
    "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/gt_files_170407.tgz, extract both "
    "into the root (or pass download=True)."
)
_PARIS_GET = (
    "Get the images from https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"
    "paris_1-v1.tgz and paris_2-v1.tgz and the ground truth from "
    "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_120310.tgz, extract them "
    "into the root (or pass download=True)."
)

#: The Paris6k images that the Oxford VGG group lists as corrupt (their files
#: hold an HTML error page): https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/corrupt.txt
#: None of them is named by the ground truth; the community leaves them out
#: of the database (Gordo et al.'s deep-retrieval code, revisitop's rParis6k).
PARIS6K_CORRUPT = frozenset(
    "paris_louvre_000136 paris_louvre_000146 paris_moulinrouge_000422 "
    "paris_museedorsay_001059 paris_notredame_000188 paris_pantheon_000284 "
    "paris_pantheon_000960 paris_pantheon_000974 paris_pompidou_000195 "
    "paris_pompidou_000196 paris_pompidou_000201 paris_pompidou_000467 "
    "paris_pompidou_000640 paris_sacrecoeur_000299 paris_sacrecoeur_000330 "
    "paris_sacrecoeur_000353 paris_triomphe_000662 paris_triomphe_000833 "
    "paris_triomphe_000863 paris_triomphe_000867".split()
)

_CLASSIC = {
    "oxford5k": {"gt_dirs": ("gt_files_170407", "gt", "groundtruth"), "n_images": 5063,
                 "prefix": "oxc1_", "get": _OXFORD_GET, "paired": "paris6k"},
    "paris6k": {"gt_dirs": ("paris_120310", "gt", "groundtruth"), "n_images": 6412,
                "prefix": "", "get": _PARIS_GET, "paired": "oxford5k"},
}

_GT_FILE = re.compile(r"^(?P<query>.+_\d+)_(?P<kind>query|good|ok|junk)\.txt$")


def _read_names(path):
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def _find_gt_dir(root, gt_dir, candidates, name):
    if gt_dir is not None:
        places = [Path(os.fspath(gt_dir)).expanduser()]
    else:
        places = [root] + [root / c for c in candidates]
    for place in places:
        if place.is_dir() and any(place.glob("*_query.txt")):
            return place
    tried = ", ".join(str(p) for p in places)
    raise DatasetError(
        f"{name}: no ground-truth files (*_query.txt, *_good.txt, *_ok.txt, *_junk.txt) "
        f"in {tried}. {_CLASSIC[name]['get']}"
    )


def read_oxford_ground_truth(gt_dir, prefix=""):
    """Parse a ``gt_files_170407`` / ``paris_120310`` ground-truth directory.

    Parameters
    ----------
    gt_dir : str or os.PathLike
        Directory holding ``<query>_query.txt`` (``<prefix><image> x1 y1 x2
        y2``), ``<query>_good.txt``, ``<query>_ok.txt`` and
        ``<query>_junk.txt`` for every query.
    prefix : str, default=""
        Prefix of the image names in the query files (``"oxc1_"`` for
        Oxford), removed.

    Returns
    -------
    queries : list of dict
        Sorted by query name; each with ``"name"`` (e.g. ``all_souls_1``),
        ``"image"``, ``"box"`` (x1, y1, x2, y2 floats, original pixels),
        ``"good"``, ``"ok"`` and ``"junk"`` (lists of image names).
    """
    gt_dir = Path(os.fspath(gt_dir))
    kinds = {}
    for f in sorted(gt_dir.iterdir()):
        m = _GT_FILE.match(f.name)
        if m:
            kinds.setdefault(m["query"], {})[m["kind"]] = f
    queries = []
    for q in sorted(kinds):
        files = kinds[q]
        lacking = [k for k in ("query", "good", "ok", "junk") if k not in files]
        if lacking:
            raise DatasetError(
                f"ground truth of query {q} in {gt_dir} lacks "
                + ", ".join(f"{q}_{k}.txt" for k in lacking)
            )
        fields = open(files["query"], encoding="utf-8").read().split()
        if len(fields) != 5:
            raise DatasetError(
                f"{files['query']}: expected '<image> x1 y1 x2 y2', got {' '.join(fields)!r}"
            )
        image = fields[0][len(prefix):] if prefix and fields[0].startswith(prefix) else fields[0]
        queries.append({
            "name": q, "image": image, "box": tuple(float(v) for v in fields[1:]),
            "good": _read_names(files["good"]), "ok": _read_names(files["ok"]),
            "junk": _read_names(files["junk"]),
        })
    return queries


def _load_classic(name, root, gt_dir, exclude, download_):
    cfg = _CLASSIC[name]
    if download_:
        download_dataset(name, root)
    root = _root(root, name)
    gt_path = _find_gt_dir(root, gt_dir, cfg["gt_dirs"], name)
    parsed = read_oxford_ground_truth(gt_path, cfg["prefix"])
    official = ground_truth_digest(gt_path) == GROUND_TRUTH_DIGESTS[name]
    if not official:
        warnings.warn(
            f"{name}: the ground-truth files in {gt_path} differ from the official release "
            f"({'gt_files_170407' if name == 'oxford5k' else 'paris_120310'}); results "
            "will not be comparable with published ones", UserWarning, stacklevel=3)
    found = _index_images(root)
    excluded = sorted(n for n in exclude if n in found)
    for n in exclude:
        found.pop(n, None)
    named = set()
    for q in parsed:
        named.update([q["image"]], q["good"], q["ok"], q["junk"])
    missing = named - set(found)
    if missing:
        raise DatasetError(_missing_message(name, missing, len(named), root, cfg["get"]))
    expected = cfg["n_images"] - len(exclude)
    if len(found) != expected:
        warnings.warn(
            f"{name}: found {len(found)} images under {root}, the standard database "
            f"has {expected}{' after leaving out the corrupt ones' if exclude else ''}; "
            "results will not be comparable with published ones",
            UserWarning, stacklevel=3,
        )
    names = sorted(found)
    index = {n: i for i, n in enumerate(names)}
    positives = [_to_ids(q["good"] + q["ok"], index) for q in parsed]
    junk = [_to_ids(q["junk"], index) for q in parsed]
    return RetrievalBenchmark(
        name=name, root=str(root), images=[found[n] for n in names], image_names=names,
        queries=[_query_crop(found[q["image"]], q["box"], q["name"]) for q in parsed],
        query_names=[q["name"] for q in parsed],
        ground_truth={"default": GroundTruth(positives, junk, "default")},
        paired=cfg["paired"],
        info={"ground_truth_dir": str(gt_path), "official_ground_truth": official,
              "excluded": excluded,
              "query_images_in_database": True},
    )


def load_oxford5k(root, *, gt_dir=None, download=False):
    """Oxford Buildings (Oxford5k), original protocol (Philbin et al., 2007).

    55 queries (11 landmarks x 5), each a box of a database image; the
    query is the cropped box only.  Positives = ``good`` + ``ok``; ``junk``
    images are ignored.  The full query images stay in the database, as in
    the original protocol (they are among their own positives).

    Parameters
    ----------
    root : str or os.PathLike
        Directory with the 5,063 ``*.jpg`` of ``oxbuild_images-v1.tgz``
        (anywhere below it) and the ground-truth files of
        ``gt_files_170407.tgz`` (in ``root``, ``root/gt_files_170407`` or
        ``gt_dir``).
    gt_dir : str or os.PathLike, default=None
        Where the ground-truth files are, if not with the images.
    download : bool, default=False
        Fetch the official archives into ``root`` first (see :func:`download_dataset`).

    Returns
    -------
    RetrievalBenchmark
        Protocol ``"default"``.  Query boxes are ``(x1, y1, x2, y2)`` in
        original pixels, rounded as PIL's ``Image.crop`` rounds them (as
        revisitop crops), then cut at full resolution.

    Raises
    ------
    DatasetError
        If the ground truth is not found or an image it names is missing;
        the message says where to get them.
    """
    return _load_classic("oxford5k", root, gt_dir, frozenset(), download)


def load_paris6k(root, *, gt_dir=None, exclude_corrupt=True, download=False):
    """Paris6k, original protocol (Philbin et al., 2008).

    As :func:`load_oxford5k`.  The archives hold 6,412 images, 20 of which
    are corrupt (HTML error pages saved as JPEG; Oxford VGG's
    ``corrupt.txt``, :data:`PARIS6K_CORRUPT`).  None of them is named by
    the ground truth; with ``exclude_corrupt=True`` they are left out of the
    database (6,392 images), as the community does (Gordo et al.'s code,
    revisitop).  Every ``*_good.txt`` of Paris is empty: all positives are in
    ``*_ok.txt``.

    Parameters
    ----------
    root : str or os.PathLike
        Directory with the images of ``paris_1-v1.tgz`` and ``paris_2-v1.tgz``
        (any sub-folders) and the ground truth of ``paris_120310.tgz``.
    gt_dir : str or os.PathLike, default=None
        Where the ground-truth files are, if not with the images.
    exclude_corrupt : bool, default=True
        Leave the 20 corrupt files out of the database.
    download : bool, default=False
        Fetch the official archives into ``root`` first.

    Returns
    -------
    RetrievalBenchmark
    """
    exclude = PARIS6K_CORRUPT if exclude_corrupt else frozenset()
    return _load_classic("paris6k", root, gt_dir, exclude, download)


# ---------------------------------------------------------------------------
# Revisited Oxford / Paris (revisitop)
# ---------------------------------------------------------------------------
_REVISITED_GET = (
    "Get gnd_{name}.pkl from http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/"
    "gnd_{name}.pkl and put the images ({archives}) in {root}/jpg/ (or pass download=True)."
)


class _GroundTruthUnpickler(pickle.Unpickler):
    """Unpickle revisitop's ground truth without executing arbitrary code.

    Only plain containers and numpy arrays are allowed.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"),
        ("builtins", "set"), ("builtins", "frozenset"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a ground-truth file: only lists, "
            "dicts and numpy arrays are expected"
        )


def _read_gnd(path):
    """revisitop's ``cfg`` dict of ``path``, checked.

    Raises
    ------
    DatasetError
        Naming ``path``, for any content that is not a well-formed revisitop
        ground truth: a corrupt or truncated pickle, a callable the
        unpickler refuses, an allowed one (numpy's dtype, array
        reconstruction) given bad arguments, or a dict of the wrong shape
        (names that are not strings, indices that are not integers into
        ``imlist``, boxes that are not 4 finite numbers).
    """
    with open(path, "rb") as fh:
        try:
            cfg = _GroundTruthUnpickler(fh, encoding="latin1").load()
        except OSError:
            raise  # reading the file failed: not a matter of its content
        except Exception as exc:  # noqa: BLE001 - whatever malformed content raises
            # (UnpicklingError, EOFError, and the TypeError, ValueError,
            # AttributeError... of an allowed callable given bad arguments)
            raise DatasetError(
                f"{path}: not a revisitop ground-truth file ({type(exc).__name__}: {exc})"
            ) from exc
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise DatasetError(
            f"{path}: a revisitop ground-truth file is a dict with keys 'imlist', "
            "'qimlist' and 'gnd'"
        )
    for key in ("imlist", "qimlist"):
        names = cfg[key]
        if not isinstance(names, (list, tuple, np.ndarray)) or not all(
                isinstance(n, str) for n in names):
            raise DatasetError(f"{path}: {key!r} must be a list of image names (strings)")
    if not isinstance(cfg["gnd"], (list, tuple)):
        raise DatasetError(f"{path}: 'gnd' must be a list of dicts, one per query, got "
                           f"{type(cfg['gnd']).__name__}")
    if len(cfg["gnd"]) != len(cfg["qimlist"]):
        raise DatasetError(f"{path}: {len(cfg['gnd'])} 'gnd' entries for "
                           f"{len(cfg['qimlist'])} queries")
    n_images = len(cfg["imlist"])
    for i, g in enumerate(cfg["gnd"]):
        if not isinstance(g, dict):
            raise DatasetError(f"{path}: gnd[{i}] must be a dict, got {type(g).__name__}")
        lacking = {"bbx", "easy", "hard", "junk"} - set(g)
        if lacking:
            raise DatasetError(f"{path}: gnd[{i}] lacks {sorted(lacking)}")
        for key in ("easy", "hard", "junk"):
            try:
                ids = np.asarray(g[key]).ravel()
            except Exception as exc:  # noqa: BLE001 - e.g. ragged nested lists
                raise DatasetError(f"{path}: gnd[{i}][{key!r}] is not a list of image "
                                   f"indices ({exc})") from exc
            if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0
                             or ids.max() >= n_images):
                raise DatasetError(
                    f"{path}: gnd[{i}][{key!r}] must hold indices into 'imlist' "
                    f"(integers from 0 to {n_images - 1})")
        try:
            box = np.asarray(g["bbx"], dtype=np.float64)
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"{path}: gnd[{i}]['bbx'] is not a box ({exc})") from exc
        if box.shape != (4,) or not np.all(np.isfinite(box)):
            raise DatasetError(f"{path}: gnd[{i}]['bbx'] must be 4 finite numbers "
                               "(x1, y1, x2, y2)")
    return cfg


def revisited_ground_truth(gnd):
    """The Easy, Medium and Hard protocols of revisitop (Radenović et al., 2018).

    Exactly as revisitop's ``example_evaluate.py`` builds them from the
    ``easy``, ``hard`` and ``junk`` lists of every query:

    ========  ===================  ========================
    protocol  positives            junk (ignored)
    ========  ===================  ========================
    easy      easy                 junk + hard
    medium    easy + hard          junk
    hard      hard                 junk + easy
    ========  ===================  ========================

    Parameters
    ----------
    gnd : list of dict
        revisitop's ``cfg["gnd"]``.

    Returns
    -------
    dict of str to GroundTruth
        ``{"easy": ..., "medium": ..., "hard": ...}``.
    """
    def ids(g, *keys):
        parts = [np.asarray(g[k], dtype=np.int64).ravel() for k in keys]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    return {
        "easy": GroundTruth([ids(g, "easy") for g in gnd],
                            [ids(g, "junk", "hard") for g in gnd], "easy"),
        "medium": GroundTruth([ids(g, "easy", "hard") for g in gnd],
                              [ids(g, "junk") for g in gnd], "medium"),
        "hard": GroundTruth([ids(g, "hard") for g in gnd],
                            [ids(g, "junk", "easy") for g in gnd], "hard"),
    }


def _revisited_dir(root, name):
    root = _root(root, name)
    for place in (root, root / name, root / "datasets" / name):
        if (place / f"gnd_{name}.pkl").is_file():
            return place
    raise DatasetError(
        f"{name}: gnd_{name}.pkl not found in {root} (nor in {root / name}). "
        + _REVISITED_GET.format(name=name, root=root / name, archives=_REVISITED_ARCHIVES[name])
    )


_REVISITED_ARCHIVES = {"roxford5k": "oxbuild_images-v1.tgz",
                       "rparis6k": "paris_1-v1.tgz and paris_2-v1.tgz"}


def _distractors(path):
    path = _root(path, "revisitop1m")
    listing = path / "revisitop1m.txt"
    if not listing.is_file():
        raise DatasetError(
            f"revisitop1m: {listing} not found. Get it from "
            "http://ptak.felk.cvut.cz/revisitop/revisitop1m/revisitop1m.txt and the images "
            "(revisitop1m.1.tar.gz ... revisitop1m.100.tar.gz from "
            "http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/) into "
            f"{path / 'jpg'}"
        )
    names = _read_names(listing)
    images = [str(path / "jpg" / n) for n in names]
    # checking a million files costs seconds; check a spread sample
    step = max(1, len(images) // 1000)
    missing = [n for n, p in zip(names[::step], images[::step]) if not os.path.isfile(p)]
    if missing:
        raise DatasetError(
            f"revisitop1m: images listed in {listing} are missing under {path / 'jpg'} "
            f"(e.g. {', '.join(missing[:3])}); extract revisitop1m.*.tar.gz there"
        )
    return names, images


def load_revisited(name, root, *, distractors=None, download=False):
    """Revisited Oxford / Paris (``roxford5k``, ``rparis6k``) of revisitop.

    Reads revisitop's layout: ``ROOT/gnd_<name>.pkl`` (or
    ``ROOT/<name>/gnd_<name>.pkl``) and the images ``jpg/<imlist[i]>.jpg``
    beside it.  The 70 queries are the boxes ``gnd[i]["bbx"]`` of the
    images ``qimlist``, cut at full resolution (rounded as PIL's
    ``Image.crop``, which revisitop uses); they are not in the database.
    The protocols are built by :func:`revisited_ground_truth`; evaluate
    with :meth:`RetrievalBenchmark.evaluate` (mAP and mP@1, 5, 10 as
    revisitop reports them).

    Parameters
    ----------
    name : {"roxford5k", "rparis6k"}
        Which dataset.
    root : str or os.PathLike
        The dataset directory, or revisitop's data root above it.
    distractors : str or os.PathLike, default=None
        The ``revisitop1m`` directory (``revisitop1m.txt`` and ``jpg/``): its
        1,001,001 images are appended to the database (after the dataset's
        own images, so the ground-truth indices stay valid) as negatives of
        every query: the "+R1M" protocol.
    download : bool, default=False
        Fetch the images and the ground truth into ``root`` first.

    Returns
    -------
    RetrievalBenchmark
        Protocols ``"easy"``, ``"medium"``, ``"hard"``.
    """
    if name not in _REVISITED_ARCHIVES:
        raise ValueError(f"name must be 'roxford5k' or 'rparis6k', got {name!r}")
    if download:
        download_dataset(name, root)
    place = _revisited_dir(root, name)
    cfg = _read_gnd(place / f"gnd_{name}.pkl")
    jpg = place / "jpg"
    images = [str(jpg / f"{n}.jpg") for n in cfg["imlist"]]
    qimages = [str(jpg / f"{n}.jpg") for n in cfg["qimlist"]]
    missing = {n for n, p in zip(list(cfg["imlist"]) + list(cfg["qimlist"]), images + qimages)
               if not os.path.isfile(p)}
    if missing:
        raise DatasetError(_missing_message(
            name, missing, len(set(cfg["imlist"]) | set(cfg["qimlist"])), jpg,
            _REVISITED_GET.format(name=name, root=place, archives=_REVISITED_ARCHIVES[name])))
    names = list(cfg["imlist"])
    info = {"ground_truth": str(place / f"gnd_{name}.pkl"), "n_distractors": 0}
    if distractors is not None:
        d_names, d_images = _distractors(distractors)
        images = images + d_images
        names = names + d_names
        info["n_distractors"] = len(d_images)
    gt = revisited_ground_truth(cfg["gnd"])
    return RetrievalBenchmark(
        name=name + ("+r1m" if distractors is not None else ""), root=str(place),
        images=images, image_names=names,
        queries=[_query_crop(p, g["bbx"], q)
                 for p, g, q in zip(qimages, cfg["gnd"], cfg["qimlist"])],
        query_names=list(cfg["qimlist"]), ground_truth=gt,
        paired="rparis6k" if name == "roxford5k" else "roxford5k", info=info,
    )


# ---------------------------------------------------------------------------
# benchmarks whose queries are database images
# ---------------------------------------------------------------------------
def _leave_one_out(labels, queries):
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


def _image_dir(root, name, subdirs, pattern, get):
    for place in [root] + [root / s for s in subdirs]:
        if place.is_dir():
            files = sorted(f for f in place.iterdir() if pattern.match(f.name))
            if files:
                return place, files
    raise DatasetError(
        f"{name}: no image named like {pattern.pattern} in {root}"
        + "".join(f" or {root / s}" for s in subdirs) + f". {get}"
    )


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
    root = _root(root, "holidays")
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
        place, files = _image_dir(root, "holidays", subdirs, _HOLIDAYS_NAME, _HOLIDAYS_GET)
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
        ground_truth={"default": _leave_one_out(groups, queries)},
        query_indices=queries, labels=groups, query_labels=groups[queries],
        info={"rotated": bool(rotated)},
    )


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
    root = _root(root, "ukbench")
    place, files = _image_dir(
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
        ground_truth={"default": _leave_one_out(groups, queries)},
        query_indices=queries, labels=groups, query_labels=groups, ns_score=True,
    )


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
    root = _root(root, name)
    place, files = _image_dir(root, name, ("coil-100", "coil-20-proc", "coil-20"),
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
        ground_truth={"default": _leave_one_out(labels, queries)},
        query_indices=queries, labels=labels, query_labels=labels, paired=paired,
    )


# ---------------------------------------------------------------------------
# by name
# ---------------------------------------------------------------------------
DATASETS = ("oxford5k", "paris6k", "roxford5k", "rparis6k", "holidays", "ukbench",
            "coil100", "coil20")


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


# ---------------------------------------------------------------------------
# downloading
# ---------------------------------------------------------------------------
_OX = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
_PA = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"
_RV = "http://cmp.felk.cvut.cz/revisitop/data/datasets/"
_CAVE = "https://www.cs.columbia.edu/CAVE/databases/SLAM_coil-20_coil-100/"

#: Official addresses: (url, sub-directory to extract / save into).
SOURCES = {
    "oxford5k": [(_OX + "oxbuild_images-v1.tgz", "jpg"), (_OX + "gt_files_170407.tgz", "")],
    "paris6k": [(_PA + "paris_1-v1.tgz", "jpg"), (_PA + "paris_2-v1.tgz", "jpg"),
                (_PA + "paris_120310.tgz", "")],
    "roxford5k": [(_OX + "oxbuild_images-v1.tgz", "jpg"),
                  (_RV + "roxford5k/gnd_roxford5k.pkl", "")],
    "rparis6k": [(_PA + "paris_1-v1.tgz", "jpg"), (_PA + "paris_2-v1.tgz", "jpg"),
                 (_RV + "rparis6k/gnd_rparis6k.pkl", "")],
    "holidays": [("ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg1.tar.gz", ""),
                 ("ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg2.tar.gz", "")],
    "ukbench": [("https://archive.org/download/ukbench/ukbench.zip", "")],
    "coil100": [(_CAVE + "coil-100/coil-100.zip", "")],
    "coil20": [(_CAVE + "coil-20/coil-20-proc.zip", "")],
}

#: sha256 of the official files, pinned where known.  The others are
#: recorded in ``ROOT/SHA256SUMS.json`` when first downloaded and checked
#: on every later call (trust on first use).
CHECKSUMS = {}

#: sha256 over the ground-truth text files (sorted by name: name, NUL,
#: content) of the official ``gt_files_170407`` and ``paris_120310``
#: releases; :func:`ground_truth_digest` computes it.
GROUND_TRUTH_DIGESTS = {
    "oxford5k": "66f292f7b36b4d720ea1e99c73cd3dfe0074fdae31bce2c1a1b1494ff5ceae1a",
    "paris6k": "cd05d48657a24fdc16c6c42b1eb8ab96c94cffb8aa8726a1edb88efb5d0474f9",
}


def ground_truth_digest(gt_dir):
    """sha256 of the ``*_{query,good,ok,junk}.txt`` files of a directory.

    Compare with :data:`GROUND_TRUTH_DIGESTS` to check that a ground truth
    is the official release, unmodified.
    """
    h = hashlib.sha256()
    for f in sorted(Path(os.fspath(gt_dir)).iterdir()):
        if _GT_FILE.match(f.name):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


class DownloadError(OSError):
    """A benchmark file could not be downloaded or failed its checksum."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url, dest, timeout):
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"could not download {url} ({reason}). Without internet, fetch it on another "
            f"machine and put it at {dest}; it is then used instead of downloading."
        ) from exc
    os.replace(tmp, dest)


def _extract(archive, into):
    into.mkdir(parents=True, exist_ok=True)
    target = into.resolve()
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (into / member).resolve().is_relative_to(target):
                    raise DownloadError(f"{archive}: member {member!r} escapes {into}")
            zf.extractall(into)
    elif re.search(r"\.(tgz|tar\.gz|tar)$", archive.name):
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                tf.extractall(into, filter="data")
            else:
                for member in tf.getmembers():
                    if (not (member.isfile() or member.isdir())
                            or not (into / member.name).resolve().is_relative_to(target)):
                        raise DownloadError(f"{archive}: unsafe member {member.name!r}")
                tf.extractall(into)
    else:
        return False
    return True


def download_dataset(name, root, *, timeout=30.0):
    """Fetch a benchmark's official files into ``root`` and extract them.

    Files already in ``ROOT/downloads`` are not fetched again (so a user
    without internet can copy the archives there).  Every file's sha256 is
    checked against :data:`CHECKSUMS` when pinned, otherwise against the one
    recorded in ``ROOT/SHA256SUMS.json`` at its first download.  Archives
    are extracted with tarfile's ``"data"`` filter (no member may escape
    ``root``).

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    root : str or os.PathLike
        Directory to fill (created if needed).
    timeout : float, default=30.0
        Seconds before a stalled connection fails.

    Raises
    ------
    DownloadError
        If a file cannot be fetched (no internet: it fails within
        ``timeout``, with a message saying where to put the file by hand),
        or if its checksum does not match.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(os.fspath(root)).expanduser()
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    sums_path = root / "SHA256SUMS.json"
    sums = json.loads(sums_path.read_text()) if sums_path.is_file() else {}
    for url, sub in SOURCES[name]:
        fname = url.rsplit("/", 1)[-1]
        dest = downloads / fname
        if not dest.is_file():
            _fetch(url, dest, timeout)
        digest = _sha256(dest)
        expected = CHECKSUMS.get(fname) or sums.get(fname)
        if expected and digest != expected:
            raise DownloadError(
                f"{dest}: sha256 {digest} does not match the expected {expected}; "
                "delete the file and download it again"
            )
        sums[fname] = digest
        into = root / sub if sub else root
        marker = downloads / (fname + ".extracted")
        if not marker.is_file():
            if _extract(dest, into):
                marker.write_text(digest)
            elif fname.endswith(".pkl") or fname.endswith(".txt"):
                into.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(dest, into / fname)
                marker.write_text(digest)
    sums_path.write_text(json.dumps(sums, indent=1, sort_keys=True))
    if name == "rparis6k":
        _flatten_jpgs(root / "jpg")  # the archives nest paris/<landmark>/; revisitop reads jpg/<name>.jpg


def _flatten_jpgs(folder):
    """Move every ``*.jpg`` below ``folder`` directly into it."""
    for path in sorted(folder.rglob("*.jpg")):
        if path.parent != folder:
            target = folder / path.name
            if not target.exists():
                os.replace(path, target)
