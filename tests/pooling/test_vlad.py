"""Tests of VLADEncoder (skretrieval.pooling._vlad).

The encoding is checked against a plain-loop reference written from the
definition (Jégou et al. 2010; Arandjelović & Zisserman 2013; Ng et al. 2015)
with the same vocabulary, independently of the vectorised implementation.
"""

import doctest
import math
import pickle
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.utils import get_tags

import skretrieval.pooling._vlad as vlad_module
from skretrieval import FeatureMaps, VLADEncoder

from _helpers import FLOAT32_RTOL


# ---------------------------------------------------------------------------
# plain-loop reference
# ---------------------------------------------------------------------------
def l2(v):
    v = np.asarray(v, dtype=np.float64)
    n = math.sqrt(sum(float(t) * float(t) for t in v))
    return v / n if n > 0 else v


def ref_vlad_map(x, centers, *, normalize_local=True, power_norm=False,
                 intra_norm=True, normalize=True):
    """VLAD of one (C, H, W) map: loops over positions and words."""
    C, H, W = x.shape
    k = len(centers)
    v = np.zeros((k, C))
    for i in range(H):
        for j in range(W):
            d = np.array([float(x[c, i, j]) for c in range(C)])
            if normalize_local:
                d = l2(d)
            best, best_dist = None, None
            for w in range(k):
                dist = sum((d[c] - float(centers[w][c])) ** 2 for c in range(C))
                if best is None or dist < best_dist:
                    best, best_dist = w, dist
            for c in range(C):
                v[best, c] += d[c] - float(centers[best][c])
    if power_norm:
        for w in range(k):
            for c in range(C):
                v[w, c] = math.copysign(math.sqrt(abs(v[w, c])), v[w, c])
    if intra_norm:
        for w in range(k):
            v[w] = l2(v[w])
    flat = v.ravel()
    return l2(flat) if normalize else flat


def ref_encode(images, centers, *, scale_combination="concat", normalize=True, **kw):
    """Reference VLAD of a list of images (each a sequence of per-scale maps)."""
    out = []
    for maps in images:
        vecs = [ref_vlad_map(x, centers, normalize=normalize, **kw) for x in maps]
        if scale_combination == "concat":
            vec = np.concatenate(vecs)
        else:
            vec = np.sum(vecs, axis=0)
        out.append(l2(vec) if normalize else vec)
    return np.array(out)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
C = 5


def random_images(rng, n=4, scales=1):
    """Ragged maps: per image, ``scales`` maps of varying sizes."""
    return [
        tuple(
            rng.standard_normal((C, 3 + (i + s) % 3, 4 - s)).astype(np.float32)
            for s in range(scales)
        )
        for i in range(n)
    ]


def vocabulary(rng, images, k=4, far=True):
    """Centres near real (normalised) descriptors; with ``far`` the last word
    is far from every unit descriptor, so that no descriptor is assigned to it
    (an empty cluster)."""
    descs = np.concatenate(
        [m.reshape(C, -1).T for maps in images for m in maps]
    ).astype(np.float64)
    descs /= np.linalg.norm(descs, axis=1, keepdims=True)
    centers = descs[rng.choice(len(descs), k, replace=False)] * 0.9
    if far:
        centers[-1] = 10.0
    return centers.astype(np.float32)


def fitted_encoder(images, centers, **params):
    enc = VLADEncoder(n_clusters=len(centers), random_state=0, **params).fit(images)
    enc.cluster_centers_ = centers
    return enc


