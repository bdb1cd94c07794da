"""Tests for skretrieval.extraction._images (image input, crops, keys, folders)."""

import dataclasses
import io
import os
import pickle
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_image

from skretrieval.extraction._collections import check_images, list_images
from skretrieval.extraction._images import (
    Crop,
    ImageLoadError,
    describe,
    image_key,
    load_image,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _rgb_u8(out, shape=None):
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[2] == 3
    assert out.flags.c_contiguous
    if shape is not None:
        assert out.shape == shape
    return out


def _grey3(values):
    values = np.asarray(values, dtype=np.uint8)
    return np.repeat(values[..., None], 3, axis=-1)


def _png16_rgb(arr):
    """Encode an (H, W, 3) uint16 array as a 16-bit-per-channel RGB PNG."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag, data):
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _opened(path, pixels=False):
    """Mode, info (and RGB pixels) of a file as Pillow opens it (file closed)."""
    with Image.open(path) as im:
        return im.mode, dict(im.info), np.array(im.convert("RGB")) if pixels else None


@pytest.fixture(scope="module")
def china():
    return load_sample_image("china.jpg")


# ---------------------------------------------------------------------------
# PIL modes through files
# ---------------------------------------------------------------------------


def test_rgb_png_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(arr).save(path)
    for item in (path, str(path)):
        np.testing.assert_array_equal(_rgb_u8(load_image(item)), arr)


def test_mode_L(tmp_path):
    grey = np.array([[0, 50, 255], [7, 128, 200]], dtype=np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey, mode="L").save(path)
    np.testing.assert_array_equal(_rgb_u8(load_image(path)), _grey3(grey))


def test_mode_1(tmp_path):
    bits = np.array([[True, False, True], [False, False, True]])
    path = tmp_path / "bits.png"
    Image.fromarray(bits).convert("1").save(path)
    assert _opened(path)[0] == "1"
    np.testing.assert_array_equal(load_image(path), _grey3(bits * 255))


def _palette_image():
    im = Image.new("P", (3, 2))
    im.putpalette([255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    im.putdata([0, 1, 2, 3, 1, 2])
    return im


def test_mode_P_without_transparency(tmp_path):
    path = tmp_path / "pal.png"
    _palette_image().save(path)
    assert _opened(path)[0] == "P"
    expected = np.array([[[255, 255, 255], RED, (0, 255, 0)], [BLUE, RED, (0, 255, 0)]])
    np.testing.assert_array_equal(load_image(path), expected)


def test_mode_P_with_transparency_composited_over_white(tmp_path):
    im = _palette_image()
    # Palette index 1 (red) fully transparent -> white; index 3 half transparent.
    im.info["transparency"] = bytes([255, 0, 255, 128])
    path = tmp_path / "pal_t.png"
    im.save(path)
    mode, info, _ = _opened(path)
    assert mode == "P" and "transparency" in info
    out = load_image(path)
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[1, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [0, 255, 0])
    # blue at alpha 128 over white: round(c*128/255 + 255*127/255)
    np.testing.assert_array_equal(out[1, 0], [127, 127, 255])


def test_mode_P_with_single_transparent_index(tmp_path):
    im = _palette_image()
    path = tmp_path / "pal_t1.gif"
    im.save(path, transparency=2)
    out = load_image(path)
    np.testing.assert_array_equal(out[0, 2], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], RED)


def test_mode_LA(tmp_path):
    grey = np.array([[10, 100, 200]], dtype=np.uint8)
    alpha = np.array([[255, 0, 128]], dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(path)
    assert _opened(path)[0] == "LA"
    out = load_image(path)
    a = alpha / 255.0
    expected = np.rint(grey * a + 255 * (1 - a)).astype(np.uint8)
    np.testing.assert_array_equal(out, _grey3(expected))
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])


def test_mode_RGBA(tmp_path):
    rgba = np.array(
        [[[255, 0, 0, 255], [0, 0, 255, 0], [0, 100, 200, 64]]], dtype=np.uint8
    )
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = load_image(path)
    a = rgba[..., 3:].astype(float) / 255
    expected = np.rint(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[0, 0], RED)
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])


def test_mode_CMYK(tmp_path):
    im = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red in CMYK
    path = tmp_path / "cmyk.tif"
    im.save(path)
    mode, _, expected = _opened(path, pixels=True)
    assert mode == "CMYK"
    out = load_image(path)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[0, 0], RED)


def test_mode_I16_png(tmp_path):
    values = np.array([[0, 257, 65535, 1000, 32896]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert _opened(path)[0].startswith("I;16")
    out = load_image(path)
    np.testing.assert_array_equal(out, _grey3([[0, 1, 255, 4, 128]]))


def test_mode_I16B_pil():
    im = Image.new("I;16B", (2, 1), 65535)
    np.testing.assert_array_equal(load_image(im), _grey3([[255, 255]]))


def test_mode_I_tiff(tmp_path):
    values = np.array([[-5, 70000, 65535, 514, 0]], dtype=np.int32)
    path = tmp_path / "int32.tif"
    Image.fromarray(values).save(path)
    assert _opened(path)[0] == "I"
    np.testing.assert_array_equal(load_image(path), _grey3([[0, 255, 255, 2, 0]]))


def test_mode_F_tiff_unit_range(tmp_path):
    values = np.array([[0.0, 0.5, 1.0, -0.25]], dtype=np.float32)
    path = tmp_path / "float01.tif"
    Image.fromarray(values).save(path)
    assert _opened(path)[0] == "F"
    np.testing.assert_array_equal(load_image(path), _grey3([[0, 128, 255, 0]]))


def test_mode_F_tiff_large_range_is_clipped(tmp_path):
    values = np.array([[-3.0, 100.4, 300.0, 254.6]], dtype=np.float32)
    path = tmp_path / "float255.tif"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(load_image(path), _grey3([[0, 100, 255, 255]]))


def test_mode_F_with_nan_rejected(tmp_path):
    values = np.array([[0.0, np.nan]], dtype=np.float32)
    path = tmp_path / "nan.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageLoadError, match=re.escape(str(path)) + ".*NaN"):
        load_image(path)


def test_16bit_rgb_png(tmp_path):
    values = np.zeros((2, 3, 3), dtype=np.uint16)
    values[0, 0] = [65535, 257 * 100, 0]
    values[1, 2] = [1000, 2000, 30000]
    values[0, 1] = [128, 383, 65280]
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png16_rgb(values))
    out = _rgb_u8(load_image(path), (2, 3, 3))
    # Pillow may keep the high byte or round; either way within one level.
    diff = np.abs(out.astype(int) - np.rint(values / 257).astype(int))
    assert diff.max() <= 1
    np.testing.assert_array_equal(out[0, 0], [255, 100, 0])


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "RGBX"])
def test_other_modes_via_pil(mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8))
    im = rgb.convert(mode) if mode != "LAB" else Image.new("LAB", (5, 4), (128, 100, 160))
    out = _rgb_u8(load_image(im), (4, 5, 3))
    np.testing.assert_array_equal(out, np.array(im.convert("RGB")))


def test_pil_PA_and_La_over_white():
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    pa.putdata([(1, 255), (1, 0)])
    np.testing.assert_array_equal(load_image(pa), [[RED, (255, 255, 255)]])
    la = Image.new("LA", (1, 1), (0, 0)).convert("La")
    np.testing.assert_array_equal(load_image(la), [[(255, 255, 255)]])


def test_pil_colour_key_transparency():
    im = Image.fromarray(np.array([[[1, 2, 3], [9, 9, 9]]], dtype=np.uint8))
    im.info["transparency"] = (1, 2, 3)
    np.testing.assert_array_equal(load_image(im), [[(255, 255, 255), (9, 9, 9)]])


def test_pil_image_not_modified():
    im = Image.new("RGBA", (3, 3), (10, 20, 30, 0))
    load_image(im)
    assert im.mode == "RGBA" and im.getpixel((0, 0)) == (10, 20, 30, 0)


# ---------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------


def _oriented_jpeg(path, orientation=6):
    """A 40 x 20 (W x H) blue image with a red top-left 8 x 8 corner."""
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[...] = BLUE
    arr[:8, :8] = RED
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    return arr


def test_exif_orientation_6(tmp_path):
    path = tmp_path / "rot6.jpg"
    _oriented_jpeg(path)
    with Image.open(path) as raw:
        assert raw.getexif()[0x0112] == 6
        stored = np.array(raw.convert("RGB"))
    assert stored.shape == (20, 40, 3)
    out = _rgb_u8(load_image(path), (40, 20, 3))
    # Orientation 6: rotate the stored pixels 90 degrees clockwise.
    np.testing.assert_array_equal(out, np.rot90(stored, k=-1))
    # The red corner moves from the top-left to the top-right.
    assert out[2, 17, 0] > 200 and out[2, 17, 2] < 60
    assert out[2, 2, 2] > 200 and out[2, 2, 0] < 60
    # Same result from the PIL object, and from a PIL object already transposed.
    with Image.open(path) as raw:
        np.testing.assert_array_equal(load_image(raw), out)
        np.testing.assert_array_equal(load_image(ImageOps.exif_transpose(raw)), out)


def test_crop_refers_to_exif_transposed_image(tmp_path):
    path = tmp_path / "rot6.jpg"
    _oriented_jpeg(path)
    full = load_image(path)
    crop = _rgb_u8(load_image(Crop(path, (14, 0, 20, 6))), (6, 6, 3))
    np.testing.assert_array_equal(crop, full[0:6, 14:20])
    assert crop[..., 0].min() > 200  # all red: the displayed top-right corner


# ---------------------------------------------------------------------------
# Crop
# ---------------------------------------------------------------------------


@pytest.fixture
def big():
    rng = np.random.default_rng(2)
    return rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)


def test_crop_full_resolution_equals_slice(big, tmp_path):
    np.testing.assert_array_equal(load_image(Crop(big, (10, 20, 110, 220))), big[20:220, 10:110])
    path = tmp_path / "big.png"
    Image.fromarray(big).save(path)
    out = _rgb_u8(load_image(Crop(str(path), (10, 20, 110, 220))), (200, 100, 3))
    np.testing.assert_array_equal(out, big[20:220, 10:110])
    out = load_image(Crop(Image.fromarray(big), [0, 0, 400, 300]))
    np.testing.assert_array_equal(out, big)


def test_crop_float_box_rounds_outwards(big):
    crop = Crop(big, (10.7, 20.2, 110.1, 219.9))
    assert crop.box == (10.7, 20.2, 110.1, 219.9)
    np.testing.assert_array_equal(load_image(crop), big[20:220, 10:111])
    crop = Crop(big, np.array([1.5, 2.5, 3.5, 4.5]))
    np.testing.assert_array_equal(load_image(crop), big[2:5, 1:4])


def test_crop_is_clipped(big):
    np.testing.assert_array_equal(load_image(Crop(big, (-50, -10, 30, 40))), big[:40, :30])
    np.testing.assert_array_equal(load_image(Crop(big, (350, 250, 999, 999))), big[250:, 350:])


def test_crop_output_is_a_copy(big):
    out = load_image(Crop(big, (0, 0, 10, 10)))
    assert not np.shares_memory(out, big)
    assert out.flags.c_contiguous


def test_crop_outside_image_raises(big):
    pattern = r"image 7 .*outside the image \(width 400, height 300\)"
    with pytest.raises(ImageLoadError, match=pattern):
        load_image(Crop(big, (400, 0, 500, 10)), index=7)
    problems = check_images([big, Crop(big, (-20, -20, -1, -1))])
    assert [p[0] for p in problems] == [1]


@pytest.mark.parametrize(
    "box, exc, match",
    [
        ((10, 10, 10, 20), ValueError, "x2 > x1"),
        ((10, 30, 20, 20), ValueError, "empty crop box"),
        ((1, 2, 3), ValueError, "4 values"),
        ((1, 2, 3, 4, 5), ValueError, "4 values"),
        ((0, 0, np.nan, 4), ValueError, "finite"),
        ((0, 0, np.inf, 4), ValueError, "finite"),
        ((0, 0, "5", 4), TypeError, "real numbers"),
        (5, TypeError, "sequence"),
    ],
)
def test_crop_invalid_box(box, exc, match):
    with pytest.raises(exc, match=match):
        Crop(np.zeros((5, 5), np.uint8), box)


def test_crop_invalid_box_names_image(tmp_path):
    path = tmp_path / "q.jpg"
    with pytest.raises(ValueError, match=re.escape(repr(str(path)))):
        Crop(path, (5, 5, 1, 1))


def test_crop_invalid_image_and_frozen(big):
    with pytest.raises(TypeError):
        Crop(None, (0, 0, 1, 1))
    with pytest.raises(TypeError, match="another Crop"):
        Crop(Crop(big, (0, 0, 5, 5)), (0, 0, 1, 1))
    crop = Crop(big, (0, 0, 5, 5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        crop.box = (0, 0, 1, 1)
    assert "array 300x400x3 uint8" in repr(crop)
    assert crop != Crop(big, (0, 0, 5, 5))  # identity equality (arrays)
    hash(crop)
    again = pickle.loads(pickle.dumps(crop))
    assert again.box == crop.box
    np.testing.assert_array_equal(load_image(again), load_image(crop))


def test_crop_missing_file_names_path_and_index(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match=r"image 4 .*" + re.escape(str(path)) + ".*not found"):
        load_image(Crop(path, (0, 0, 5, 5)), index=4)


# ---------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arr, expected",
    [
        (np.array([[0, 100], [200, 255]], np.uint8), _grey3([[0, 100], [200, 255]])),
        (np.array([[[0], [100]]], np.uint8), _grey3([[0, 100]])),
        (np.array([[[1, 2, 3]]], np.uint8), [[[1, 2, 3]]]),
        (np.array([[[1, 2, 3, 255], [1, 2, 3, 0]]], np.uint8), [[[1, 2, 3], [255, 255, 255]]]),
        (np.array([[[10, 255], [10, 0]]], np.uint8), _grey3([[10, 255]])),
        (np.array([[0, 257, 65535, 1000]], np.uint16), _grey3([[0, 1, 255, 4]])),
        (np.array([[True, False]]), _grey3([[255, 0]])),
        (np.array([[0.0, 0.5, 1.0]], np.float32), _grey3([[0, 128, 255]])),
        (np.array([[0.0, 0.2, 1.0]], np.float64), _grey3([[0, 51, 255]])),
        (np.array([[0.0, 1.0]], np.float16), _grey3([[0, 255]])),
        (np.array([[0, 17, 255]], np.int64), _grey3([[0, 17, 255]])),
        (np.array([[0, 17, 255]], np.int16), _grey3([[0, 17, 255]])),
        (np.array([[3, 4]], np.uint32), _grey3([[3, 4]])),
        (np.array([[[0.0, 0.0, 1.0, 1.0]]], np.float32), [[BLUE]]),
    ],
    ids=lambda v: str(getattr(v, "dtype", "")) + str(getattr(v, "shape", "")),
)
def test_accepted_arrays(arr, expected):
    out = _rgb_u8(load_image(arr))
    np.testing.assert_array_equal(out, np.asarray(expected, dtype=np.uint8))


def test_uint8_array_copied_and_contiguous():
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = load_image(arr)
    assert not np.shares_memory(out, arr)
    flipped = arr[:, ::-1]
    out = _rgb_u8(load_image(flipped))
    np.testing.assert_array_equal(out, flipped)


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((0, 5, 3), np.uint8), "empty array"),
        (np.zeros((5, 0), np.uint8), "empty array"),
        (np.zeros((2, 2, 5), np.uint8), "unsupported array shape"),
        (np.zeros((3, 20, 30), np.uint8), "moveaxis"),
        (np.zeros((2, 4, 4, 3), np.uint8), "list of images"),
        (np.zeros(5, np.uint8), "unsupported array shape"),
        (np.array([[0.0, 1.5]]), r"\[0, 1\]"),
        (np.array([[0.0, -0.5]], np.float32), r"\[0, 1\]"),
        (np.array([[0.0, 255.0]]), "astype"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), "infinite"),
        (np.array([[-1, 4]], np.int16), r"0\.\.255"),
        (np.array([[0, 256]], np.int32), r"0\.\.255"),
        (np.array([[1 + 1j]]), "dtype"),
        (np.array([[object()]], dtype=object), "dtype"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_rejected_arrays(arr, match):
    with pytest.raises(ImageLoadError, match=r"image 3 \(array .*" + match):
        load_image(arr, index=3)


@pytest.mark.parametrize("item", [None, 3, 2.5, [np.zeros((2, 2))], {"a": 1}])
def test_unsupported_types(item):
    pattern = r"image 5: unsupported input of type " + type(item).__name__
    with pytest.raises(TypeError, match=pattern):
        load_image(item, index=5)


def test_bytes_that_are_not_an_image_are_a_load_error():
    with pytest.raises(ImageLoadError, match="image 5"):
        load_image(b"abc", index=5)


# ---------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path, china):
    missing = tmp_path / "missing.jpg"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("this is not an image\n")
    buf = io.BytesIO()
    Image.fromarray(china).save(buf, format="JPEG")
    data = buf.getvalue()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    directory = tmp_path / "folder.jpg"
    directory.mkdir()
    return {
        "file not found": missing,
        "zero-byte": empty,
        "not an image": text,
        "truncated": truncated,
        "directory": directory,
    }


def test_bad_files_raise_with_path_index_and_reason(bad_files):
    for reason, path in bad_files.items():
        for item in (path, str(path)):
            pattern = r"^image 9 \('" + re.escape(str(path)) + r"'\): .*" + reason
            with pytest.raises(ImageLoadError, match=pattern) as info:
                load_image(item, index=9)
            assert info.value.index == 9
            assert reason in info.value.reason
            assert isinstance(info.value, ValueError)
        with pytest.raises(ImageLoadError, match=re.escape(str(path))):
            load_image(path)


def test_truncated_pil_image(bad_files):
    with Image.open(bad_files["truncated"]) as im:
        with pytest.raises(ImageLoadError, match=r"image 1 \(PIL RGB .*truncated"):
            load_image(im, index=1)


def test_image_load_error_pickles():
    err = ImageLoadError("image 1 ('x'): boom", index=1, reason="boom")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and isinstance(again, ImageLoadError)


def test_check_images_finds_exactly_the_bad_ones(bad_files, tmp_path, china):
    good_path = tmp_path / "good.png"
    Image.fromarray(china[:50, :60]).save(good_path)
    good = [good_path, china, Image.fromarray(china), Crop(china, (0, 0, 10, 10))]
    bad = list(bad_files.values()) + [
        np.zeros((0, 3), np.uint8),
        np.array([[2.0]]),
        None,
        Crop(china, (1000, 1000, 1100, 1100)),
    ]
    items = []
    for i in range(max(len(good), len(bad))):
        items += good[i : i + 1] + bad[i : i + 1]
    expected_bad = [i for i, item in enumerate(items) if any(item is b for b in bad)]
    for n_jobs in (2, 1, -1, None):
        problems = check_images(items, n_jobs=n_jobs)
        assert [p[0] for p in problems] == expected_bad
        for index, item, message in problems:
            assert items[index] is item
            assert f"image {index}" in message
            if isinstance(item, os.PathLike):
                assert str(item) in message
    assert check_images(good, n_jobs=2) == []
    assert check_images([]) == []
    with pytest.raises(TypeError, match="list_images"):
        check_images(str(tmp_path))
    with pytest.raises(ValueError):
        check_images(good, n_jobs=0)


# ---------------------------------------------------------------------------
# Real photo
# ---------------------------------------------------------------------------


def test_china_array_jpeg_and_pil(china, tmp_path):
    out = _rgb_u8(load_image(china), china.shape)
    np.testing.assert_array_equal(out, china)
    path = tmp_path / "china.jpg"
    Image.fromarray(china).save(path, quality=95)
    from_file = _rgb_u8(load_image(path), china.shape)
    assert np.abs(from_file.astype(int) - china).mean() < 3
    np.testing.assert_array_equal(load_image(Image.fromarray(china)), china)
    crop = load_image(Crop(path, (100, 50, 300.5, 250)))
    np.testing.assert_array_equal(crop, from_file[50:250, 100:301])


# ---------------------------------------------------------------------------
# image_key and describe
# ---------------------------------------------------------------------------


def test_image_key_path_changes_when_file_rewritten(tmp_path, china):
    path = tmp_path / "k.png"
    Image.fromarray(china[:20, :20]).save(path)
    key = image_key(path)
    assert key.startswith("path:" + os.path.abspath(str(path)) + ":")
    assert image_key(str(path)) == key == image_key(path)
    Image.fromarray(china[:30, :20]).save(path)
    key2 = image_key(path)
    assert key2 != key
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert image_key(path) != key2
    with pytest.raises(ImageLoadError, match=r"image 2 \(.*missing\.png'\): file not found"):
        image_key(tmp_path / "missing.png", index=2)


def test_image_key_arrays_and_pil(china):
    assert image_key(china) == image_key(china.copy())
    assert image_key(china).startswith("array:")
    assert image_key(china[:, ::-1]) == image_key(np.ascontiguousarray(china[:, ::-1]))
    assert image_key(china) != image_key(china[:, ::-1])
    assert image_key(china) != image_key(china.astype(np.uint16))
    assert image_key(china) != image_key(china.reshape(china.shape[1], china.shape[0], 3))
    other = china.copy()
    other[0, 0, 0] ^= 1
    assert image_key(other) != image_key(china)
    pil = Image.fromarray(china)
    assert image_key(pil) == image_key(Image.fromarray(china.copy()))
    assert image_key(pil).startswith("pil:")
    assert image_key(pil) != image_key(pil.convert("L"))
    p1, p2 = _palette_image(), _palette_image()
    assert image_key(p1) == image_key(p2)
    p2.putpalette([9] * 768)
    assert image_key(p1) != image_key(p2)
    with pytest.raises(TypeError, match="image 4: unsupported input"):
        image_key(None, index=4)


def test_image_key_crop(china, tmp_path):
    k1 = image_key(Crop(china, (0, 0, 10, 10)))
    assert k1 == image_key(Crop(china.copy(), (0, 0, 10, 10)))
    assert k1 != image_key(Crop(china, (0, 0, 10, 11)))
    assert k1 != image_key(china)
    assert image_key(Crop(china, (0, 0, 10, 10))).startswith("crop:array:")


def test_describe(tmp_path):
    assert describe("/data/a.jpg", 12) == "image 12 ('/data/a.jpg')"
    assert describe(np.zeros((480, 640, 3), np.uint8), 3) == "image 3 (array 480x640x3 uint8)"
    assert describe(Image.new("RGB", (640, 480)), 0) == "image 0 (PIL RGB 640x480)"
    assert describe(Crop("/q.jpg", (1, 2, 3, 4)), 2) == "image 2 (crop (1, 2, 3, 4) of '/q.jpg')"
    assert describe(None, 1) == "image 1 (object of type NoneType)"
    assert describe("/data/a.jpg") == "image ('/data/a.jpg')"


# ---------------------------------------------------------------------------
# list_images
# ---------------------------------------------------------------------------


def test_list_images(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    names = ["b.jpg", "a.PNG", "sub/c.JpEg", "sub/deeper/d.tiff", "sub/e.webp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    for name in ["notes.txt", "sub/f.jpg.bak", "._a.jpg", ".hidden/g.jpg", "noext"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()  # a folder with an image-like name

    found = list_images(tmp_path)
    assert found == sorted(str(tmp_path / n) for n in names)
    assert all(isinstance(p, str) for p in found)
    assert list_images(str(tmp_path), recursive=False) == sorted(
        [str(tmp_path / "a.PNG"), str(tmp_path / "b.jpg")]
    )
    assert list_images(tmp_path, extensions=("jpg",)) == [str(tmp_path / "b.jpg")]
    assert list_images(tmp_path, extensions=".TIFF") == [str(tmp_path / "sub/deeper/d.tiff")]


def test_list_images_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        list_images(missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="no image files"):
        list_images(tmp_path / "empty")
    afile = tmp_path / "file.jpg"
    afile.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=re.escape(str(afile))):
        list_images(afile)


# ---------------------------------------------------------------------------
# Strict JPEG decoding: corrupt entropy-coded data
# ---------------------------------------------------------------------------


def _jpeg(image, **kwargs):
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def _scan_spans(data):
    """(start, end) of the entropy-coded data of every scan of a JPEG stream."""
    spans, pos = [], 2
    while True:
        while data[pos] == 0xFF:
            pos += 1
        code = data[pos]
        pos += 1
        if code == 0xD9:
            return spans
        pos += int.from_bytes(data[pos:pos + 2], "big")
        if code == 0xDA:
            end = pos
            while not (data[end] == 0xFF and data[end + 1] != 0
                       and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
            spans.append((pos, end))
            pos = end


def _garble(data, n=200, seed=0, scan=None):
    """Overwrite ``n`` bytes in the middle of a scan's data (the longest one by
    default) with noise that holds no 0xFF, so no marker appears: the header
    and the file length are intact, and Pillow decodes it without an error."""
    spans = _scan_spans(data)
    start, end = spans[scan] if scan is not None else max(spans, key=lambda s: s[1] - s[0])
    at = (start + end - n) // 2
    while data[at - 1] == 0xFF:  # keep a stuffed 0xFF 0x00 pair whole
        at += 1
    noise = np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8).tobytes()
    return data[:at] + noise + data[at + n:]


@pytest.fixture(scope="module")
def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


def _garbled_cases(astronaut):
    im = Image.fromarray(astronaut)
    return {
        "baseline": _garble(_jpeg(im, quality=90)),
        "progressive": _garble(_jpeg(im, quality=90, progressive=True), scan=1),
        "greyscale": _garble(_jpeg(im.convert("L"), quality=90)),
        "cmyk": _garble(_jpeg(im.convert("CMYK"), quality=90)),
        "restart markers": _garble(_jpeg(im, quality=90, restart_marker_blocks=4), n=40),
    }


def test_garbled_jpeg_decodes_silently_to_garbage_in_pillow(astronaut):
    # what the strict check is for: Pillow raises nothing for these files
    clean = np.asarray(Image.open(io.BytesIO(_jpeg(Image.fromarray(astronaut), quality=90))),
                       dtype=np.float64)
    for name, data in _garbled_cases(astronaut).items():
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        if name == "baseline":
            assert np.abs(np.asarray(im, dtype=np.float64) - clean).mean() > 20


def test_garbled_jpeg_is_a_load_error_naming_the_file(astronaut, tmp_path):
    for name, data in _garbled_cases(astronaut).items():
        path = tmp_path / f"{name.replace(' ', '_')}.jpg"
        path.write_bytes(data)
        pattern = r"^image 4 \('" + re.escape(str(path)) + r"'\): corrupt JPEG data in scan"
        with pytest.raises(ImageLoadError, match=pattern) as info:
            load_image(path, index=4)
        err = info.value
        assert err.index == 4 and err.path == str(path)
        assert err.reason.startswith("corrupt JPEG data") and "strict=False" in err.reason
        with pytest.raises(ImageLoadError, match="corrupt JPEG data"):
            load_image(Crop(str(path), (0, 0, 10, 10)))
        # strict=False: the pixels Pillow decodes
        with Image.open(path) as im:
            expected = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(load_image(path, strict=False), expected)


def test_check_images_reports_garbled_jpegs(astronaut, tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg(Image.fromarray(astronaut[:128, :128]), quality=90))
    items = [good]
    for name, data in _garbled_cases(astronaut).items():
        path = tmp_path / f"{name.replace(' ', '_')}.jpg"
        path.write_bytes(data)
        items += [path, str(good)]
    expected = list(range(1, len(items), 2))
    for n_jobs in (1, 2):
        problems = check_images(items, n_jobs=n_jobs)
        assert [i for i, _, _ in problems] == expected
        assert all("corrupt JPEG data" in msg and str(items[i]) in msg
                   for i, _, msg in problems)
    assert check_images(items, strict=False) == []


def _valid_jpegs(astronaut, tmp_path):
    rng = np.random.default_rng(4)
    im = Image.fromarray(astronaut).resize((160, 120))
    files = {}
    for sub in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
        for progressive in (False, True):
            files[f"s{sub}-p{int(progressive)}"] = _jpeg(
                im, quality=85, subsampling=sub, progressive=progressive, optimize=True)
    files["q100"] = _jpeg(im, quality=100)
    files["q10"] = _jpeg(im, quality=10)
    files["greyscale"] = _jpeg(im.convert("L"))
    files["greyscale-progressive"] = _jpeg(im.convert("L"), progressive=True)
    files["cmyk"] = _jpeg(im.convert("CMYK"))
    files["cmyk-progressive"] = _jpeg(im.convert("CMYK"), progressive=True)
    files["restart-blocks"] = _jpeg(im, restart_marker_blocks=3)
    files["restart-rows-progressive"] = _jpeg(im, restart_marker_rows=1, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    files["exif-rotated"] = _jpeg(im, exif=exif)
    files["noise-q100"] = _jpeg(Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)),
                                quality=100, subsampling=0)
    files["black"] = _jpeg(Image.new("RGB", (40, 24)), quality=100)
    files["white-progressive"] = _jpeg(Image.new("RGB", (40, 24), "white"), quality=100,
                                       progressive=True)
    for h, w in ((1, 1), (7, 13), (17, 33), (2, 300)):
        tiny = Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))
        files[f"{h}x{w}"] = _jpeg(tiny, quality=95)
        files[f"{h}x{w}-progressive"] = _jpeg(tiny, quality=95, progressive=True)
    paths = []
    for name, data in files.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data + (b"trailing bytes after EOI" if name == "q10" else b""))
        paths.append(path)
    return paths


def test_valid_jpegs_pass_the_strict_check(astronaut, tmp_path):
    paths = _valid_jpegs(astronaut, tmp_path)
    assert check_images(paths) == []
    for path in paths:
        np.testing.assert_array_equal(load_image(path), load_image(path, strict=False))
    rotated = load_image(tmp_path / "exif-rotated.jpg")
    assert rotated.shape == (160, 120, 3)  # orientation 6: transposed


def test_real_photos_pass_the_strict_check(shared_data):
    paths = []
    for name in ("holidays-sample", "ukbench-sample"):
        folder = shared_data / name
        if folder.is_dir():
            paths += list_images(folder)
    if not paths:
        pytest.skip("no holidays / ukbench sample in the shared data")
    assert check_images(paths, n_jobs=2) == []


def test_truncated_jpeg_follows_pillow_load_truncated_images(bad_files, monkeypatch):
    from PIL import ImageFile

    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(bad_files["truncated"])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert load_image(bad_files["truncated"]).ndim == 3  # accepted, as Pillow does


def test_image_load_error_attributes_survive_pickling(tmp_path):
    err = ImageLoadError("image 1 ('x.jpg'): boom", index=1, reason="boom", path="x.jpg")
    again = pickle.loads(pickle.dumps(err))
    assert (again.index, again.reason, again.path) == (1, "boom", "x.jpg")
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError) as info:
        load_image(Crop(missing, (0, 0, 5, 5)), index=2)
    assert info.value.path == str(missing) and info.value.index == 2
    with pytest.raises(ImageLoadError) as info:
        load_image(np.zeros((0, 3), np.uint8))
    assert info.value.path is None


def test_strict_checker_survives_mutated_files():
    """Damaged headers and scans never crash the checker: it answers None or why."""
    from skretrieval.extraction._jpeg import jpeg_problem

    skimage_data = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()[::2, ::2]).save(buf, "JPEG", quality=80,
                                                          progressive=True)
    data = buf.getvalue()
    for i in range(600):
        d = bytearray(data)
        if i % 3 == 0:  # headers and tables
            for p in rng.integers(0, min(len(d), 1200), rng.integers(1, 30)):
                d[p] = rng.integers(0, 256)
        elif i % 3 == 1:  # anywhere
            for p in rng.integers(0, len(d), rng.integers(1, 200)):
                d[p] = rng.integers(0, 256)
        else:
            d = d[: rng.integers(2, len(d))]
        problem = jpeg_problem(bytes(d))
        assert problem is None or isinstance(problem, str)
