"""Tests of the poolers (skretrieval.pooling._global, _regional, _functional).

Every pooler is checked against a plain-loop reference written from the
paper's definition, independently of the vectorised implementation.
"""

import math
import pickle
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags

from skretrieval import FeatureMaps
from skretrieval.pooling import (
    CroWPooler,
    GeMPooler,
    MACPooler,
    RMACPooler,
    SPoCPooler,
    region_grid,
)

ALL_POOLERS = [SPoCPooler, MACPooler, GeMPooler, RMACPooler, CroWPooler]


# ---------------------------------------------------------------------------
# plain-loop references
# ---------------------------------------------------------------------------
def l2(v):
    v = np.asarray(v, dtype=np.float64)
    n = math.sqrt(sum(float(t) * float(t) for t in v))
    return v / n if n > 0 else v


def ref_spoc(x, center_prior=True, sigma_fraction=1 / 3):
    C, H, W = x.shape
    sigma = sigma_fraction * min(H, W) / 2
    out = np.zeros(C)
    for c in range(C):
        for i in range(H):
            for j in range(W):
                y, xx = i + 0.5, j + 0.5
                a = 1.0
                if center_prior:
                    d2 = (y - H / 2) ** 2 + (xx - W / 2) ** 2
                    a = math.exp(-d2 / (2 * sigma**2))
                out[c] += a * float(x[c, i, j])
    return out


def ref_mac(x):
    C, H, W = x.shape
    out = np.full(C, -np.inf)
    for c in range(C):
        for i in range(H):
            for j in range(W):
                out[c] = max(out[c], float(x[c, i, j]))
    return out


def ref_gem(x, p, eps=1e-6):
    C, H, W = x.shape
    out = np.zeros(C)
    for c in range(C):
        s = 0.0
        for i in range(H):
            for j in range(W):
                s += max(float(x[c, i, j]), eps) ** p
        out[c] = (s / (H * W)) ** (1 / p)
    return out


def ref_rmac(x, boxes):
    C = x.shape[0]
    total = np.zeros(C)
    for y0, x0, y1, x1 in boxes:
        v = np.full(C, -np.inf)
        for c in range(C):
            for i in range(y0, y1):
                for j in range(x0, x1):
                    v[c] = max(v[c], float(x[c, i, j]))
        total += l2(v)
    return total


def ref_crow(x, a=2, b=2, channel_weighting=True, eps=1e-6):
    C, H, W = x.shape
    Z = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            Z[i, j] = sum(float(x[c, i, j]) for c in range(C))
    norm = sum(Z[i, j] ** a for i in range(H) for j in range(W)) ** (1 / a)
    S = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            S[i, j] = (Z[i, j] / norm) ** (1 / b)
    Q = np.zeros(C)
    for c in range(C):
        Q[c] = sum(1 for i in range(H) for j in range(W) if x[c, i, j] != 0) / (H * W)
    omega = np.ones(C)
    if channel_weighting:
        for c in range(C):
            omega[c] = math.log((C * eps + Q.sum()) / (eps + Q[c]))
    out = np.zeros(C)
    for c in range(C):
        out[c] = omega[c] * sum(
            S[i, j] * float(x[c, i, j]) for i in range(H) for j in range(W)
        )
    return out


def ref_boxes_authors(H, W, L=3, ovr=0.4):
    """Region boxes as enumerated by the authors' R-MAC code (floats, 2..7)."""
    w = min(W, H)
    steps = np.array([2, 3, 4, 5, 6, 7])
    b = (max(H, W) - w) / (steps - 1)
    idx = int(np.argmin(np.abs(((w**2 - w * b) / w**2) - ovr)))
    Wd = Hd = 0
    if H < W:
        Wd = idx + 1
    elif H > W:
        Hd = idx + 1
    boxes = []
    for level in range(1, L + 1):
        wl = math.floor(2 * w / (level + 1))
        wl2 = math.floor(wl / 2 - 1)
        bW = 0 if level + Wd == 1 else (W - wl) / (level + Wd - 1)
        bH = 0 if level + Hd == 1 else (H - wl) / (level + Hd - 1)
        cenW = [math.floor(wl2 + k * bW) - wl2 for k in range(level + Wd)]
        cenH = [math.floor(wl2 + k * bH) - wl2 for k in range(level + Hd)]
        for i in cenH:
            for j in cenW:
                boxes.append((i, j, i + wl, j + wl))
    return boxes


