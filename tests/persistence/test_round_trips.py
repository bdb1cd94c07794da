"""Pickle-free persistence: models that save and load back the same (formats 1 and 2), with no pickle."""

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import Normalizer

from skretrieval import (
    CAMWeighter,
    ConvFeatureExtractor,
    GeMPooler,
    NearestNeighborRetriever,
    OnlineCAMRetriever,
    PCAWhitener,
    QueryExpansionRetriever,
    RegionReranker,
    RetrievalNetTrainer,
    VLADEncoder,
)
from skretrieval.persistence import (
    SUPPORTED_CLASSES,
    ModelFormatError,
    load_pipeline,
    save_pipeline,
)

from persistence_helpers import (
    _assert_same_rankings,
    _extractor,
    _images,
    _manifest,
    _rankings,
    _retriever_model,
    _strict_load,
    _write_manifest,
)


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model", "model.zip"])
def test_round_trip_same_rankings(fitted, tmp_path, name):
    pipe, images, labels, queries = fitted
    written = save_pipeline(pipe, tmp_path / name)
    assert written == str(tmp_path / name)
    assert os.path.isdir(written) == (name == "model")
    loaded = _strict_load(tmp_path / name)

    assert isinstance(loaded, Pipeline)
    assert [n for n, _ in loaded.steps] == [n for n, _ in pipe.steps]
    for (_, a), (_, b) in zip(pipe.steps, loaded.steps):
        assert type(a) is type(b)
        assert repr(a.get_params(deep=False)) == repr(b.get_params(deep=False))
    ext = loaded[0]
    assert ext.trunk_ is None and ext._weights_id == pipe[0]._weights_id
    assert ext.mean_ == pipe[0].mean_ and isinstance(ext.mean_, tuple)
    assert isinstance(loaded[2].pca_, PCA)
    np.testing.assert_array_equal(loaded[2].scale_, pipe[2].scale_)
    retriever = loaded[-1]
    assert retriever.y_.dtype.kind == "U"
    np.testing.assert_array_equal(retriever.y_, labels)
    np.testing.assert_array_equal(retriever.X_fit_, pipe[-1].X_fit_)

    _assert_same_rankings(_rankings(pipe, queries), _rankings(loaded, queries))
    assert isinstance(ext.trunk_, torch.nn.Module)  # rebuilt on first use
    np.testing.assert_array_equal(loaded.predict(queries), pipe.predict(queries))
    assert loaded.score(images[:4], labels[:4]) == pipe.score(images[:4], labels[:4])
    # the nested PCA is a working estimator too
    X = pipe[:2].transform(queries)
    np.testing.assert_allclose(loaded[2].pca_.transform(X), pipe[2].pca_.transform(X))


def _other_pipelines():
    """Pipelines of the other aggregators and retrievers (CAMs need cams=K)."""
    cams = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu", cams=4)
    return {
        "vlad": make_pipeline(_extractor(), VLADEncoder(n_clusters=4, random_state=0),
                              PCAWhitener(n_components=8), NearestNeighborRetriever()),
        # a template whitener (cloned by fit, unfitted in the parameters) and DBA + QE
        "cam_qe": make_pipeline(cams, CAMWeighter(n_classes=4, whitener=PCAWhitener(8)),
                                QueryExpansionRetriever(NearestNeighborRetriever(),
                                                        qe_k=2, dba_k=2)),
        "cam_online": make_pipeline(cams, CAMWeighter(n_classes=4, aggregation="online"),
                                    OnlineCAMRetriever()),
        "rerank": make_pipeline(cams, RegionReranker(GeMPooler(), NearestNeighborRetriever(),
                                                     n_rerank=6, proposals="both", qe_k=2)),
    }


@pytest.mark.parametrize("name", ["vlad", "cam_qe", "cam_online", "rerank"])
def test_round_trip_of_the_other_aggregators_and_retrievers(tmp_path, name):
    pipe = _other_pipelines()[name]
    images = _images(16, seed=2)
    labels = np.arange(16) % 4
    queries = _images(3, seed=3)
    pipe.fit(images, labels)
    save_pipeline(pipe, tmp_path / "m.zip")
    loaded = _strict_load(tmp_path / "m.zip")
    assert [type(s) for _, s in loaded.steps] == [type(s) for _, s in pipe.steps]
    a, b = _rankings(pipe, queries), _rankings(loaded, queries)
    _assert_same_rankings(a, b)
    assert loaded.score(images[:4], labels[:4]) == pipe.score(images[:4], labels[:4])


