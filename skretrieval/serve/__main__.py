"""``python -m skretrieval.serve INDEX [options]``: see :mod:`skretrieval.serve._cli`."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
