"""The shared comparison of search results (tests/_helpers.py) itself."""

import numpy as np
import pytest

from skretrieval import NearestNeighborRetriever

from _helpers import FLOAT32_RTOL, assert_rankings_equivalent

DIST = np.array([[0.1, 0.2, 0.2, 0.5, 0.7],
                 [0.3, 0.4, 0.6, 0.6, 0.6]], dtype=np.float32)
IND = np.array([[4, 1, 7, 0, 2],
                [3, 5, 8, 6, 9]])


def test_identical_results_pass():
    assert_rankings_equivalent(DIST, IND, DIST.copy(), IND.copy())


def test_swapped_ties_pass():
    ind = IND.copy()
    ind[0, [1, 2]] = ind[0, [2, 1]]      # two items at the same distance
    ind[1, [2, 4]] = ind[1, [4, 2]]      # within a tie group of three
    assert_rankings_equivalent(DIST, ind, DIST, IND)
    # the tie to float32 precision only, as two BLAS kernels give it
    dist = DIST.copy()
    dist[0, 2] = np.nextafter(dist[0, 2], np.float32(1), dtype=np.float32)
    assert_rankings_equivalent(dist, ind, DIST, IND)


def test_tie_cut_at_the_end_of_the_top_k_passes():
    # the last item of one is not in the other, but at the same distance
    ind = IND.copy()
    ind[1, 4] = 11
    assert_rankings_equivalent(DIST, ind, DIST, IND)


def test_swap_of_items_at_different_distances_fails():
    ind = IND.copy()
    ind[0, [0, 1]] = ind[0, [1, 0]]      # 0.1 and 0.2: not a tie
    with pytest.raises(AssertionError, match=r"query 0: item .* not a tie"):
        assert_rankings_equivalent(DIST, ind, DIST, IND)


def test_wrong_neighbour_fails():
    ind = IND.copy()
    ind[0, 3] = 12                       # an item the other result does not have
    with pytest.raises(AssertionError, match="is not in b, whose last distance .* not tied"):
        assert_rankings_equivalent(DIST, ind, DIST, IND)
    with pytest.raises(AssertionError, match=r"query 0: item 0 at rank 3 of a \(distance 0.5"):
        assert_rankings_equivalent(DIST, IND, DIST, ind)  # either side
    # two neighbours in the wrong order in one row, the other row right
    ind = IND.copy()
    ind[1, [0, 1]] = ind[1, [1, 0]]
    with pytest.raises(AssertionError, match="query 1"):
        assert_rankings_equivalent(DIST, ind, DIST, IND)


def test_distances_beyond_the_tolerance_fail():
    dist = DIST.copy()
    dist[1, 1] *= 1 + 10 * FLOAT32_RTOL
    with pytest.raises(AssertionError, match="distances differ"):
        assert_rankings_equivalent(dist, IND, DIST, IND)
    # within it, no failure
    dist[1, 1] = DIST[1, 1] * (1 + FLOAT32_RTOL / 10)
    assert_rankings_equivalent(dist, IND, DIST, IND)


def test_shapes_and_ids():
    with pytest.raises(AssertionError, match="shapes"):
        assert_rankings_equivalent(DIST[:, :3], IND[:, :3], DIST, IND)
    names = np.array([f"img{i}.jpg" for i in range(13)])
    ind = IND.copy()
    ind[0, [1, 2]] = ind[0, [2, 1]]
    assert_rankings_equivalent(DIST[0], names[ind[0]], DIST[0], names[IND[0]])  # 1-d, ids


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "inner_product"])
def test_duplicate_database_rows_tie_and_only_they_may_swap(metric, tmp_path, monkeypatch):
    """Exact duplicates in the database are exact ties: a ranking that lists them
    in the other order is equivalent; one that puts another item there is not."""
    import skretrieval.neighbors._store as module

    rng = np.random.RandomState(0)
    base = rng.randn(20, 16).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)  # own row nearest for every metric
    X = np.concatenate([base, base[:5]])          # rows 20..24 duplicate rows 0..4
    Q = base[:5] + 0.05 * rng.randn(5, 16).astype(np.float32)
    dist, ind = NearestNeighborRetriever(metric=metric).fit(X).kneighbors(Q, n_neighbors=6)
    twin = {i: i + 20 for i in range(5)} | {i + 20: i for i in range(5)}
    for q in range(5):  # each query's own row and its duplicate come first, tied
        assert sorted(ind[q, :2]) == [q, q + 20]
        assert dist[q, 0] == dist[q, 1]
    # the same ranking with every duplicate pair in the other order
    swapped = np.vectorize(lambda i: twin.get(i, i))(ind)
    assert not np.array_equal(swapped, ind)
    assert_rankings_equivalent(dist, swapped, dist, ind)
    # a streamed search (blocks of 4 rows of a memory-mapped store: other
    # products) agrees up to ties
    monkeypatch.setattr(module, "_STORE_BLOCK_BYTES", 4 * 4 * 16)
    streamed = NearestNeighborRetriever(metric=metric, store=tmp_path / "x.f32").fit(X)
    assert_rankings_equivalent(*streamed.kneighbors(Q, n_neighbors=6), dist, ind)
    # a wrong neighbour (at the same distance as the right one): the duplicate of
    # query 0's own row replaced by an item of neither result
    wrong = ind.copy()
    wrong[0, 1] = next(i for i in range(25) if i not in ind[0] and twin.get(i) not in ind[0])
    with pytest.raises(AssertionError, match="query 0: item .* is not in b"):
        assert_rankings_equivalent(dist, wrong, dist, ind)
    # two neighbours in the wrong order (not tied)
    wrong = ind.copy()
    wrong[0, [1, 2]] = wrong[0, [2, 1]]
    with pytest.raises(AssertionError, match="not a tie"):
        assert_rankings_equivalent(dist, wrong, dist, ind)
