"""The ONNX export cache: a file that is not the export its name promises is
exported again, never run; processes exporting one network at once export it
once and all get the checked file."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from skretrieval.extraction import _engines
from skretrieval.extraction._engines import (EngineError, cached_export, engine_runner,
                                             export_onnx, manifest_path)
from skretrieval.extraction._network import clear_networks

pytest.importorskip("onnxruntime")

SAMPLE = torch.zeros(1, 3, 32, 32)


class Conv(torch.nn.Module):
    """A tiny random-weight network with one named output."""

    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3)

    def forward(self, x):
        return {"maps": self.conv(x)}


def _nets():
    torch.manual_seed(0)
    return Conv(4).eval(), Conv(5).eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKRETRIEVAL_ONNX_CACHE", str(tmp_path))
    clear_networks()
    yield tmp_path
    clear_networks()


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _check_runs_like_torch(net):
    clear_networks()  # a fresh process: the session is built from the cache
    runner = engine_runner("onnxruntime", net, sample_size=32)
    x = torch.rand(2, 3, 41, 37)
    with torch.inference_mode():
        ref = net(x)["maps"]
    torch.testing.assert_close(runner(x)["maps"], ref, rtol=1e-4, atol=1e-5)
    return runner


def test_export_writes_a_manifest_with_its_sha256(cache):
    net, _ = _nets()
    export = cached_export(net, SAMPLE)
    with open(manifest_path(export.path), encoding="utf-8") as fh:
        info = json.load(fh)
    assert info["sha256"] == _sha(export.path) == hashlib.sha256(export.data).hexdigest()
    assert info["size"] == os.path.getsize(export.path)
    assert info["outputs"] == ["maps"] and export.names == ("maps",)
    assert info["key"] == os.path.basename(export.path)[:-len(".onnx")]
    # a second call reads the checked file: no export
    mtime = os.stat(export.path).st_mtime_ns
    assert cached_export(net, SAMPLE).data == export.data
    assert os.stat(export.path).st_mtime_ns == mtime


def _other_export(path, manifest):
    """Bytes of another valid export (a network with other outputs)."""
    _, other = _nets()
    other_path, _ = export_onnx(other, SAMPLE)
    with open(other_path, "rb") as fh:
        data = fh.read()
    if manifest:  # its manifest copied too
        with open(manifest_path(other_path), encoding="utf-8") as fh:
            with open(manifest_path(path), "w", encoding="utf-8") as out:
                out.write(fh.read())
    return data


@pytest.mark.parametrize("case", ["other valid export", "other export and its manifest",
                                  "garbage", "truncated", "one byte flipped",
                                  "manifest removed", "manifest garbage"])
def test_replaced_export_is_detected_and_exported_again(cache, case):
    """Before: the file was used as found (another export made every use fail
    the torch check with an EngineError, garbage or a truncated file failed to
    load), and stayed in the cache.  Now it is exported again."""
    net, _ = _nets()
    path, _ = export_onnx(net, SAMPLE)
    with open(path, "rb") as fh:
        good = fh.read()
    bad = None
    if case.startswith("other"):
        bad = _other_export(path, manifest=case.endswith("manifest"))
    elif case == "garbage":
        bad = b"not an onnx model\n" * 50
    elif case == "truncated":
        bad = good[:len(good) // 2]
    elif case == "one byte flipped":
        i = len(good) - 10  # one byte near the end
        bad = good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1:]
    elif case == "manifest removed":
        os.remove(manifest_path(path))
    else:
        with open(manifest_path(path), "w", encoding="utf-8") as fh:
            fh.write("{not json")
    if bad is not None:
        with open(path, "wb") as fh:
            fh.write(bad)
    with pytest.warns(RuntimeWarning, match="cached ONNX export .* exporting it again"):
        runner = _check_runs_like_torch(net)
    assert runner.path == path
    with open(path, "rb") as fh:
        assert fh.read() == good  # the export is deterministic
    with open(manifest_path(path), encoding="utf-8") as fh:
        assert json.load(fh)["sha256"] == _sha(path)


def test_replaced_export_that_cannot_be_rewritten_is_an_engine_error(cache, monkeypatch):
    net, other = _nets()
    path, _ = export_onnx(net, SAMPLE)
    with open(path, "wb") as fh:
        fh.write(_other_export(path, manifest=False))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_engines, "atomic_write", refuse)
    clear_networks()
    with pytest.warns(RuntimeWarning, match="does not match"):
        with pytest.raises(EngineError, match="cannot write the ONNX export of the net"):
            engine_runner("onnxruntime", net, sample_size=32, what="the net")


CHILD = textwrap.dedent("""
    import hashlib, json, os, sys, time
    import torch
    from skretrieval.extraction import _engines

    exports = []
    real = torch.onnx.export

    def slow(*args, **kwargs):  # a long export: the other process asks meanwhile
        exports.append(1)
        time.sleep(1.0)
        return real(*args, **kwargs)

    torch.onnx.export = slow

    class Conv(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, channels, 3)

        def forward(self, x):
            return {"maps": self.conv(x)}

    torch.manual_seed(0)
    net = Conv(4).eval()
    ready, go = sys.argv[1:3]
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    runner = _engines.engine_runner("onnxruntime", net, sample_size=32)
    with open(runner.path, "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
    print(json.dumps({"exports": len(exports), "path": runner.path, "sha256": sha}))
""")


def test_processes_exporting_at_once_export_once(cache, tmp_path_factory):
    """Two processes started together on one recipe.  Before: both exported
    (the atomic rename kept the file whole).  Now: one exports, the other waits
    on the lock and loads the checked file."""
    work = tmp_path_factory.mktemp("race")
    script = work / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, SKRETRIEVAL_ONNX_CACHE=str(cache), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(work / f"ready{i}"),
                               str(work / "go")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not all((work / f"ready{i}").exists() for i in range(2)):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (work / "go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["exports"] for r in results) == [0, 1]
    (path,) = {r["path"] for r in results}
    with open(manifest_path(path), encoding="utf-8") as fh:
        sha = json.load(fh)["sha256"]
    assert {r["sha256"] for r in results} == {sha} == {_sha(path)}
    leftovers = [n for n in os.listdir(cache) if ".skretrieval-tmp-" in n]
    assert not leftovers
    net, _ = _nets()
    _check_runs_like_torch(net)
