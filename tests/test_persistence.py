"""Pickle-free persistence: skretrieval.persistence.save_pipeline / load_pipeline."""

import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
import zipfile

import joblib
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
    VersionMismatchWarning,
    load_pipeline,
    save_pipeline,
)


def _images(n, seed):
    rng = np.random.default_rng(seed)
    shapes = [(48, 64, 3), (64, 48, 3), (40, 40, 3)]
    return [rng.integers(0, 256, shapes[i % 3], dtype=np.uint8) for i in range(n)]


def _extractor():
    return ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu")


def _pipe():
    return make_pipeline(_extractor(), GeMPooler(), PCAWhitener(n_components=4),
                         NearestNeighborRetriever(n_neighbors=5))


@pytest.fixture(scope="module")
def fitted():
    images = _images(12, seed=0)
    labels = np.array(["louvre", "eiffel", "notre-dame", "sacre-coeur"] * 3)
    queries = _images(3, seed=1)
    return _pipe().fit(images, labels), images, labels, queries


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
    from test_trainer import TINY, gratings

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


# ---------------------------------------------------------------------------
# refused models and files
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ["os.system", "builtins.eval", "posix.system",
                                 "sklearn.linear_model.LogisticRegression",
                                 "skretrieval.extraction._extractor.ConvFeatureExtractor", None, 42])
