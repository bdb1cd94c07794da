"""skretrieval.serve probed as a hostile client would (TestClient, real files).

What ``test_app.py`` covers already (plain traversal, a symlinked file in
thumbnails, PNG bombs, truncated JPEGs, the usual bad ``k`` and boxes,
missing / wrong / Basic tokens) is not repeated here.
"""

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

TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post_files(client, files, folder=None, headers=AUTH):
    data = {} if folder is None else {"folder": folder}
    return client.post("/index", files=[("files", f) for f in files], data=data,
                       headers=headers)


def png_header(width, height):
    """A tiny PNG file whose header claims ``width x height`` pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def jpeg_header(width, height):
    """A real 16 x 16 JPEG whose frame header (SOF0) claims ``width x height``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture
def fresh(served_index, tmp_path):
    """(model, images root, outside folder): a fresh model over a copy of the
    images, next to a folder outside the root holding ``secret.jpg``."""
    path, root, _ = served_index
    root2 = tmp_path / "root"
    shutil.copytree(root, root2)
    outside = tmp_path / "outside"
    outside.mkdir()
    write_image(outside / "secret.jpg", seed=9)
    return load_model(path), root2, outside


@pytest.fixture
def client(fresh):
    model, root, _ = fresh
    app = create_app(model, images_root=root, allow_paths=True, token=TOKEN, max_k=20)
    with TestClient(app) as c:
        yield c


# ---------------------------------------------------------------------------
# path traversal and symlinks
# ---------------------------------------------------------------------------
def test_path_query_symlinks_and_odd_strings(client, fresh):
    _, root, outside = fresh
    os.symlink(outside / "secret.jpg", root / "link.jpg")
    os.symlink(outside, root / "sub" / "escape")
    os.symlink(root / "img2.jpg", root / "inside-link.jpg")
    os.mkfifo(root / "fifo.jpg")
    for p in ("link.jpg", "sub/escape/secret.jpg", "sub/escape/../escape/secret.jpg"):
        assert_error(client.post("/search", json={"path": p}), 403, "outside")
    # a link that stays inside the folder is followed
    r = client.post("/search", json={"path": "inside-link.jpg", "k": 1})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == "img2.jpg"
    assert_error(client.post("/search", json={"path": "img0.jpg\x00.png"}), 422, "path")
    assert_error(client.post("/search", json={"path": ""}), 422, "path")
    assert_error(client.post("/search", json={"path": 3}), 422, "path")
    # URL escapes in JSON are names, never decoded into '..'
    for p in ("..%2Fsecret.jpg", "%2e%2e/outside/secret.jpg", "..%252F..%252Fetc"):
        assert_error(client.post("/search", json={"path": p}), 404)
    assert_error(client.post("/search", json={"path": "a" * 5000}), 404)
    t0 = time.perf_counter()  # a FIFO is never opened (that would hang)
    assert_error(client.post("/search", json={"path": "fifo.jpg"}), 404)
    assert time.perf_counter() - t0 < 2
    # the same rules for POST /index by path
    assert_error(client.post("/index", json={"paths": ["link.jpg"]}, headers=AUTH), 403)
    assert_error(client.post("/index", json={"paths": ["sub/escape/secret.jpg"]},
                             headers=AUTH), 403)
    assert_error(client.post("/index", json={"paths": ["img0.jpg\x00"]}, headers=AUTH), 422)
    assert_error(client.post("/index", json={"paths": ["fifo.jpg"]}, headers=AUTH), 404)
    assert client.get("/health").json()["n_images"] == 6


