"""Uploads go to the pipeline as bytes and are decoded once (JPEGs at a reduced
scale), with the rankings of the same file searched by path; ``load_image`` of
bytes and binary file objects, which this relies on."""

import io
import tempfile

import numpy as np
import pytest

from _helpers import write_image
from skretrieval import Crop, ImageLoadError, load_image


@pytest.fixture
def decodes(monkeypatch):
    """The ``(format, size)`` of every image Pillow decodes while the test runs."""
    from PIL import ImageFile

    seen = []
    original = ImageFile.ImageFile.load

    def counting_load(self):
        pending = bool(self.tile)  # False: already decoded, load() is a no-op
        out = original(self)
        if pending:
            seen.append((self.format, self.size))
        return out

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return seen


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    return write_image(tmp_path_factory.mktemp("big") / "big.jpg", seed=3, size=(1024, 768))


# ---------------------------------------------------------------------------
# the serve upload path
# ---------------------------------------------------------------------------
def test_upload_of_a_jpeg_is_decoded_once_at_a_reduced_scale(served_index, big_jpeg,
                                                             decodes):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from skretrieval.serve import create_app, load_model

    model = load_model(served_index[0])
    data = big_jpeg.read_bytes()
    with TestClient(create_app(model, images_root=big_jpeg.parent, allow_paths=True)) as c:
        decodes.clear()
        r = c.post("/search", files={"image": ("big.jpg", data, "image/jpeg")},
                   data={"k": "6"})
        assert r.status_code == 200, r.text
        # one decode, by libjpeg's DCT scaling at 1/8 (the extractor needs 64 px)
        assert decodes == [("JPEG", (128, 96))]
        by_path = c.post("/search", json={"path": "big.jpg", "k": 6}).json()["results"]
        decodes.clear()
        box = c.post("/search", files={"image": ("big.jpg", data, "image/jpeg")},
                     data={"k": "6", "box": "100,50,900,700"})
        assert box.status_code == 200, box.text
        assert decodes == [("JPEG", (1024, 768))]  # a box is cut at full resolution
    # the ranking of the library on the file itself, by upload as by path
    Xq = model[:-1].transform([str(big_jpeg)])
    dist, ind = model[-1].kneighbors(Xq, n_neighbors=6)
    for hits in (r.json()["results"], by_path):
        assert [h["id"] for h in hits] == list(model[-1].ids_[ind[0]])
        assert [h["distance"] for h in hits] == pytest.approx(dist[0], abs=1e-6)
    Xb = model[:-1].transform([Crop(str(big_jpeg), (100, 50, 900, 700))])
    dist_b, ind_b = model[-1].kneighbors(Xb, n_neighbors=6)
    assert [h["id"] for h in box.json()["results"]] == list(model[-1].ids_[ind_b[0]])
    assert [h["distance"] for h in box.json()["results"]] == pytest.approx(dist_b[0],
                                                                          abs=1e-6)


def test_index_upload_is_decoded_once(served_index, big_jpeg, tmp_path, decodes):
    pytest.importorskip("fastapi")
    import shutil

    from fastapi.testclient import TestClient

    from skretrieval.serve import create_app, load_model

    root = tmp_path / "root"
    shutil.copytree(served_index[1], root)
    token = "decode-count-token"
    app = create_app(load_model(served_index[0]), images_root=root, token=token)
    with TestClient(app) as c:
        decodes.clear()
        r = c.post("/index", headers={"Authorization": f"Bearer {token}"},
                   files=[("files", ("big.jpg", big_jpeg.read_bytes(), "image/jpeg"))])
        assert r.status_code == 200, r.text
        assert decodes == [("JPEG", (128, 96))]


# ---------------------------------------------------------------------------
# load_image of encoded data
# ---------------------------------------------------------------------------
def test_load_image_of_bytes_and_file_objects_is_that_of_the_file(big_jpeg):
    data = big_jpeg.read_bytes()
    full, reduced = load_image(big_jpeg), load_image(big_jpeg, reduce_to=200)
    assert reduced.shape == (192, 256, 3)  # 1/4: the largest reduction >= 200 px
    spooled = tempfile.SpooledTemporaryFile()  # what an upload's .file is
    spooled.write(data)
    spooled.seek(0)
    with open(big_jpeg, "rb") as fh:
        for item in (data, bytearray(data), memoryview(data), io.BytesIO(data), fh,
                     spooled):
            assert np.array_equal(load_image(item), full)
            assert np.array_equal(load_image(item, reduce_to=200), reduced)  # read again
            if hasattr(item, "tell"):
                assert item.tell() == 0  # sought back
    box = (10, 20, 300, 200)
    assert np.array_equal(load_image(Crop(data, box)), load_image(Crop(big_jpeg, box)))
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(full).save(png, format="PNG")
    assert np.array_equal(load_image(png.getvalue()), full)


def test_load_image_of_bad_encoded_data():
    data = write_image(io.BytesIO(), seed=1).getvalue()
    with pytest.raises(ImageLoadError, match="larger than the limit of 1000 pixels"):
        load_image(data, max_pixels=1000)
    assert load_image(data, max_pixels=96 * 72).shape == (72, 96, 3)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(b"hello world")
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(data[: len(data) // 2])
    damaged = bytearray(data)  # strict: corrupt entropy-coded data, header intact
    damaged[len(data) // 2: len(data) // 2 + 40] = b"\x00" * 40
    with pytest.raises(ImageLoadError, match="corrupt JPEG data"):
        load_image(bytes(damaged))
    assert load_image(bytes(damaged), strict=False).shape == (72, 96, 3)
    with pytest.raises(ImageLoadError, match="binary mode"):
        load_image(io.StringIO("text"))
    with pytest.raises(ImageLoadError, match="bytes of image data"):
        load_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    closed = io.BytesIO(data)
    closed.close()
    with pytest.raises(ImageLoadError, match="cannot read the file object"):
        load_image(closed)


def test_image_key_of_encoded_data():
    from skretrieval.extraction._images import image_key

    data = write_image(io.BytesIO(), seed=1).getvalue()
    stream = io.BytesIO(data)
    assert image_key(data) == image_key(bytearray(data)) == image_key(stream)
    assert stream.tell() == 0 and image_key(data).startswith("bytes:")
    assert image_key(data) != image_key(data + b"\0")

    class Pipe(io.RawIOBase):  # an unseekable stream: keying it would consume it
        def readable(self):
            return True

    with pytest.raises(TypeError, match="unseekable"):
        image_key(Pipe())


def test_extractor_takes_bytes(served_index):
    from skretrieval.serve import load_model

    model = load_model(served_index[0])
    root, names = served_index[1], served_index[2]
    paths = [str(root / n) for n in names[:3]]
    encoded = [(root / names[0]).read_bytes(), io.BytesIO((root / names[1]).read_bytes()),
               Crop((root / names[2]).read_bytes(), (0, 0, 50, 40))]
    Xp = model[:-1].transform([paths[0], paths[1], Crop(paths[2], (0, 0, 50, 40))])
    np.testing.assert_array_equal(model[:-1].transform(encoded), Xp)