def test_template_and_frozen_estimator_parameters(tmp_path):
    # a template parameter (cloned by fit) is stored unfitted and stays a template
    pipe = _other_pipelines()["cam_qe"].fit(_images(12, seed=2), np.arange(12) % 4)
    save_pipeline(pipe, tmp_path / "t")
    node = _manifest(tmp_path / "t")["estimator"]["steps"][1]["estimator"]
    template = node["params"]["whitener"]["__estimator__"]
    assert template["class"] == "skretrieval.PCAWhitener" and template["attributes"] == {}
    assert node["attributes"]["whitener_"]["__estimator__"]["attributes"]  # the fitted one
    loaded = _strict_load(tmp_path / "t")
    assert not hasattr(loaded[1].whitener, "pca_") and hasattr(loaded[1].whitener_, "pca_")
    # a frozen estimator is used as it is: it must be fitted
    frozen = make_pipeline(FrozenEstimator(PCAWhitener(n_components=2)),
                           NearestNeighborRetriever())
    with pytest.raises(NotFittedError, match="FrozenEstimator.*not fitted"):
        save_pipeline(frozen, tmp_path / "f")


def test_retrieval_net_trainer_round_trip(tmp_path):
    from _helpers import TINY, gratings

    X, y = gratings(seed=0)
    trainer = RetrievalNetTrainer(**TINY, batch_size=16, images_per_label=4, n_negatives=2,
                                  n_epochs=1, dim=16, random_state=0)
    pipe = make_pipeline(trainer, NearestNeighborRetriever()).fit(X, y)
    save_pipeline(pipe, tmp_path / "m")
    node = _manifest(tmp_path / "m")["estimator"]["steps"][0]["estimator"]
    # weights as arrays, no module (network_ is transient: not stored)
    assert "network_" not in node["attributes"] and "_network_state" in node["attributes"]
    loaded = _strict_load(tmp_path / "m", device="cpu")
    assert isinstance(loaded[0].network_, torch.nn.Module)  # rebuilt when loaded
    _assert_same_rankings(_rankings(pipe, X[:6]), _rankings(loaded, X[:6]))
    assert repr(loaded[0].history_) == repr(pipe[0].history_)  # NaN val_map: no eval set
    # weights that do not fit the architecture are refused when loading
    manifest = _manifest(tmp_path / "m")
    weights = manifest["estimator"]["steps"][0]["estimator"]["attributes"]["_network_state"]
    del weights["__dict__"][sorted(weights["__dict__"])[0]]
    _write_manifest(tmp_path / "m", manifest)
    with pytest.raises(ModelFormatError, match="inconsistent fitted state"):
        load_pipeline(tmp_path / "m")


_CHILD = textwrap.dedent("""
    import sys, warnings
    import numpy as np
    from skretrieval.persistence import load_pipeline
    warnings.simplefilter("error")
    model, queries, out = sys.argv[1:]
    with np.load(queries, allow_pickle=False) as npz:
        q = [npz[k] for k in sorted(npz.files)]
    pipe = load_pipeline(model, device="cpu")
    dist, ind = pipe[-1].kneighbors(pipe[:-1].transform(q), n_neighbors=5)
    np.savez(out, dist=dist, ind=ind, pred=pipe.predict(q))
""")


def test_round_trip_in_a_fresh_process(fitted, tmp_path):
    pipe, _, _, queries = fitted
    save_pipeline(pipe, tmp_path / "model.zip")
    np.savez(tmp_path / "queries.npz", **{f"q{i}": q for i, q in enumerate(queries)})
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "model.zip"),
         str(tmp_path / "queries.npz"), str(tmp_path / "out.npz")],
        check=True, timeout=300,
    )
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        _assert_same_rankings(_rankings(pipe, queries), (out["dist"], out["ind"]))
        np.testing.assert_array_equal(out["pred"], pipe.predict(queries))


