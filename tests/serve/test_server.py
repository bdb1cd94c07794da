"""load_model / serve / the command line of skretrieval.serve."""

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from skretrieval.serve import load_model  # noqa: E402
from skretrieval.serve._cli import TOKEN_ENV, add_serve_parser, build_parser, main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def joblib_file(served_index, tmp_path_factory):
    from skretrieval import save_index
    from skretrieval.persistence import load_pipeline

    path = tmp_path_factory.mktemp("joblib") / "index.joblib"
    save_index(load_pipeline(served_index[0]), path)
    return path


def test_joblib_refused_without_allow_pickle(joblib_file):
    with pytest.raises(ValueError, match="allow_pickle=True") as info:
        load_model(joblib_file)
    assert "--allow-pickle" in str(info.value) and "runs code" in str(info.value)
    pipe = load_model(joblib_file, allow_pickle=True)
    assert pipe[-1].n_samples_fit_ == 6


def test_cli_refuses_joblib_and_names_the_flag(joblib_file, capsys):
    assert main([str(joblib_file)]) == 2
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "Traceback" not in err


def test_load_model_formats(served_index, tmp_path):
    from skretrieval.persistence import save_pipeline

    model = load_model(served_index[0])
    folder = save_pipeline(model, tmp_path / "model")
    assert load_model(folder)[-1].n_samples_fit_ == 6
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="manifest.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="allow_pickle"):
        load_model(tmp_path / "junk.zip")
    with pytest.raises(ValueError, match="cannot load"):
        load_model(tmp_path / "junk.zip", allow_pickle=True)


def test_parser_and_token_from_environment(monkeypatch, served_index):
    import skretrieval.serve._server as server

    parser = argparse.ArgumentParser(prog="skretrieval")
    sub = parser.add_subparsers(dest="command")
    add_serve_parser(sub)
    args = parser.parse_args(["serve", "model.zip", "--port", "9000", "--max-k", "5",
                              "--allow-pickle", "--images", str(served_index[1])])
    assert args.host == "127.0.0.1" and args.port == 9000 and args.max_k == 5
    assert args.allow_pickle and args.token is None
    seen = {}
    monkeypatch.setattr(server, "serve", lambda path, **kw: seen.update(kw, path=path))
    monkeypatch.setenv(TOKEN_ENV, "token-from-env")
    assert args.func(args) == 0
    assert seen["token"] == "token-from-env" and seen["host"] == "127.0.0.1"
    assert seen["allow_pickle"] is True and seen["max_k"] == 5 and seen["path"] == "model.zip"
    args = build_parser().parse_args(["m.zip", "--token", "given-token-1"])
    args.func(args)
    assert seen["token"] == "given-token-1"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["m.zip", "--port", "70000"])
    args = build_parser().parse_args(["m.zip", "--allow-paths"])
    with pytest.raises(ValueError, match="--images"):
        args.func(args)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_m_serve_runs_on_loopback(served_index):
    path, root, _ = served_index
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(TOKEN_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "skretrieval.serve", str(path), "--port", str(port),
         "--images", str(root), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stdout.read().decode()) from None
                time.sleep(0.2)
        assert r.json()["n_images"] == 6 and r.json()["indexing"] is False
        assert "server" not in r.headers  # no version banner
        with open(root / "img3.jpg", "rb") as fh:
            r = httpx.post(f"http://127.0.0.1:{port}/search", files={"image": fh},
                           data={"k": "1"}, timeout=30)
        assert r.json()["results"][0]["id"] == "img3.jpg"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
