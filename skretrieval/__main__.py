"""``python -m skretrieval``: the command line (see :mod:`skretrieval.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
