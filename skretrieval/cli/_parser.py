"""The argument parser of the ``skretrieval`` command: one function per subcommand."""

from __future__ import annotations

import argparse
import os

from ..datasets import DATASETS
from ..pooling._registry import POOLERS
from ..serve._cli import add_serve_parser
from ..utils._version import __version__
from ._common import PROG, positive_float, positive_int
from ._demo import cmd_demo
from ._evaluate import cmd_evaluate
from ._index import cmd_index
from ._search import cmd_search

__all__ = ["build_parser"]


def _weights(text):
    """``none`` (any case) means random weights."""
    return None if text.lower() in ("none", "random") else text


class _Given(argparse.Action):
    """Store the value and note the option in ``args.given`` (a default is not
    given), so that ``index --local`` can refuse the global-descriptor options."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = getattr(namespace, "given", frozenset()) | {option_string}


def _add_descriptor_options(p):
    """The options of the network and the pooling (index and evaluate)."""
    p.add_argument("--backbone", default="mobilenet_v2", action=_Given,
                   help="torchvision model name, timm:<model> or open_clip:<arch>/<tag> "
                        "(default: %(default)s)")
    p.add_argument("--weights", default="IMAGENET1K_V1", type=_weights, action=_Given,
                   help="torchvision weights name, path to a state-dict file, or "
                        "'none' for random weights (default: %(default)s)")
    p.add_argument("--layer", default=None, action=_Given,
                   help="layer to take the feature maps from (default: the last "
                        "convolutional layer)")
    p.add_argument("--max-size", type=positive_int, default=1024, metavar="PIXELS",
                   help="longest image side at scale 1 (default: %(default)s)")
    p.add_argument("--scales", type=positive_float, nargs="+", default=[1.0], action=_Given,
                   metavar="S", help="image scales, e.g. '1 0.707' (default: 1)")
    p.add_argument("--pooler", choices=sorted(POOLERS), default="gem", action=_Given,
                   help="pooling of the feature maps (default: %(default)s)")


def _add_progress_options(p):
    """``--quiet`` and ``--progress``: the bars are drawn when stderr is a terminal."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars nor progress messages on stderr")
    p.add_argument("-v", "--verbose", "--progress", dest="progress", action="store_true",
                   help="progress bars on stderr even when it is not a terminal "
                        "(by default they are drawn only in a terminal)")


