"""Local features: the container, SIFT / RootSIFT against OpenCV, deep local features."""

import numpy as np
import pytest
from sklearn.utils import _safe_indexing

from skretrieval import Crop, ImageLoadError
from skretrieval.local import DeepLocalFeatures, LocalFeatures, SIFTExtractor, root_sift

cv2 = pytest.importorskip("cv2")
data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()


def test_container_slices_like_an_array(tmp_path):
    rng = np.random.default_rng(0)
    f = LocalFeatures([(rng.random((n, 4)), rng.random((n, 8))) for n in (3, 0, 5)])
    assert f.shape == (3,) and f.counts.tolist() == [3, 0, 5] and f.n_dims == 8
    assert f[1][0].shape == (0, 4) and f[1][1].shape == (0, 8)
    sub = _safe_indexing(f, np.array([2, 0]))
    assert isinstance(sub, LocalFeatures) and sub.counts.tolist() == [5, 3]
    np.testing.assert_array_equal(sub[0][1], f[2][1])
    assert f[np.array([True, False, True])].counts.tolist() == [3, 5]
    kp, desc, offsets = f.concatenated()
    assert kp.shape == (8, 4) and desc.shape == (8, 8) and offsets.tolist() == [0, 3, 3, 8]
    f.save(tmp_path / "f.npz")
    back = LocalFeatures.load(tmp_path / "f.npz")
    assert back.counts.tolist() == [3, 0, 5]
    for (k1, d1), (k2, d2) in zip(f, back):
        np.testing.assert_array_equal(k1, k2)
        np.testing.assert_array_equal(d1, d2)
    with pytest.raises(ValueError, match="one row per keypoint"):
        LocalFeatures([(np.zeros((2, 4)), np.zeros((3, 8)))])
    with pytest.raises(ValueError, match="8 dimensions"):
        f.append(np.zeros((1, 4)), np.zeros((1, 9)))


def test_sift_equals_opencv_call(astronaut):
    got = SIFTExtractor(n_features=300, root=False, max_size=None, cache=None).fit_transform(
        [astronaut])
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    kps, desc = cv2.SIFT_create(nfeatures=300).detectAndCompute(grey, None)
    kp, d = got[0]
    assert len(kp) == len(kps) > 200
    np.testing.assert_allclose(kp[:, :2], [k.pt for k in kps], atol=1e-4)
    np.testing.assert_allclose(kp[:, 2], [k.size for k in kps], rtol=1e-5)
    np.testing.assert_allclose(kp[:, 3], [k.angle for k in kps], atol=1e-3)
    np.testing.assert_array_equal(d, desc)


def test_rootsift_definition(astronaut):
    sift = SIFTExtractor(n_features=100, root=False, max_size=None).fit_transform([astronaut])
    root = SIFTExtractor(n_features=100, max_size=None).fit_transform([astronaut])
    raw, r = sift[0][1], root[0][1]
    np.testing.assert_allclose(r, np.sqrt(raw / raw.sum(1, keepdims=True)), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, rtol=1e-5)
    # dot products of RootSIFT are the Hellinger kernel of the L1-normalised SIFT
    p = raw / raw.sum(1, keepdims=True)
    np.testing.assert_allclose(r[:5] @ r[5:10].T, np.sqrt(p[:5, None] * p[None, 5:10]).sum(2),
                               rtol=1e-4)
    assert root_sift(np.zeros((1, 128))).sum() == 0


def test_boxes_crop_before_extraction(astronaut):
    box = (100, 40, 360, 300)
    cut = astronaut[40:300, 100:360]
    for sift in (SIFTExtractor(n_features=200, max_size=None),
                 SIFTExtractor(n_features=200, max_size=128)):
        a, b = sift.fit_transform([Crop(astronaut, box), cut])
        assert len(a[0]) > 10
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert SIFTExtractor(max_size=128).fit_transform([cut])[0][0][:, :2].max() <= 128


def test_bad_inputs_give_errors_or_no_feature():
    sift = SIFTExtractor(max_size=None)
    out = sift.fit_transform([np.zeros((1, 1, 3), np.uint8), np.full((40, 40, 3), 128, np.uint8)])
    assert out.counts.tolist() == [0, 0] and out[0][1].shape == (0, 128)
    with pytest.raises(ImageLoadError):
        sift.transform([np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(TypeError, match="single"):
        sift.transform(np.zeros((8, 8, 3), np.uint8).tobytes())
    with pytest.raises(ValueError):
        sift.transform([])


def test_sift_cache_reuses_features(astronaut):
    sift = SIFTExtractor(n_features=50, max_size=256, cache="memory")
    a = sift.fit_transform([astronaut])
    b = sift.transform([astronaut])
    np.testing.assert_array_equal(a[0][1], b[0][1])
    c = SIFTExtractor(n_features=20, max_size=256, cache="memory").fit_transform([astronaut])
    assert len(c[0][0]) == 20  # another setting, another key


def test_deep_local_features_positions_and_whitening(astronaut, one_torch_thread):
    imgs = [astronaut, data.chelsea(), data.coffee()]
    deep = DeepLocalFeatures("resnet18", weights=None, layer="layer3", max_size=128,
                             scales=(1.0, 0.5), max_features=40, n_components=16, border=0)
    out = deep.fit_transform(imgs)
    assert deep.stride_ == 16.0 and out.n_dims == 16 and out.counts.tolist() == [40] * 3
    kp, desc = out[0]
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, rtol=1e-5)
    # centres of 16 px cells (or 32 px cells of the half scale)
    cell = kp[:, 2]
    assert set(np.unique(cell)) <= {16.0, 32.0}
    np.testing.assert_allclose((kp[:, 0] / cell) % 1, 0.5)
    # the same maps without whitening give the same positions
    plain = DeepLocalFeatures("resnet18", weights=None, layer="layer3", max_size=128,
                              scales=(1.0, 0.5), max_features=40,
                              border=0).fit(imgs).transform(imgs)
    np.testing.assert_array_equal(plain[0][0], kp)
    # the strongest cells of the maps, strongest first
    maps = deep.extractor_.transform(imgs[:1])
    V = np.concatenate([m.reshape(m.shape[0], -1).T for m in maps[0]])
    norms = np.linalg.norm(V, axis=1)
    first = V[np.argmax(norms)]
    np.testing.assert_allclose(plain[0][1][0], first / np.linalg.norm(first), rtol=1e-5)
    # whitened training descriptors: decorrelated before the final L2
    train = np.concatenate([d for _, d in plain])
    W = (train - deep.mean_) @ deep.components_.T
    cov = np.cov(W.T)
    np.testing.assert_allclose(np.diag(cov), 1.0, rtol=0.1)
    # a crop is cut before extraction
    box = (10, 20, 300, 260)
    a, b = deep.transform([Crop(astronaut, box), astronaut[20:260, 10:300]])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)
    with pytest.raises(ValueError, match="learns its whitening"):
        DeepLocalFeatures("resnet18", weights=None, n_components=8).fit()