def random_maps(rng, n=3, C=5, shapes=((4, 6), (5, 5), (3, 7)), positive=True):
    out = []
    for k in range(n):
        H, W = shapes[k % len(shapes)]
        x = rng.standard_normal((C, H, W)).astype(np.float32)
        if positive:
            x = np.abs(x) + 0.05
        out.append(x)
    return out


def reference(pooler, x):
    """Un-normalised single-map descriptor of ``pooler`` by the plain loops."""
    if isinstance(pooler, SPoCPooler):
        frac = 1 / 3 if pooler.sigma is None else pooler.sigma
        return ref_spoc(x, pooler.center_prior, frac)
    if isinstance(pooler, MACPooler):
        return ref_mac(x)
    if isinstance(pooler, GeMPooler):
        return ref_gem(x, pooler.p, pooler.eps)
    if isinstance(pooler, RMACPooler):
        boxes = region_grid(x.shape[1], x.shape[2], pooler.levels, pooler.overlap)
        return ref_rmac(x, boxes.tolist())
    if isinstance(pooler, CroWPooler):
        return ref_crow(x, pooler.spatial_a, pooler.spatial_b, pooler.channel_weighting)
    raise AssertionError(pooler)


POOLER_CASES = [
    SPoCPooler(),
    SPoCPooler(center_prior=False),
    SPoCPooler(sigma=0.5),
    MACPooler(),
    GeMPooler(),
    GeMPooler(p=1.0),
    GeMPooler(p=7.5),
    RMACPooler(),
    RMACPooler(levels=2, overlap=0.3),
    CroWPooler(),
    CroWPooler(spatial_a=1, spatial_b=3),
    CroWPooler(channel_weighting=False),
]


# ---------------------------------------------------------------------------
# each pooler against its reference
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("pooler", POOLER_CASES, ids=repr)
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_reference(pooler, normalize):
    rng = np.random.default_rng(0)
    maps = random_maps(rng)
    if isinstance(pooler, CroWPooler):  # CroW expects sparse rectified maps
        maps = [np.maximum(m - 0.6, 0) for m in maps]
    pooler = clone(pooler).set_params(normalize=normalize)
    out = pooler.transform(maps)
    assert out.shape == (len(maps), maps[0].shape[0])
    assert out.dtype == np.float32
    for i, x in enumerate(maps):
        expected = reference(pooler, x)
        if normalize:
            expected = l2(expected)
        assert_allclose(out[i], expected, rtol=1e-5, atol=1e-5)


def test_normalized_output_has_unit_norm():
    maps = random_maps(np.random.default_rng(1))
    for cls in ALL_POOLERS:
        out = cls().transform(maps)
        assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_spoc_prior_is_centred_and_symmetric():
    # A single unit activation moved around the map: the prior weight is 1 at
    # the centre of an odd map and symmetric under flips.
    H, W = 5, 9
    weights = np.zeros((H, W))
    pooler = SPoCPooler(normalize=False)
    for i in range(H):
        for j in range(W):
            x = np.zeros((1, H, W), dtype=np.float32)
            x[0, i, j] = 1
            weights[i, j] = pooler.transform([x])[0, 0]
    assert weights[2, 4] == pytest.approx(1.0)
    assert_allclose(weights, weights[::-1, ::-1], rtol=1e-6)
    sigma = min(H, W) / 6
    assert weights[2, 5] == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-6)


# ---------------------------------------------------------------------------
# GeM special cases
# ---------------------------------------------------------------------------
def test_gem_p1_is_average_pooling():
    maps = np.abs(np.random.default_rng(2).standard_normal((4, 6, 5, 7))) + 0.1
    out = GeMPooler(p=1, normalize=False).transform(maps.astype(np.float32))
    assert_allclose(out, maps.mean(axis=(2, 3)), rtol=1e-5)


