"""Model files written before the package was split into subpackages still load.

``tests/fixtures/legacy/`` holds joblib pickles (naming the old flat module
paths such as ``skretrieval._retriever``) and ``save_pipeline`` folders and
zips written by the old layout, with the rankings they gave then
(``make_legacy_fixtures.py`` says how they were made).  Loading them with
today's code must give the same rankings, up to float32 ties.
"""

import pathlib
import warnings

import joblib
import numpy as np
import pytest

from skretrieval.persistence import load_pipeline

from _helpers import assert_rankings_equivalent

HERE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
EXPECTED = np.load(HERE / "expected.npz")


def _queries():
    rng = np.random.default_rng(1)
    shapes = [(48, 64, 3), (64, 48, 3), (40, 40, 3)]
    return [rng.integers(0, 256, shapes[i % 3], dtype=np.uint8) for i in range(4)]


def _check(pipe, name):
    queries = _queries()
    dist, ind = pipe[-1].kneighbors(pipe[:-1].transform(queries), n_neighbors=5)
    assert_rankings_equivalent(dist, ind, EXPECTED[f"{name}_dist"], EXPECTED[f"{name}_ind"],
                               rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(pipe.predict(queries).shape,
                                  EXPECTED[f"{name}_predict"].shape)


@pytest.mark.parametrize("name", ["gem_pca_brute", "vlad_faiss", "gem_qe_float16", "rerank"])
def test_old_joblib_pickles_load_and_rank_the_same(name, one_torch_thread):
    if name == "vlad_faiss":
        pytest.importorskip("faiss")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # library versions may have moved on
        pipe = joblib.load(HERE / f"{name}.joblib")
    _check(pipe, name)


@pytest.mark.parametrize("path", ["gem_pca_brute.zip", "gem_pca_brute_dir", "rerank.zip"])
def test_old_save_pipeline_files_load_and_rank_the_same(path, one_torch_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipe = load_pipeline(HERE / path)
    _check(pipe, path.split(".")[0].removesuffix("_dir"))


def test_old_pickle_keeps_ids():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipe = joblib.load(HERE / "gem_pca_brute.joblib")
    assert list(pipe[-1].ids_) == [f"img{i:02d}.jpg" for i in range(16)]