def test_thumbnail_files_replaced_after_indexing(client, fresh):
    _, root, outside = fresh
    shutil.copy(root / "img0.jpg", outside / "deep.png")
    shutil.rmtree(root / "sub")
    os.symlink(outside, root / "sub")  # an indexed folder now points outside
    assert_error(client.get("/images/sub/deep.png"), 403, "outside")
    (root / "img1.jpg").write_bytes(png_header(50_000, 50_000))
    assert_error(client.get("/images/img1.jpg"), 413, "pixels")
    data = (root / "img2.jpg").read_bytes()
    (root / "img2.jpg").write_bytes(data[: len(data) // 2])
    assert_error(client.get("/images/img2.jpg"), 422)
    os.remove(root / "img3.jpg")
    (root / "img3.jpg").mkdir()
    assert_error(client.get("/images/img3.jpg"), 404, "not a regular file")
    os.remove(root / "img4.jpg")
    os.mkfifo(root / "img4.jpg")
    assert_error(client.get("/images/img4.jpg"), 404, "not a regular file")
    for url in ("/images/%252e%252e%252fmodel.zip", "/images/..%5C..%5Cmodel.zip",
                "/images/img0.jpg/", "/images/img0.jpg%2500"):
        assert_error(client.get(url), 404)
    assert client.get("/images/img0.jpg").status_code == 200


def test_upload_folder_symlinked_outside_and_dangling_target(client, fresh):
    _, root, outside = fresh
    data = (root / "img0.jpg").read_bytes()
    os.symlink(outside, root / "out")
    assert_error(post_files(client, [("z.jpg", data, "image/jpeg")], folder="out"),
                 403, "outside")
    (root / "up").mkdir()
    os.symlink(outside / "planted.jpg", root / "up" / "z.jpg")  # dangling
    assert_error(post_files(client, [("z.jpg", data, "image/jpeg")], folder="up"), 409)
    assert sorted(os.listdir(outside)) == ["secret.jpg"]
    assert client.get("/health").json()["n_images"] == 6


def test_upload_name_too_long(client, fresh):
    _, root, _ = fresh
    data = (root / "img0.jpg").read_bytes()
    assert_error(post_files(client, [("a" * 300 + ".jpg", data, "image/jpeg")]), 422,
                 "file name", "long")
    assert not (root / "uploads").exists() or os.listdir(root / "uploads") == []
    r = post_files(client, [("b" * 150 + ".jpg", data, "image/jpeg")])
    assert r.status_code == 200, r.text


def test_upload_folder_taken_by_a_file(client, fresh):
    _, root, _ = fresh
    (root / "notes").write_bytes(b"x")
    data = (root / "img0.jpg").read_bytes()
    assert_error(post_files(client, [("z.jpg", data, "image/jpeg")], folder="notes"), 409,
                 "not a folder")


# ---------------------------------------------------------------------------
# decompression bombs, truncated and non-image data
# ---------------------------------------------------------------------------
def test_jpeg_bombs_refused_from_the_header(client, fresh):
    _, root, _ = fresh
    for w, h in ((65_000, 65_000), (8000, 8000)):  # past Pillow's limit / the server's
        bomb = jpeg_header(w, h)
        assert len(bomb) < 1000
        assert_error(upload(client, bomb, name="bomb.jpg"), 413, "pixels")
        assert_error(post_files(client, [("bomb.jpg", bomb, "image/jpeg")]), 413, "pixels")
        (root / "bomb.jpg").write_bytes(bomb)
        assert_error(client.post("/search", json={"path": "bomb.jpg"}), 413, "pixels")
        assert_error(client.post("/index", json={"paths": ["bomb.jpg"]}, headers=AUTH),
                     413, "bomb.jpg")
    assert not (root / "uploads").exists() or os.listdir(root / "uploads") == []
    assert client.get("/health").json()["n_images"] == 6


@pytest.mark.parametrize("kind", ["truncated png", "soi only", "zero size png",
                                  "html", "png header only"])
def test_more_broken_uploads(client, fresh, kind):
    _, root, _ = fresh
    png = (root / "sub" / "deep.png").read_bytes()
    data = {"truncated png": png[: len(png) // 2], "soi only": b"\xff\xd8",
            "zero size png": png_header(0, 0),
            "html": b"<html><script>alert(1)</script></html>",
            "png header only": png[:33]}[kind]
    assert_error(upload(client, data, name="x.png"), 422)
    assert_error(post_files(client, [("x.png", data, "image/png")]), 422, "x.png")
    assert not (root / "uploads").exists() or os.listdir(root / "uploads") == []
    (root / "sub" / "broken.png").write_bytes(data)
    r = client.post("/index", json={"paths": ["img0.jpg", "sub/broken.png"]}, headers=AUTH)
    assert_error(r, 422, "sub/broken.png")
    assert_error(client.post("/search", json={"path": "sub/broken.png"}), 422)
    assert client.get("/health").json()["n_images"] == 6


# ---------------------------------------------------------------------------
# k, boxes and bodies
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b'{"path": "img0.jpg", "k": NaN}',
                                  b'{"path": "img0.jpg", "k": Infinity}',
                                  b'{"path": "img0.jpg", "k": 1e999}',
                                  b'{"path": "img0.jpg", "k": -0}',
                                  b'{"path": "img0.jpg", "k": {}}',
                                  b'{"path": "img0.jpg", "k": "\xef\xbc\x93"}'])
def test_bad_k_json_literals(client, body):
    r = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert_error(r, 422, "k must")


def test_bad_k_elsewhere(client, fresh):
    _, root, _ = fresh
    data = (root / "img0.jpg").read_bytes()
    assert_error(upload(client, data, k="\uff13"), 422, "k must")  # a full-width 3
    assert_error(upload(client, data, k="\u0663"), 422, "k must")  # an Arabic-Indic 3
    r = client.post("/search?k=0", files={"image": ("q.jpg", data, "image/jpeg")})
    assert_error(r, 422, "k must")
    r = client.post("/search?k=abc", json={"path": "img0.jpg"})
    assert_error(r, 422, "k must")


@pytest.mark.parametrize("box", [[], [None, 0, 5, 5], [[0, 0], [5, 5]], "1,2,3",
                                 [0, 0, float("nan"), 5], "\uff11,0,5,5", "1_0,0,50,50"])
def test_bad_box_json(client, box):
    if isinstance(box, list) and any(isinstance(v, float) for v in box):
        body = b'{"path": "img0.jpg", "box": [0, 0, NaN, 5]}'
        r = client.post("/search", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/search", json={"path": "img0.jpg", "box": box})
    assert_error(r, 422, "box")


def test_tiny_and_huge_boxes_are_answered(client, fresh):
    _, root, _ = fresh
    data = (root / "img0.jpg").read_bytes()
    for box in ("95.5,0,96,10", "0,0,0.5,0.5", "0,0,1e308,1e308", "-1e9,-1e9,1,1"):
        r = upload(client, data, box=box)
        assert r.status_code in (200, 422), r.text
        if r.status_code == 422:
            assert_error(r, 422, "box")
    assert_error(upload(client, data, box="96,0,100,10"), 422, "outside")


@pytest.mark.parametrize("route", ["/search", "/index"])
def test_deeply_nested_json(client, route):
    for body in (b"[" * 100_000, b'{"path": ' + b"[" * 100_000):
        r = client.post(route, content=body,
                        headers={"content-type": "application/json", **AUTH})
        assert_error(r, 400, "JSON")


def test_malformed_multipart(client, fresh):
    _, root, _ = fresh
    data = (root / "img0.jpg").read_bytes()
    r = client.post("/search", content=b"abc",
                    headers={"content-type": "multipart/form-data"})
    assert_error(r, 400, "boundary")
    r = client.post("/search", files=[("image", ("a.jpg", data, "image/jpeg")),
                                      ("image", ("b.jpg", data, "image/jpeg"))])
    assert_error(r, 400, "files")
    r = client.post("/search", files=[("image", ("a.jpg", data, "image/jpeg")),
                                      ("k", ("k.txt", b"3", "text/plain"))])
    assert_error(r, 400)
    files = [(f"f{i}.jpg", data, "image/jpeg") for i in range(65)]
    assert_error(post_files(client, files), 400, "files")
    assert not (root / "uploads").exists()


def test_index_paths_listed_twice(client, fresh):
    _, root, _ = fresh
    write_image(root / "new.jpg", seed=30)
    for paths in (["new.jpg", "./new.jpg"], ["img1.jpg", "img1.jpg"],
                  ["sub/deep.png", "sub/../sub/deep.png"]):
        r = client.post("/index", json={"paths": paths}, headers=AUTH)
        assert_error(r, 422, "twice")
    assert client.get("/health").json()["n_images"] == 6


# ---------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["", "        ", " padded-token ", "tab\tinside-token",
                                   "non-ascii-t\u00f6ken", "new\nline-token"])
