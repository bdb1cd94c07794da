"""Oxford5k and Paris6k: the original protocol and the revisited one (revisitop)."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np

from ._base import (
    DatasetError,
    GroundTruth,
    RetrievalBenchmark,
    dataset_root,
    index_images,
    missing_message,
    query_crop,
    to_ids,
)
from ._download import download_dataset

__all__ = [
    "GROUND_TRUTH_DIGESTS",
    "PARIS6K_CORRUPT",
    "ground_truth_digest",
    "load_oxford5k",
    "load_paris6k",
    "load_revisited",
    "read_oxford_ground_truth",
    "revisited_ground_truth",
]


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
    root = dataset_root(root, name)
    gt_path = _find_gt_dir(root, gt_dir, cfg["gt_dirs"], name)
    parsed = read_oxford_ground_truth(gt_path, cfg["prefix"])
    official = ground_truth_digest(gt_path) == GROUND_TRUTH_DIGESTS[name]
    if not official:
        warnings.warn(
            f"{name}: the ground-truth files in {gt_path} differ from the official release "
            f"({'gt_files_170407' if name == 'oxford5k' else 'paris_120310'}); results "
            "will not be comparable with published ones", UserWarning, stacklevel=3)
    found = index_images(root)
    excluded = sorted(n for n in exclude if n in found)
    for n in exclude:
        found.pop(n, None)
    named = set()
    for q in parsed:
        named.update([q["image"]], q["good"], q["ok"], q["junk"])
    missing = named - set(found)
    if missing:
        raise DatasetError(missing_message(name, missing, len(named), root, cfg["get"]))
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
    positives = [to_ids(q["good"] + q["ok"], index) for q in parsed]
    junk = [to_ids(q["junk"], index) for q in parsed]
    return RetrievalBenchmark(
        name=name, root=str(root), images=[found[n] for n in names], image_names=names,
        queries=[query_crop(found[q["image"]], q["box"], q["name"]) for q in parsed],
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
    root = dataset_root(root, name)
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
    path = dataset_root(path, "revisitop1m")
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
        raise DatasetError(missing_message(
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
        queries=[query_crop(p, g["bbx"], q)
                 for p, g, q in zip(qimages, cfg["gnd"], cfg["qimlist"])],
        query_names=list(cfg["qimlist"]), ground_truth=gt,
        paired="rparis6k" if name == "roxford5k" else "roxford5k", info=info,
    )



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
