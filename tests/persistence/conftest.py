"""Fixtures of the persistence tests (and ``tests/`` on the path for ``_helpers``)."""

import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401, E702

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from persistence_helpers import _images, _pipe  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    images = _images(12, seed=0)
    labels = np.array(["louvre", "eiffel", "notre-dame", "sacre-coeur"] * 3)
    queries = _images(3, seed=1)
    return _pipe().fit(images, labels), images, labels, queries
