"""Command-line interface: ``skretrieval`` / ``python -m skretrieval``.

Subcommands
-----------
``index``
    Extract global descriptors of every image of a folder and save the fitted
    retrieval pipeline (extractor, pooler, optional PCA whitening and
    nearest-neighbour retriever) with joblib; ``--append`` adds the images of
    the folder that a saved index lacks, ``--save-every N`` saves it every
    ``N`` images (an interrupted run resumes with ``--append``).
``search``
    Load a saved pipeline and print the most similar database images of one
    or more query images (optionally restricted to a box).
``demo``
    Compare the poolers on a small offline collection with the real
    MobileNetV2 weights and draw a figure of rankings.

Exit status: 0 on success, 2 on usage errors and bad input (missing folder or
file, unreadable image, missing weights...), with a one-line
``skretrieval: error: ...`` message on stderr and no traceback (set the
environment variable ``SKRETRIEVAL_DEBUG=1`` to get the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main"]

PROG = "skretrieval"

_POOLERS = {
    "gem": "GeMPooler",
    "spoc": "SPoCPooler",
    "mac": "MACPooler",
    "rmac": "RMACPooler",
    "crow": "CroWPooler",
}


class CLIError(Exception):
    """An expected error: reported on one line, exit status 2."""


# ---------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _weights(text):
    """``none`` (any case) means random weights."""
    return None if text.lower() in ("none", "random") else text


def _add_descriptor_options(p):
    """The options of the network and the pooling (index and evaluate)."""
    p.add_argument("--backbone", default="mobilenet_v2",
                   help="torchvision model name (default: %(default)s)")
    p.add_argument("--weights", default="IMAGENET1K_V1", type=_weights,
                   help="torchvision weights name, path to a state-dict file, or "
                        "'none' for random weights (default: %(default)s)")
    p.add_argument("--layer", default=None,
                   help="layer to take the feature maps from (default: the last "
                        "convolutional layer)")
    p.add_argument("--max-size", type=_positive_int, default=1024, metavar="PIXELS",
                   help="longest image side at scale 1 (default: %(default)s)")
    p.add_argument("--scales", type=_positive_float, nargs="+", default=[1.0],
                   metavar="S", help="image scales, e.g. '1 0.707' (default: 1)")
    p.add_argument("--pooler", choices=sorted(_POOLERS), default="gem",
                   help="pooling of the feature maps (default: %(default)s)")


def build_parser():
    """The argument parser of the ``skretrieval`` command."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Content-based instance image retrieval with deep CNN features "
                    "(scikit-learn compatible).",
        epilog="Run 'skretrieval COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # -- index -----------------------------------------------------------
    p = sub.add_parser(
        "index",
        help="index the images of a folder into a retrieval pipeline file",
        description="Extract a global descriptor of every image under FOLDER "
                    "(recursively) and save the fitted pipeline (extractor, pooler, "
                    "optional PCA whitening, nearest-neighbour retriever) with joblib. "
                    "The retriever's labels are the image paths relative to FOLDER.",
    )
    p.add_argument("folder", metavar="FOLDER", help="folder of images (searched recursively)")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="where to save the fitted pipeline (e.g. retriever.joblib)")
    _add_descriptor_options(p)
    p.add_argument("--pca", type=_positive_int, default=None, metavar="N",
                   help="PCA-whiten the descriptors to N dimensions, learned on the "
                        "indexed images (default: no whitening)")
    p.add_argument("--algorithm", choices=("brute", "nndescent", "faiss"), default="brute",
                   help="exact (brute) or approximate (nndescent, or faiss: needs "
                        "pip install skretrieval[faiss]) search (default: %(default)s)")
    p.add_argument("--device", default="auto",
                   help="torch device: auto, cpu, cuda, cuda:1, mps (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="images of the same size per forward pass (default: 1 on CPU, "
                        "8 on GPU)")
    p.add_argument("--skip-bad", action="store_true",
                   help="check every image first and leave out the unreadable ones "
                        "(with a warning) instead of stopping at the first one")
    p.add_argument("--append", action="store_true",
                   help="if FILE exists, open it and add the images of FOLDER it does "
                        "not hold yet (by path relative to FOLDER) and extract again "
                        "those whose content changed since (by content hash), with its "
                        "network, pooling and whitening as saved (their options here "
                        "are then ignored); also resumes an interrupted --save-every run")
    p.add_argument("--save-every", type=_positive_int, default=None, metavar="N",
                   help="index N images at a time and save FILE after each batch, so "
                        "that an interruption loses at most N images (re-run with "
                        "--append to resume); a new index learns --pca on its first N "
                        "images")
    p.add_argument("--prune", action="store_true",
                   help="with --append: remove from FILE the images whose files are no "
                        "longer under FOLDER")
    p.add_argument("--lock-timeout", type=_positive_float, default=None,
                   metavar="SECONDS",
                   help="while another 'skretrieval index' writes FILE, wait at most "
                        "this long for it, then fail (default: wait until it is done)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="feature-map cache directory: a re-run skips the images whose "
                        "maps are there (default: none)")
    p.set_defaults(func=_cmd_index)

    # -- search ----------------------------------------------------------
    p = sub.add_parser(
        "search",
        help="search an index for the images most similar to queries",
        description="Rank the images of a saved index for each query image.",
    )
    p.add_argument("index", metavar="INDEX", help="pipeline file written by 'skretrieval index'")
    p.add_argument("queries", metavar="QUERY", nargs="+", help="query image file(s)")
    p.add_argument("-k", type=_positive_int, default=10,
                   help="number of results per query (default: %(default)s)")
    p.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"),
                   help="search with this region of the (single) query only, in "
                        "pixels of the full-resolution image")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--pairs", metavar="FILE",
                   help="also write the top-k results of every query as an image-pairs "
                        "file for visual localization (query names: the QUERY paths as "
                        "given; database names: the names stored in the index); "
                        "a database image named like its query is left out")
    p.add_argument("--pairs-format", choices=("kapture", "colmap"), default="kapture",
                   help="format of --pairs: 'kapture' (kapture-localization: "
                        "'query, map, score' lines) or 'colmap' (COLMAP / hloc: "
                        "'query database' lines) (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the progress of the feature extraction")
    p.set_defaults(func=_cmd_search)

    # -- demo ------------------------------------------------------------
    p = sub.add_parser(
        "demo",
        help="compare the poolers on a small offline collection",
        description="Run MobileNetV2 (ImageNet weights) on 128 images generated from "
                    "photographs shipped with scikit-learn and scikit-image (8 scenes "
                    "x 8 views, plus 64 distractors), print the mAP of every pooler, "
                    "raw and PCA-whitened (whitening learned on the other half of the "
                    "photos), and draw the top results of a few queries.",
    )
    p.add_argument("--out", default="skretrieval-demo.png", metavar="PNG",
                   help="figure file (default: %(default)s)")
    p.add_argument("--max-size", type=_positive_int, default=256, metavar="PIXELS",
                   help="longest image side fed to the network (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    p.add_argument("--no-figure", action="store_true", help="do not draw the figure")
    p.set_defaults(func=_cmd_demo)

    # -- evaluate --------------------------------------------------------
    from ..datasets._loaders import DATASETS

    p = sub.add_parser(
        "evaluate",
        help="evaluate a pipeline on a standard benchmark with its protocol",
        description="Extract descriptors of a benchmark's database and queries (query "
                    "crops at full resolution), optionally learn PCA whitening on "
                    "another benchmark (the pair the papers use: Paris6k for Oxford5k "
                    "and back), rank the whole database for every query and print the "
                    "standard table: mAP in percent, revisitop's Easy/Medium/Hard mAP "
                    "and mP@1,5,10, UKBench's N-S score; plus wall time.",
    )
    p.add_argument("--dataset", required=True, choices=DATASETS,
                   help="benchmark name")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="the benchmark's directory, in its standard layout")
    p.add_argument("--distractors", metavar="DIR", default=None,
                   help="revisitop1m directory: add its 1M distractors (roxford5k / "
                        "rparis6k only)")
    p.add_argument("--rotated", action="store_true",
                   help="Holidays: use the manually rotated images (ROOT/jpg_rotated)")
    p.add_argument("--download", action="store_true",
                   help="fetch the benchmark's official files into --root first")
    _add_descriptor_options(p)
    p.add_argument("--whiten-root", metavar="DIR", default=None,
                   help="learn PCA whitening on the benchmark in DIR (by default the "
                        "dataset's pair, see --whiten-dataset); without it, no whitening")
    p.add_argument("--whiten-dataset", choices=DATASETS, default=None,
                   help="benchmark in --whiten-root (default: the pair of --dataset: "
                        "paris6k for oxford5k, rparis6k for roxford5k, coil20 for coil100, "
                        "and back)")
    p.add_argument("--pca", type=_positive_int, default=None, metavar="N",
                   help="dimensions kept by the whitening (default: all)")
    p.add_argument("--whiten-power", type=float, default=1.0, metavar="P",
                   help="whitening power: 1 full, 0.5 shrunk (default: %(default)s)")
    p.add_argument("--cache", default=os.path.join("~", ".cache", "skretrieval", "features"),
                   metavar="DIR", help="feature-map cache directory, 'none' to disable "
                                       "(default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="images of the same size per forward pass (default: 1 on CPU, "
                        "8 on GPU)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--figure", metavar="PNG", default=None,
                   help="also draw the top results of a few queries to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_evaluate)
    return parser


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _info(*args):
    print(*args, file=sys.stderr, flush=True)


def _warn(message):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _check_device(device):
    import torch

    try:
        dev = torch.device(device) if device != "auto" else None
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev is not None and dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available here; use cpu or auto")
    if dev is not None and dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise CLIError(f"--device {device}: MPS is not available here; use cpu or auto")


def _format_size(n_bytes):
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


# ---------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------
def _cmd_index(args):
    from ..neighbors._indexing import IndexFile

    t0 = time.perf_counter()
    folder = args.folder
    paths, n_found = _list_images_checked(folder, args.skip_bad)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"cannot write {args.output!r}: folder {out_dir!r} does not exist")
    if args.prune and not args.append:
        raise CLIError("--prune applies to --append (it removes the indexed images "
                       "whose files are gone)")
    # One writer at a time: a second 'index' of the same FILE waits here; the
    # existence check is made under the lock, so two concurrent --append runs
    # on a new FILE create it once and both add their images.
    with IndexFile(args.output, timeout=args.lock_timeout) as index_file:
        if args.append and index_file.exists():
            return _append_to_index(args, index_file, paths, t0)
        return _new_index(args, index_file, paths, n_found, t0)


def _list_images_checked(folder, skip_bad):
    """The images of FOLDER (the unreadable ones left out with ``--skip-bad``)
    and the number found."""
    from ..extraction._collections import check_images, list_images

    paths = list_images(folder)  # FileNotFoundError / NotADirectoryError / ValueError
    n_found = len(paths)
    if skip_bad:
        problems = check_images(paths, n_jobs=min(8, os.cpu_count() or 1))
        if problems:
            bad = {i for i, _, _ in problems}
            lines = "\n".join(f"  {msg}" for _, _, msg in problems)
            _warn(f"leaving out {len(problems)} unreadable image(s) of {len(paths)}:\n"
                  f"{lines}")
            paths = [p for i, p in enumerate(paths) if i not in bad]
        if not paths:
            raise CLIError(f"no readable image under {folder!r}")
    return paths, n_found


def _new_index(args, index_file, paths, n_found, t0):
    import numpy as np
    from sklearn.pipeline import make_pipeline

    from ..pooling import _pooling
    from ..extraction._extractor import ConvFeatureExtractor
    from ..neighbors._indexing import item_fingerprint
    from ..neighbors._retriever import NearestNeighborRetriever
    from ..pooling._whitening import PCAWhitener

    folder = args.folder
    n = len(paths)
    n_fit = min(n, args.save_every or n)  # the images the pipeline is fitted on
    if args.pca is not None and args.pca >= n_fit:
        raise CLIError(
            f"--pca {args.pca} needs more images than components: {n_fit} image(s) "
            f"give at most {max(n_fit - 1, 0)} principal directions; use --pca "
            f"{max(n_fit - 1, 1)} or less, or index more images"
            + (" (or a larger --save-every)" if n_fit < n else "")
        )
    if args.algorithm == "nndescent" and n < 3:
        raise CLIError(f"--algorithm nndescent needs at least 3 images, got {n}")
    _check_device(args.device)

    extractor = ConvFeatureExtractor(
        args.backbone, weights=args.weights, layer=args.layer, max_size=args.max_size,
        scales=tuple(args.scales), device=args.device, batch_size=args.batch_size,
        cache=args.cache, verbose=1,
    )
    # Load the network first: unknown backbone / layer and missing weights are
    # reported before any image is read, and the descriptor size is known.
    extractor.fit()
    dim = extractor.n_channels_
    if args.pca is not None and args.pca > dim:
        raise CLIError(
            f"--pca {args.pca} is larger than the descriptor dimension {dim} of "
            f"{args.backbone} at layer {extractor.layer_name_}"
        )
    pooler = getattr(_pooling, _POOLERS[args.pooler])()
    steps = [extractor, pooler]
    if args.pca is not None:
        steps.append(PCAWhitener(n_components=args.pca))
    retriever_kwargs = {"algorithm": args.algorithm}
    if args.algorithm != "brute":
        retriever_kwargs["random_state"] = 0
    steps.append(NearestNeighborRetriever(**retriever_kwargs))
    pipe = make_pipeline(*steps)

    # names = ids = paths relative to FOLDER; fingerprints = content hashes
    labels = np.asarray([os.path.relpath(p, folder) for p in paths])
    _info(f"{PROG}: indexing {n} image(s) of {folder!r} with {args.backbone} "
          f"(layer {extractor.layer_name_}) on {extractor.device_}")
    retriever_name = pipe.steps[-1][0]
    fit_params = {
        f"{retriever_name}__ids": labels[:n_fit],
        f"{retriever_name}__fingerprints": [item_fingerprint(p) for p in paths[:n_fit]],
    }
    with _numbered_errors(range(n_fit), n):
        pipe.fit(paths[:n_fit], labels[:n_fit], **fit_params)
    index_file.save(pipe)
    if n_fit < n:
        _batch_progress(n_fit, n, args.output, t0)
        _add_in_batches(pipe, index_file, paths, labels, list(range(n_fit, n)), True,
                        n_fit, n, args.save_every, t0)
    seconds = time.perf_counter() - t0
    retriever = pipe[-1]
    print(f"indexed {retriever.n_samples_fit_} image(s) of {folder}"
          + (f" ({n_found - n} left out)" if n_found != n else ""))
    print(f"descriptors: {retriever.n_features_in_} dimensions ({args.backbone} "
          f"layer {extractor.layer_name_}, {pooler.__class__.__name__}"
          + (f", PCA-whitened from {dim}" if args.pca is not None else "") + ")")
    print(f"saved to {args.output} ({_format_size(os.path.getsize(args.output))}) "
          f"in {seconds:.1f} s")
    return 0


class _numbered_errors:
    """Re-number an ImageLoadError of a batch by the image's place in the folder."""

    def __init__(self, positions, total):
        self.positions = list(positions)
        self.total = total

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from ..extraction._images import ImageLoadError

        if not isinstance(exc, ImageLoadError) or exc.index is None:
            return False
        if not 0 <= exc.index < len(self.positions):
            return False
        where = self.positions[exc.index]
        reason = exc.reason or str(exc)
        item = getattr(exc, "path", None)
        what = f"image {where} of {self.total}" + (f" ({item!r})" if item else "")
        raise ImageLoadError(
            f"{what}: {reason} (use --skip-bad to leave unreadable images out; "
            "the batches saved so far are kept: --append resumes)",
            index=where, reason=reason) from exc


def _batch_progress(done, total, path, t0):
    elapsed = time.perf_counter() - t0
    left = elapsed / max(done, 1) * (total - done)
    _info(f"{PROG}: {done}/{total} image(s) indexed and saved to {path} "
          f"({elapsed:.0f} s, about {left:.0f} s left)")


def _add_in_batches(pipe, index_file, paths, names, todo, str_ids, done, total, every,
                    t0):
    """Add ``paths[todo]`` to the index in batches, saving after each."""
    import numpy as np

    from ..neighbors._indexing import add_to_index

    step = every or len(todo)
    for start in range(0, len(todo), step):
        rows = todo[start : start + step]
        batch = np.asarray([names[i] for i in rows])
        with _numbered_errors(rows, len(paths)):
            add_to_index(pipe, [paths[i] for i in rows], batch,
                         ids=batch if str_ids else None, on_existing="update")
        index_file.save(pipe)
        done += len(batch)
        if every is not None:
            _batch_progress(done, total, index_file.path, t0)


def _append_to_index(args, index_file, paths, t0):
    """``index --append`` on an existing FILE: add the new and the changed images."""
    import numpy as np

    from ..neighbors._indexing import item_fingerprint

    pipe = _load_pipeline(args.output)
    retriever = pipe[-1]
    if not hasattr(retriever, "partial_fit"):
        raise CLIError(f"the retriever of {args.output!r} ({type(retriever).__name__}) "
                       "cannot grow; index the folder again without --append")
    folder = args.folder
    names = [os.path.relpath(p, folder) for p in paths]
    indexed = [str(v) for v in retriever.y_]
    row_of = {name: row for row, name in enumerate(indexed)}
    stored = getattr(retriever, "fingerprints_", None)
    n_before = retriever.n_samples_fit_
    new, changed, unknown = [], [], 0
    for i, (path, name) in enumerate(zip(paths, names)):
        row = row_of.get(name)
        if row is None:
            new.append(i)
        elif stored is None or stored[row] == "":
            unknown += 1
        elif stored[row] != item_fingerprint(path):
            changed.append(i)
    ids = np.asarray(retriever.ids_)
    str_ids = ids.dtype.kind in "US" or (ids.dtype.kind == "O" and isinstance(ids[0], str))
    if changed and not str_ids:
        raise CLIError(f"{args.output!r} has integer ids: it cannot replace changed images; "
                       "index the folder again without --append")
    if unknown:
        _warn(f"{unknown} image(s) of {args.output} were indexed without a content hash "
              "(by an older version): kept as they are, edits to them are not "
              "detected; index the folder again without --append to check them")
    listed = set(names)
    gone = [name for name in indexed if name not in listed
            and not os.path.exists(os.path.join(folder, name))]
    if gone and not args.prune:
        _warn(f"{len(gone)} image(s) of {args.output} are no longer under {folder!r} "
              f"(e.g. {gone[0]!r}); they stay in the index (--prune removes them)")
    if changed:
        _info(f"{PROG}: {len(changed)} image(s) changed since they were indexed (e.g. "
              f"{names[changed[0]]!r}): extracted again, their entries replaced")
    todo = sorted(new + changed)
    pruned = len(gone) if args.prune else 0
    if not todo and not pruned:
        print(f"nothing to add: the {len(paths)} image(s) of {folder} are already "
              f"in {args.output} ({n_before} image(s))")
        return 0
    if todo:
        extractor = pipe[0]
        extractor.set_params(verbose=1)
        if args.cache is not None:
            extractor.set_params(cache=args.cache)
        _info(f"{PROG}: adding {len(new)} new and {len(changed)} changed image(s) of "
              f"{folder!r} to {args.output} ({n_before} image(s))")
        _add_in_batches(pipe, index_file, paths, names, todo, str_ids, 0, len(todo),
                        args.save_every, t0)
    if pruned:
        # after the additions: the folder has images, so the index never empties
        retriever.remove(ids[[row_of[g] for g in gone]])
        index_file.save(pipe)
    seconds = time.perf_counter() - t0
    done = ([f"added {len(new)} image(s) of {folder}"] if todo else []) + (
        [f"replaced {len(changed)} changed one(s)"] if changed else []) + (
        [f"removed {pruned} image(s) whose files are gone"] if pruned else [])
    print(f"{', '.join(done)} ({args.output}): {retriever.n_samples_fit_} image(s) in all")
    print(f"saved to {args.output} ({_format_size(os.path.getsize(args.output))}) "
          f"in {seconds:.1f} s")
    return 0


# ---------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------
def _load_pipeline(path):
    from ..neighbors._indexing import load_index

    if not os.path.exists(path):
        raise CLIError(f"index file not found: {path!r}")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "manifest.json")):
        raise CLIError(f"{path!r} is a folder; expected a file written by 'skretrieval index'")
    pipe = load_index(path)  # ValueError with the loader to use
    if getattr(pipe[-1], "y_", None) is None:
        raise CLIError(
            f"{path!r} does not hold a retrieval pipeline with a fitted retriever; "
            "expected a file written by 'skretrieval index'"
        )
    return pipe


