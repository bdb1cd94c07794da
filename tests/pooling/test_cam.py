"""Class activation maps, class-weighted features, online search and re-ranking."""

import subprocess
import sys
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline

from skretrieval import (
    CAMWeighter,
    ClassVectors,
    ConvFeatureExtractor,
    FeatureMaps,
    GeMPooler,
    NearestNeighborRetriever,
    OnlineCAMRetriever,
    PCAWhitener,
    QueryExpansionRetriever,
    RegionReranker,
    cam_boxes,
)
from skretrieval.extraction._backbones import load_backbone

from _helpers import assert_rankings_equivalent


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 60, (64 + 8 * (i % 3), 80, 3), dtype=np.uint8)
        y, x = rng.integers(5, 40, 2)
        img[y:y + 20, x:x + 25] = rng.integers(150, 255, 3)  # an "object"
        out.append(img)
    return out


@pytest.fixture(scope="module")
def images():
    return _images(12)


@pytest.fixture(scope="module")
def cam_maps(images):
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=96, cams=8).fit()
    return ext.transform(images)


def _reference_cams(images, layer_node, K, max_size=96):
    """CAMs straight from the classifier weights of the same random network."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from skretrieval.extraction._batches import resize as _resize, resized_shape as _resized_shape

    model, mean, std = load_backbone("resnet18", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = create_feature_extractor(model.eval(), {layer_node: "layer", "layer4": "last"})
    W = model.fc.weight.detach().numpy().astype(np.float64)
    b = model.fc.bias.detach().numpy().astype(np.float64)
    out = []
    for img in images:
        arr = _resize(img, _resized_shape(*img.shape[:2], max_size))
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            res = net(x)
        F = res["last"][0].double().numpy()  # "layer" is also "last" for layer4
        grid = res.get("layer", res["last"]).shape[2:]
        logits = W @ F.mean(axis=(1, 2)) + b
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:K]
        cams = []
        for c in top:
            cam = np.tensordot(W[c], F, axes=1)
            cam = torch.nn.functional.interpolate(
                torch.from_numpy(cam)[None, None], size=tuple(grid), mode="bilinear",
                align_corners=False)[0, 0].numpy()
            cams.append((cam - cam.min()) / (cam.max() - cam.min()))
        out.append((top, p[top], np.stack(cams)))
    return out


@pytest.mark.parametrize("layer, node", [(None, "layer4"), ("layer3", "layer3")])
def test_cams_match_a_direct_computation_from_the_classifier(images, layer, node):
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=96, cams=5,
                               layer=layer).fit()
    maps = ext.transform(images[:4])
    assert ext.cam_node_ == "layer4" and ext.n_classes_ == 1000
    for i, (top, probs, cams) in enumerate(_reference_cams(images[:4], node, 5)):
        act = maps.class_activations(i)
        # float32 against the float64 head of the reference: the probabilities of
        # a random network are close to each other, and near-tied classes may swap
        assert_rankings_equivalent(act.scores, act.classes, probs, top, rtol=1e-4,
                                   atol=1e-7)
        assert act.maps[0].shape == (5,) + maps[i][0].shape[1:]
        reference = dict(zip(top.tolist(), cams))
        for c, cam in zip(act.classes.tolist(), act.maps[0]):
            if c in reference:  # (not a near-tied class cut from the reference's top 5)
                np.testing.assert_allclose(cam, reference[c], atol=1e-4)
        assert act.maps[0].min() >= 0 and act.maps[0].max() <= 1


def test_cams_with_scales_cache_and_disk_store(images, tmp_path):
    kw = dict(weights=None, max_size=96, cams=3, scales=(1.0, 0.75), layer="layer3")
    plain = ConvFeatureExtractor("resnet18", **kw).fit().transform(images[:3])
    ext = ConvFeatureExtractor("resnet18", store=str(tmp_path / "maps"),
                               cache=str(tmp_path / "cache"), **kw).fit()
    first, second = ext.transform(images[:3]), ext.transform(images[:3])  # second: cache hits
    for got in (first, second):
        for i in range(3):
            a, b = plain.class_activations(i), got.class_activations(i)
            np.testing.assert_array_equal(a.classes, b.classes)
            for s in range(2):
                assert a.maps[s].shape[1:] == got[i][s].shape[1:]
                np.testing.assert_allclose(a.maps[s], b.maps[s], atol=1e-5)
    # slicing and extend carry the CAMs
    sub = second[[2, 0]]
    np.testing.assert_array_equal(sub.class_activations(0).classes,
                                  second.class_activations(2).classes)
    merged = FeatureMaps(scales=(1.0, 0.75)).extend(sub)
    assert merged.has_cams and len(merged) == 2


def test_cam_errors(images):
    with pytest.raises(ValueError, match="no class activation maps.*fully-connected"):
        ConvFeatureExtractor("vgg11", weights=None, cams=4).fit()
    with pytest.raises(ValueError, match="not one linear layer"):
        ConvFeatureExtractor("mobilenet_v3_small", weights=None, cams=4).fit()
    plain = ConvFeatureExtractor("resnet18", weights=None, max_size=64).fit()
    maps = plain.transform(images[:2])
    with pytest.raises(ValueError, match="cams=K"):
        CAMWeighter(2).fit(maps)
    with pytest.raises(ValueError, match="carry no class activation"):
        maps.class_activations(0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="every image"):
        fm = FeatureMaps([rng.random((4, 2, 2))])
        fm.append((rng.random((4, 2, 2)),), cams=([1], [0.5], (rng.random((1, 2, 2)),)))
    with pytest.raises(ValueError, match="do not match"):
        FeatureMaps().append((rng.random((4, 2, 2)),),
                             cams=([1], [0.5], (rng.random((1, 3, 2)),)))


def _reference_class_weighting(maps, acts, n_classes, whitener=None):
    """Jimenez et al.: sum_xy F_k(x,y) CAM_c(x,y) * CroW channel weight, per class;
    L2 -> whitening -> L2; sum; L2 (an explicit loop)."""
    out = []
    for entry, act in zip(maps, acts):
        F = entry[0]
        C = F.shape[0]
        flat = F.reshape(C, -1)
        Q = np.array([np.count_nonzero(flat[k]) / flat.shape[1] for k in range(C)])
        eps = 1e-6
        omega = np.log((C * eps + Q.sum()) / (eps + Q))
        vecs = []
        for c in range(n_classes):
            v = np.zeros(C)
            for k in range(C):
                for y in range(F.shape[1]):
                    for x in range(F.shape[2]):
                        v[k] += F[k, y, x] * act.maps[0][c, y, x]
            v = v * omega
            v = v / np.linalg.norm(v)
            if whitener is not None:
                v = whitener.transform(v[None].astype(np.float32))[0]
                v = v / np.linalg.norm(v)
            vecs.append(v)
        total = np.sum(vecs, axis=0)
        out.append(total / np.linalg.norm(total))
    return np.array(out)


def test_cam_weighting_matches_a_reference(cam_maps):
    import skretrieval.pooling._regional as pooling

    assert pooling._CROW_EPS == 1e-6
    sub = cam_maps[:4]
    acts = [sub.class_activations(i) for i in range(4)]
    got = CAMWeighter(3).fit(sub).transform(sub)
    np.testing.assert_allclose(got, _reference_class_weighting(sub, acts, 3), atol=1e-5)
    cw = CAMWeighter(3, whitener=PCAWhitener(5), random_state=0).fit(cam_maps)
    got = cw.transform(sub)
    assert got.shape == (4, 5)
    np.testing.assert_allclose(
        got, _reference_class_weighting(sub, acts, 3, cw.whitener_), atol=1e-4)
    with pytest.raises(ValueError, match="carry the CAMs of 8 classes"):
        CAMWeighter(9).fit(cam_maps)


def test_online_aggregation_matches_its_definition(cam_maps):
    cw = CAMWeighter(4, aggregation="online", whitener=PCAWhitener(6), random_state=0)
    cv = cw.fit(cam_maps).transform(cam_maps)
    assert isinstance(cv, ClassVectors) and cv.vectors.shape == (12, 4, 6)
    # offline with the same whitener = the sum of each image's own class vectors
    off = cw.set_params(aggregation="offline").transform(cam_maps)
    own = cv.vectors.sum(axis=1)
    np.testing.assert_allclose(off, own / np.linalg.norm(own, axis=1, keepdims=True),
                               atol=1e-5)
    r = OnlineCAMRetriever(n_neighbors=5).fit(cv[4:], np.arange(8))
    S = r.similarities(cv[:4])
    for j in range(4):
        q = cv.vectors[j].sum(axis=0)
        q /= np.linalg.norm(q)
        for i in range(8):
            mine = np.isin(cv.classes[4 + i], cv.classes[j])
            d = cv.vectors[4 + i][mine].sum(axis=0)
            expected = 0.0 if not mine.any() else q @ d / np.linalg.norm(d)
            assert S[j, i] == pytest.approx(expected, abs=1e-5)
    dist, ind = r.kneighbors(cv[:4])
    np.testing.assert_array_equal(ind, np.argsort(-S, axis=1, kind="stable")[:, :5])
    loo = r.fit(cv, np.arange(12) % 3).kneighbors(None, n_neighbors="all")[1]
    assert not (loo == np.arange(12)[:, None]).any() and loo.shape == (12, 11)
    with pytest.raises(TypeError, match="ClassVectors"):
        r.fit(np.zeros((3, 4)))


def test_cam_boxes_take_the_largest_component():
    cam = np.zeros((10, 12))
    cam[1:3, 1:3] = 1.0    # a small, strong blob
    cam[5:9, 4:11] = 0.6   # a large, weaker blob
    boxes = cam_boxes(cam, thresholds=(0.5, 0.8))
    np.testing.assert_allclose(boxes[0], [5 / 10, 4 / 12, 9 / 10, 11 / 12])  # larger wins
    np.testing.assert_allclose(boxes[1], [1 / 10, 1 / 12, 3 / 10, 3 / 12])   # only the strong
    assert cam_boxes(np.ones((3, 3)), (0.1,)).tolist() == [[0, 0, 1, 1]]


@pytest.mark.parametrize("proposals", ["cam", "rmac", "both"])
def test_reranking_only_reorders_the_short_list(cam_maps, proposals):
    y = np.arange(12) % 4
    agg = make_pipeline(GeMPooler(), PCAWhitener(8, random_state=0))
    R = 5
    rr = RegionReranker(agg, n_rerank=R, proposals=proposals).fit(cam_maps, y)
    queries = cam_maps[:6]
    # the global search of the re-ranker itself (the same query vectors, the same
    # code path: the same results, ties included)
    d_glob, i_glob = rr.retriever_.kneighbors(rr._queries(queries)[0], n_neighbors=12)
    dist, ind = rr.kneighbors(queries, n_neighbors="all")
    assert ind.shape == (6, 12)
    for j in range(6):
        assert sorted(ind[j]) == list(range(12))                 # nothing dropped
        assert set(ind[j, :R]) == set(i_glob[j, :R])              # same short list
        np.testing.assert_array_equal(ind[j, R:], i_glob[j, R:])  # rest untouched
        np.testing.assert_allclose(dist[j, R:], d_glob[j, R:], atol=1e-6)
        assert np.all(np.diff(dist[j]) >= -1e-6)                  # still sorted
    # the re-ranked score is the best of the global and region similarities
    q = rr.aggregator_.transform(queries[:1])[0]
    q = q / np.linalg.norm(q)
    for r in range(R):
        i = ind[0, r]
        regions = rr.region_vectors_[rr.region_offsets_[i]:rr.region_offsets_[i + 1]]
        best = max(float(rr.global_[i] @ q), float((regions @ q).max()))
        assert 1 - dist[0, r] == pytest.approx(best, abs=1e-5)
    # leave-one-out drops nothing either, and never returns the query
    loo = rr.kneighbors(None, n_neighbors="all")[1]
    assert loo.shape == (12, 11) and not (loo == np.arange(12)[:, None]).any()
    assert 0 <= rr.score() <= 1


def test_reranking_memory_is_the_regions_only(cam_maps):
    rr = RegionReranker(CAMWeighter(3, whitener=PCAWhitener(6), random_state=0),
                        proposals="both", dtype="float16").fit(cam_maps)
    assert rr.region_vectors_.dtype == np.float16
    assert rr.region_vectors_.shape[1] == 6
    assert rr.region_offsets_[-1] == len(rr.region_vectors_)
    assert not any(isinstance(v, FeatureMaps) for v in vars(rr).values())
    with pytest.raises(ValueError, match="proposals='cam' needs"):
        plain = FeatureMaps([m for m in cam_maps])
        RegionReranker(GeMPooler()).fit(plain)


_LOAD_AND_RANK = """
import sys, joblib, numpy as np
pipe = joblib.load(sys.argv[1])
queries = joblib.load(sys.argv[2])
ind = pipe[-1].kneighbors(pipe[:-1].transform(queries), n_neighbors="all")[1]
np.save(sys.argv[3], ind)
"""


def test_full_cam_pipeline_round_trips_with_joblib(images, tmp_path):
    y = np.arange(12) % 4
    pipe = make_pipeline(
        ConvFeatureExtractor("resnet18", weights=None, max_size=96, cams=6),
        RegionReranker(CAMWeighter(4, whitener=PCAWhitener(6), random_state=0),
                       QueryExpansionRetriever(NearestNeighborRetriever(), qe_k=2, dba_k=2),
                       n_rerank=6, proposals="both", qe_k=2))
    pipe.fit(images, y)
    queries = _images(3, seed=5)
    before = pipe[-1].kneighbors(pipe[:-1].transform(queries), n_neighbors="all")[1]
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    joblib.dump(queries, tmp_path / "queries.joblib")
    loaded = joblib.load(tmp_path / "pipe.joblib")
    after = loaded[-1].kneighbors(loaded[:-1].transform(queries), n_neighbors="all")[1]
    np.testing.assert_array_equal(before, after)
    subprocess.run([sys.executable, "-c", _LOAD_AND_RANK, str(tmp_path / "pipe.joblib"),
                    str(tmp_path / "queries.joblib"), str(tmp_path / "ind.npy")], check=True)
    np.testing.assert_array_equal(before, np.load(tmp_path / "ind.npy"))
