"""Pickle-free persistence: refused classes, attributes, values, edits and locations."""

import json
import os
import zipfile

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

from skretrieval import (
    ConvFeatureExtractor,
    GeMPooler,
    NearestNeighborRetriever,
    PCAWhitener,
    QueryExpansionRetriever,
)
from skretrieval.persistence import (
    SUPPORTED_CLASSES,
    ModelFormatError,
    VersionMismatchWarning,
    load_pipeline,
    save_pipeline,
)

from persistence_helpers import (
    _assert_same_rankings,
    _extractor,
    _images,
    _manifest,
    _pipe,
    _retriever_model,
    _rewrite_npz,
    _strict_load,
    _write_manifest,
)


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
