"""Old module paths of skretrieval, kept importable for files and code written before 0.2.

Until the package was split into subpackages, every module lived at the top
(``skretrieval._retriever``, ``skretrieval._pooling``, ``skretrieval.losses``...).
joblib pickles written then name those paths, and user code may import the
public ones (``skretrieval.losses``, ``skretrieval.evaluation``).  This module
installs a finder that answers an import of an old path with a light alias
module: attribute lookups on it are forwarded to the modules that now hold
those names, so ``pickle`` finds ``skretrieval._retriever.NearestNeighborRetriever``
and gets today's class.  Nothing is imported until an old path is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

__all__ = ["LEGACY_MODULES", "MOVED_NAMES", "install", "moved_name"]

#: old module -> the modules (new paths) that now hold its names, searched in order.
LEGACY_MODULES = {
    "skretrieval._files": ("skretrieval.utils._files",),
    "skretrieval._persist": ("skretrieval.utils._state",),
    "skretrieval._jpeg": ("skretrieval.extraction._jpeg",),
    "skretrieval._images": ("skretrieval.extraction._images",
                            "skretrieval.extraction._collections"),
    "skretrieval._maps": ("skretrieval.extraction._maps",),
    "skretrieval._backbones": ("skretrieval.extraction._backbones",),
    "skretrieval._cache": ("skretrieval.extraction._cache",),
    "skretrieval._distributed": ("skretrieval.extraction._distributed",),
    "skretrieval._extractor": ("skretrieval.extraction._extractor",),
    "skretrieval._pooling": ("skretrieval.pooling",),
    "skretrieval._vlad": ("skretrieval.pooling._vlad",),
    "skretrieval._whitening": ("skretrieval.pooling._whitening",),
    "skretrieval._cam": ("skretrieval.pooling._cam", "skretrieval.reranking._online_cam"),
    "skretrieval._retriever": ("skretrieval.neighbors",),
    "skretrieval._indexing": ("skretrieval.index._indexing",),
    "skretrieval.neighbors._indexing": ("skretrieval.index._indexing",),
    "skretrieval._expansion": ("skretrieval.reranking._expansion",),
    "skretrieval._rerank": ("skretrieval.reranking._rerank",),
    "skretrieval._deepnet": ("skretrieval.nn._layers",),
    "skretrieval.losses": ("skretrieval.nn._losses",),
    "skretrieval._trainer": ("skretrieval.nn._trainer",),
    "skretrieval.evaluation": ("skretrieval.datasets._evaluation",),
    "skretrieval.metrics._evaluation": ("skretrieval.datasets._evaluation",),
    "skretrieval._demo": ("skretrieval.datasets._demo", "skretrieval.display",
                          "skretrieval.cli._demo"),
}

#: module -> {name that left it: the module now holding it}; the module's own
#: ``__getattr__`` answers with :func:`moved_name`.
MOVED_NAMES = {
    "skretrieval": {"APLoss": "skretrieval.nn", "ContrastiveLoss": "skretrieval.nn",
                    "TripletLoss": "skretrieval.nn"},
    "skretrieval.neighbors": {name: "skretrieval.index" for name in (
        "IndexFile", "IndexUpdate", "add_to_index", "edit_index", "item_fingerprint",
        "load_index", "save_index")},
    "skretrieval.metrics": {name: "skretrieval.datasets" for name in (
        "EvaluationReport", "evaluate_benchmark", "evaluate_descriptors")},
}


def moved_name(module, name):
    """The object ``name`` that moved out of ``module`` (for its ``__getattr__``).

    Parameters
    ----------
    module : str
        The module asked, e.g. ``"skretrieval"``.
    name : str
        The attribute asked.

    Returns
    -------
    object
        ``name`` from the module that holds it now.

    Raises
    ------
    AttributeError
        If ``name`` never moved out of ``module``.
    """
    target = MOVED_NAMES.get(module, {}).get(name)
    if target is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return getattr(importlib.import_module(target), name)


class _AliasModule(types.ModuleType):
    """A module whose attributes are those of the modules now holding them."""

    def __init__(self, name, targets):
        super().__init__(name, f"Old path of {', '.join(targets)} (kept for old files).")
        self.__targets = targets

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (now {', '.join(self.__targets)}) "
                             f"has no attribute {attr!r}")

    def __dir__(self):
        names = set()
        for target in self.__targets:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return _AliasModule(spec.name, LEGACY_MODULES[spec.name])

    def exec_module(self, module):
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in LEGACY_MODULES:
            return importlib.util.spec_from_loader(fullname, _Loader())
        return None


def install():
    """Put the finder of the old paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