def test_gem_large_p_tends_to_max_and_inf_is_mac():
    maps = np.abs(np.random.default_rng(3).standard_normal((4, 6, 5, 7))) + 0.1
    maps = maps.astype(np.float32)
    mac = MACPooler(normalize=False).transform(maps)
    assert_allclose(MACPooler().transform(maps), GeMPooler(p=np.inf).transform(maps))
    assert_array_equal(GeMPooler(p=np.inf, normalize=False).transform(maps), mac)
    previous = np.inf
    for p in [10, 100, 1000]:
        gem = GeMPooler(p=p, normalize=False).transform(maps)
        assert np.all(gem <= mac * (1 + 1e-6))
        err = np.max(np.abs(gem - mac) / mac)
        assert err < previous
        previous = err
    assert previous < 5e-3


def test_gem_is_stable_for_large_p_and_values():
    rng = np.random.default_rng(4)
    maps = (rng.random((3, 4, 6, 6)) + 0.01).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = GeMPooler(p=3).transform(maps * np.float32(1e30))
        huge_p = GeMPooler(p=1e5, normalize=False).transform(maps)
    # GeM is positively homogeneous: scaling the maps leaves the L2-normalised
    # descriptor unchanged (nothing overflows in float32 ** 3).
    assert_allclose(big, GeMPooler(p=3).transform(maps), rtol=1e-5)
    assert np.all(np.isfinite(huge_p))
    assert_allclose(huge_p, MACPooler(normalize=False).transform(maps), rtol=1e-3)


def test_gem_clamps_negative_values():
    x = np.array([[[-1.0, 2.0], [-3.0, 4.0]]], dtype=np.float32)
    out = GeMPooler(p=2, eps=0.5, normalize=False).transform([x])
    expected = math.sqrt((0.5**2 + 2**2 + 0.5**2 + 4**2) / 4)
    assert out[0, 0] == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------
# R-MAC regions
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [3, 7, 10, 16, 31])
def test_region_grid_square_counts(size):
    boxes = region_grid(size, size, levels=3)
    assert len(boxes) == 1 + 4 + 9
    assert len(region_grid(size, size, levels=1)) == 1
    assert region_grid(size, size, levels=1).tolist() == [[0, 0, size, size]]


@pytest.mark.parametrize(
    "shape, expected",
    [((6, 10), 2 + 6 + 12), ((10, 20), 3 + 8 + 15), ((20, 10), 3 + 8 + 15)],
)
def test_region_grid_rectangular_counts(shape, expected):
    assert len(region_grid(*shape, levels=3)) == expected


def test_region_grid_overlap_is_closest_to_target():
    # 10 x 20: 2, 3 or 4 level-1 squares of side 10 along the width give
    # overlaps 0, 0.5 and 0.67; 0.5 is the closest to 0.4.
    boxes = region_grid(10, 20, levels=1)
    assert boxes.tolist() == [[0, 0, 10, 10], [0, 5, 10, 15], [0, 10, 10, 20]]
    assert len(region_grid(10, 20, levels=1, overlap=0.1)) == 2


@pytest.mark.parametrize(
    "shape", [(10, 10), (6, 10), (10, 20), (12, 16), (20, 15), (9, 30), (7, 7)]
)
def test_region_grid_matches_authors_enumeration(shape):
    ours = set(map(tuple, region_grid(*shape, levels=3).tolist()))
    assert ours == set(ref_boxes_authors(*shape, L=3))


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 2), (1, 9), (2, 1), (2, 2), (3, 50), (50, 2), (7, 40), (13, 17),
     (32, 24)],
)
@pytest.mark.parametrize("levels", [1, 3, 5])
def test_region_grid_inside_and_covering(shape, levels):
    H, W = shape
    boxes = region_grid(H, W, levels=levels)
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) >= 1
    y0, x0, y1, x1 = boxes.T
    assert np.all(y0 >= 0) and np.all(x0 >= 0)
    assert np.all(y1 <= H) and np.all(x1 <= W)
    assert np.all(y1 > y0) and np.all(x1 > x0)
    assert np.all((y1 - y0) == (x1 - x0))  # squares
    assert len(set(map(tuple, boxes.tolist()))) == len(boxes)  # no repeats
    covered = np.zeros((H, W), dtype=bool)
    for a, b, c, d in boxes.tolist():
        covered[a:c, b:d] = True
    assert covered.all()


