"""The blocked top-k selection of long rows."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal


@pytest.mark.parametrize("k,n_cols,levels", [(10, 50_003, 40), (100, 60_000, 5000), (7, 30_000, 0)])
def test_blocked_top_k_equals_direct_selection(k, n_cols, levels):
    from skretrieval.neighbors._topk import block_size, top_k, top_k_blocked

    rng = np.random.RandomState(k)
    if levels:  # many exact ties
        keys = rng.randint(0, levels, size=(9, n_cols)).astype(np.float32)
    else:
        keys = rng.randn(9, n_cols).astype(np.float32)
    keys[np.arange(9), rng.randint(0, n_cols, 9)] = np.nan  # excluded items
    keys[0, :] = 1.0  # a row of ties only
    keys[0, 5] = np.nan
    size = block_size(k, n_cols)
    assert size
    direct = top_k(keys, k, blocked=False)
    for s in {size, 16, 1024}:
        if n_cols // s < k:
            continue
        values, cols = top_k_blocked(keys, k, s)
        assert_array_equal(cols, direct[1])
        assert_array_equal(values, direct[0])
