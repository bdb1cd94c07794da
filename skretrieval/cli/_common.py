"""What the subcommands share: the program name, errors, messages, checks."""

from __future__ import annotations

import os
import sys

from ..index import load_index
from ..utils._argtypes import positive_float, positive_int
from ..utils._progress import stderr_is_terminal

__all__ = ["PROG", "CLIError", "check_device", "format_size", "info", "load_pipeline",
           "positive_float", "positive_int", "show_progress", "warn"]

PROG = "skretrieval"


class CLIError(Exception):
    """An expected error: reported on one line, exit status 2."""


def info(*args):
    """Print a progress message on stderr."""
    print(*args, file=sys.stderr, flush=True)


def show_progress(args):
    """Whether to draw progress bars on stderr: never with ``--quiet``, always
    with ``--progress``, otherwise when stderr is a terminal (not in a log or
    a CI job)."""
    if getattr(args, "quiet", False):
        return False
    return bool(getattr(args, "progress", False)) or stderr_is_terminal()


def warn(message):
    """Print a warning on stderr."""
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def check_device(device):
    """Fail early, with the fix, on an unknown or unavailable torch device."""
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


def format_size(n_bytes):
    """``n_bytes`` in B, kB, MB or GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


def load_pipeline(path):
    """The fitted retrieval pipeline saved in ``path`` by 'skretrieval index'."""
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