def test_region_grid_tiny_maps():
    assert region_grid(1, 1).tolist() == [[0, 0, 1, 1]]
    # a 1 x N map degenerates to one region per cell
    assert sorted(region_grid(1, 6).tolist()) == [[0, j, 1, j + 1] for j in range(6)]
    with pytest.raises(ValueError):
        region_grid(0, 4)
    with pytest.raises(ValueError):
        region_grid(4, 4, overlap=1.0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (2, 3)])
def test_rmac_tiny_maps(shape):
    rng = np.random.default_rng(5)
    x = (rng.random((4, *shape)) + 0.1).astype(np.float32)
    out = RMACPooler().transform([x])
    assert np.all(np.isfinite(out))
    expected = l2(ref_rmac(x, region_grid(*shape).tolist()))
    assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)
    if shape == (1, 1):
        assert_allclose(out, MACPooler().transform([x]), rtol=1e-6)


def test_rmac_transform_regions():
    rng = np.random.default_rng(6)
    maps = FeatureMaps(
        [
            ((rng.random((5, 6, 10)) + 0.1), (rng.random((5, 4, 7)) + 0.1)),
            ((rng.random((5, 9, 9)) + 0.1), (rng.random((5, 6, 6)) + 0.1)),
        ],
        scales=(1.0, 0.7),
    )
    pooler = RMACPooler()
    regions, boxes = pooler.transform_regions(maps)
    assert len(regions) == len(boxes) == 2
    for i in range(2):
        n_reg = sum(len(region_grid(*m.shape[1:])) for m in maps[i])
        assert regions[i].shape == (n_reg, 5) and regions[i].dtype == np.float32
        assert boxes[i].shape == (n_reg, 5)
        assert_allclose(np.linalg.norm(regions[i], axis=1), 1, rtol=1e-5)
        # summing each scale's regions reproduces transform
        per_scale = [l2(regions[i][boxes[i][:, 0] == s].sum(axis=0)) for s in (0, 1)]
        expected = l2(np.sum(per_scale, axis=0))
        assert_allclose(pooler.transform(maps)[i], expected, rtol=1e-5)
        # a box's regional vector is the L2-normalised MAC of that box
        s, y0, x0, y1, x1 = boxes[i][-1]
        expected = l2(ref_mac(maps[i][s][:, y0:y1, x0:x1]))
        assert_allclose(regions[i][-1], expected, rtol=1e-5)


# ---------------------------------------------------------------------------
# CroW weights on a hand case
# ---------------------------------------------------------------------------
def test_crow_hand_case():
    x = np.zeros((3, 2, 2), dtype=np.float32)
    x[0] = [[1, 0], [0, 0]]
    x[1] = [[1, 1], [0, 0]]
    # channel 2 is all zero
    eps = 1e-6
    Q = np.array([0.25, 0.5, 0.0])
    omega = np.log((3 * eps + Q.sum()) / (eps + Q))
    # Z = [[2, 1], [0, 0]], ||Z||_2 = sqrt(5), S = sqrt(Z / sqrt(5))
    s00, s01 = math.sqrt(2 / math.sqrt(5)), math.sqrt(1 / math.sqrt(5))
    expected = np.array([omega[0] * s00, omega[1] * (s00 + s01), 0.0])
    out = CroWPooler(normalize=False).transform([x])[0]
    assert_allclose(out, expected, rtol=1e-6)
    assert omega[0] == pytest.approx(math.log(3.0), rel=1e-5)
    assert omega[1] == pytest.approx(math.log(1.5), rel=1e-5)
    out_nw = CroWPooler(normalize=False, channel_weighting=False).transform([x])[0]
    assert_allclose(out_nw, [s00, s00 + s01, 0.0], rtol=1e-6)
    # a = 1, b = 1: S = Z / sum(Z)
    out_ab = CroWPooler(normalize=False, spatial_a=1, spatial_b=1).transform([x])[0]
    assert_allclose(out_ab, omega * np.array([2 / 3, 1.0, 0.0]), rtol=1e-6)