def test_tampered_class_is_refused(fitted, tmp_path, cls):
    save_pipeline(fitted[0], tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    manifest["estimator"]["steps"][-1]["estimator"]["class"] = cls
    _write_manifest(tmp_path / "m", manifest)
    with pytest.raises(ModelFormatError, match="not one that load_pipeline instantiates"):
        load_pipeline(tmp_path / "m")


def test_tampered_nested_class_is_refused(fitted, tmp_path):
    save_pipeline(fitted[0], tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    attrs = manifest["estimator"]["steps"][2]["estimator"]["attributes"]
    attrs["pca_"]["__estimator__"]["class"] = "os.system"
    _write_manifest(tmp_path / "m", manifest)
    with pytest.raises(ModelFormatError, match="os.system"):
        load_pipeline(tmp_path / "m")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(format_version=3), "format version 3.*upgrade skretrieval"),
    (lambda m: m.update(format_version="1"), "format version"),
    (lambda m: m.update(format="other"), "not a skretrieval model"),
    (lambda m: m["estimator"]["steps"][3]["estimator"]["params"].update(n_neighbors=-1),
     "invalid parameters"),
    (lambda m: m["estimator"]["steps"][3]["estimator"]["params"].update(bogus=1),
     "invalid parameters"),
    (lambda m: m["estimator"]["steps"][3]["estimator"]["attributes"].update(
        __class__="x"), "invalid attribute name"),
    (lambda m: m["estimator"]["steps"][3]["estimator"]["attributes"].update(
        transform="x"), "invalid attribute name"),
    (lambda m: m["estimator"]["steps"][3]["estimator"]["attributes"].update(
        _index=1), "'_index' is never stored"),
    (lambda m: m["estimator"]["steps"][3]["estimator"].update(
        trunk="state/x.npz"), "unexpected entries"),
    (lambda m: m["estimator"]["steps"][3]["estimator"]["attributes"].update(
        _parameter_constraints={"__dict__": {}}), "invalid attribute name"),
    (lambda m: m["estimator"]["steps"][3]["estimator"]["attributes"].update(
        metric="cosine"), "invalid attribute name"),
    (lambda m: m["estimator"]["steps"][3]["estimator"]["attributes"].update(
        y_={"__import__": "os"}), "malformed value"),
    (lambda m: m["estimator"]["steps"][3]["estimator"].update(
        arrays="../../etc/passwd.npz"), "invalid file name"),
])
def test_tampered_manifest_errors(fitted, tmp_path, edit, match):
    save_pipeline(fitted[0], tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    edit(manifest)
    _write_manifest(tmp_path / "m", manifest)
    with pytest.raises(ModelFormatError, match=match):
        load_pipeline(tmp_path / "m")


def test_version_mismatch_warns(fitted, tmp_path):
    save_pipeline(fitted[0], tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    manifest["versions"]["sklearn"] = "0.1"
    _write_manifest(tmp_path / "m", manifest)
    with pytest.warns(VersionMismatchWarning, match="sklearn 0.1"):
        load_pipeline(tmp_path / "m")


def test_missing_corrupted_and_foreign_files(fitted, tmp_path):
    pipe = fitted[0]
    save_pipeline(pipe, tmp_path / "m")
    arrays = _manifest(tmp_path / "m")["estimator"]["steps"][3]["estimator"]["arrays"]
    target = tmp_path / "m" / arrays
    data = target.read_bytes()
    target.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(ModelFormatError, match="checksum"):
        load_pipeline(tmp_path / "m")
    target.unlink()
    with pytest.raises(ModelFormatError, match="missing"):
        load_pipeline(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").unlink()
    with pytest.raises(ModelFormatError, match="no manifest.json"):
        load_pipeline(tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        load_pipeline(tmp_path / "nothing")
    joblib.dump(pipe[1:], tmp_path / "model.joblib")
    with pytest.raises(ModelFormatError, match="pickle"):
        load_pipeline(tmp_path / "model.joblib")

    save_pipeline(pipe, tmp_path / "m.zip")
    with zipfile.ZipFile(tmp_path / "m.zip") as src, \
            zipfile.ZipFile(tmp_path / "cut.zip", "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("-trunk.npz"):
                dst.writestr(info, src.read(info))
    with pytest.raises(ModelFormatError, match="missing"):
        load_pipeline(tmp_path / "cut.zip")


def test_unfitted_pipeline_is_refused(tmp_path):
    with pytest.raises(NotFittedError, match="step 'convfeatureextractor'.*not fitted"):
        save_pipeline(_pipe(), tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary leftovers
    pipe = make_pipeline(GeMPooler(), PCAWhitener(n_components=2))
    with pytest.raises(NotFittedError, match="step 'pcawhitener'"):
        save_pipeline(pipe, tmp_path / "m.zip")
    with pytest.raises(NotFittedError, match="PCAWhitener"):
        save_pipeline(PCAWhitener(), tmp_path / "w")
    assert list(tmp_path.iterdir()) == []


def test_unsupported_values_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((10, 5))
    pipe = make_pipeline(PCAWhitener(n_components=2, random_state=np.random.RandomState(0)),
                         NearestNeighborRetriever()).fit(X)
    with pytest.raises(TypeError, match="step 'pcawhitener'.*'random_state'.*RandomState"):
        save_pipeline(pipe, tmp_path / "m")

    retriever = NearestNeighborRetriever().fit(X, np.array(["a", "b"] * 5))
    retriever.y_ = retriever.y_.astype(object)
    retriever.y_[0] = 1.5
    with pytest.raises(ValueError, match="'y_'.*float, str"):
        save_pipeline(retriever, tmp_path / "m")

    class MyWhitener(PCAWhitener):
        pass

    with pytest.raises(TypeError, match="not supported"):
        save_pipeline(make_pipeline(MyWhitener(n_components=2)).fit(X), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_overwrite(fitted, tmp_path):
    pipe = fitted[0]
    for name in ("m", "m.zip"):
        save_pipeline(pipe, tmp_path / name)
        with pytest.raises(FileExistsError):
            save_pipeline(pipe, tmp_path / name)
        save_pipeline(pipe, tmp_path / name, overwrite=True)
        load_pipeline(tmp_path / name)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved model"):
        save_pipeline(pipe, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    save_pipeline(pipe, empty)
    assert (empty / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "m", "m.zip", "other"]


# ---------------------------------------------------------------------------
# tampered files (issue 13): declared state, locations, checksums, bounds
# ---------------------------------------------------------------------------
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


def test_tampered_store_path_is_refused_and_the_victim_file_is_untouched(tmp_path):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious data, not descriptors\n" * 64)
    before = victim.read_bytes()
    _, X, y = _retriever_model(tmp_path)
    model = tmp_path / "r"
    original = _manifest(model)
    for edit, match in [
        ({"_store_path": str(victim), "_store_dtype": "float32", "X_fit_": None},
         "attribute '_store_path' is never stored"),
        ({"_store_path": str(victim)}, "attribute '_store_path' is never stored"),
        ({"X_fit_": None}, "attribute 'X_fit_': expected an array .* got None"),
    ]:
        manifest = json.loads(json.dumps(original))
        manifest["estimator"]["attributes"].update(edit)
        _write_manifest(model, manifest)
        with pytest.raises(ModelFormatError, match=match):
            load_pipeline(model)
    # nor is the store *parameter* taken from the file: whatever is done with
    # the loaded retriever, the file it names is never opened or written
    manifest = json.loads(json.dumps(original))
    manifest["estimator"]["params"]["store"] = str(victim)
    _write_manifest(model, manifest)
    loaded = _strict_load(model)
    assert loaded.store is None and loaded._store_path is None
    loaded.partial_fit(X[:3], y[:3], ids=[100, 101, 102])
    loaded.remove([0, 100])
    assert loaded.n_samples_fit_ == 17
    loaded.fit(X, y)
    loaded.partial_fit(X[:2], y[:2])
    assert victim.read_bytes() == before
    assert "_store_path" not in original["estimator"]["attributes"]  # never stored


@pytest.mark.parametrize("step, attr", [
    ("retriever", "foo_"), ("retriever", "_secret"), ("pca", "bogus_"), ("pca", "_private"),
])
def test_undeclared_attribute_is_refused(fitted, tmp_path, step, attr):
    save_pipeline(fitted[0], tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    steps = manifest["estimator"]["steps"]
    if step == "retriever":
        node = steps[3]["estimator"]
        where = "step 'nearestneighborretriever'"
    else:  # a fitted sklearn PCA inside the whitener: its attributes are declared too
        node = steps[2]["estimator"]["attributes"]["pca_"]["__estimator__"]
        where = r"step 'pcawhitener'.*attribute 'pca_' \(sklearn.decomposition.PCA\)"
    node["attributes"][attr] = 1
    _write_manifest(tmp_path / "m", manifest)
    with pytest.raises(ModelFormatError, match=rf"{where}.*invalid attribute name '{attr}'"):
        load_pipeline(tmp_path / "m")


def test_save_refuses_undeclared_or_misshapen_state(tmp_path):
    X = np.random.default_rng(0).random((10, 5))
    retriever = NearestNeighborRetriever().fit(X)
    retriever.extra_ = 1
    with pytest.raises(TypeError,
                       match="'extra_' is not declared in NearestNeighborRetriever._state_spec"):
        save_pipeline(retriever, tmp_path / "a")
    del retriever.extra_
    retriever.X_fit_ = retriever.X_fit_[:-1]
    with pytest.raises(ValueError, match=r"'X_fit_': expected .* shape \(n_samples_fit_=10, "
                                         r"n_features_in_=5\), got shape \(9, 5\)"):
        save_pipeline(retriever, tmp_path / "a.zip")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["m", "m.zip"])
def test_edited_manifest_fails_its_checksum(fitted, tmp_path, name):
    save_pipeline(fitted[0], tmp_path / name)
    if name == "m":
        path = tmp_path / "m" / "manifest.json"
        data = path.read_bytes()
        edited = data.replace(b'"n_neighbors": 5', b'"n_neighbors": 6')
        assert edited != data
        path.write_bytes(edited)
    else:
        with zipfile.ZipFile(tmp_path / name) as src, \
                zipfile.ZipFile(tmp_path / "edited.zip", "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "manifest.json":
                    data = data.replace(b'"n_neighbors": 5', b'"n_neighbors": 6')
                dst.writestr(info, data)
        os.replace(tmp_path / "edited.zip", tmp_path / name)
    with pytest.raises(ModelFormatError,
                       match="manifest.json .* does not match its checksum in manifest.sha256"):
        load_pipeline(tmp_path / name)
    if name == "m":  # removing the checksum does not help: version 2 has one
        (tmp_path / "m" / "manifest.sha256").unlink()
        with pytest.raises(ModelFormatError, match="has no manifest.sha256"):
            load_pipeline(tmp_path / "m")


def _drop_row(a):
    return a[:-1]


@pytest.mark.parametrize("step, key, edit, match", [
    (3, "X_fit_", _drop_row,
     r"'X_fit_': expected an array of dtype float32 or float16 and shape "
     r"\(n_samples_fit_=12, n_features_in_=4\), got shape \(11, 4\)"),
    (3, "X_fit_", lambda a: a.astype(np.float64), "'X_fit_': expected .* got an array of dtype "
                                                  "float64"),
    (3, "X_fit_", lambda a: a.astype(str), "'X_fit_': expected .* got an array of dtype <U"),
    (3, "ids_", _drop_row, r"'ids_': expected .* shape \(n_samples_fit_=12,\), got shape"),
    (3, "_keys", lambda a: a.reshape(3, 4), "'_keys': expected .* got shape"),
    (3, "_y_codes", lambda a: np.where(np.arange(a.size) == 0, 99, a),
     r"'_y_codes': expected values in \[0, _classes-1=3\], got values in \[0, 99\]"),
    (3, "_class_counts", _drop_row, r"'_class_counts': expected .* shape \(_classes=4,\)"),
    (2, "components_", lambda a: a.T, r"step 'pcawhitener'.*'components_': expected .*"
                                      r"\(n_components_=4, n_features_in_=512\)"),
    (2, "scale_", lambda a: a.astype(str), "step 'pcawhitener'.*'scale_': expected an array "
                                           "of dtype float"),
])
def test_inconsistent_arrays_are_refused(fitted, tmp_path, step, key, edit, match):
    save_pipeline(fitted[0], tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    node = manifest["estimator"]["steps"][step]["estimator"]
    with np.load(tmp_path / "m" / node["arrays"], allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[key] = edit(arrays[key])
    _rewrite_npz(tmp_path / "m", manifest, node["arrays"], arrays)  # valid checksums
    _write_manifest(tmp_path / "m", manifest)
    with pytest.raises(ModelFormatError, match=match):
        load_pipeline(tmp_path / "m")


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.update(n_samples_fit_=13), r"expected .* shape \(n_samples_fit_=13,?"),
    (lambda a: a.update(n_samples_fit_="12"), "'n_samples_fit_': expected an int, got str"),
    (lambda a: a.update(n_features_in_=5), r"'X_fit_': expected .*n_features_in_=5\)"),
    (lambda a: a.update(_index_kind="pickle"), "'_index_kind': expected one of"),
    (lambda a: a.pop("ids_"), "'ids_': expected the attribute .*stored together with"),
    (lambda a: a.pop("n_samples_fit_"), "'n_samples_fit_': expected the attribute"),
    (lambda a: a.update(_index_seed="x"), "'_index_seed': expected an int, got str"),
])
def test_inconsistent_scalars_are_refused(fitted, tmp_path, edit, match):
    save_pipeline(fitted[0], tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    edit(manifest["estimator"]["steps"][3]["estimator"]["attributes"])
    _write_manifest(tmp_path / "m", manifest)
    with pytest.raises(ModelFormatError, match=r"step 'nearestneighborretriever'.*" + match):
        load_pipeline(tmp_path / "m")


def _npy_bytes(arr):
    out = io.BytesIO()
    np.lib.format.write_array(out, arr, allow_pickle=False)
    return out.getvalue()


def _zeros_member(zf, name, shape, compress):
    """Write a member ``name`` of zeros of ``shape`` (float32), streamed."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zf.open(zipfile.ZipInfo(name) if not compress else name, "w",
                 force_zip64=True) as member:
        member.write(header.getvalue())
        block = bytes(1 << 20)
        for _ in range(int(np.prod(shape)) * 4 >> 20):
            member.write(block)


def _bounded_load(path, **kwargs):
    """Load ``path`` expecting a refusal; the time it took and its peak memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelFormatError) as info:
            load_pipeline(path, **kwargs)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return info.value, elapsed, peak


def test_zip_bombs_are_refused_quickly_with_bounded_memory(tmp_path):
    _retriever_model(tmp_path)
    model = tmp_path / "r"
    manifest = _manifest(model)
    name = manifest["estimator"]["arrays"]
    with np.load(model / name, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    # X_fit_ as 32 MiB of zeros deflated to ~32 KiB (the other arrays as saved)
    with zipfile.ZipFile(model / name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            if key != "X_fit_":
                zf.writestr(key + ".npy", _npy_bytes(arr))
        _zeros_member(zf, "X_fit_.npy", (2**21, 4), compress=True)
    assert (model / name).stat().st_size < 2**20
    data = (model / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_manifest(model, manifest)
    error, elapsed, peak = _bounded_load(model)
    assert "X_fit_.npy" in str(error) and "zip bomb" in str(error)
    assert elapsed < 5 and peak < 8 * 2**20
    # the same inside a .zip model
    shutil.make_archive(str(tmp_path / "bomb"), "zip", model)
    error, elapsed, peak = _bounded_load(tmp_path / "bomb.zip")
    assert "zip bomb" in str(error) and elapsed < 5 and peak < 8 * 2**20

    # an uncompressed member whose header lies about its shape: nothing allocated
    with zipfile.ZipFile(model / name, "w") as zf:
        for key, arr in arrays.items():
            zf.writestr(key + ".npy", _npy_bytes(arr)[:-16] if key == "X_fit_" else
                        _npy_bytes(arr))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
        zf.writestr("big.npy", header.getvalue() + bytes(64))
    data = (model / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_manifest(model, manifest)
    error, elapsed, peak = _bounded_load(model)
    assert "declares shape" in str(error) and peak < 8 * 2**20

    # a .zip model whose .npz (stored zeros inside) is deflated in the outer archive
    _retriever_model(tmp_path, "plain")
    plain = tmp_path / "plain"
    manifest = _manifest(plain)
    with zipfile.ZipFile(plain / name, "w") as zf:
        for key, arr in arrays.items():
            if key != "X_fit_":
                zf.writestr(key + ".npy", _npy_bytes(arr))
        _zeros_member(zf, "X_fit_.npy", (2**21, 4), compress=False)
    data = (plain / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_manifest(plain, manifest)
    with zipfile.ZipFile(tmp_path / "outer.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(plain.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(plain).as_posix())
    error, elapsed, peak = _bounded_load(tmp_path / "outer.zip")
    assert "outer.zip" in str(error) and "zip bomb" in str(error)
    assert elapsed < 5 and peak < 8 * 2**20


def test_max_bytes_bounds_what_is_read(fitted, tmp_path):
    pipe, _, _, queries = fitted
    save_pipeline(pipe, tmp_path / "m.zip")
    with pytest.raises(ModelFormatError, match="exceed max_bytes=100000.*larger max_bytes"):
        load_pipeline(tmp_path / "m.zip", max_bytes=100_000)
    loaded = _strict_load(tmp_path / "m.zip", max_bytes=200 * 2**20)
    _assert_same_rankings(_rankings(pipe, queries), _rankings(loaded, queries))
    with pytest.raises(ValueError, match="max_bytes"):
        load_pipeline(tmp_path / "m.zip", max_bytes=-1)


def test_a_recompressed_zip_still_loads(fitted, tmp_path):
    # e.g. a model folder zipped by hand: deflated, but not a bomb
    pipe, _, _, queries = fitted
    save_pipeline(pipe, tmp_path / "m")
    shutil.make_archive(str(tmp_path / "again"), "zip", tmp_path / "m")
    loaded = _strict_load(tmp_path / "again.zip")
    _assert_same_rankings(_rankings(pipe, queries), _rankings(loaded, queries))


def test_locations_are_not_taken_from_the_model_file(tmp_path):
    images, labels = _images(6, seed=0), np.array(["a", "b", "c"] * 2)
    db = tmp_path / "db.f32"
    pipe = make_pipeline(_extractor(), GeMPooler(),
                         NearestNeighborRetriever(n_neighbors=3, store=db))
    pipe.fit(images, labels)
    stored, expected = db.read_bytes(), pipe.predict(images[:2])
    pipe.set_params(memory=str(tmp_path / "memory"),
                    convfeatureextractor__cache=str(tmp_path / "cache"),
                    convfeatureextractor__store=str(tmp_path / "maps"))
    save_pipeline(pipe, tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    assert manifest["estimator"]["params"]["memory"] == str(tmp_path / "memory")  # written
    steps = manifest["estimator"]["steps"]
    assert steps[0]["estimator"]["params"]["cache"] == str(tmp_path / "cache")

    loaded = _strict_load(tmp_path / "m")
    assert loaded.memory is None
    assert loaded[0].cache is None and loaded[0].store == "memory"
    assert loaded[-1].store is None and not isinstance(loaded[-1].X_fit_, np.memmap)
    np.testing.assert_array_equal(loaded.predict(images[:2]), expected)
    loaded[-1].partial_fit(loaded[:-1].transform(images[:2]), labels[:2])
    loaded[-1].remove([0])
    assert db.read_bytes() == stored
    assert not any((tmp_path / d).exists() for d in ("cache", "maps", "memory"))

    # given at load time, they are used
    again = _strict_load(tmp_path / "m", params={
        "memory": str(tmp_path / "memory"),
        "convfeatureextractor__cache": str(tmp_path / "cache"),
        "nearestneighborretriever__store": tmp_path / "new.f32"})
    assert again.memory == str(tmp_path / "memory")
    assert again[0].cache == str(tmp_path / "cache")
    again[-1].fit(again[:-1].transform(images), labels)
    assert (tmp_path / "new.f32").is_file() and (tmp_path / "cache").is_dir()
    with pytest.raises(ValueError, match="Invalid parameter"):
        load_pipeline(tmp_path / "m", params={"convfeatureextractor__nope": 1})

    # weights: a torchvision name is kept, a file is not (with a warning)
    for weights, kept in [("IMAGENET1K_V1", True), ({"__path__": "/etc/passwd"}, False),
                          ("../weights.pth", False)]:
        steps[0]["estimator"]["params"]["weights"] = weights
        _write_manifest(tmp_path / "m", manifest)
        if kept:
            assert _strict_load(tmp_path / "m")[0].weights == weights
        else:
            with pytest.warns(UserWarning, match="'weights' to a location.*refitting it "
                              "would start from random weights.*convfeatureextractor__weights"):
                assert load_pipeline(tmp_path / "m")[0].weights is None


def test_locations_of_nested_estimators_are_not_restored(tmp_path):
    X = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    qe = QueryExpansionRetriever(NearestNeighborRetriever(store=tmp_path / "db.f32"),
                                 qe_k=2).fit(X)
    save_pipeline(qe, tmp_path / "m")
    loaded = _strict_load(tmp_path / "m")
    assert loaded.retriever.store is None and loaded.retriever_.store is None
    _assert_same_rankings(qe.kneighbors(X[:3]), loaded.kneighbors(X[:3]))
    given = _strict_load(tmp_path / "m", params={"retriever__store": tmp_path / "x.f32"})
    assert given.retriever.store == tmp_path / "x.f32"


def test_every_supported_class_declares_its_state():
    from skretrieval.persistence._checks import declaration_problems
    from skretrieval.persistence._registry import SKLEARN_STATE, state_spec

    assert declaration_problems() == []
    for cls in SUPPORTED_CLASSES.values():
        spec = state_spec(cls)
        assert (cls in SKLEARN_STATE) != (cls.__module__.startswith("skretrieval"))
        assert spec is (SKLEARN_STATE.get(cls) or cls._state_spec)
    spec = NearestNeighborRetriever._state_spec
    assert spec.attributes["fingerprints_"].optional and spec.attributes["fingerprints_"].none
    assert set(spec.transient) >= {"_index", "_store_path", "_store_dtype"}
    assert set(spec.paths) == {"store"}
    assert set(ConvFeatureExtractor._state_spec.paths) == {"weights", "store", "cache"}


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
