"""Progress bars: tqdm when asked, a silent stand-in otherwise.

The estimators take a ``verbose`` parameter (0 by default: library calls
print nothing); the command line turns it on when stderr is a terminal.  Every
loop over many items (images extracted, images indexed, epochs and batches
of training, queries re-ranked) goes through :func:`progress`.
"""

from __future__ import annotations

import sys

__all__ = ["NoProgress", "progress", "stderr_is_terminal", "write_line"]


class NoProgress:
    """What :func:`progress` returns when it is off: the part of tqdm's
    interface the package uses, doing nothing."""

    def __init__(self, iterable=None, total=None):
        self.iterable = iterable
        self.total = total
        self.n = 0

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, s="", refresh=True):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def set_description(self, desc=None, refresh=True):
        pass

    def write(self, s):
        pass

    def close(self):
        pass


def progress(iterable=None, *, total=None, desc=None, verbose=0, unit="it", leave=None,
             file=None, position=None):
    """A progress bar over ``iterable`` (or one updated by hand) when
    ``verbose``, otherwise a silent stand-in with the same interface.

    Parameters
    ----------
    iterable : iterable, default=None
        What to iterate over; ``None`` for a bar advanced with ``update(n)``.
    total : int, default=None
        Number of items (``len(iterable)`` when it has one).
    desc : str, default=None
        Text before the bar, e.g. ``"extracting"``.
    verbose : int or bool, default=0
        Show the bar when true.
    unit : str, default="it"
        What one item is (``"img"``, ``"batch"``): the rate reads ``unit/s``.
    leave : bool or None, default=None
        Keep the finished bar on screen; None: only when it is not nested
        in another bar (the batches of an epoch, the images of a batch of
        ``skretrieval index --save-every``).
    file : file object, default=None
        Where to draw (default: ``sys.stderr``).
    position : int, default=None
        Line offset, for a bar nested in another (batches in epochs).

    Returns
    -------
    bar : tqdm.tqdm or a silent stand-in

    Examples
    --------
    >>> from skretrieval.utils import progress
    >>> with progress(range(3), desc="items", verbose=0) as bar:
    ...     total = sum(bar)
    >>> total
    3
    >>> import io
    >>> out = io.StringIO()
    >>> for _ in progress(range(3), desc="items", verbose=1, file=out):
    ...     pass
    >>> "items: 100%" in out.getvalue()
    True
    """
    if not verbose:
        return NoProgress(iterable, total)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave,
                file=sys.stderr if file is None else file, position=position,
                dynamic_ncols=True, mininterval=0.5, smoothing=0.1)


def write_line(message, file=None):
    """Print a line on stderr (or ``file``) without breaking the bars drawn there."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr if file is None else file)


def stderr_is_terminal():
    """Whether stderr is a terminal (where the command line shows its bars)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