def test_crow_negative_responses_do_not_give_nan():
    x = -np.abs(np.random.default_rng(7).standard_normal((3, 4, 4))).astype(np.float32)
    x[0, 0, 0] = 50.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = CroWPooler().transform([x, -np.ones((3, 4, 4), np.float32)])
    assert np.all(np.isfinite(out))
    assert_array_equal(out[1], 0)


# ---------------------------------------------------------------------------
# multi-scale combination
# ---------------------------------------------------------------------------
def two_scale_maps(rng, n=3, C=4):
    return [
        [
            (rng.random((C, 6 + k, 8)) + 0.05).astype(np.float32),
            (rng.random((C, 4, 5 + k)) + 0.05).astype(np.float32),
        ]
        for k in range(n)
    ]


@pytest.mark.parametrize("cls", ALL_POOLERS)
def test_scale_combination_sum_and_concat(cls):
    rng = np.random.default_rng(8)
    maps = two_scale_maps(rng)
    single = cls(normalize=False)
    per_scale = [single.transform([item[s] for item in maps]) for s in (0, 1)]

    out_sum = cls().transform(maps)
    assert out_sum.shape == (3, 4)
    for i in range(3):
        expected = l2(l2(per_scale[0][i]) + l2(per_scale[1][i]))
        assert_allclose(out_sum[i], expected, rtol=1e-5, atol=1e-6)

    out_cat = cls(scale_combination="concat").transform(maps)
    assert out_cat.shape == (3, 8)
    for i in range(3):
        expected = l2(np.concatenate([l2(per_scale[0][i]), l2(per_scale[1][i])]))
        assert_allclose(out_cat[i], expected, rtol=1e-5, atol=1e-6)

    raw = cls(normalize=False).transform(maps)
    assert_allclose(raw, per_scale[0] + per_scale[1], rtol=1e-5)

    pooler = cls(scale_combination="concat").fit(maps)
    assert pooler.n_scales_ == 2
    names = pooler.get_feature_names_out()
    assert len(names) == 8 and names[-1] == f"{cls.__name__.lower()}7"


def test_concat_requires_consistent_scales():
    rng = np.random.default_rng(9)
    maps = two_scale_maps(rng)
    maps[1] = maps[1][:1]
    with pytest.raises(ValueError, match="image 1"):
        GeMPooler(scale_combination="concat").transform(maps)
    with pytest.raises(ValueError, match="image 1"):
        GeMPooler().fit(maps)
    # "sum" does not need the same scales per image
    assert GeMPooler().transform(maps).shape == (3, 4)