def _cmd_search(args):
    from ..extraction._extractor import ConvFeatureExtractor
    from ..extraction._images import Crop

    if args.box is not None and len(args.queries) != 1:
        raise CLIError(f"--box applies to a single query, got {len(args.queries)} queries")
    if args.pairs is not None:  # fail before the network runs
        from ..pairs import _check_names

        pairs_dir = os.path.dirname(os.path.abspath(args.pairs))
        if not os.path.isdir(pairs_dir):
            raise CLIError(f"cannot write {args.pairs!r}: folder {pairs_dir!r} does not exist")
        _check_names(args.queries, args.pairs_format, query=True)
    pipe = _load_pipeline(args.index)
    retriever = pipe[-1]
    for _, step in pipe.steps[:-1]:
        if isinstance(step, ConvFeatureExtractor):
            step.set_params(verbose=1 if args.verbose else 0)

    for q in args.queries:  # a clear message before the network is rebuilt
        if not os.path.exists(q):
            raise CLIError(f"query image not found: {q!r}")
    items = list(args.queries)
    if args.box is not None:
        x1, y1, x2, y2 = args.box
        if not (x2 > x1 and y2 > y1):
            raise CLIError(f"--box {x1:g} {y1:g} {x2:g} {y2:g}: need X2 > X1 and Y2 > Y1")
        box = tuple(int(v) if float(v).is_integer() else v for v in args.box)
        items = [Crop(items[0], box=box)]

    n_db = retriever.n_samples_fit_
    k = min(args.k, n_db)
    if args.k > n_db:
        _warn(f"-k {args.k}: the index holds only {n_db} image(s); showing them all")
    Xq = pipe[:-1].transform(items)
    dist, ind = retriever.kneighbors(Xq, n_neighbors=k)
    names = retriever.y_

    metric = getattr(retriever, "metric", "cosine")
    results = []
    for qi, query in enumerate(args.queries):
        hits = []
        for r in range(k):
            d = float(dist[qi, r])
            hit = {"rank": r + 1, "name": str(names[ind[qi, r]]), "index": int(ind[qi, r])}
            if metric == "cosine":
                hit["similarity"] = round(1.0 - d, 6)
            elif metric == "inner_product":
                hit["similarity"] = round(-d, 6)
            else:
                hit["distance"] = round(d, 6)
            hits.append(hit)
        results.append({"query": query,
                        "box": list(args.box) if args.box is not None else None,
                        "results": hits})

    if args.pairs is not None:
        from ..pairs import pairs_from_retriever, write_pairs

        pairs = pairs_from_retriever(retriever, Xq, query_names=list(args.queries),
                                     database_names=[str(n) for n in names], k=args.k)
        n_pairs = write_pairs(args.pairs, pairs, format=args.pairs_format)
        _info(f"{PROG}: wrote {n_pairs} pair(s) of {len(args.queries)} query image(s) "
              f"to {args.pairs} ({args.pairs_format} format)")

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    column = "distance" if metric == "euclidean" else "similarity"
    for i, res in enumerate(results):
        if i:
            print()
        box = ""
        if res["box"] is not None:
            box = " box (" + ", ".join(f"{v:g}" for v in res["box"]) + ")"
        print(f"query: {res['query']}{box}")
        print(f"{'rank':>4}  {column:>10}  image")
        for hit in res["results"]:
            print(f"{hit['rank']:>4}  {hit.get(column):>10.4f}  {hit['name']}")
    return 0


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------
def _cmd_demo(args):
    from ._demo import run_demo

    _check_device(args.device)
    if not args.no_figure:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError(
                "the demo figure needs matplotlib: pip install skretrieval[demo] "
                "(or pass --no-figure)"
            ) from None
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            raise CLIError(f"cannot write {args.out!r}: folder {out_dir!r} does not exist")
    run_demo(out=args.out, max_size=args.max_size, device=args.device,
             figure=not args.no_figure)
    return 0


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------
# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------
def _load_benchmark(name, root, args, role):
    import warnings

    from ..datasets._loaders import load_dataset

    kwargs = {"download": True} if args.download and role == "evaluated" else {}
    if role == "evaluated" and args.distractors is not None:
        if name not in ("roxford5k", "rparis6k"):
            raise CLIError(f"--distractors applies to roxford5k and rparis6k, not {name}")
        kwargs["distractors"] = args.distractors
    if args.rotated and name == "holidays" and role == "evaluated":
        kwargs["rotated"] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bench = load_dataset(name, root, **kwargs)
    for w in caught:  # e.g. an incomplete database: results not comparable
        _warn(str(w.message))
    return bench


