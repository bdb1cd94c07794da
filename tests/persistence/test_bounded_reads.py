"""Pickle-free persistence: bounded reads (zip bombs, max_bytes)."""

import hashlib
import io
import shutil
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from skretrieval.persistence import ModelFormatError, load_pipeline, save_pipeline

from persistence_helpers import (
    _assert_same_rankings,
    _manifest,
    _rankings,
    _retriever_model,
    _strict_load,
    _write_manifest,
)


# ---------------------------------------------------------------------------
# bounded reads: zip bombs, max_bytes
# ---------------------------------------------------------------------------
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
