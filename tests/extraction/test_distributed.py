"""ConvFeatureExtractor on a real dask.distributed LocalCluster (2 worker processes).

The maps computed on the workers equal the in-process ones; a chunk that
raises once is retried, a worker that dies mid-run loses nothing, a chunk
that keeps killing workers is reported with the maps of every other image,
and an unreadable image still raises the ImageLoadError naming it.
"""

import logging
import os

import joblib
import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed")

from sklearn.base import clone  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skretrieval import (  # noqa: E402
    ConvFeatureExtractor, Crop, DistributedExtractionError, FeatureMaps, GeMPooler,
    ImageLoadError, forward_pass_count)
from skretrieval.extraction._distributed import distributed_backend  # noqa: E402

from _helpers import assert_rankings_equivalent  # noqa: E402

N_IMAGES = 20


def _on_worker():
    try:
        distributed.get_worker()
        return True
    except ValueError:
        return False


class FaultyExtractor(ConvFeatureExtractor):
    """Misbehaves on a dask worker when its chunk holds a trigger image.

    ``faults`` is a list of ``(action, trigger path, marker path)``;
    ``raise_once`` / ``exit_once`` raise / kill the worker process the first
    time (the marker file records it), ``exit_always`` every time.
    """

    def transform(self, X):
        if _on_worker():
            names = {os.fspath(x) for x in X if isinstance(x, (str, os.PathLike))}
            for action, trigger, marker in getattr(self, "faults", ()):
                if trigger in names and (action.endswith("always")
                                         or not os.path.exists(marker)):
                    open(marker, "w").close()
                    if action.startswith("raise"):
                        raise RuntimeError("injected failure")
                    os._exit(1)
        return super().transform(X)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def client():
    # dask's nanny writes its worker settings (OMP_NUM_THREADS=1, ...) into
    # this process's environment: put it back for the subprocesses of other tests
    environ = dict(os.environ)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=logging.CRITICAL)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_IMAGES):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (40 + 2 * i, 64 - i, 3), dtype=np.uint8)).save(path)
        out.append(str(path))
    return out


@pytest.fixture(scope="module")
def extractor():
    return FaultyExtractor("resnet18", weights=None, max_size=64, device="cpu").fit()


@pytest.fixture(scope="module")
def local_maps(extractor, paths):
    return extractor.transform(paths)


def _assert_same(a, b, rtol=1e-4, atol=1e-5):
    # float tolerance (the maps are those of separate processes)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            assert u.shape == v.shape
            np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def _worker_passes(client):
    return sum(client.run(forward_pass_count).values())


def test_dask_path_equals_local_path(client, extractor, paths, local_maps, capsys):
    assert distributed_backend() is None
    before, on_workers = forward_pass_count(), _worker_passes(client)
    extractor.set_params(verbose=1)
    try:
        with joblib.parallel_backend("dask"):
            assert distributed_backend() is not None
            maps = extractor.transform(paths)
    finally:
        extractor.set_params(verbose=0)
    assert isinstance(maps, FeatureMaps) and maps.layer == local_maps.layer
    _assert_same(maps, local_maps)
    # the workers ran the network, not this process
    assert forward_pass_count() == before
    assert _worker_passes(client) - on_workers == N_IMAGES
    err = capsys.readouterr().err
    assert "dask: 20 images in 7 chunks of <= 3 on 2 worker threads" in err
    assert "extracting (dask): 100%" in err and "20/20" in err  # the progress bar

    # a pipeline (fit_transform goes through transform) gives the same descriptors
    pipe = make_pipeline(clone(extractor), GeMPooler())  # same network: not rebuilt
    expected = pipe.fit_transform(paths)
    with joblib.parallel_backend("dask"):
        got = pipe.fit_transform(paths)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)

    # other joblib backends keep the in-process path
    with joblib.parallel_backend("loky"):
        assert distributed_backend() is None


def test_dask_extraction_of_vit_blocks_equals_local(client, paths):
    pytest.importorskip("timm")
    ext = ConvFeatureExtractor("timm:vit_tiny_patch16_224", weights=None, layer="blocks.3",
                               max_size=48, device="cpu").fit()
    expected = ext.transform(paths[:6])
    with joblib.parallel_backend("dask"):
        maps = ext.transform(paths[:6])
    _assert_same(maps, expected)


