"""The Examples sections of the package's docstrings run and print what they
say (the same as ``pytest --doctest-modules skretrieval``).  Examples that
need a download are marked ``# doctest: +SKIP`` in the docstring."""

import doctest
import importlib
import pkgutil

import pytest

import skretrieval


def _modules_with_examples():
    names = []
    for info in pkgutil.walk_packages(skretrieval.__path__, "skretrieval."):
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as f:
                if ">>>" in f.read():
                    names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    for test in finder.find(module, name):
        if test.examples:
            runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