def test_unusable_tokens_refused_at_start(fresh, token):
    model, root, _ = fresh
    with pytest.raises(ValueError, match="token"):
        create_app(model, images_root=root, token=token)


def test_token_variants(client, fresh, monkeypatch):
    import hmac

    _, root, _ = fresh
    compared = []
    real_compare = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    body = {"paths": ["img0.jpg"]}
    for value in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f"{TOKEN} {TOKEN}"):
        r = client.post("/index", json=body, headers={"Authorization": f"Bearer {value}"})
        assert_error(r, 403, "wrong token")
    assert [a for a, _ in compared] == [v.encode() for v in
                                        (TOKEN[:-1], TOKEN + "x", TOKEN.upper(),
                                         f"{TOKEN} {TOKEN}")]
    assert all(b == TOKEN.encode() for _, b in compared)
    r = client.post("/index", json=body, headers={"Authorization": b"Bearer \xff\xfe\xfd"})
    assert_error(r, 403, "wrong token")
    for header in ("Bearer", "Bearer    ", TOKEN, f"Token {TOKEN}", f"Bearer: {TOKEN}"):
        assert_error(client.post("/index", json=body, headers={"Authorization": header}),
                     401, "Bearer")
    assert_error(client.post(f"/index?token={TOKEN}", json=body), 401)
    assert_error(client.post("/index", json=body, headers={"X-Token": TOKEN}), 401)
    compared.clear()
    r = client.post("/index", json=body, headers={"Authorization": f"bearer  {TOKEN}"})
    assert r.status_code == 200, r.text  # the scheme is case-insensitive (RFC 7235)
    assert compared == [(TOKEN.encode(), TOKEN.encode())]