def test_dask_path_with_scales_float16_disk_store_cams_and_any_item(
        client, paths, tmp_path, monkeypatch):
    params = dict(weights=None, max_size=64, scales=(1, 0.5), dtype="float16",
                  store="disk", device="cpu")
    if "cams" in ConvFeatureExtractor().get_params():  # class activation maps come along
        params["cams"] = 2
    ext = ConvFeatureExtractor("resnet18", **params).fit()
    monkeypatch.chdir(os.path.dirname(paths[0]))
    rng = np.random.default_rng(1)
    items = [os.path.basename(p) for p in paths[:6]]                  # relative paths
    items += [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(3)]
    items += [Image.open(p).convert("RGB") for p in paths[6:9]]        # PIL images
    items += [Crop(p, (2, 3, 40, 35)) for p in paths[9:12]]
    local = ext.transform(items)
    with joblib.parallel_backend("dask"):
        maps = ext.transform(items)
    assert maps.dtype == np.float16 and "disk" in repr(maps)
    _assert_same(maps, local, rtol=2e-3, atol=1e-4)  # float16: one unit in the last place
    if "cams" in params:
        assert maps.has_cams
        for i in range(len(items)):
            a, b = maps.class_activations(i), local.class_activations(i)
            # the class probabilities of a random network are close to each other:
            # computed in another process, near-tied classes may swap
            assert_rankings_equivalent(a.scores, a.classes, b.scores, b.classes,
                                       rtol=1e-4, atol=1e-7)
            for u, v in zip(a.maps, b.maps):
                local_cam = dict(zip(b.classes.tolist(), v))
                for c, cam in zip(a.classes.tolist(), u):
                    if c in local_cam:  # (not a near-tied class cut from the other top)
                        np.testing.assert_allclose(cam, local_cam[c], atol=1e-3)


def test_shared_cache_directory_resumes(client, paths, tmp_path):
    ext = ConvFeatureExtractor("resnet18", weights=None, max_size=64, device="cpu",
                               cache=str(tmp_path / "cache")).fit()
    with joblib.parallel_backend("dask"):
        on_workers = _worker_passes(client)
        first = ext.transform(paths[:10])          # half of them
        assert _worker_passes(client) - on_workers == 10
        maps = ext.transform(paths)                # only the other half run
        assert _worker_passes(client) - on_workers == N_IMAGES
    _assert_same(maps[:10], first)
    before = forward_pass_count()
    _assert_same(ext.transform(paths), maps)       # in-process: same keys, all cached
    assert forward_pass_count() == before


def test_chunk_failing_once_is_retried(client, extractor, paths, local_maps, tmp_path):
    extractor.faults = [("raise_once", paths[4], str(tmp_path / "raised"))]
    try:
        with joblib.parallel_backend("dask"):
            with pytest.warns(RuntimeWarning, match=r"chunk 1 \(images 3-5\) succeeded "
                              r"after 1 failed attempt\(s\): RuntimeError: injected"):
                maps = extractor.transform(paths)
    finally:
        extractor.faults = []
    assert (tmp_path / "raised").exists()
    _assert_same(maps, local_maps)


def test_chunk_failing_every_time_is_reported_with_the_other_maps(
        client, extractor, paths, local_maps, tmp_path):
    extractor.faults = [("raise_always", paths[10], str(tmp_path / "raised"))]
    try:
        with joblib.parallel_config(backend="dask", retries=1):  # default: 2 retries
            with pytest.raises(DistributedExtractionError,
                               match=r"1 of 7 chunks failed \(3 of 20 images\): chunk 3 "
                                     r"\(images 9-11, 2 attempts\): RuntimeError: "
                                     r"injected failure") as info, \
                    pytest.warns(RuntimeWarning, match=r"chunk 3 \(images 9-11\) failed 2 "
                                 r"times, given up"):
                extractor.transform(paths)
    finally:
        extractor.faults = []
    exc = info.value
    assert [(f["chunk"], f["start"], f["stop"], f["attempts"]) for f in exc.failed] == [
        (3, 9, 12, 2)]
    assert "injected failure" in exc.failed[0]["traceback"]
    kept = [i for i in range(N_IMAGES) if not 9 <= i < 12]
    np.testing.assert_array_equal(exc.indices, kept)
    _assert_same(exc.maps, local_maps[kept])


def test_bad_image_raises_image_load_error_naming_it(client, extractor, paths, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    items = paths[:13] + [str(bad)] + paths[13:]
    with pytest.raises(ImageLoadError) as local:
        extractor.transform(items)
    with joblib.parallel_backend("dask"):
        with pytest.raises(ImageLoadError, match=r"image 13 of 21 \('.*broken\.png'\)") as info:
            extractor.transform(items)
    assert info.value.index == local.value.index == 13
    # the same image and reason (the local message also says which maps it kept)
    assert (info.value.reason, info.value.path) == (local.value.reason, local.value.path)


def test_worker_killed_mid_run_loses_nothing(client, extractor, paths, local_maps, tmp_path):
    # (last: the killed worker restarts while no other test waits for it)
    # A worker process dies in the middle of a chunk.  With dask's default
    # the scheduler reruns its tasks elsewhere by itself; here it gives a
    # task up at the first death of its worker (KilledWorker; default: at the
    # 4th), so the chunk, and any other chunk that was on the dead worker, is
    # run once more on its own by skretrieval, and succeeds
    scheduler = client.cluster.scheduler
    allowed = scheduler.allowed_failures
    scheduler.allowed_failures = 0
    extractor.faults = [("exit_once", paths[10], str(tmp_path / "exited"))]
    try:
        with joblib.parallel_backend("dask"):
            maps = extractor.transform(paths)
    finally:
        extractor.faults = []
        scheduler.allowed_failures = allowed
    assert (tmp_path / "exited").exists()
    _assert_same(maps, local_maps)