# ---------------------------------------------------------------------------
# input forms
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL_POOLERS)
def test_input_forms_agree(cls):
    rng = np.random.default_rng(10)
    arr = (rng.random((4, 6, 5, 7)) + 0.01).astype(np.float32)
    forms = [
        arr,
        list(arr),
        [[m] for m in arr],
        [(m,) for m in arr],
        FeatureMaps([(m,) for m in arr]),
        FeatureMaps([(m,) for m in arr], store="disk"),
        arr.astype(np.float64),
    ]
    expected = cls().transform(arr)
    for X in forms:
        assert_allclose(cls().transform(X), expected, rtol=1e-6, atol=1e-7)
        assert_allclose(cls().fit(X).transform(X), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", ALL_POOLERS)
def test_disk_float16_feature_maps(cls, tmp_path):
    rng = np.random.default_rng(11)
    entries = [
        ((rng.random((6, 5, 7)) + 0.01), (rng.random((6, 3, 4)) + 0.01))
        for _ in range(3)
    ]
    fm = FeatureMaps(entries, scales=(1.0, 0.5), store=tmp_path, dtype="float16")
    as_f32 = [
        tuple(m.astype(np.float16).astype(np.float32) for m in e) for e in entries
    ]
    pooler = cls().fit(fm)
    assert pooler.n_channels_ == 6 and pooler.n_scales_ == 2
    out = pooler.transform(fm)
    assert out.dtype == np.float32
    assert_allclose(out, cls().transform(as_f32), rtol=1e-5, atol=1e-6)
    # subsets share the store
    assert_allclose(pooler.transform(fm[[2, 0]]), out[[2, 0]], rtol=1e-6)


def test_transform_does_not_modify_input():
    rng = np.random.default_rng(12)
    fm = FeatureMaps(
        [(rng.standard_normal((3, 4, 5)).astype(np.float32),) for _ in range(2)]
    )
    before = [m[0].copy() for m in fm]
    for cls in ALL_POOLERS:
        cls().transform(fm)
        cls(normalize=False).transform(fm)
    for b, m in zip(before, fm):
        assert_array_equal(b, m[0])


# ---------------------------------------------------------------------------
# degenerate and invalid input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL_POOLERS)
@pytest.mark.parametrize("combination", ["sum", "concat"])
def test_zero_maps_give_zero_vectors_without_warnings(cls, combination):
    rng = np.random.default_rng(13)
    maps = [
        [np.zeros((4, 5, 6), np.float32), np.zeros((4, 3, 3), np.float32)],
        [
            (rng.random((4, 5, 6)) + 0.1).astype(np.float32),
            np.zeros((4, 3, 3), np.float32),
        ],
        [np.zeros((4, 1, 1), np.float32), np.zeros((4, 1, 7), np.float32)],
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cls(scale_combination=combination).transform(maps)
        raw = cls(normalize=False, scale_combination=combination).transform(maps)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(raw))
    assert_array_equal(out[0], 0)
    assert_array_equal(out[2], 0)
    assert_array_equal(raw[0], 0)
    assert np.linalg.norm(out[1]) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("cls", ALL_POOLERS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_maps_raise_naming_the_image(cls, bad):
    maps = random_maps(np.random.default_rng(14), n=4)
    maps[2] = maps[2].copy()
    maps[2][1, 0, 0] = bad
    with pytest.raises(ValueError, match=r"image 2\b.*(NaN|infinite)"):
        cls().transform(maps)
    fm = FeatureMaps([(m,) for m in maps], store="disk", dtype="float16")
    with pytest.raises(ValueError, match=r"image 2\b"):
        cls().transform(fm)


@pytest.mark.parametrize("cls", ALL_POOLERS)
def test_invalid_inputs(cls):
    with pytest.raises(ValueError, match="empty"):
        cls().transform([])
    with pytest.raises(ValueError, match="empty"):
        cls().fit([])
    with pytest.raises(ValueError, match="4-D"):
        cls().transform(np.ones((3, 4)))
    with pytest.raises(ValueError, match="4-D"):
        cls().fit(np.ones((3, 4)))
    with pytest.raises(ValueError, match="item 0"):
        cls().transform([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(TypeError):
        cls().transform("not maps")
    rng = np.random.default_rng(15)
    mixed = [rng.random((4, 3, 3)), rng.random((5, 3, 3))]
    with pytest.raises(ValueError, match="image 1.*channels"):
        cls().transform(mixed)
    with pytest.raises(ValueError, match="image 1.*channels"):
        cls().fit(mixed)
    with pytest.raises(ValueError, match="image 0.*empty"):
        cls().transform([np.ones((4, 0, 3))])
    # after fit, transform checks the number of channels
    pooler = cls().fit([rng.random((4, 3, 3))])
    with pytest.raises(ValueError, match="channels"):
        pooler.transform([rng.random((5, 3, 3))])


@pytest.mark.parametrize(
    "pooler",
    [
        GeMPooler(p=0),
        GeMPooler(p=-1),
        GeMPooler(eps=-1),
        SPoCPooler(sigma=0),
        RMACPooler(levels=0),
        RMACPooler(overlap=1.0),
        CroWPooler(spatial_a=0),
        MACPooler(scale_combination="mean"),
        MACPooler(normalize="yes"),
    ],
    ids=repr,
)
def test_invalid_parameters(pooler):
    X = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError):
        pooler.fit(X)
    with pytest.raises(ValueError):
        pooler.transform(X)


# ---------------------------------------------------------------------------
# scikit-learn API
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL_POOLERS)
def test_tags_and_stateless_pipeline(cls):
    tags = get_tags(cls())
    assert tags.requires_fit is False
    assert tags.input_tags.two_d_array is False
    X = (np.random.default_rng(16).random((5, 6, 4, 5)) + 0.01).astype(np.float32)
    Xt = make_pipeline(cls(), StandardScaler()).fit_transform(X)
    assert Xt.shape == (5, 6)
    # transform on an unfitted pipeline: allowed since requires_fit is False
    assert_allclose(make_pipeline(cls()).transform(X), cls().transform(X))


def test_unfitted_spoc_pipeline_transform():
    X = np.random.default_rng(17).random((3, 4, 5, 5)).astype(np.float32)
    out = make_pipeline(SPoCPooler()).transform(list(X))
    assert out.shape == (3, 4)


@pytest.mark.parametrize("cls", ALL_POOLERS)
def test_get_feature_names_out(cls):
    X = np.random.default_rng(18).random((2, 3, 4, 4)).astype(np.float32)
    with pytest.raises(NotFittedError, match="fit"):
        cls().get_feature_names_out()
    pooler = cls().fit(X)
    assert pooler.n_channels_ == 3 and pooler.n_scales_ == 1
    prefix = cls.__name__.lower()
    names = pooler.get_feature_names_out()
    assert names.dtype == object
    assert names.tolist() == [f"{prefix}{i}" for i in range(3)]
    assert len(names) == pooler.transform(X).shape[1]


@pytest.mark.parametrize("pooler", POOLER_CASES, ids=repr)
def test_clone_get_params_roundtrip(pooler):
    params = pooler.get_params()
    cloned = clone(pooler)
    assert cloned is not pooler and cloned.get_params() == params
    assert type(pooler)(**params).get_params() == params
    roundtrip = pickle.loads(pickle.dumps(pooler))
    assert roundtrip.get_params() == params
    with pytest.raises(TypeError):
        type(pooler)(True)  # keyword-only parameters


def test_set_params_changes_output():
    X = (np.random.default_rng(19).random((2, 3, 4, 4)) + 0.01).astype(np.float32)
    pooler = GeMPooler(p=1.0, normalize=False)
    a = pooler.transform(X)
    pooler.set_params(p=np.inf)
    assert_allclose(pooler.transform(X), X.max(axis=(2, 3)))
    assert not np.allclose(a, pooler.transform(X))


def test_set_output_pandas():
    pd = pytest.importorskip("pandas")
    X = np.random.default_rng(20).random((3, 4, 5, 5)).astype(np.float32)
    pooler = GeMPooler().set_output(transform="pandas").fit(X)
    df = pooler.transform(X)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == [f"gempooler{i}" for i in range(4)]


def test_set_output_default():
    X = np.random.default_rng(21).random((3, 4, 5, 5)).astype(np.float32)
    pooler = MACPooler().set_output(transform="default")
    assert isinstance(pooler.fit_transform(X), np.ndarray)


def test_registry_lists_every_pooler_and_the_torch_poolings():
    from skretrieval.pooling._registry import POOLERS, make_pooler

    assert [spec.estimator for spec in POOLERS.values()] == ALL_POOLERS
    assert [spec.display_name for spec in POOLERS.values()] == [
        "SPoC", "MAC", "GeM", "R-MAC", "CroW"]
    assert isinstance(make_pooler("gem", p=2.0), GeMPooler)
    with pytest.raises(ValueError, match="pooler must be one of"):
        make_pooler("sum")
    nn = pytest.importorskip("skretrieval.nn")
    assert set(nn.POOLINGS) <= set(POOLERS)
