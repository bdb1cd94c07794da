"""Models and manifest edits shared by the persistence tests."""

import hashlib
import json
import pathlib
import warnings

import numpy as np
from sklearn.pipeline import make_pipeline

from skretrieval import (
    ConvFeatureExtractor,
    GeMPooler,
    NearestNeighborRetriever,
    PCAWhitener,
)
from skretrieval.persistence import load_pipeline, save_pipeline


def _images(n, seed):
    rng = np.random.default_rng(seed)
    shapes = [(48, 64, 3), (64, 48, 3), (40, 40, 3)]
    return [rng.integers(0, 256, shapes[i % 3], dtype=np.uint8) for i in range(n)]


def _extractor():
    return ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu")


def _pipe():
    return make_pipeline(_extractor(), GeMPooler(), PCAWhitener(n_components=4),
                         NearestNeighborRetriever(n_neighbors=5))


def _rankings(pipe, queries):
    return pipe[-1].kneighbors(pipe[:-1].transform(queries), n_neighbors=5)


def _assert_same_rankings(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-6)


def _strict_load(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_pipeline(path, **kwargs)


def _manifest(path):
    return json.loads((pathlib.Path(path) / "manifest.json").read_text())


def _write_manifest(path, manifest, *, rehash=True):
    """Write an edited manifest; with ``rehash``, also its checksum, as a deliberate
    editor would (the checks after the checksum are what these tests are about)."""
    data = json.dumps(manifest).encode()
    (pathlib.Path(path) / "manifest.json").write_bytes(data)
    if rehash:
        (pathlib.Path(path) / "manifest.sha256").write_text(
            f"{hashlib.sha256(data).hexdigest()}  manifest.json\n")


def _retriever_model(tmp_path, name="r", **params):
    rng = np.random.default_rng(0)
    X = rng.random((16, 4)).astype(np.float32)
    y = np.array(["a", "b", "c", "d"] * 4)
    retriever = NearestNeighborRetriever(n_neighbors=3, **params).fit(X, y)
    save_pipeline(retriever, tmp_path / name)
    return retriever, X, y


def _rewrite_npz(model, manifest, name, arrays):
    """Replace the .npz file ``name`` of a model directory, its checksum updated."""
    with open(model / name, "wb") as fh:
        np.savez(fh, **arrays)
    data = (model / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(),
                               "bytes": len(data)}
