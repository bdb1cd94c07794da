#!/usr/bin/env bash
# Build the documentation site into docs/_build/html with Sphinx (numpydoc,
# sphinx-gallery, MyST, pydata-sphinx-theme); warnings are errors.
#   bash scripts/docs.sh                          # runs the fast examples (about 1 min)
#   SKRETRIEVAL_DOCS_EXECUTE=0 bash scripts/docs.sh   # the gallery without running them
# Extra arguments go to sphinx-build (e.g. -E to rebuild everything).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -m sphinx -W --keep-going -n -b html "$@" docs docs/_build/html
echo "open docs/_build/html/index.html"