def _cmd_evaluate(args):
    from sklearn.pipeline import make_pipeline

    from ..pooling import _pooling
    from ..extraction._extractor import ConvFeatureExtractor
    from ..pooling._whitening import PCAWhitener
    from ..metrics._evaluation import evaluate_benchmark

    t0 = time.perf_counter()
    if args.rotated and args.dataset != "holidays":
        raise CLIError("--rotated applies to --dataset holidays only")
    if args.pca is not None and args.whiten_root is None:
        raise CLIError(
            "--pca needs --whiten-root: the whitening must be learned on another "
            "benchmark (e.g. Paris6k for Oxford5k), never on the evaluated images")
    _check_device(args.device)
    bench = _load_benchmark(args.dataset, args.root, args, "evaluated")
    whiten_bench = None
    if args.whiten_root is not None:
        name = args.whiten_dataset or bench.paired
        if name is None:
            raise CLIError(f"{args.dataset} has no usual pair: give --whiten-dataset")
        whiten_bench = _load_benchmark(name, args.whiten_root, args, "whitening")
    cache = None if args.cache.lower() == "none" else os.path.expanduser(args.cache)
    if cache is not None:
        os.makedirs(cache, exist_ok=True)
    extractor = ConvFeatureExtractor(
        args.backbone, weights=args.weights, layer=args.layer, max_size=args.max_size,
        scales=tuple(args.scales), device=args.device, batch_size=args.batch_size,
        cache=cache, verbose=0 if args.quiet else 1,
    )
    extractor.fit()
    pooler = getattr(_pooling, _POOLERS[args.pooler])()
    features = make_pipeline(extractor, pooler)
    whitener = None
    if whiten_bench is not None:
        dims = min(extractor.n_channels_, whiten_bench.n_images - 1)
        n = args.pca if args.pca is not None else dims
        if n > dims:
            raise CLIError(f"--pca {n}: at most {dims} components can be learned on "
                           f"{whiten_bench.n_images} images of {extractor.n_channels_} "
                           "dimensions")
        whitener = PCAWhitener(n_components=n, whiten_power=args.whiten_power,
                               random_state=0)
    if not args.quiet:
        _info(f"{PROG}: {bench.name}: {bench.n_images} database images, "
              f"{bench.n_queries} queries; {args.backbone} layer {extractor.layer_name_} "
              f"on {extractor.device_}"
              + (f"; whitening learned on {whiten_bench.name}" if whiten_bench else ""))
    report = evaluate_benchmark(bench, features, whitener=whitener,
                                whitening_benchmark=whiten_bench)
    if args.figure is not None:
        _evaluation_figure(bench, report, args.figure)
    seconds = time.perf_counter() - t0
    if args.json:
        out = report.to_dict()
        out["seconds"]["wall"] = seconds
        out["config"] = {k: getattr(args, k) for k in (
            "backbone", "layer", "max_size", "scales", "pooler", "pca", "whiten_power")}
        out["config"]["weights"] = str(args.weights)
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.backbone} ({args.weights}) layer {extractor.layer_name_}, max_size "
          f"{args.max_size}, scales {' '.join(f'{s:g}' for s in args.scales)}, "
          f"{pooler.__class__.__name__}, {report.n_dims} dims"
          + (f", PCA-whitened on {report.whitening}" if report.whitening else ""))
    print(report.table())
    print(f"{bench.n_queries} queries, {bench.n_images} database images; wall time "
          f"{seconds:.1f} s (features {report.seconds['extract']:.1f} s, search "
          f"{report.seconds['search']:.1f} s)")
    return 0


