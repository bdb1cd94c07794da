"""The HTTP service of skretrieval.serve over a tiny real index (TestClient)."""

import io
import os
import shutil
import struct
import threading
import time
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from _helpers import assert_error, upload, write_image  # noqa: E402
from skretrieval.serve import create_app, load_model  # noqa: E402

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def model(served_index):
    path, _, _ = served_index
    return load_model(path)


@pytest.fixture(scope="module")
def client(served_index, model):
    _, root, _ = served_index
    app = create_app(model, images_root=root, allow_paths=True, max_k=20)
    with TestClient(app) as c:
        yield c


def image_bytes(root, name):
    return (root / name).read_bytes()


def huge_png(width, height):
    """A tiny PNG file whose header claims ``width x height`` pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------
# health, page, happy paths
# ---------------------------------------------------------------------------
def test_health(client, served_index):
    from skretrieval import __version__

    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model_loaded"] is True
    assert body["n_images"] == len(served_index[2])
    assert body["dimension"] == 64  # resnet18 layer1
    assert body["version"] == __version__
    assert body["indexing"] is False and body["path_queries"] is True


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'data-testid="results"' in page.text and "/static/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert_error(client.get("/static/..%2F_app.py"), 404)
    assert_error(client.get("/static/nothing.js"), 404)


@pytest.mark.parametrize("name", ["img2.jpg", "sub/deep.png"])
def test_upload_finds_the_image_itself(client, served_index, name):
    _, root, names = served_index
    r = upload(client, image_bytes(root, name), name=os.path.basename(name), k=4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 4 and body["box"] is None and body["n_images"] == len(names)
    hits = body["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert hits[0]["id"] == name and hits[0]["name"] == name
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h["score"] == pytest.approx(1 - h["distance"], abs=2e-6) for h in hits)
    assert hits[0]["thumbnail"] == f"/images/{name}"


def test_default_k_and_k_larger_than_the_index(client, served_index):
    _, root, names = served_index
    r = upload(client, image_bytes(root, "img0.jpg"))
    assert r.json()["k"] == 10 and len(r.json()["results"]) == len(names)


def test_thumbnail(client, served_index):
    from PIL import Image

    _, root, _ = served_index
    r = client.get("/images/sub/deep.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG" and im.size == (96, 72)  # never enlarged

    big = root.parent / "big-root"
    big.mkdir(exist_ok=True)
    write_image(big / "img0.jpg", seed=0, size=(1000, 500))
    app = create_app(client.app.state.model.pipeline, images_root=big)
    with TestClient(app) as c:
        im = Image.open(io.BytesIO(c.get("/images/img0.jpg").content))
        assert im.size == (256, 128)  # the longest side is 256


def test_json_path_query(client):
    r = client.post("/search", json={"path": "img3.jpg", "k": 2})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == "img3.jpg"


def test_box_is_applied_at_full_resolution(client, served_index, model):
    from skretrieval import Crop

    _, root, _ = served_index
    data = image_bytes(root, "img1.jpg")
    r = upload(client, data, k=6, box="10,5,60,50")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["box"] == [10, 5, 60, 50]
    # the same ranking as the library's Crop of the file
    Xq = model[:-1].transform([Crop(str(root / "img1.jpg"), box=(10, 5, 60, 50))])
    dist, ind = model[-1].kneighbors(Xq, n_neighbors=6)
    assert [h["id"] for h in body["results"]] == list(model[-1].ids_[ind[0]])
    assert [h["distance"] for h in body["results"]] == pytest.approx(dist[0], abs=1e-5)
    whole = upload(client, data, k=6).json()["results"]
    assert [h["score"] for h in whole] != [h["score"] for h in body["results"]]
    # the box as a JSON list, and a box reaching past the image (clipped)
    r2 = client.post("/search", json={"path": "img1.jpg", "k": 6, "box": [10, 5, 60, 50]})
    assert [h["id"] for h in r2.json()["results"]] == [h["id"] for h in body["results"]]
    assert upload(client, data, box="-5,-5,500,500").status_code == 200


# ---------------------------------------------------------------------------
# bad input: never a 500
# ---------------------------------------------------------------------------
def test_no_file(client):
    assert_error(client.post("/search", data={"k": "3"},
                             files={"other": ("x.txt", b"x", "text/plain")}), 400, "image")
    assert_error(client.post("/search", json={"k": 3}), 400, "path")
    assert_error(client.post("/search", content=b"raw", headers={"content-type":
                                                                 "image/jpeg"}), 415)
    assert_error(client.post("/search", content=b"{not json",
                             headers={"content-type": "application/json"}), 400, "JSON")
    assert_error(client.post("/search", content=b"--x\r\nbroken",
                             headers={"content-type": "multipart/form-data; boundary=x"}),
                 400)


def test_not_an_image_empty_and_truncated(client, served_index):
    _, root, _ = served_index
    assert_error(upload(client, b"GIF89a this is not really an image"), 422, "image")
    assert_error(upload(client, b"hello world", name="notes.txt"), 422, "not an image")
    assert_error(upload(client, b""), 422, "empty")
    data = image_bytes(root, "img0.jpg")
    assert_error(upload(client, data[: len(data) // 2]), 422, "truncated")
    damaged = bytearray(data)  # header intact, entropy-coded data overwritten
    damaged[len(data) // 2: len(data) // 2 + 40] = b"\x00" * 40
    assert_error(upload(client, bytes(damaged)), 422)


def test_upload_too_large(served_index, model):
    _, root, _ = served_index
    app = create_app(model, images_root=root, max_upload_bytes=4000)
    with TestClient(app) as c:
        data = image_bytes(root, "img0.jpg") + b"\0" * 5000
        assert_error(upload(c, data), 413, "larger than the limit")

        def chunks():  # no Content-Length: counted while received
            yield (b'--x\r\nContent-Disposition: form-data; name="image"; '
                   b'filename="q.jpg"\r\nContent-Type: image/jpeg\r\n\r\n')
            for _ in range(10):
                yield b"x" * 1000
        r = c.post("/search", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=x"})
        assert_error(r, 413)


def test_too_many_pixels(served_index, model):
    _, root, _ = served_index
    app = create_app(model, images_root=root, max_pixels=100_000)
    with TestClient(app) as c:
        # a real 400 x 300 image, over the 100k limit
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (400, 300), "red").save(buf, format="PNG")
        assert_error(upload(c, buf.getvalue(), name="red.png"), 413, "120000 pixels")
    # a decompression bomb: a 100-byte file claiming 50000 x 50000 pixels is
    # refused from its header, before anything is decoded
    bomb = huge_png(50_000, 50_000)
    assert len(bomb) < 200
    with TestClient(create_app(model)) as c:
        assert_error(upload(c, bomb, name="bomb.png"), 413, "pixels")
        assert_error(upload(c, huge_png(9000, 9000), name="b.png"), 413, "pixels")


@pytest.mark.parametrize("k", ["0", "-1", "21", "abc", "1.5", "1e3", "99999999999"])
def test_bad_k(client, served_index, k):
    _, root, _ = served_index
    assert_error(upload(client, image_bytes(root, "img0.jpg"), k=k), 422, "k must be")


@pytest.mark.parametrize("k", [0, 21, "x", 2.5, True, None, [3]])
def test_bad_k_json(client, k):
    if k is None:
        assert client.post("/search", json={"path": "img0.jpg", "k": k}).status_code == 200
        return
    assert_error(client.post("/search", json={"path": "img0.jpg", "k": k}), 422, "k must")


@pytest.mark.parametrize("box", ["1,2,3", "a,b,c,d", "10,10,5,20", "10,10,20,10",
                                 "nan,0,10,10", "0,0,inf,10", "1,2,3,4,5",
                                 "500,500,600,600", "-20,-20,-10,-10"])
def test_bad_box(client, served_index, box):
    _, root, _ = served_index
    assert_error(upload(client, image_bytes(root, "img0.jpg"), box=box), 422, "box")


def test_bad_box_json(client):
    for box in ([1, 2, 3], {"x1": 1}, [0, 0, "a", 3], [True, 0, 5, 5]):
        assert_error(client.post("/search", json={"path": "img0.jpg", "box": box}), 422)


# ---------------------------------------------------------------------------
# path confinement
# ---------------------------------------------------------------------------
def test_path_queries_confined(client, served_index, model):
    _, root, _ = served_index
    outside = root.parent / "outside.jpg"
    write_image(outside, seed=9)
    for p in ("../outside.jpg", str(outside), "sub/../../outside.jpg", "/etc/passwd"):
        assert_error(client.post("/search", json={"path": p}), 403, "outside")
    assert_error(client.post("/search", json={"path": "missing.jpg"}), 404)
    assert_error(client.post("/search", json={"path": "sub"}), 404)
    assert_error(client.post("/search", json={"path": ["img0.jpg"]}), 422)
    # disabled by default, and without an images root
    with TestClient(create_app(model, images_root=root)) as c:
        assert_error(c.post("/search", json={"path": "img0.jpg"}), 403, "disabled")
    with TestClient(create_app(model, allow_paths=True)) as c:
        assert_error(c.post("/search", json={"path": "img0.jpg"}), 404)


def test_images_confined(client, served_index, model, tmp_path):
    _, root, _ = served_index
    for url in ("/images/..%2F..%2F..%2Fetc%2Fpasswd", "/images/%2Fetc%2Fpasswd",
                "/images//etc/passwd", "/images/nope.jpg", "/images/sub",
                "/images/img0.jpg%00", "/images/IMG0.JPG"):
        assert_error(client.get(url), 404)
    # a symlink in the root pointing outside it
    root2 = tmp_path / "root"
    shutil.copytree(root, root2)
    secret = tmp_path / "secret.jpg"
    write_image(secret, seed=7)
    os.remove(root2 / "img0.jpg")
    os.symlink(secret, root2 / "img0.jpg")
    os.symlink(tmp_path, root2 / "sub" / "escape")
    with TestClient(create_app(model, images_root=root2)) as c:
        assert_error(c.get("/images/img0.jpg"), 403, "outside")
        assert c.get("/images/img1.jpg").status_code == 200
        os.remove(root2 / "img1.jpg")
        assert_error(c.get("/images/img1.jpg"), 404, "missing")
    # an index whose names leave the root (a hostile model file)
    hostile = load_model(served_index[0])
    names = np.asarray(hostile[-1].y_).astype(object)
    names[0], names[1] = "../secret.jpg", str(secret)
    hostile[-1].y_ = names
    with TestClient(create_app(hostile, images_root=root2)) as c:
        assert_error(c.get("/images/img0.jpg"), 403)
        assert_error(c.get("/images/img1.jpg"), 403)
    # no images root: no thumbnails
    with TestClient(create_app(model)) as c:
        r = upload(c, image_bytes(root, "img2.jpg"))
        assert r.json()["results"][0]["thumbnail"] is None
        assert_error(c.get("/images/img2.jpg"), 404)


# ---------------------------------------------------------------------------
# POST /index
# ---------------------------------------------------------------------------
@pytest.fixture
def writable(served_index, tmp_path):
    """A fresh model and a copy of the images root (POST /index changes them)."""
    path, root, _ = served_index
    root2 = tmp_path / "root"
    shutil.copytree(root, root2)
    return load_model(path), root2


def post_files(c, files, token=None, **data):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return c.post("/index", files=[("files", f) for f in files], data=data, headers=headers)


def test_index_disabled_without_token(writable):
    m, root = writable
    with TestClient(create_app(m, images_root=root)) as c:
        new = ("new.jpg", write_image(io.BytesIO(), 11).getvalue(), "image/jpeg")
        assert_error(post_files(c, [new], token="anything"), 403, "disabled")
        assert_error(post_files(c, [new]), 403, "disabled")


def test_index_auth(writable):
    m, root = writable
    n = m[-1].n_samples_fit_
    with TestClient(create_app(m, images_root=root, token=TOKEN)) as c:
        new = ("new.jpg", write_image(io.BytesIO(), 11).getvalue(), "image/jpeg")
        r = post_files(c, [new])
        assert_error(r, 401, "Bearer")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(post_files(c, [new], token="wrong-token-value"), 403, "wrong token")
        assert_error(c.post("/index", files=[("files", new)],
                            headers={"Authorization": f"Basic {TOKEN}"}), 401)
        assert m[-1].n_samples_fit_ == n and not (root / "uploads").exists()
        assert c.get("/health").json()["indexing"] is True


def test_index_upload_then_search(writable):
    m, root = writable
    n = m[-1].n_samples_fit_
    data = write_image(io.BytesIO(), 11).getvalue()
    with TestClient(create_app(m, images_root=root, token=TOKEN)) as c:
        r = post_files(c, [("new one.jpg", data, "image/jpeg"),
                           ("../../evil.jpg", write_image(io.BytesIO(), 12).getvalue(),
                            "image/jpeg")], token=TOKEN)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["added"] == ["uploads/new_one.jpg", "uploads/evil.jpg"]
        assert body["n_images"] == n + 2
        assert (root / "uploads" / "new_one.jpg").read_bytes() == data
        assert not (root.parent / "evil.jpg").exists()
        hits = upload(c, data).json()["results"]
        assert hits[0]["id"] == "uploads/new_one.jpg"
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert c.get(hits[0]["thumbnail"]).status_code == 200
        assert c.get("/health").json()["n_images"] == n + 2
        # the same name again: refused, nothing changed
        assert_error(post_files(c, [("new one.jpg", data, "image/jpeg")], token=TOKEN), 409)
        # a bad image: refused, no file left behind
        assert_error(post_files(c, [("bad.jpg", b"not an image", "image/jpeg")],
                                token=TOKEN), 422, "bad.jpg")
        assert sorted(os.listdir(root / "uploads")) == ["evil.jpg", "new_one.jpg"]
        assert_error(post_files(c, [("x.jpg", data, "image/jpeg")], token=TOKEN,
                                folder="../up"), 422, "folder")
        assert c.get("/health").json()["n_images"] == n + 2


def test_index_paths(writable):
    m, root = writable
    n = m[-1].n_samples_fit_
    write_image(root / "sub" / "later.jpg", seed=21)
    with TestClient(create_app(m, images_root=root, token=TOKEN)) as c:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        r = c.post("/index", json={"paths": ["sub/later.jpg", "img0.jpg"]}, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"added": ["sub/later.jpg"], "replaced": [],
                            "unchanged": ["img0.jpg"], "n_images": n + 1}
        assert_error(c.post("/index", json={"paths": ["../outside.jpg"]}, headers=headers),
                     403)
        assert_error(c.post("/index", json={"paths": []}, headers=headers), 400)
        assert_error(c.post("/index", json={"paths": ["nope.jpg"]}, headers=headers), 404)
        r = c.post("/search", files={"image": ("q.jpg", (root / "sub" / "later.jpg")
                                               .read_bytes(), "image/jpeg")})
        assert r.json()["results"][0]["id"] == "sub/later.jpg"


# ---------------------------------------------------------------------------
# errors, time limits and the shared model
# ---------------------------------------------------------------------------
class _Patched:
    """Wrap the first step's transform of a fresh model."""

    def __init__(self, served_index, wrapper):
        self.model = load_model(served_index[0])
        step = self.model[0]
        original = step.transform
        step.transform = lambda X: wrapper(original, X)