# ---------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------
def test_searches_while_indexing_see_the_old_or_the_new_index(fresh):
    """Searches racing a slow ``POST /index`` all answer 200, each from one
    whole version of the index (its size, result count and ids agree)."""
    model, root, _ = fresh
    new = [f"new/n{i}.jpg" for i in range(5)]
    for i, name in enumerate(new):
        (root / name).parent.mkdir(exist_ok=True)
        write_image(root / name, seed=40 + i)
    step = model[0]
    original = step.transform
    started = threading.Event()

    def slow_for_indexing(X):
        if len(X) > 1:  # the /index request (searches send one image)
            started.set()
            time.sleep(0.6)
        return original(X)

    step.transform = slow_for_indexing
    old_ids = set(np.asarray(model[-1].ids_).tolist())
    new_ids = old_ids | set(new)
    query = (root / "img3.jpg").read_bytes()
    app = create_app(model, images_root=root, token=TOKEN, max_k=20)
    with TestClient(app) as c:
        out, errors = [], []

        def index():
            out.append(c.post("/index", json={"paths": new}, headers=AUTH))

        def search():
            try:
                out.append(upload(c, query, k=20))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        indexer = threading.Thread(target=index)
        indexer.start()
        assert started.wait(5)
        searchers = [threading.Thread(target=search) for _ in range(4)]
        for t in searchers:
            t.start()
            time.sleep(0.05)
        thumbs = [c.get("/images/img1.jpg").status_code for _ in range(3)]
        health = [c.get("/health").json()["n_images"] for _ in range(3)]
        indexer.join()
        for t in searchers:
            t.join()
        after = upload(c, query, k=20)
    assert not errors and thumbs == [200] * 3
    assert set(health) <= {len(old_ids), len(new_ids)}
    assert [r.status_code for r in out] == [200] * 5, [r.text for r in out]
    for r in out + [after]:
        body = r.json()
        if "added" in body:
            assert sorted(body["added"]) == new
            continue
        ids = {h["id"] for h in body["results"]}
        assert body["n_images"] == len(body["results"])
        assert ids == (old_ids if body["n_images"] == len(old_ids) else new_ids)
        assert body["results"][0]["id"] == "img3.jpg"
    assert after.json()["n_images"] == len(new_ids)
