"""``kill -9`` of a real ``python -m skretrieval.serve`` during ``POST /index``."""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from _helpers import write_image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOKEN = "kill-test-token-1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc, port, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(proc.stdout.read().decode()) from None
            time.sleep(0.1)


def test_kill_9_during_index_leaves_the_model_file_intact(served_index, tmp_path):
    from skretrieval import load_image
    from skretrieval.serve import create_app, load_model

    model_src, root_src, names = served_index
    model = tmp_path / "model.zip"
    shutil.copy(model_src, model)
    root = tmp_path / "images"
    shutil.copytree(root_src, root)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    uploads = [(f"n{i}.jpg", write_image(tmp_path / f"n{i}.jpg", seed=50 + i).read_bytes())
               for i in range(64)]

    port = free_port()
    env = dict(os.environ, SKRETRIEVAL_SERVE_TOKEN=TOKEN,
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "skretrieval.serve", str(model), "--port", str(port),
         "--images", str(root), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_healthy(proc, port)["n_images"] == len(names)
        outcome = []

        def index():
            try:
                outcome.append(httpx.post(
                    f"http://127.0.0.1:{port}/index", timeout=60,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    files=[("files", (n, d, "image/jpeg")) for n, d in uploads]))
            except httpx.TransportError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=index)
        thread.start()
        deadline = time.monotonic() + 30
        while not (root / "uploads").exists() and time.monotonic() < deadline:
            time.sleep(0.002)  # the server started writing the uploads: kill it now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        thread.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # killed mid-request (an answer could only come if the whole request beat the kill)
    assert isinstance(outcome[0], httpx.TransportError) or outcome[0].status_code == 200

    # the model file is the one served (POST /index never rewrites it), intact
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    # every upload under its final name is complete (written aside, then linked)
    folder = root / "uploads"
    finished = sorted(p for p in os.listdir(folder) if not p.startswith("."))
    assert all(p.startswith(".upload-") for p in os.listdir(folder) if p.startswith("."))
    for p in finished:
        assert (folder / p).read_bytes() == dict(uploads)[p]
        load_image(folder / p)
    # restart: it loads, serves every image it had, and indexing works again
    from fastapi.testclient import TestClient

    app = create_app(load_model(model), images_root=root, token=TOKEN)
    with TestClient(app) as c:
        assert c.get("/health").json()["n_images"] == len(names)
        r = c.post("/search", files={"image": ("q.jpg", (root / names[2]).read_bytes(),
                                               "image/jpeg")}, data={"k": "1"})
        assert r.json()["results"][0]["id"] == names[2]
        r = c.post("/index", headers={"Authorization": f"Bearer {TOKEN}"},
                   files=[("files", ("after.jpg", uploads[0][1], "image/jpeg"))],
                   data={"folder": "again"})
        assert r.status_code == 200, r.text
        assert r.json()["n_images"] == len(names) + 1