def test_frozen_whitener_round_trip(tmp_path):
    other = _images(10, seed=2)
    head = make_pipeline(_extractor(), GeMPooler())
    whitener = PCAWhitener(n_components=4, whiten_power=0.5).fit(head.fit_transform(other))
    pipe = make_pipeline(_extractor(), GeMPooler(), FrozenEstimator(whitener),
                         NearestNeighborRetriever(n_neighbors=5))
    images, queries = _images(9, seed=3), _images(2, seed=4)
    pipe.fit(images, np.array(["a", "b", "c"] * 3))
    save_pipeline(pipe, tmp_path / "frozen")
    loaded = _strict_load(tmp_path / "frozen")

    frozen = loaded[2]
    assert type(frozen) is FrozenEstimator
    assert type(frozen.estimator) is PCAWhitener
    assert frozen.estimator.whiten_power == 0.5
    np.testing.assert_array_equal(frozen.components_, whitener.components_)
    _assert_same_rankings(_rankings(pipe, queries), _rankings(loaded, queries))
    # refitting the loaded pipeline keeps the frozen whitening
    loaded.fit(_images(6, seed=5), np.array(["x", "y"] * 3))
    np.testing.assert_array_equal(loaded[2].mean_, whitener.mean_)


def test_single_estimators_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((20, 6))
    labels = np.array(["a", "b", "c", "d"] * 5, dtype=object)  # e.g. a pandas column
    retriever = NearestNeighborRetriever(n_neighbors=3, metric="euclidean").fit(X, labels)
    save_pipeline(retriever, tmp_path / "r.zip")
    loaded = _strict_load(tmp_path / "r.zip")
    assert type(loaded) is NearestNeighborRetriever
    assert loaded.y_.dtype == object and list(loaded.y_) == list(labels)
    _assert_same_rankings(retriever.kneighbors(X[:4]), loaded.kneighbors(X[:4]))
    assert loaded.score(None, None) == retriever.score(None, None)

    int_labels = NearestNeighborRetriever().fit(X, np.arange(20) % 3)
    save_pipeline(int_labels, tmp_path / "ints")
    np.testing.assert_array_equal(_strict_load(tmp_path / "ints").y_, np.arange(20) % 3)

    no_labels = NearestNeighborRetriever().fit(X)
    save_pipeline(no_labels, tmp_path / "none")
    assert _strict_load(tmp_path / "none").y_ is None

    whitener = PCAWhitener(n_components=3, whiten=False).fit(X)
    save_pipeline(whitener, tmp_path / "w")
    np.testing.assert_array_equal(_strict_load(tmp_path / "w").transform(X),
                                  whitener.transform(X))

    # stateless steps need no fit; GeM's p may be infinite (not JSON)
    pipe = make_pipeline(GeMPooler(p=np.inf), Normalizer())
    save_pipeline(pipe, tmp_path / "stateless")
    loaded = _strict_load(tmp_path / "stateless")
    assert loaded[0].p == np.inf and type(loaded[1]) is Normalizer


def test_loaded_model_can_be_saved_again_before_first_use(fitted, tmp_path):
    pipe, _, _, queries = fitted
    save_pipeline(pipe, tmp_path / "a")
    loaded = load_pipeline(tmp_path / "a")
    assert loaded[0].trunk_ is None  # the network is not rebuilt yet
    save_pipeline(loaded, tmp_path / "b.zip")
    _assert_same_rankings(_rankings(pipe, queries),
                          _rankings(load_pipeline(tmp_path / "b.zip"), queries))