def _add_index_command(sub):
    """``skretrieval index FOLDER -o FILE``: index the images of a folder."""
    p = sub.add_parser(
        "index",
        help="index the images of a folder into a retrieval pipeline file",
        description="Extract a global descriptor of every image under FOLDER "
                    "(recursively) and save the fitted pipeline (extractor, pooler, "
                    "optional PCA whitening, nearest-neighbour retriever) with joblib; "
                    "with --local and --asmk, the local features of every image and an "
                    "ASMK* inverted file instead. "
                    "The retriever's labels are the image paths relative to FOLDER.",
    )
    p.add_argument("folder", metavar="FOLDER", help="folder of images (searched recursively)")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="where to save the fitted pipeline: NAME.joblib (pickle) or NAME.zip "
                        "(pickle-free, what 'skretrieval serve' loads by default)")
    _add_descriptor_options(p)
    p.add_argument("--pca", type=positive_int, default=None, metavar="N",
                   help="PCA-whiten the descriptors (with --local deep: the local "
                        "descriptors) to N dimensions, learned on the indexed images "
                        "(default: no whitening)")
    p.add_argument("--algorithm", choices=("brute", "hnsw", "auto", "nndescent", "faiss"),
                   default="brute", action=_Given,
                   help="exact (brute) or approximate (hnsw: needs pip install "
                        "skretrieval[hnsw]; auto: hnsw for large indexes; nndescent; faiss: "
                        "needs pip install skretrieval[faiss]) search (default: %(default)s)")
    p.add_argument("--engine", default=None, metavar="URI",
                   help="search in a PostgreSQL server with pgvector at URI "
                        "(postgresql://user@host:5432/db, no password: libpq reads "
                        "PGPASSWORD) instead of --algorithm; needs pip install "
                        "skretrieval[engine]")
    p.add_argument("--engine-store", choices=("engine", "local"), default="engine",
                   help="with --engine: the descriptors only in the server ('engine', the "
                        "default: the index file holds none) or in the index file too "
                        "('local')")
    p.add_argument("--local", choices=("sift", "deep"), default=None,
                   help="index local features instead of a global descriptor: OpenCV's "
                        "RootSIFT ('sift', needs pip install skretrieval[local]) or the "
                        "strongest cells of --backbone's --layer ('deep'), searched with "
                        "--asmk (docs/local.md)")
    p.add_argument("--asmk", type=positive_int, default=None, metavar="K",
                   help="with --local: ASMK* search over a codebook of K visual words "
                        "learned on the indexed images' local features")
    p.add_argument("--local-features", type=positive_int, default=None, metavar="N",
                   help="with --local: local features kept per image, strongest first "
                        "(default: 2000 for sift, 500 for deep)")
    p.add_argument("--device", default="auto",
                   help="torch device: auto, cpu, cuda, cuda:1, mps (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
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
    p.add_argument("--save-every", type=positive_int, default=None, metavar="N",
                   help="index N images at a time and save FILE after each batch, so "
                        "that an interruption loses at most N images (re-run with "
                        "--append to resume); a new index learns --pca on its first N "
                        "images")
    p.add_argument("--prune", action="store_true",
                   help="with --append: remove from FILE the images whose files are no "
                        "longer under FOLDER")
    p.add_argument("--lock-timeout", type=positive_float, default=None,
                   metavar="SECONDS",
                   help="while another 'skretrieval index' writes FILE, wait at most "
                        "this long for it, then fail (default: wait until it is done)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="feature-map cache directory: a re-run skips the images whose "
                        "maps are there (default: none)")
    _add_progress_options(p)
    p.set_defaults(func=cmd_index)


def _add_search_command(sub):
    """``skretrieval search INDEX QUERY...``: rank the images of an index."""
    p = sub.add_parser(
        "search",
        help="search an index for the images most similar to queries",
        description="Rank the images of a saved index for each query image.",
    )
    p.add_argument("index", metavar="INDEX", help="pipeline file written by 'skretrieval index'")
    p.add_argument("queries", metavar="QUERY", nargs="+", help="query image file(s)")
    p.add_argument("-k", type=positive_int, default=10,
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
    _add_progress_options(p)
    p.set_defaults(func=cmd_search)


def _add_demo_command(sub):
    """``skretrieval demo``: compare the poolers on the demo collection."""
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
    p.add_argument("--max-size", type=positive_int, default=256, metavar="PIXELS",
                   help="longest image side fed to the network (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    p.add_argument("--no-figure", action="store_true", help="do not draw the figure")
    p.set_defaults(func=cmd_demo)


def _add_evaluate_command(sub):
    """``skretrieval evaluate --dataset NAME --root DIR``: a benchmark's table."""
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
    p.add_argument("--model", metavar="FILE", default=None,
                   help="a published retrieval checkpoint (cirtorch, deep-image-retrieval, "
                        "or a plain state dict) evaluated with its authors' recipe instead "
                        "of --backbone/--weights/--layer/--pooler (docs/pretrained.md)")
    p.add_argument("--preset", choices=("auto", "ss", "ms"), default="auto",
                   help="with --model: single scale, the authors' multi-scale protocol, "
                        "or the one of their reported table (default: %(default)s)")
    p.add_argument("--model-whitening", metavar="NAME", default="auto",
                   help="with --model: the stored whitening to apply, by its training set, "
                        "'none' for none (default: the one the authors report with)")
    p.add_argument("--whiten-root", metavar="DIR", default=None,
                   help="learn PCA whitening on the benchmark in DIR (by default the "
                        "dataset's pair, see --whiten-dataset); without it, no whitening")
    p.add_argument("--whiten-dataset", choices=DATASETS, default=None,
                   help="benchmark in --whiten-root (default: the pair of --dataset: "
                        "paris6k for oxford5k, rparis6k for roxford5k, coil20 for coil100, "
                        "and back)")
    p.add_argument("--pca", type=positive_int, default=None, metavar="N",
                   help="dimensions kept by the whitening (default: all)")
    p.add_argument("--whiten-power", type=float, default=1.0, metavar="P",
                   help="whitening power: 1 full, 0.5 shrunk (default: %(default)s)")
    p.add_argument("--cache", default=os.path.join("~", ".cache", "skretrieval", "features"),
                   metavar="DIR", help="feature-map cache directory, 'none' to disable "
                                       "(default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="images of the same size per forward pass (default: 1 on CPU, "
                        "8 on GPU)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--figure", metavar="PNG", default=None,
                   help="also draw the top results of a few queries to this file")
    _add_progress_options(p)
    p.set_defaults(func=cmd_evaluate)


def build_parser():
    """The argument parser of the ``skretrieval`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Content-based instance image retrieval with deep CNN features "
                    "(scikit-learn compatible).",
        epilog="Run 'skretrieval COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add_command in (_add_index_command, _add_search_command, _add_demo_command,
                        _add_evaluate_command, add_serve_parser):
        add_command(sub)
    return parser
