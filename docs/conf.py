"""Sphinx configuration of the skretrieval documentation site.

Build it with ``bash scripts/docs.sh`` (warnings are errors).  Three parts of
the site are generated here at build time, into git-ignored folders:

* ``guide/``: the user guide, ``docs/user_guide.md`` split into one page per
  ``## `` section (the Markdown file stays the one source: it reads as a whole
  on GitHub and several people edit it; links to its anchors from the other
  pages are rewritten to the page that holds the anchor);
* ``api/``: the API reference, one page per subpackage listing its
  ``__all__`` (a public name added to an ``__all__`` appears without editing
  the docs); the names the package root re-exports resolve to these pages;
* ``auto_examples/``: the sphinx-gallery of ``examples/``.

Set ``SKRETRIEVAL_DOCS_EXECUTE=0`` to build the gallery without running the
examples (the test of the build does).
"""

import importlib
import inspect
import os
import re
import sys
from pathlib import Path

import skretrieval

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

project = "skretrieval"
author = "the skretrieval developers"
copyright = "the skretrieval developers"
release = skretrieval.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# user_guide.md is published as the pages of guide/ (see above).
exclude_patterns = ["_build", "user_guide.md", "README.md",
                    "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.md5",
                    "auto_examples/*.json"]
templates_path = ["_templates"]

# -- HTML ---------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skretrieval {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "header_links_before_dropdown": 7,
}
html_static_path = []
html_show_sourcelink = False

# -- MyST (the Markdown pages) --------------------------------------------------
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
suppress_warnings = []

# -- references -------------------------------------------------------------------
# Built with -n: every reference to skretrieval must resolve.  Other projects
# are not linked (no intersphinx: the build works offline), so their names
# are accepted as they are.
EXTERNAL = ("sklearn", "numpy", "np", "scipy", "torch", "torchvision", "pynndescent",
            "faiss", "joblib", "PIL", "dask", "distributed", "fastapi", "uvicorn",
            "matplotlib", "pathlib", "os", "concurrent", "tempfile", "typing",
            "collections", "hnswlib", "usearch", "onnxruntime", "openvino", "timm",
            "open_clip", "tqdm", "pandas", "skimage", "io", "zipfile", "json",
            "threading", "multiprocessing", "warnings", "re", "urllib")
nitpick_ignore_regex = [(r"py:.*", r"(%s)(\..*)?" % "|".join(EXTERNAL))]

# -- autodoc / autosummary / numpydoc -------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"
# Methods are documented with the class, those inherited from skretrieval's
# own base classes included; what comes from scikit-learn or torch
# (get_params, set_output, the set_*_request methods, nn.Module's) is not.
autodoc_inherit_docstrings = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True

# -- sphinx-gallery -----------------------------------------------------------------
# Executed at build time: the fast examples.  Measured in one build on the
# shared 2-core machine (load 4-5): query_crop_and_persistence 5 s,
# plot_frozen_whitening 2 min 46 s, grid_search_layers 7 min 36 s (not run
# since), plot_vlad_layers 4 to 13 minutes (needs COIL-100; its figures are
# in benchmarks.md).  The others are shown with their code and text.
EXECUTED_EXAMPLES = ("plot_frozen_whitening", "query_crop_and_persistence")
# The examples find ../shared/data from their __file__, which sphinx-gallery
# does not define: give them the folder next to the project.
os.environ.setdefault("SKRETRIEVAL_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": "/(" + "|".join(EXECUTED_EXAMPLES) + r")\.py$",
    "plot_gallery": os.environ.get("SKRETRIEVAL_DOCS_EXECUTE", "1") != "0",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "min_reported_time": 1,
}