def test_device_override(fitted, tmp_path):
    pipe, _, _, queries = fitted
    save_pipeline(pipe, tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    ext = manifest["estimator"]["steps"][0]["estimator"]
    ext["params"]["device"] = "auto"
    ext["attributes"]["device_"] = "cuda:0"  # as if fitted on a GPU
    _write_manifest(tmp_path / "m", manifest)
    loaded = load_pipeline(tmp_path / "m", device="cpu")
    assert loaded[0].device == "cpu" and loaded[0].device_ == "cpu"
    _assert_same_rankings(_rankings(pipe, queries), _rankings(loaded, queries))
    if not torch.cuda.is_available():
        kept = load_pipeline(tmp_path / "m")
        assert kept[0].device_ == "cuda:0"
        with pytest.warns(RuntimeWarning, match="not available"):
            _assert_same_rankings(_rankings(pipe, queries), _rankings(kept, queries))


# ---------------------------------------------------------------------------
# no pickle anywhere
# ---------------------------------------------------------------------------
def _check_no_pickle(name, data):
    assert not data.startswith(b"\x80"), f"{name} starts with a pickle opcode"
    if name.endswith(".npz"):
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            assert npz.files
            for key in npz.files:
                assert not npz[key].dtype.hasobject
    elif name.endswith(".json"):
        json.loads(data)
    elif name.endswith(".sha256"):
        assert data.decode("ascii").endswith("  manifest.json\n")
    else:  # pragma: no cover
        raise AssertionError(f"unexpected file {name}")


def test_saved_files_contain_no_pickle(fitted, tmp_path):
    pipe = fitted[0]
    save_pipeline(pipe, tmp_path / "dir")
    files = sorted(p for p in (tmp_path / "dir").rglob("*") if p.is_file())
    assert {p.suffix for p in files} == {".json", ".npz", ".sha256"}
    for path in files:
        _check_no_pickle(path.name, path.read_bytes())
        if path.suffix == ".npz":
            np.load(path, allow_pickle=False).close()
    # the network's weights are a plain npz of its state dict
    trunk_file = _manifest(tmp_path / "dir")["estimator"]["steps"][0]["estimator"]["trunk"]
    with np.load(tmp_path / "dir" / trunk_file, allow_pickle=False) as npz:
        state = pipe[0].trunk_.state_dict()
        assert set(npz.files) == set(state)
        key = "conv1.weight"
        np.testing.assert_array_equal(npz[key], state[key].numpy())

    save_pipeline(pipe, tmp_path / "one.zip")
    raw = (tmp_path / "one.zip").read_bytes()
    assert not raw.startswith(b"\x80")
    with zipfile.ZipFile(tmp_path / "one.zip") as zf:
        names = zf.namelist()
        assert "manifest.json" in names
        assert sorted(names) == sorted(p.relative_to(tmp_path / "dir").as_posix() for p in files)
        for name in names:
            _check_no_pickle(name, zf.read(name))


def test_manifest_content(fitted, tmp_path):
    pipe = fitted[0]
    save_pipeline(pipe, tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    assert manifest["format"] == "skretrieval-model" and manifest["format_version"] == 2
    digest = (tmp_path / "m" / "manifest.sha256").read_text().split()[0]
    assert digest == hashlib.sha256((tmp_path / "m" / "manifest.json").read_bytes()).hexdigest()
    assert set(manifest["versions"]) >= {"skretrieval", "sklearn", "torch", "torchvision"}
    assert manifest["step_names"] == [n for n, _ in pipe.steps]
    steps = manifest["estimator"]["steps"]
    assert [s["estimator"]["class"] for s in steps] == [
        "skretrieval.ConvFeatureExtractor", "skretrieval.GeMPooler",
        "skretrieval.PCAWhitener", "skretrieval.NearestNeighborRetriever"]
    assert steps[2]["estimator"]["params"]["n_components"] == 4
    assert "_weights_id" in steps[0]["estimator"]["attributes"]
    assert "_index" not in steps[3]["estimator"]["attributes"]
    assert all(c.split(".")[0] in ("skretrieval", "sklearn") for c in SUPPORTED_CLASSES)


def test_fingerprints_round_trip(tmp_path):
    retriever, X, _ = _retriever_model(tmp_path)
    retriever.fingerprints_ = np.array([f"sha:{i:02d}" for i in range(16)])
    save_pipeline(retriever, tmp_path / "f.zip")
    loaded = _strict_load(tmp_path / "f.zip")
    np.testing.assert_array_equal(loaded.fingerprints_, retriever.fingerprints_)
    retriever.fingerprints_ = retriever.fingerprints_[:3]
    with pytest.raises(ValueError, match="'fingerprints_'"):
        save_pipeline(retriever, tmp_path / "g.zip")


def test_files_of_format_version_1_still_load(fitted, tmp_path):
    # as written before issue 13: no manifest.sha256, null transient attributes
    pipe, _, _, queries = fitted
    save_pipeline(pipe, tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    manifest["format_version"] = 1
    manifest["estimator"]["steps"][3]["estimator"]["attributes"].update(
        _store_path=None, _store_dtype=None)
    _write_manifest(tmp_path / "m", manifest, rehash=False)
    (tmp_path / "m" / "manifest.sha256").unlink()
    loaded = _strict_load(tmp_path / "m")
    _assert_same_rankings(_rankings(pipe, queries), _rankings(loaded, queries))