def test_unexpected_error_is_a_json_500(served_index, caplog):
    def boom(original, X):
        raise RuntimeError("secret internals")

    app = create_app(_Patched(served_index, boom).model)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = upload(c, image_bytes(served_index[1], "img0.jpg"))
    assert_error(r, 500, "internal server error")
    assert "secret" not in r.text
    assert "secret internals" in caplog.text  # logged, with its traceback


def test_request_timeout(served_index):
    def slow(original, X):
        time.sleep(2.5)
        return original(X)

    app = create_app(_Patched(served_index, slow).model, request_timeout=0.5)
    with TestClient(app) as c:
        t0 = time.perf_counter()
        assert_error(upload(c, image_bytes(served_index[1], "img0.jpg")), 504)
        assert time.perf_counter() - t0 < 2.0  # the search alone takes 2.5 s
        time.sleep(2.2)  # the abandoned worker finishes


def test_requests_are_serialised_and_the_loop_stays_free(served_index):
    active, peak, lock = [0], [0], threading.Lock()

    def tracked(original, X):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.5)
        try:
            return original(X)
        finally:
            with lock:
                active[0] -= 1

    app = create_app(_Patched(served_index, tracked).model)
    data = image_bytes(served_index[1], "img4.jpg")
    with TestClient(app) as c:
        out = []
        threads = [threading.Thread(target=lambda: out.append(upload(c, data)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        assert c.get("/health").status_code == 200  # while the model is busy
        health_seconds = time.perf_counter() - t0
        for t in threads:
            t.join()
    assert peak[0] == 1
    # a blocked loop would answer after the four searches (>= 1.8 s from
    # here); 1 s leaves room for a machine loaded by parallel test workers
    assert health_seconds < 1.0
    assert [r.status_code for r in out] == [200] * 4
    assert all(r.json()["results"][0]["id"] == "img4.jpg" for r in out)


def test_create_app_validation(model, served_index, monkeypatch):
    import sys

    from sklearn.pipeline import make_pipeline

    from skretrieval import GeMPooler

    with pytest.raises(ValueError, match="fitted retrieval pipeline"):
        create_app(make_pipeline(GeMPooler()))
    with pytest.raises(ValueError, match="not a folder"):
        create_app(model, images_root=served_index[1] / "img0.jpg")
    with pytest.raises(ValueError, match="max_k"):
        create_app(model, max_k=0)
    with pytest.raises(ValueError, match="token"):
        create_app(model, token="short")
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(ImportError, match=r"pip install skretrieval\[serve\]"):
        create_app(model)