# -- the public API -------------------------------------------------------------------
# Subpackages and modules with a page in the API reference, in reading order.
API_MODULES = [
    ("extraction", "Images and feature extraction"),
    ("pooling", "Pooling, VLAD, CAM weighting and whitening"),
    ("neighbors", "Nearest-neighbour search and index files"),
    ("local", "Local features and ASMK"),
    ("reranking", "Re-ranking"),
    ("nn", "Torch layers, losses and training"),
    ("metrics", "Metrics and evaluation"),
    ("datasets", "Benchmark datasets"),
    ("pretrained", "Published retrieval networks"),
    ("display", "Drawing results"),
    ("persistence", "The pickle-free format"),
    ("pairs", "Image pairs for visual localization"),
    ("serve", "The HTTP service"),
    ("utils", "Files and locks"),
]


def _public_names(module):
    return list(getattr(module, "__all__", []))


def canonical_names():
    """Map every public ``skretrieval.<sub>.<name>`` and ``skretrieval.<name>``
    to the one documented full name (the subpackage that exports it)."""
    table = {}
    for sub, _ in API_MODULES:
        module = importlib.import_module(f"skretrieval.{sub}")
        for name in _public_names(module):
            table.setdefault(name, f"skretrieval.{sub}.{name}")
    return table


def _kind(obj):
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def write_api_pages(outdir):
    """Write ``api/index.rst`` and one page per subpackage."""
    outdir.mkdir(parents=True, exist_ok=True)
    table = canonical_names()
    index = ["API reference", "=============", "",
             "Everything below is importable from its subpackage; the names in",
             "the first table are also importable from ``skretrieval`` itself.", "",
             "The package root", "----------------", "",
             ".. autosummary::", "   :nosignatures:", ""]
    missing = [n for n in skretrieval.__all__ if n not in table]
    if missing:
        raise RuntimeError(f"skretrieval.__all__ names in no documented subpackage: {missing}")
    index += [f"   ~{table[name]}" for name in skretrieval.__all__]
    index += ["", "Subpackages", "-----------", "", ".. toctree::", "   :maxdepth: 1", ""]
    index += [f"   {sub}" for sub, _ in API_MODULES]
    index += ["", ".. py:module:: skretrieval"]
    _write_if_changed(outdir / "index.rst", "\n".join(index) + "\n")
    for sub, title in API_MODULES:
        module = importlib.import_module(f"skretrieval.{sub}")
        heading = f"``skretrieval.{sub}``: {title}"
        lines = [heading, "=" * len(heading), "",
                 f".. automodule:: skretrieval.{sub}", "   :no-members:", "",
                 f".. currentmodule:: skretrieval.{sub}", ""]
        groups = {"class": [], "function": [], "data": []}
        for name in _public_names(module):
            if table[name] == f"skretrieval.{sub}.{name}":
                groups[_kind(getattr(module, name))].append(name)
        for kind, label in (("class", "Classes"), ("function", "Functions"),
                            ("data", "Constants")):
            if not groups[kind]:
                continue
            lines += [label, "-" * len(label), "", ".. autosummary::",
                      "   :toctree: generated/", "   :nosignatures:"]
            if kind == "class":
                lines.append("   :template: skr_class.rst")
            if kind == "data":
                lines.append("   :template: skr_data.rst")
            lines += [""] + [f"   {name}" for name in groups[kind]] + [""]
        _write_if_changed(outdir / f"{sub}.rst", "\n".join(lines) + "\n")


# -- the user guide, one page per section ---------------------------------------------
_FENCE = re.compile(r"^(```|~~~)")


def _slug(title):
    from mdit_py_plugins.anchors.index import slugify

    return slugify(title)


def split_user_guide(source):
    """Split the guide's Markdown into (intro, [(page, title, text), ...]) at
    each level-2 heading outside code blocks, each heading raised one level."""
    intro, pages = [], []
    current = intro
    in_fence = False
    for line in source.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("## "):
            title = line[3:].strip()
            page = re.sub(r"^\d+-", "", _slug(title))
            current = [f"# {title}"]
            pages.append((page, title, current))
            continue
        elif not in_fence and line.startswith("###"):
            line = line[1:]
        current.append(line)
    return intro, [(page, title, "\n".join(text) + "\n") for page, title, text in pages]


