"""The shared retriever checks (neighbors/_base.py) and distance conversions."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from skretrieval import NearestNeighborRetriever
from skretrieval.neighbors._base import (
    check_labels_fitted,
    check_similarity_search,
    resolve_n_neighbors,
)
from skretrieval.utils import distances_from_similarities, similarities_from_distances
from skretrieval.utils._arrays import l2_normalize


def test_resolve_n_neighbors():
    assert resolve_n_neighbors(None, 5, default=3) == 3
    assert resolve_n_neighbors("all", 5, default=3) == 5
    assert resolve_n_neighbors(np.int64(4), 5, default=3) == 4
    assert resolve_n_neighbors(9, 5, default=3, clip=True) == 5
    with pytest.raises(ValueError, match="n_neighbors <= n_samples_fit"):
        resolve_n_neighbors(9, 5, default=3)
    with pytest.raises(ValueError, match="n_neighbors < n_samples_fit when X is None"):
        resolve_n_neighbors(9, 5, default=3, exclude_self=True)
    with pytest.raises(ValueError, match="Expected n_neighbors > 0"):
        resolve_n_neighbors(0, 5, default=3, clip=True)
    with pytest.raises(ValueError, match="positive int, 'all' or None"):
        resolve_n_neighbors("most", 5, default=3)
    with pytest.raises(ValueError, match="approximate"):
        resolve_n_neighbors("all", 5, default=3, full_refusal="approximate")
    for bad in (2.0, True):
        with pytest.raises(TypeError, match="n_neighbors"):
            resolve_n_neighbors(bad, 5, default=3)


def test_label_and_metric_checks():
    retriever = NearestNeighborRetriever(n_neighbors=2).fit(np.eye(3))
    with pytest.raises(ValueError, match="fitted without them: fit with y"):
        check_labels_fitted(retriever, "predict")
    with pytest.raises(ValueError, match="similarity search.*euclidean|Euclidean"):
        check_similarity_search(NearestNeighborRetriever(metric="euclidean"), "diffusion")
    check_similarity_search(None, "diffusion")
    check_similarity_search(NearestNeighborRetriever(metric="inner_product"), "diffusion")


@pytest.mark.parametrize("metric", ["cosine", "inner_product", "euclidean"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_similarity_conversions_are_inverse(metric, dtype):
    dist = np.array([[0.0, 0.25, 1.5]], dtype=dtype)
    sim = similarities_from_distances(dist, metric)
    assert sim.dtype == dtype
    assert_array_equal(distances_from_similarities(sim, metric), dist)
    expected = 1 - dist if metric == "cosine" else -dist
    assert_array_equal(sim, expected)
    assert similarities_from_distances([1, 2], metric).dtype == np.float64
    with pytest.raises(TypeError, match="numbers"):
        similarities_from_distances(np.array(["a"]), metric)


def test_l2_normalize_zero_and_tiny_rows():
    X = np.array([[3, 4], [0, 0], [3e-8, 4e-8]], dtype=np.float32)
    out = l2_normalize(X)
    assert out.dtype == np.float32
    assert_array_equal(out[1], [0, 0])
    np.testing.assert_allclose(out[[0, 2]], [[0.6, 0.8], [0.6, 0.8]], rtol=1e-6)
    kept = l2_normalize(X, tiny_as_zero=True)
    assert_array_equal(kept[1:], X[1:])  # below 10 eps: as sklearn's normalize
    assert l2_normalize(X.astype(np.float16)).dtype == np.float16
