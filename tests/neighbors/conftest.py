import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from _helpers import clustered_descriptors  # noqa: E402


@pytest.fixture(scope="module")
def clustered():
    return clustered_descriptors()