def _anchors(text):
    found, in_fence = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and re.match(r"^#{1,3} ", line):
            found.append(_slug(line.lstrip("#").strip()))
    return found


def write_guide_pages(outdir):
    """Write ``guide/index.md`` (the guide's introduction and a toctree) and
    one page per section; return {anchor: page} for the link rewriting."""
    outdir.mkdir(parents=True, exist_ok=True)
    intro, pages = split_user_guide((DOCS / "user_guide.md").read_text(encoding="utf-8"))
    anchor_pages = {}
    for page, _, text in pages:
        for anchor in _anchors(text):
            anchor_pages.setdefault(anchor, page)
    # one page on GitHub, several here
    intro = [line.replace("snippet of this page", "snippet of these pages") for line in intro]
    toctree = ["", "```{toctree}", ":maxdepth: 2", ""] + [page for page, _, _ in pages]
    _write_if_changed(outdir / "index.md", "\n".join(intro + toctree + ["```", ""]))
    for page, _, text in pages:
        _write_if_changed(outdir / f"{page}.md", text)
    for stale in outdir.glob("*.md"):
        if stale.stem != "index" and stale.stem not in {p for p, _, _ in pages}:
            stale.unlink()
    return anchor_pages


def _write_if_changed(path, text):
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


GUIDE_ANCHORS = write_guide_pages(DOCS / "guide")
write_api_pages(DOCS / "api")

_LINK = re.compile(r"\]\((?P<doc>[A-Za-z_]+\.md)?(?:#(?P<anchor>[^)\s]+))?\)")


def _rewrite_links(docname, text):
    """Point links at ``user_guide.md#anchor`` to the guide page holding the
    anchor; in the guide pages, make links to the other pages root-relative
    and same-page anchors that moved to another page cross-page links."""
    in_guide = docname.startswith("guide/")
    page = docname.split("/", 1)[1] if in_guide else None

    def fix(match):
        doc, anchor = match.group("doc"), match.group("anchor")
        if doc is None and anchor is None:
            return match.group(0)
        if doc == "user_guide.md" or (doc is None and in_guide):
            target = GUIDE_ANCHORS.get(anchor) if anchor else "index"
            if target is None or (doc is None and target == page):
                return match.group(0)
            return f"](/guide/{target}.md" + (f"#{anchor})" if anchor else ")")
        if in_guide and doc is not None:
            return f"](/{doc}" + (f"#{anchor})" if anchor else ")")
        return match.group(0)

    return _LINK.sub(fix, text)


# -- events -----------------------------------------------------------------------------
def _source_read(app, docname, source):
    if docname.endswith(".md") or app.env.doc2path(docname).suffix == ".md":
        source[0] = _rewrite_links(docname, source[0])


def _missing_reference(app, env, node, contnode):
    """Resolve a public name written short (``GeMPooler``,
    ``RetrievalBenchmark.evaluate``) or through a module that re-exports it
    (``skretrieval.GeMPooler``) to its documented full name."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py":
        return None
    parts = target.split(".")
    start = 1 if parts[0] == "skretrieval" else 0
    for i in range(len(parts) - 1, start - 1, -1):
        full = _CANONICAL.get(parts[i])
        if full is not None and (start == 1 or i == 0):
            full = ".".join([full] + parts[i + 1:])
            break
    else:
        return None
    if full == target:
        return None
    domain = env.domains["py"]
    return domain.resolve_xref(env, node.get("refdoc"), app.builder, node.get("reftype"),
                               full, node, contnode)


_CANONICAL = canonical_names()


def _skip_member(app, what, name, obj, skip, options):
    """Skip the members a class inherits from scikit-learn, torch or Python."""
    if skip or what != "class":
        return skip
    func = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
    module = getattr(func, "__module__", None) or ""
    return not module.startswith("skretrieval")


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("source-read", _source_read)
    app.connect("missing-reference", _missing_reference)
