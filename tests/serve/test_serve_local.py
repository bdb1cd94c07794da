"""``serve`` over an ASMK index: upload -> SIFT -> ASMK ranking, POST /index, errors.

Tiny real photos (scikit-image's, 160 px), a 16-word codebook, 200 SIFT
keypoints: the index is written by ``skretrieval index --local sift``.
"""

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
cv2 = pytest.importorskip("cv2")
data = pytest.importorskip("skimage.data")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from _helpers import assert_error, upload  # noqa: E402
from skretrieval.cli import main  # noqa: E402
from skretrieval.serve import create_app, load_model  # noqa: E402

TOKEN = "s3cret-token-for-asmk"
SIZE = 160
NAMES = ["astronaut.png", "chelsea.png", "coffee.png", "sub/rocket.png"]


def _small(img):
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    im = Image.fromarray(img[..., :3])
    im.thumbnail((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(im)


def _warped_png(img):
    h, w = img.shape[:2]
    H = np.array([[0.88, 0.1, 12], [-0.06, 0.9, 8], [3e-4, 2e-4, 1]])
    out = io.BytesIO()
    Image.fromarray(cv2.warpPerspective(img, H, (w, h), borderValue=(90, 90, 90))).save(
        out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def photos():
    return [_small(f()) for f in (data.astronaut, data.chelsea, data.coffee, data.rocket,
                                  data.camera)]


@pytest.fixture()
def asmk_index(photos, tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for name, img in zip(NAMES, photos):
        Image.fromarray(img).save(root / name)
    model = tmp_path / "asmk.zip"
    assert main(["index", str(root), "-o", str(model), "-q", "--local", "sift", "--asmk", "16",
                 "--local-features", "200", "--max-size", str(SIZE)]) == 0
    return model, root


@pytest.fixture()
def client(asmk_index):
    model, root = asmk_index
    app = create_app(load_model(model), images_root=root, token=TOKEN, allow_paths=True)
    with TestClient(app) as c:
        yield c


def test_search_an_asmk_index(client, asmk_index, photos):
    model, _ = asmk_index
    health = client.get("/health").json()
    assert health["steps"] == ["SIFTExtractor", "ASMKRetriever"]
    assert health["n_images"] == 4 and health["dimension"] == 128
    assert client.app.state.model.pipeline[0].cache is None  # no cache growing per query
    pipe = load_model(model)
    for i in (0, 3):
        r = upload(client, _warped_png(photos[i]), name="q.png", k=4)
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert hits[0]["name"] == NAMES[i] and hits[0]["id"] == NAMES[i]
        # the score is the ASMK kernel K (higher is better), the distance 1 - K
        Q = pipe[0].transform([_warped_png(photos[i])])
        K = pipe[-1].similarities(Q)[0]
        rows = [NAMES.index(h["name"]) for h in hits]
        np.testing.assert_allclose([h["score"] for h in hits], K[rows], atol=1e-6)
        np.testing.assert_allclose([h["distance"] for h in hits], 1 - K[rows], atol=1e-6)
        assert hits[0]["thumbnail"] == "/images/" + NAMES[i]
    # a box cuts the query before SIFT runs; a path query inside the images root
    r = upload(client, _warped_png(photos[1]), name="q.png", k=1, box="0,0,150,120")
    assert r.status_code == 200 and r.json()["results"][0]["name"] == NAMES[1]
    r = client.post("/search", json={"path": "chelsea.png", "k": 2})
    assert r.json()["results"][0]["score"] == pytest.approx(1.0, abs=1e-6)


def test_index_route_grows_the_asmk_index(client, photos):
    png = io.BytesIO()
    Image.fromarray(photos[4]).save(png, "PNG")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/index", headers=auth,
                    files=[("files", ("camera.png", png.getvalue(), "image/png"))])
    assert r.status_code == 200, r.text
    assert r.json()["added"] == ["uploads/camera.png"] and r.json()["n_images"] == 5
    r = upload(client, _warped_png(photos[4]), name="q.png", k=1)
    assert r.json()["results"][0]["name"] == "uploads/camera.png"
    # the same file again: unchanged (fingerprints), nothing extracted
    r = client.post("/index", headers=auth, json={"paths": ["uploads/camera.png", "coffee.png"]})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["unchanged"]) == ["coffee.png", "uploads/camera.png"]
    assert r.json()["n_images"] == 5


def test_bad_queries_are_clear_errors(client):
    assert_error(upload(client, b"not an image", name="q.png"), 422)
    flat = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(flat, "PNG")
    # no keypoint at all: an empty feature set, ranked (all scores 0), not a crash
    r = upload(client, flat.getvalue(), name="flat.png", k=2)
    assert r.status_code == 200, r.text
    assert [h["score"] for h in r.json()["results"]] == [0.0, 0.0]


@pytest.mark.parametrize("name", ["deep.joblib", "deep.zip"])
def test_deep_local_index_served_on_a_device(asmk_index, photos, tmp_path, name):
    _, root = asmk_index
    model = tmp_path / name
    assert main(["index", str(root), "-o", str(model), "-q", "--local", "deep", "--asmk", "8",
                 "--backbone", "resnet18", "--weights", "none", "--layer", "layer2",
                 "--max-size", "64", "--local-features", "20"]) == 0
    pipe = load_model(model, allow_pickle=True, device="cpu")
    assert pipe[0].device == "cpu" and pipe[0].extractor_.device_ == "cpu"
    with TestClient(create_app(pipe, images_root=root)) as c:
        png = io.BytesIO()
        Image.fromarray(photos[2]).save(png, "PNG")
        r = upload(c, png.getvalue(), name="q.png", k=2)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["name"] == NAMES[2]
