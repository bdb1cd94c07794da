"""Shared fixtures: the data beside the project and the real MobileNetV2 weights."""

import os
import sys
from pathlib import Path

import pytest

from skretrieval import weights_search_dirs

# the test modules live in one folder per subpackage; they share tests/_helpers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The suite runs networks with torch (engine="auto" resolves to it here) unless
# a test names an engine: tests/test_engines.py tests ONNX Runtime, OpenVINO and
# what "auto" picks without this variable.  Exporting every network the suite
# builds would add minutes.
os.environ.setdefault("SKRETRIEVAL_ENGINE", "torch")

SHARED_DATA = Path(os.environ.get(
    "SKRETRIEVAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def have_mobilenet_weights():
    return any(os.path.isfile(os.path.join(d, "mobilenet_v2-b0353104.pth"))
               for d in weights_search_dirs())


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """ONNX exports go to one folder per test session (exported once per session)."""
    folder = tmp_path_factory.mktemp("onnx")
    before = os.environ.get("SKRETRIEVAL_ONNX_CACHE")
    os.environ["SKRETRIEVAL_ONNX_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("SKRETRIEVAL_ONNX_CACHE", None)
    else:
        os.environ["SKRETRIEVAL_ONNX_CACHE"] = before


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` (skips the test when it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mobilenet_weights():
    if not have_mobilenet_weights():
        pytest.skip("mobilenet_v2-b0353104.pth (ImageNet weights) not installed")
    return "IMAGENET1K_V1"


@pytest.fixture(scope="session")
def coil100_subset(shared_data):
    """Paths and labels of 8 views of each of 12 COIL-100 objects."""
    root = shared_data / "coil100"
    if not root.is_dir():
        pytest.skip("COIL-100 not in shared data")
    paths, labels = [], []
    for obj in range(2, 14):  # obj1 is stored at 32x32: skip it
        for deg in range(0, 360, 45):
            p = root / f"obj{obj}__{deg}.png"
            if p.exists():
                paths.append(str(p))
                labels.append(obj)
    return paths, labels


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: tiny networks gain nothing from two,
    on a CPU shared with other jobs threads waiting for each other cost several
    times the work, and dask workers run one thread per task too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``nndescent`` share one xdist worker (``--dist loadgroup``):
    numba compiles pynndescent once per process, about 30 s, so spreading them
    would pay it on every worker."""
    for item in items:
        if item.get_closest_marker("nndescent") is not None:
            item.add_marker(pytest.mark.xdist_group("nndescent"))