# ---------------------------------------------------------------------------
# against the reference
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("intra_norm", [True, False])
@pytest.mark.parametrize("power_norm", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_reference_single_scale(intra_norm, power_norm, normalize):
    rng = np.random.default_rng(0)
    images = random_images(rng, n=4)
    centers = vocabulary(rng, images)
    params = dict(intra_norm=intra_norm, power_norm=power_norm, normalize=normalize)
    enc = fitted_encoder(images, centers, **params)
    out = enc.transform(images)
    assert out.dtype == np.float32 and out.shape == (4, 4 * C)
    expected = ref_encode(images, centers, **params)
    assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # the far word is an empty cluster in every image: a zero block, no NaN
    assert np.all(np.isfinite(out))
    assert_array_equal(out[:, 3 * C :], 0)
    if normalize:
        assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    if intra_norm and not normalize:
        blocks = out.reshape(4, 4, C)
        assert_allclose(np.linalg.norm(blocks[:, :3], axis=2), 1.0, rtol=1e-6)


def test_without_local_normalisation():
    rng = np.random.default_rng(1)
    images = random_images(rng, n=3)
    centers = rng.standard_normal((3, C)).astype(np.float32)
    enc = fitted_encoder(images, centers, normalize_local=False, power_norm=True)
    expected = ref_encode(images, centers, normalize_local=False, power_norm=True)
    assert_allclose(enc.transform(images), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("combination", ["concat", "sum"])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_reference_multi_scale(combination, normalize):
    rng = np.random.default_rng(2)
    images = random_images(rng, n=3, scales=2)
    centers = vocabulary(rng, images)
    params = dict(scale_combination=combination, normalize=normalize)
    enc = fitted_encoder(images, centers, **params)
    assert enc.n_scales_ == 2
    out = enc.transform(images)
    n_out = 4 * C * (2 if combination == "concat" else 1)
    assert out.shape == (3, n_out)
    assert_allclose(out, ref_encode(images, centers, **params), rtol=1e-5, atol=1e-6)
    assert len(enc.get_feature_names_out()) == n_out
    # a FeatureMaps on disk (float16) gives the VLAD of its float16 values
    fm = FeatureMaps(images, scales=(1.0, 0.5), store="disk", dtype="float16")
    as16 = [tuple(m.astype(np.float16).astype(np.float32) for m in e) for e in images]
    assert_allclose(enc.transform(fm), ref_encode(as16, centers, **params),
                    rtol=1e-5, atol=1e-6)


def test_default_is_concat_of_per_scale_vlads():
    rng = np.random.default_rng(3)
    images = random_images(rng, n=2, scales=2)
    centers = vocabulary(rng, images, far=False)
    out = fitted_encoder(images, centers).transform(images)
    single = fitted_encoder([m[:1] for m in images], centers)
    per_scale = [single.transform([maps[s] for maps in images]) for s in (0, 1)]
    assert_allclose(out, np.hstack(per_scale) / math.sqrt(2), rtol=1e-5, atol=1e-7)


def test_chunking_does_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(4)
    images = random_images(rng, n=7, scales=2)
    centers = vocabulary(rng, images)
    for combination in ("concat", "sum"):
        enc = fitted_encoder(images, centers, scale_combination=combination)
        expected = enc.transform(images)
        # one map per chunk, then a few maps per chunk
        for budget in (1, 4 * C * 3, 4 * C * 12):
            monkeypatch.setattr(vlad_module, "_CHUNK_ELEMENTS", budget)
            # products of other shapes: BLAS may sum in another order
            assert_allclose(enc.transform(images), expected, rtol=FLOAT32_RTOL, atol=1e-6)
        monkeypatch.undo()


def test_input_forms_agree():
    rng = np.random.default_rng(5)
    arr = rng.standard_normal((4, C, 3, 4)).astype(np.float32)
    centers = vocabulary(rng, [(m,) for m in arr])
    enc = fitted_encoder(arr, centers)
    expected = enc.transform(arr)
    forms = [
        list(arr),
        [(m,) for m in arr],
        FeatureMaps([(m,) for m in arr]),
        FeatureMaps([(m,) for m in arr], store="disk"),
        arr.astype(np.float64),
    ]
    for X in forms:
        assert_allclose(enc.transform(X), expected, rtol=1e-6, atol=1e-7)


def test_zero_maps_and_input_not_modified():
    rng = np.random.default_rng(6)
    images = random_images(rng, n=3)
    images[1] = (np.zeros_like(images[1][0]),)
    before = [m[0].copy() for m in images]
    centers = vocabulary(rng, images[::2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fitted_encoder(images, centers).transform(images)
    assert np.all(np.isfinite(out))
    assert_allclose(out, ref_encode(images, centers), rtol=1e-5, atol=1e-6)
    for b, m in zip(before, images):
        assert_array_equal(b, m[0])


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------
def test_fit_learns_k_centres_reproducibly():
    rng = np.random.default_rng(7)
    images = random_images(rng, n=10, scales=2)
    total = sum(m.shape[1] * m.shape[2] for maps in images for m in maps)
    enc = VLADEncoder(n_clusters=6, random_state=0).fit(images)
    assert enc.cluster_centers_.shape == (6, C)
    assert enc.cluster_centers_.dtype == np.float32
    assert enc.n_channels_ == C and enc.n_scales_ == 2
    assert enc.n_descriptors_ == total and enc.inertia_ >= 0
    again = VLADEncoder(n_clusters=6, random_state=0).fit(images)
    assert_array_equal(again.cluster_centers_, enc.cluster_centers_)
    other = VLADEncoder(n_clusters=6, random_state=1, max_descriptors=40).fit(images)
    assert not np.array_equal(other.cluster_centers_, enc.cluster_centers_)
    full = VLADEncoder(n_clusters=6, kmeans="full", random_state=0).fit(images)
    assert full.cluster_centers_.shape == (6, C)
    X = enc.transform(images)
    assert X.shape == (10, 6 * C * 2)
    assert_allclose(enc.fit_transform(images), X, rtol=FLOAT32_RTOL, atol=1e-7)


def test_centres_of_normalised_descriptors():
    # two well-separated directions: the words are their (unit) directions
    rng = np.random.default_rng(8)
    a, b = np.eye(C)[0], np.eye(C)[1]
    images = []
    for i in range(6):
        x = np.where(rng.random((1, 4, 4)) < 0.5, a[:, None, None], b[:, None, None])
        images.append((x * (1 + 3 * rng.random((1, 4, 4)))).astype(np.float32))
    enc = VLADEncoder(n_clusters=2, random_state=0).fit(images)
    centers = enc.cluster_centers_[np.argsort(-enc.cluster_centers_[:, 0])]
    assert_allclose(centers, np.stack([a, b]), atol=1e-6)


@pytest.mark.parametrize("kmeans", ["minibatch", "full"])
def test_fit_respects_max_descriptors(monkeypatch, kmeans):
    rng = np.random.default_rng(9)
    images = random_images(rng, n=12, scales=2)
    seen = []
    cls = vlad_module.MiniBatchKMeans if kmeans == "minibatch" else vlad_module.KMeans

    class Spy(cls):
        def fit(self, X, y=None, sample_weight=None):
            seen.append(X.copy())
            return super().fit(X, y, sample_weight)

    monkeypatch.setattr(vlad_module, cls.__name__, Spy)
    enc = VLADEncoder(n_clusters=3, max_descriptors=37, kmeans=kmeans,
                      normalize_local=False, random_state=0).fit(images)
    assert enc.n_descriptors_ == 37
    assert len(seen) == 1 and seen[0].shape == (37, C)
    # every sampled row is one of the local descriptors, drawn without
    # replacement, from several images and both scales
    descs = {}
    for i, maps in enumerate(images):
        for s, m in enumerate(maps):
            for d in m.reshape(C, -1).T:
                descs[d.tobytes()] = (i, s)
    origins = [descs[row.astype(np.float32).tobytes()] for row in seen[0]]
    assert len({row.tobytes() for row in seen[0]}) == 37
    assert len({i for i, _ in origins}) > 3 and {s for _, s in origins} == {0, 1}


def test_fit_reads_only_the_sampled_images(monkeypatch):
    rng = np.random.default_rng(10)
    fm = FeatureMaps(
        [(rng.standard_normal((C, 3, 3)).astype(np.float32),) for _ in range(30)],
        store="disk",
    )
    reads = []
    original = FeatureMaps.__getitem__

    def counting(self, key):
        if isinstance(key, (int, np.integer)):
            reads.append(int(key))
        return original(self, key)

    monkeypatch.setattr(FeatureMaps, "__getitem__", counting)
    enc = VLADEncoder(n_clusters=2, max_descriptors=4, random_state=0).fit(fm)
    assert enc.n_descriptors_ == 4
    assert 1 <= len(reads) <= 4 and len(set(reads)) == len(reads)


def test_sampling_is_uniform_over_positions():
    # image 0 holds 9 times as many positions as image 1
    big = np.zeros((2, 9, 10), np.float32)
    big[0] = 1.0
    small = np.zeros((2, 1, 10), np.float32)
    small[1] = 1.0
    enc = VLADEncoder(n_clusters=2, max_descriptors=50, normalize_local=False)
    counts = []
    for seed in range(20):
        enc.set_params(random_state=seed)
        sample = enc._sample_descriptors([big, small], 2, np.random.RandomState(seed))
        counts.append(int(sample[:, 1].sum()))
    assert 2 <= np.mean(counts) <= 8  # expected 5 of 50


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
def test_too_few_descriptors():
    rng = np.random.default_rng(11)
    images = [rng.standard_normal((C, 2, 2)).astype(np.float32) for _ in range(2)]
    with pytest.raises(ValueError, match=r"n_clusters=10 .* 8 local descriptors"):
        VLADEncoder(n_clusters=10).fit(images)
    with pytest.raises(ValueError, match="max_descriptors=3"):
        VLADEncoder(n_clusters=4, max_descriptors=3).fit(images)
    assert VLADEncoder(n_clusters=8, random_state=0).fit(images).n_descriptors_ == 8


def test_invalid_inputs():
    rng = np.random.default_rng(12)
    good = [rng.standard_normal((C, 3, 3)).astype(np.float32) for _ in range(3)]
    with pytest.raises(TypeError, match="FeatureMaps"):
        VLADEncoder(n_clusters=2).fit("not maps")
    with pytest.raises(ValueError, match="4-D"):
        VLADEncoder(n_clusters=2).fit(np.ones((10, 4)))
    with pytest.raises(ValueError, match="empty"):
        VLADEncoder(n_clusters=2).fit([])
    with pytest.raises(ValueError, match="item 0"):
        VLADEncoder(n_clusters=2).fit([[1.0, 2.0]])
    with pytest.raises(ValueError, match="image 1.*channels"):
        VLADEncoder(n_clusters=2).fit([good[0], good[1][:3]])
    with pytest.raises(ValueError, match="image 1.*empty"):
        VLADEncoder(n_clusters=2).fit([good[0], np.ones((C, 0, 3), np.float32)])
    bad = [m.copy() for m in good]
    bad[2][0, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"image 2\b.*NaN"):
        VLADEncoder(n_clusters=2).fit(bad)

    with pytest.raises(NotFittedError):
        VLADEncoder(n_clusters=2).transform(good)
    with pytest.raises(NotFittedError):
        VLADEncoder(n_clusters=2).get_feature_names_out()

    enc = VLADEncoder(n_clusters=2, random_state=0).fit(good)
    with pytest.raises(ValueError, match=f"image 0.*{C + 1} channels, expected {C}"):
        enc.transform([rng.standard_normal((C + 1, 3, 3))])
    with pytest.raises(ValueError, match=r"image 1\b.*NaN"):
        enc.transform(bad[1:])
    with pytest.raises(ValueError, match="4-D"):
        enc.transform(np.ones((3, C)))
    with pytest.raises(TypeError):
        enc.transform(42)
    # concat needs the scales seen in fit
    with pytest.raises(ValueError, match="image 0 .* 2 scales, expected 1"):
        enc.transform([(good[0], good[1])])
    # sum does not
    enc.set_params(scale_combination="sum")
    assert enc.transform([(good[0], good[1])]).shape == (1, 2 * C)
    # replaced centres must keep the number of channels
    enc.cluster_centers_ = np.zeros((2, C + 1), np.float32)
    with pytest.raises(ValueError, match="cluster_centers_"):
        enc.transform(good)


@pytest.mark.parametrize(
    "params",
    [
        {"n_clusters": 0},
        {"n_clusters": 2.5},
        {"max_descriptors": 0},
        {"kmeans": "elkan"},
        {"scale_combination": "mean"},
        {"intra_norm": "yes"},
        {"power_norm": 0.5},
    ],
    ids=repr,
)
def test_invalid_parameters(params):
    X = np.random.default_rng(13).random((3, C, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError):
        VLADEncoder(**params).fit(X)


# ---------------------------------------------------------------------------
# scikit-learn API
# ---------------------------------------------------------------------------
def test_feature_names_and_pandas_output():
    rng = np.random.default_rng(14)
    images = random_images(rng, n=4, scales=2)
    enc = VLADEncoder(n_clusters=3, random_state=0).fit(images)
    names = enc.get_feature_names_out()
    assert names.dtype == object
    assert len(names) == enc.transform(images).shape[1] == 3 * C * 2
    assert names[0] == "vladencoder_s0_w0_c0"
    assert names[C + 1] == "vladencoder_s0_w1_c1"
    assert names[-1] == f"vladencoder_s1_w2_c{C - 1}"
    enc.set_params(scale_combination="sum")
    assert len(enc.get_feature_names_out()) == enc.transform(images).shape[1] == 3 * C
    single = VLADEncoder(n_clusters=3, random_state=0).fit([m[:1] for m in images])
    assert single.get_feature_names_out()[-1] == f"vladencoder_w2_c{C - 1}"

    pd = pytest.importorskip("pandas")
    df = single.set_output(transform="pandas").transform([m[:1] for m in images])
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == single.get_feature_names_out().tolist()


def test_clone_pickle_params_and_tags():
    enc = VLADEncoder(n_clusters=3, power_norm=True, scale_combination="sum",
                      max_descriptors=None, random_state=0)
    params = enc.get_params()
    assert clone(enc).get_params() == params
    assert VLADEncoder(**params).get_params() == params
    with pytest.raises(TypeError):
        VLADEncoder(3)  # keyword-only parameters
    tags = get_tags(enc)
    assert tags.requires_fit and not tags.input_tags.two_d_array
    assert tags.transformer_tags.preserves_dtype == ["float32"]
    X = np.random.default_rng(15).random((3, C, 4, 4), dtype=np.float32)
    enc.fit(X)
    restored = pickle.loads(pickle.dumps(enc))
    assert_array_equal(restored.transform(X), enc.transform(X))


def test_docstring_example():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(VLADEncoder, "VLADEncoder", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_pipeline_after_extractor_and_before_whitening():
    from skretrieval import ConvFeatureExtractor, PCAWhitener

    rng = np.random.default_rng(16)
    images = [
        rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(6)
    ]
    pipe = make_pipeline(
        ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu"),
        VLADEncoder(n_clusters=3, random_state=0),
        PCAWhitener(n_components=4, random_state=0),
    )
    X = pipe.fit_transform(images)
    assert X.shape == (6, 4) and X.dtype == np.float32 and np.all(np.isfinite(X))
    enc = pipe[1]
    maps = pipe[0].transform(images)
    assert enc.cluster_centers_.shape == (3, maps.n_channels)
    assert enc.transform(maps).shape == (6, 3 * maps.n_channels)
    assert_allclose(pipe.transform(images[:2]), X[:2], rtol=1e-4, atol=1e-5)
