"""Hostile and damaged model / index files: bit flips, truncations, zip tricks,
misshapen items.  Every damage is real (bytes changed on disk, no mock); each
must be refused with a ``ModelFormatError`` (a ``ValueError``) naming the file,
never a crash in zipfile or numpy, never a model answering other rankings."""

import hashlib
import os
import pathlib
import shutil
import stat
import zipfile

import joblib
import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from skretrieval import NearestNeighborRetriever, PCAWhitener, load_index
from skretrieval.persistence import ModelFormatError, load_pipeline, save_pipeline

from persistence_helpers import _manifest, _rewrite_npz, _write_manifest


def _vector_model(algorithm="brute"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    kw = {} if algorithm == "brute" else {"algorithm": algorithm, "random_state": 0}
    pipe = make_pipeline(PCAWhitener(n_components=4),
                         NearestNeighborRetriever(n_neighbors=5, **kw))
    ids = np.array([f"im{i}" for i in range(40)])
    pipe.fit(X, np.arange(40) % 4, nearestneighborretriever__ids=ids,
             nearestneighborretriever__fingerprints=[f"h{i}" for i in range(40)])
    return pipe, X[:6]


def _rankings(pipe, Q):
    return pipe[-1].kneighbors(pipe[:-1].transform(Q))


def _loads_the_same_or_refuses(path, ref, Q, name):
    """Load ``path``: either a ModelFormatError naming ``name``, or the very
    rankings ``ref`` (damage to bytes that carry nothing, e.g. a zip mtime)."""
    try:
        pipe = load_pipeline(path)
        got = _rankings(pipe, Q)
    except ModelFormatError as exc:
        assert name in str(exc), exc
        return "refused"
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[0], ref[0], atol=1e-6)
    return "same"


def _offsets(n, count=24):
    """Offsets over the whole file, the first and last bytes included."""
    return sorted({0, 1, 4, 30, n // 2, n - 1, n - 22, n - 10,
                   *np.linspace(0, n - 1, count).astype(int).tolist()})


@pytest.mark.parametrize("algorithm", ["brute", "hnsw"])
def test_bit_flips_in_a_zip_model_are_refused_or_harmless(tmp_path, algorithm):
    if algorithm == "hnsw":
        pytest.importorskip("usearch")
    pipe, Q = _vector_model(algorithm)
    ref = _rankings(pipe, Q)
    data = pathlib.Path(save_pipeline(pipe, tmp_path / "m.zip")).read_bytes()
    # the offsets of every member's header and data, the central directory, the
    # HNSW graph bytes inside the retriever's .npz
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        marks = [i.header_offset + d for i in zf.infolist() for d in (0, 8, 26, 40, 200)]
    offsets = sorted({o for o in _offsets(len(data)) + marks if o < len(data)})
    if algorithm == "hnsw":
        blob_at = data.find(b"_index_blob.npy")
        assert blob_at > 0
        offsets += [blob_at + d for d in (200, 400, 800, 1600)]
    outcomes = set()
    for off in offsets:
        for bit in (0, 7):
            damaged = bytearray(data)
            damaged[off] ^= 1 << bit
            path = tmp_path / "flipped.zip"
            path.write_bytes(bytes(damaged))
            outcomes.add(_loads_the_same_or_refuses(path, ref, Q, "flipped.zip"))
    assert "refused" in outcomes


