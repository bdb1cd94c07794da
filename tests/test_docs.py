"""The documentation site builds with no warning (``scripts/docs.sh``).

The build runs on a copy of ``docs/`` and ``examples/`` in a temporary folder
(the generated pages stay out of the checkout), with the gallery examples
shown but not executed (``SKRETRIEVAL_DOCS_EXECUTE=0``): running them is
``bash scripts/docs.sh``'s job.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("sphinx", "numpydoc", "sphinx_gallery", "myst_parser", "pydata_sphinx_theme")
GENERATED = ("_build", "api", "guide", "auto_examples", "sg_execution_times.rst")


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEEDED),
                    reason="the docs extra is not installed (pip install skretrieval[docs])")
def test_docs_build_without_warnings(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs",
                    ignore=lambda folder, names: [n for n in names if n in GENERATED
                                                  and Path(folder) == ROOT / "docs"])
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = dict(os.environ, SKRETRIEVAL_DOCS_EXECUTE="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         str(tmp_path / "docs"), str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    # the pages the site is made of
    for page in ("index.html", "guide/index.html", "guide/inputs.html", "api/index.html",
                 "api/generated/skretrieval.extraction.ConvFeatureExtractor.html",
                 "auto_examples/index.html", "serve.html", "benchmarks.html"):
        assert (out / page).is_file(), page
    # a link from another page to an anchor of the user guide lands on the
    # page that holds the anchor
    assert 'href="guide/the-feature-extractor.html#weights"' in (out / "cli.html").read_text()
    # every public name has its page
    import skretrieval

    api = (out / "api" / "index.html").read_text()
    for name in skretrieval.__all__:
        assert f">{name}<" in api, name
