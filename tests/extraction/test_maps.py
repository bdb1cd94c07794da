"""FeatureMaps: the ragged container that flows through pipelines."""

import pickle

import numpy as np
import pytest
from sklearn.utils import _safe_indexing

from skretrieval import FeatureMaps
from skretrieval.extraction._maps import check_maps, iter_maps


def _entries(n=5, scales=2, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(rng.random((3, 2 + i, 4 - s), dtype=np.float32) for s in range(scales))
            for i in range(n)]


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_indexing_returns_featuremaps_sharing_storage(store):
    entries = _entries()
    maps = FeatureMaps(entries, scales=(1, 0.5), layer="x", store=store)
    assert len(maps) == 5 and maps.shape == (5,) and maps.n_channels == 3
    np.testing.assert_array_equal(maps[3][1], entries[3][1])
    sub = maps[np.array([4, 0])]
    assert isinstance(sub, FeatureMaps) and len(sub) == 2 and sub.scales == (1.0, 0.5)
    np.testing.assert_array_equal(sub[0][0], entries[4][0])
    np.testing.assert_array_equal(maps[1:3][1][0], entries[2][0])
    mask = np.array([True, False, True, False, False])
    assert [m[0].shape for m in maps[mask]] == [entries[0][0].shape, entries[2][0].shape]
    assert len(maps[[]]) == 0
    # sklearn's splitters index with X[indices, ...]
    picked = _safe_indexing(maps, np.array([2, 1]))
    np.testing.assert_array_equal(picked[0][1], entries[2][1])


def test_memory_store_is_an_own_read_only_copy():
    entries = _entries(1, 1)
    maps = FeatureMaps(entries)
    entries[0][0][:] = 7
    assert not np.any(maps[0][0] == 7)
    with pytest.raises(ValueError):
        maps[0][0][0, 0, 0] = 1


def test_float16_halves_bytes_and_returns_float32():
    m32 = FeatureMaps(_entries(), scales=(1, 2))
    m16 = FeatureMaps(_entries(), scales=(1, 2), dtype="float16", store="disk")
    assert m16.nbytes * 2 == m32.nbytes
    assert m16[0][0].dtype == np.float32
    np.testing.assert_allclose(m16[2][1], m32[2][1], rtol=1e-3)


def test_disk_store_pickles_and_is_removed_with_its_owner():
    import gc
    import os

    maps = FeatureMaps(_entries(), scales=(1, 2), store="disk")
    path = maps._store.path
    clone = pickle.loads(pickle.dumps(maps))
    np.testing.assert_array_equal(clone[4][1], maps[4][1])
    del maps, clone
    gc.collect()
    assert not os.path.exists(path)


def test_validation_errors():
    with pytest.raises(ValueError, match="one per scale"):
        FeatureMaps([(np.zeros((2, 2, 2)),)], scales=(1, 2))
    with pytest.raises(ValueError, match="C x H x W"):
        FeatureMaps([np.zeros((2, 2))])
    with pytest.raises(ValueError, match="channels"):
        FeatureMaps([np.zeros((2, 2, 2)), np.zeros((3, 2, 2))])
    with pytest.raises(ValueError, match="dtype"):
        FeatureMaps(dtype="int8")
    with pytest.raises(ValueError, match="empty"):
        check_maps([])
    with pytest.raises(ValueError, match="2-D descriptors"):
        check_maps(np.zeros((3, 4)))
    with pytest.raises(TypeError):
        check_maps("maps")
    with pytest.raises(IndexError):
        FeatureMaps(_entries(scales=1))[1, 2]


def test_iter_maps_forms_agree():
    entries = _entries(3, 1)
    arrays = [e[0] for e in entries]
    forms = [FeatureMaps(entries), arrays, [list(e) for e in entries]]
    for form in forms:
        got = list(iter_maps(form))
        assert len(got) == 3
        np.testing.assert_array_equal(got[2][0], arrays[2])
    stacked = np.stack([np.ones((3, 2, 2))] * 2)
    assert len(list(iter_maps(stacked))) == 2