def test_bit_flips_and_truncations_in_a_model_folder_are_refused(tmp_path):
    pipe, Q = _vector_model()
    ref = _rankings(pipe, Q)
    model = pathlib.Path(save_pipeline(pipe, tmp_path / "m"))
    files = sorted(p for p in model.rglob("*") if p.is_file())
    assert len(files) >= 4
    for file in files:
        original = file.read_bytes()
        for off in _offsets(len(original), 6):
            damaged = bytearray(original)
            damaged[off] ^= 0x04
            file.write_bytes(bytes(damaged))
            outcome = _loads_the_same_or_refuses(model, ref, Q, str(model))
            # only the file name after the hash in manifest.sha256 carries nothing
            assert outcome == "refused" or file.name == "manifest.sha256", (file, off)
        for n in (0, 1, len(original) // 2, len(original) - 2):
            file.write_bytes(original[:n])
            _loads_the_same_or_refuses(model, ref, Q, str(model))
        file.write_bytes(original)
    _loads_the_same_or_refuses(model, ref, Q, str(model))


def test_truncated_zip_models_are_refused_and_never_unpickled(tmp_path):
    pipe, Q = _vector_model()
    data = pathlib.Path(save_pipeline(pipe, tmp_path / "m.zip")).read_bytes()
    for n in [0, 1, 21, 22, 100, len(data) // 3, len(data) // 2, len(data) - 22,
              len(data) - 1]:
        path = tmp_path / "cut.zip"
        path.write_bytes(data[:n])
        for load in (load_pipeline, load_index):
            with pytest.raises(ModelFormatError, match="cut.zip"):
                load(path)


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_pickle_named_zip_is_never_unpickled_by_load_index(tmp_path):
    # before: load_index fell back to joblib.load for a .zip without a manifest
    victim = tmp_path / "ran"
    joblib.dump(_Touch(victim), tmp_path / "index.zip")
    with pytest.raises(ModelFormatError, match="looks like a pickle"):
        load_index(tmp_path / "index.zip")
    assert not victim.exists()


def _rezip(src, dst, extra=(), mode=None):
    """Copy the zip ``src`` to ``dst`` with members ``extra`` ((name, data)) added;
    ``mode`` gives the last added member Unix file-type bits (a symlink...)."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            b.writestr(info, a.read(info))
        for i, (name, data) in enumerate(extra):
            info = zipfile.ZipInfo(name)
            if mode is not None and i == len(extra) - 1:
                info.external_attr = mode << 16
            b.writestr(info, data)


@pytest.mark.parametrize("name, mode, match", [
    ("../escaped.txt", None, "unsafe name"),
    ("state/../../escaped.txt", None, "unsafe name"),
    ("/tmp/absolute.txt", None, "unsafe name"),
    ("C:/windows.txt", None, "unsafe name"),
    ("state/link.npz", stat.S_IFLNK | 0o777, "symbolic link"),
    ("state/fifo", stat.S_IFIFO | 0o644, "not a plain file"),
    ("manifest.json", None, "several files of the same name"),
])
def test_zip_tricks_are_refused_and_nothing_is_written(tmp_path, name, mode, match):
    pipe, _ = _vector_model()
    save_pipeline(pipe, tmp_path / "m.zip")
    work = tmp_path / "work"
    work.mkdir()
    target = work / "evil.zip"
    data = b"/etc/passwd" if mode is not None and stat.S_ISLNK(mode) else b"{}"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        _rezip(tmp_path / "m.zip", target, [(name, data)], mode)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    cwd = os.getcwd()
    os.chdir(work)  # a relative escape would land here or above
    try:
        with pytest.raises(ModelFormatError, match=match) as info:
            load_pipeline(target)
        with pytest.raises(ModelFormatError, match=match):
            load_index(target)
    finally:
        os.chdir(cwd)
    assert "evil.zip" in str(info.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not os.path.exists("/tmp/absolute.txt") or name != "/tmp/absolute.txt"


def test_symlinks_in_a_model_folder_are_refused(tmp_path):
    pipe, _ = _vector_model()
    model = pathlib.Path(save_pipeline(pipe, tmp_path / "m"))
    npz = next((model / "state").glob("*.npz"))
    outside = tmp_path / "outside.npz"
    shutil.move(npz, outside)
    os.symlink(outside, npz)  # same bytes, same checksum: refused for being a link
    with pytest.raises(ModelFormatError, match="symbolic link"):
        load_pipeline(model)
    os.remove(npz)
    shutil.move(outside, npz)
    shutil.move(model / "state", tmp_path / "state")
    os.symlink(tmp_path / "state", model / "state")
    with pytest.raises(ModelFormatError, match="state.*symbolic link"):
        load_pipeline(model)


def _retriever_node(manifest):
    return manifest["estimator"]["steps"][1]["estimator"]


def _edit_retriever(model, edit):
    """Apply ``edit(arrays, attributes)`` to the retriever's state, checksums
    recomputed (a deliberate editor)."""
    manifest = _manifest(model)
    node = _retriever_node(manifest)
    with np.load(model / node["arrays"], allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays, node["attributes"])
    _rewrite_npz(model, manifest, node["arrays"], arrays)
    _write_manifest(model, manifest)


def _set(key, value, restore=None):
    def edit(arrays, attributes):
        arrays[key] = value
        attributes[key] = {"__array__": {"key": key, "restore": restore}}
    return edit


@pytest.mark.parametrize("edit, match", [
    (_set("ids_", np.array([f"im{i}" for i in range(39)])), r"'ids_'.*shape \(39,\)"),
    (_set("ids_", np.arange(40.0)), "'ids_'.*dtype float64"),
    (_set("ids_", np.array([f"im{i % 20}" for i in range(40)])), "repeated ids"),
    (_set("ids_", np.arange(40) % 7), "repeated ids"),
    (_set("ids_", np.arange(40), "object"), "object array of other values than strings"),
    (_set("fingerprints_", np.array([f"h{i}" for i in range(41)])),
     r"'fingerprints_'.*shape \(41,\)"),
    (_set("fingerprints_", np.arange(40)), "'fingerprints_'.*dtype int64"),
    (_set("fingerprints_", np.arange(40), "object"), "fingerprints_ must be strings"),
    (_set("fingerprints_", np.ones((40, 2), dtype="U4")), "'fingerprints_'.*shape"),
    (_set("_keys", np.arange(40)[::-1].copy()), "_keys .* not increasing"),
    (_set("_y_codes", np.roll(np.arange(40) % 4, 1)), "label codes"),
    (_set("X_fit_", np.full((40, 4), np.nan, dtype=np.float32)), "NaN or infinite"),
])
def test_misshapen_items_are_refused(tmp_path, edit, match):
    pipe, _ = _vector_model()
    model = pathlib.Path(save_pipeline(pipe, tmp_path / "m"))
    _edit_retriever(model, edit)
    with pytest.raises(ModelFormatError, match=match) as info:
        load_pipeline(model)
    assert str(model) in str(info.value)


def test_integer_ids_below_next_id_and_object_npy_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    r = NearestNeighborRetriever().fit(rng.normal(size=(10, 3)), ids=np.arange(10))
    save_pipeline(r, tmp_path / "r")
    model = tmp_path / "r"
    manifest = _manifest(model)
    manifest["estimator"]["attributes"]["_next_id"] = 5
    _write_manifest(model, manifest)
    with pytest.raises(ModelFormatError, match="_next_id=5 is not above"):
        load_pipeline(model)
    # an object array in an .npz (a pickle inside numpy's format): never read
    manifest["estimator"]["attributes"]["_next_id"] = 10
    name = manifest["estimator"]["arrays"]
    with np.load(model / name, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["ids_"] = np.array([f"x{i}" for i in range(10)], dtype=object)
    with open(model / name, "wb") as fh:
        np.savez(fh, allow_pickle=True, **arrays)
    data = (model / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(),
                               "bytes": len(data)}
    _write_manifest(model, manifest)
    with pytest.raises(ModelFormatError, match="object array, which cannot be read"):
        load_pipeline(model)


def test_a_tampered_hnsw_graph_is_refused_at_load(tmp_path):
    pytest.importorskip("usearch")
    pipe, _ = _vector_model("hnsw")
    model = pathlib.Path(save_pipeline(pipe, tmp_path / "m"))

    def flip(arrays, attributes):
        blob = arrays["_index_blob"].copy()
        blob[blob.size // 2] ^= 0x10
        arrays["_index_blob"] = blob

    _edit_retriever(model, flip)  # the file checksums match, the index's does not
    with pytest.raises(ModelFormatError, match="serialised search index is corrupted"):
        load_pipeline(model)


def test_cli_refuses_a_damaged_zip_index_and_leaves_it_as_it_was(tmp_path, capsys):
    from skretrieval.cli import main

    from _helpers import write_images

    pipe, _ = _vector_model()
    index = tmp_path / "index.zip"
    data = bytearray(pathlib.Path(save_pipeline(pipe, index)).read_bytes())
    data[len(data) // 2] ^= 0x20
    index.write_bytes(bytes(data))
    write_images(tmp_path / "photos", ["a.png"], seed=0)
    image = str(tmp_path / "photos" / "a.png")
    for args in (["index", str(tmp_path / "photos"), "-o", str(index), "--append",
                  "--device", "cpu"],
                 ["search", str(index), image]):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "index.zip" in err and "Traceback" not in err
        assert index.read_bytes() == bytes(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.zip", "index.zip.lock",
                                                         "photos"]
