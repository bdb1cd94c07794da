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
``evaluate``
    Evaluate a pipeline on a standard benchmark with its protocol.
``demo``
    Compare the poolers on a small offline collection with the real
    MobileNetV2 weights and draw a figure of rankings.

The parser is built in :mod:`._parser`, one function per subcommand; each
subcommand runs in its module (:mod:`._index`, :mod:`._search`,
:mod:`._evaluate`, :mod:`._demo`).

Exit status: 0 on success, 2 on usage errors and bad input (missing folder or
file, unreadable image, missing weights...), with a one-line
``skretrieval: error: ...`` message on stderr and no traceback (set the
environment variable ``SKRETRIEVAL_DEBUG=1`` to get the traceback).
"""

from __future__ import annotations

import os
import sys

from ._common import PROG, CLIError
from ._parser import build_parser

__all__ = ["build_parser", "main"]


def _expected_errors():
    """The exceptions reported on one line (exit status 2), without a traceback."""
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