def _evaluation_figure(bench, report, path):
    import numpy as np

    from ..display._display import RetrievalDisplay

    gt = bench.ground_truth.get("medium") or next(iter(bench.ground_truth.values()))
    n = min(6, bench.n_queries)
    queries = np.linspace(0, bench.n_queries - 1, n).round().astype(int)
    RetrievalDisplay.from_predictions(
        report.rankings, bench.queries, bench.images, positives=gt.positives,
        junk=gt.junk, similarities=report.similarities, k=5, queries=queries,
        query_names=bench.query_names, database_names=bench.image_names, path=path)
    _info(f"{PROG}: figure written to {path}")


def _expected_errors():
    from ..extraction._backbones import WeightsNotFoundError
    from ..extraction._images import ImageLoadError

    # ValueError covers the library's input validation (unknown backbone,
    # layer or weights name, no image in a folder...); OSError missing files
    # and folders.
    return (CLIError, ImageLoadError, WeightsNotFoundError, OSError, ValueError, ImportError)


def main(argv=None):
    """Run the ``skretrieval`` command line; return the exit status.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments (``sys.argv[1:]`` when None).

    Returns
    -------
    status : int
        0 on success, 2 on usage errors and bad input, 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as exc:
        if os.environ.get("SKRETRIEVAL_DEBUG"):
            raise
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            message = f"{exc.strerror}: {exc.filename!r}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2

