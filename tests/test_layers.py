"""The layer order of docs/architecture.md, enforced on every import of the package.

Every ``import`` of a skretrieval module -- at module level or inside a
function -- is read from the source (``ast``) and must go *down* the layers:
a subpackage imports only from subpackages of lower layers (and from itself).
Imports inside functions are refused outside the command line (whose
subcommands load their dependencies when run, to start fast) and the few
listed below with their reason; none of them may hide a cycle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skretrieval"

#: Lowest first.  Keep in step with "The layers" in docs/architecture.md.
LAYERS = [
    {"utils"},
    {"extraction", "metrics", "pairs"},
    {"pooling", "neighbors", "display"},
    {"local"},
    {"reranking", "nn", "pretrained", "datasets"},
    {"persistence"},
    {"index"},
    {"serve"},
    {"cli"},
    {"<root>"},  # skretrieval/__init__.py and __main__.py
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}

#: Imports inside a function outside cli/, each with why it is not at the top.
LAZY_ALLOWED = {
    # numba's import and the checker's compilation cost ~1 s: paid at the
    # first JPEG checked, not by every import of skretrieval
    ("extraction/_images.py", "skretrieval.extraction._jpeg"),
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path


def _room(rel):
    """The subpackage of a module path relative to the package (``<root>`` for the root)."""
    head = rel.split("/")[0]
    if head in ("__init__.py", "__main__.py"):
        return "<root>"
    return head[:-3] if head.endswith(".py") else head


def _imports(rel, path):
    """``(target module, lineno, inside a function)`` of every skretrieval import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = ["skretrieval", *rel[:-3].split("/")]
    package = here if rel.endswith("__init__.py") else here[:-1]
    if rel.endswith("__init__.py"):
        package = here[:-1]
    functions = [n for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    inside = {id(sub) for fn in functions for sub in ast.walk(fn)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target]
            if node.module is None or target in ("skretrieval",):
                # "from .. import x": x may be a module of that package
                targets = [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t == "skretrieval" or t.startswith("skretrieval."):
                yield t, node.lineno, id(node) in inside


def _target_room(module):
    parts = module.split(".")
    return "<root>" if len(parts) == 1 else parts[1]


def _all_imports():
    return [(rel, *imp) for rel, path in _modules() for imp in _imports(rel, path)]


def test_every_subpackage_has_a_layer():
    rooms = {_room(rel) for rel, _ in _modules()}
    assert rooms <= set(RANK), (
        f"subpackages without a layer: {sorted(rooms - set(RANK))}; add them to LAYERS "
        "here and to the layer table of docs/architecture.md")


def test_imports_go_down_the_layers():
    wrong = []
    for rel, target, line, lazy in _all_imports():
        src, dst = _room(rel), _target_room(target)
        if src == dst or dst not in RANK:
            continue
        if RANK[dst] >= RANK[src]:
            wrong.append(f"{rel}:{line} imports {target} ({src} is not above {dst})"
                         + (" inside a function" if lazy else ""))
    assert not wrong, "\n".join(wrong)


def test_no_function_level_import_outside_the_command_line():
    lazy = [(rel, target, line) for rel, target, line, is_lazy in _all_imports()
            if is_lazy and not rel.startswith("cli/")
            and (rel, target) not in LAZY_ALLOWED]
    assert not lazy, "\n".join(f"{rel}:{line} imports {t} inside a function"
                               for rel, t, line in lazy)


def test_no_cycle_between_modules():
    graph = {}
    for rel, target, _, _ in _all_imports():
        src = "skretrieval." + rel[:-3].replace("/", ".").removesuffix(".__init__")
        graph.setdefault(src, set()).add(target)
    # a package's __init__ imports its modules (followed); a module reading
    # its own package (its __init__, partly run at that time) is not followed
    seen, stack, cycles = {}, [], []

    def visit(node):
        seen[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, ()):
            if node.startswith(nxt + "."):
                continue  # a module and its own package
            if seen.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = "done"

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("bad", ["from ..serve import app", "from skretrieval.cli import main"])
def test_the_check_sees_a_wrong_import(tmp_path, bad):
    # the reader itself: an upward import written inside a function is found
    path = tmp_path / "mod.py"
    path.write_text(f"def f():\n    {bad}\n")
    (target, line, lazy), = _imports("neighbors/mod.py", path)
    assert lazy and line == 2
    assert RANK[_target_room(target)] > RANK["neighbors"]
