"""The ``serve`` subcommand: ``skretrieval serve INDEX`` / ``python -m skretrieval.serve``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..utils._argtypes import positive_float, positive_int
from . import _server
from ._limits import DEFAULT_MAX_K, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, \
    DEFAULT_REQUEST_TIMEOUT

__all__ = ["add_serve_parser", "add_serve_arguments", "build_parser", "run_serve", "main"]

TOKEN_ENV = "SKRETRIEVAL_SERVE_TOKEN"

_DESCRIPTION = (
    "Serve a saved retrieval pipeline over HTTP: a search API (POST /search), "
    "thumbnails (GET /images/ID), a health check (GET /health), a web page at / and, "
    "with a token, POST /index to add images.  Binds 127.0.0.1 unless --host says "
    "otherwise.  Needs pip install skretrieval[serve]."
)


def _port(text):
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def add_serve_arguments(p):
    """Add the options of ``serve`` to the parser ``p``."""
    p.add_argument("index", metavar="INDEX",
                   help="the model: a save_pipeline folder or .zip, or a joblib index "
                        "file with --allow-pickle")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only; "
                        "0.0.0.0 exposes the service to the network)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument("--images", metavar="ROOT", default=None,
                   help="folder of the indexed images (the FOLDER given to 'skretrieval "
                        "index'): thumbnails, path queries and POST /index read and "
                        "write there only")
    p.add_argument("--token", default=None,
                   help=f"enable POST /index for requests with 'Authorization: Bearer "
                        f"TOKEN' (prefer the environment variable {TOKEN_ENV}: "
                        "command lines are visible to other users)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a joblib (pickle) INDEX file; loading it runs code "
                        "stored in the file: only for files you trust")
    p.add_argument("--allow-paths", action="store_true",
                   help="let POST /search take JSON {'path': ...} of a file under --images")
    p.add_argument("--max-k", type=positive_int, default=DEFAULT_MAX_K, metavar="K",
                   help="most results per search (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=positive_float,
                   default=DEFAULT_MAX_UPLOAD_BYTES / 2**20, metavar="MB",
                   help="largest request body in MiB (default: %(default)g)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   metavar="N", help="largest image in pixels, checked before decoding "
                                     "(default: %(default)s)")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_REQUEST_TIMEOUT,
                   metavar="SECONDS", help="time limit of a request (default: %(default)g)")
    p.add_argument("--device", default=None,
                   help="torch device of the extractor (default: as saved, or cpu)")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="server log level (default: %(default)s)")
    return p


def add_serve_parser(subparsers):
    """Add the ``serve`` subcommand to the ``skretrieval`` subparsers.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.

    Returns
    -------
    parser : argparse.ArgumentParser
        The subcommand's parser (its ``func`` default is :func:`run_serve`).
    """
    p = subparsers.add_parser("serve", help="serve an index over HTTP (search API and "
                                            "web page)", description=_DESCRIPTION)
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)
    return p


def build_parser(prog="python -m skretrieval.serve"):
    """The stand-alone parser of ``python -m skretrieval.serve``."""
    p = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION)
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)
    return p


def run_serve(args):
    """Run the server for parsed arguments (blocks until interrupted).

    Parameters
    ----------
    args : argparse.Namespace
        As parsed by :func:`add_serve_parser`'s parser.

    Returns
    -------
    status : int
        0 when the server stopped.

    Raises
    ------
    ValueError, FileNotFoundError, ImportError
        For a bad model file, images folder or option, or a missing extra
        (the ``skretrieval`` command reports them on one line).
    """
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if args.images is not None and not os.path.isdir(args.images):
        raise ValueError(f"--images {args.images!r} is not a folder")
    if args.allow_paths and args.images is None:
        raise ValueError("--allow-paths needs --images ROOT (paths are confined to it)")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(levelname)s:     %(name)s: %(message)s")
    _server.serve(args.index, host=args.host, port=args.port, allow_pickle=args.allow_pickle,
                  images_root=args.images, token=token,
                  max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                  max_k=args.max_k, request_timeout=args.timeout, allow_paths=args.allow_paths,
                  device=args.device, log_level=args.log_level)
    return 0


def main(argv=None):
    """``python -m skretrieval.serve``: run :func:`run_serve`; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, ImportError) as exc:
        if os.environ.get("SKRETRIEVAL_DEBUG"):
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
