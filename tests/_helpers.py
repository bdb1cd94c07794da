"""Comparisons of floating-point search results shared by the test modules.

Two code paths that compute the same distances (BLAS against a blocked or
streamed search, float32 against float16 storage, numpy against faiss or
torch, one thread against several) do not sum in the same order: their
float32 results agree to a few units in the last place only, and which
kernel a BLAS library picks depends on the CPU (AVX-512 or not...).  Items
whose distances agree to that precision may then come in either order, and
one of them may be cut from a top-``k`` that the other keeps.

:func:`assert_rankings_equivalent` is the comparison for such results:
distances close with a relative tolerance suited to float32, rankings equal
up to swaps within ties.  The same code path run twice (a joblib round trip,
a second call) is still compared exactly, with ``assert_array_equal``.
"""

import numpy as np
from numpy.testing import assert_allclose

__all__ = ["write_image", "TINY", "gratings", "FLOAT32_RTOL", "FLOAT32_ATOL", "assert_rankings_equivalent", "write_images",
           "assert_removed_and_recall", "clustered_descriptors", "grown_retriever", "recall"]

#: Relative tolerance of float32 results computed by two different code
#: paths: sums of a few hundred products differ by a few ``eps = 1.2e-7``
#: relative to the magnitudes summed.
FLOAT32_RTOL = 1e-5
#: Absolute tolerance for distances near 0 (a relative one means nothing there).
FLOAT32_ATOL = 1e-6


def _close(x, y, rtol, atol):
    """``|x - y| <= atol + rtol * max(|x|, |y|)`` (symmetric), inf == inf, NaN == NaN."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        near = np.abs(x - y) <= atol + rtol * np.maximum(np.abs(x), np.abs(y))
    return near | (x == y) | (np.isnan(x) & np.isnan(y))


def assert_rankings_equivalent(dist_a, ind_a, dist_b, ind_b, rtol=FLOAT32_RTOL,
                               atol=FLOAT32_ATOL, err_msg=""):
    """Assert that two top-``k`` results are the same ranking up to ties.

    Parameters
    ----------
    dist_a, ind_a : array-like of shape (n_queries, k)
        The distances (or any ranking keys, sorted in either direction) and
        the matching indices (or ids: any values that compare with ``==``)
        of the first result.  A 1-d pair is one query.
    dist_b, ind_b : array-like of shape (n_queries, k)
        The same for the second result.
    rtol, atol : float, default=FLOAT32_RTOL, FLOAT32_ATOL
        Two distances ``x`` and ``y`` agree when
        ``|x - y| <= atol + rtol * max(|x|, |y|)``.
    err_msg : str, default=""
        Prefixed to the message of a failure.

    Raises
    ------
    AssertionError
        When the shapes differ; when the distances at some rank do not agree;
        or when, at a rank where the indices differ, an item is not tied: an
        item of one result that is at another rank of the other must have
        distances that agree in both, and an item of one result that is
        absent from the other must be tied with the other's last (``k``-th)
        distance (the two cut the same tie at the end of the top-``k``
        differently).
    """
    dist_a, dist_b = np.atleast_2d(dist_a), np.atleast_2d(dist_b)
    ind_a, ind_b = np.atleast_2d(ind_a), np.atleast_2d(ind_b)
    prefix = f"{err_msg}: " if err_msg else ""
    for name, d, i in (("a", dist_a, ind_a), ("b", dist_b, ind_b)):
        assert d.shape == i.shape, (
            f"{prefix}dist_{name} and ind_{name} have shapes {d.shape} and {i.shape}")
    assert dist_a.shape == dist_b.shape, (
        f"{prefix}the results have shapes {dist_a.shape} and {dist_b.shape}")
    assert_allclose(dist_a, dist_b, rtol=rtol, atol=atol, equal_nan=True,
                    err_msg=f"{prefix}distances differ beyond the tolerance")
    for row in np.flatnonzero((ind_a != ind_b).any(axis=1)):
        for d_this, i_this, d_other, i_other, this in (
            (dist_a[row], ind_a[row], dist_b[row], ind_b[row], "a"),
            (dist_b[row], ind_b[row], dist_a[row], ind_a[row], "b"),
        ):
            other = "b" if this == "a" else "a"
            rank_in_other = {}
            for rank, item in enumerate(i_other.tolist()):
                rank_in_other.setdefault(item, rank)
            for rank in np.flatnonzero(i_this != i_other):
                item = i_this[rank].item()
                where = rank_in_other.get(item)
                if where is None:
                    # cut from the other top-k: only if tied with its k-th distance
                    ok = bool(_close(d_this[rank], d_other[-1], rtol, atol))
                    why = (f"item {item!r} at rank {rank} of {this} (distance "
                           f"{float(d_this[rank])!r}) is not in {other}, whose last "
                           f"distance {float(d_other[-1])!r} it is not tied with")
                else:
                    ok = bool(_close(d_this[rank], d_other[where], rtol, atol))
                    why = (f"item {item!r} is at rank {rank} of {this} (distance "
                           f"{float(d_this[rank])!r}) and at rank {where} of {other} "
                           f"(distance {float(d_other[where])!r}): not a tie")
                if not ok:
                    raise AssertionError(
                        f"{prefix}query {row}: {why} (rtol={rtol}, atol={atol})\n"
                        f" ind_{this}: {i_this.tolist()}\n ind_{other}: {i_other.tolist()}")


def write_images(folder, names, seed):
    """Write random 56 x 40 RGB images ``folder/<name>`` (sub-folders made)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        arr = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / name)


# ---------------------------------------------------------------------------
# growing indexes (test_index_growth.py and neighbors/)
# ---------------------------------------------------------------------------
def clustered_descriptors():
    """2,000 clustered 32-d descriptors with labels and path-like ids, and queries."""
    rng = np.random.RandomState(0)
    centers = rng.randn(40, 32) * 2
    labels = rng.randint(0, 40, size=2100)
    X = (centers[labels] + rng.randn(2100, 32)).astype(np.float32)
    ids = np.array([f"img/{i:05d}.jpg" for i in range(2000)])
    return X[:2000], labels[:2000], ids, X[2000:], labels[2000:]


def recall(ind, ind_exact):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ind, ind_exact)])


def assert_approx_agrees(r, brute, Q, min_recall):
    """An approximate retriever ``r`` against the exact ``brute`` on queries
    ``Q`` and leave-one-out: recall@k, sorted distances that are the exact
    ones of the returned items, no item its own result, no full ranking."""
    import pytest

    for queries in (Q, None):
        dist, ind = r.kneighbors(queries)
        assert recall(ind, brute.kneighbors(queries)[1]) >= min_recall
        assert np.all(np.diff(dist, axis=1) >= 0)
        if queries is None:
            assert not np.any(ind == np.arange(r.n_samples_fit_)[:, None])
    dist, ind = r.kneighbors(Q)
    exact = brute._keys_to_distances(brute._exact_keys(brute._validate_queries(Q), ind))
    assert_allclose(dist, exact, rtol=FLOAT32_RTOL, atol=1e-5)
    with pytest.raises(ValueError, match="needs algorithm='brute'"):
        r.kneighbors(Q, n_neighbors="all")


def assert_removed_and_recall(r, X, y, ids, Q, gone):
    """After ``r.remove(gone)``: no removed id is returned, and recall@10 against
    an exact search of the remaining items is at least 0.9 (queries and
    leave-one-out)."""
    from skretrieval import NearestNeighborRetriever

    keep = ~np.isin(ids, gone)
    ref = NearestNeighborRetriever(n_neighbors=10).fit(X[keep], y[keep], ids=ids[keep])
    for queries in (Q, None):
        _, found = r.kneighbors(queries, return_ids=True)
        assert not np.isin(found, gone).any()
        assert recall(found, ref.kneighbors(queries, return_ids=True)[1]) >= 0.9


def grown_retriever(X, y, ids, splits=(700, 1500), **params):
    """A NearestNeighborRetriever(**params) grown by partial_fit in three parts."""
    from skretrieval import NearestNeighborRetriever

    r = NearestNeighborRetriever(**params)
    bounds = (0, *splits, X.shape[0])
    for a, b in zip(bounds[:-1], bounds[1:]):
        r.partial_fit(X[a:b], y[a:b], ids=None if ids is None else ids[a:b])
    return r


#: The trainer's tiny network (tests of nn/ and of persistence).
TINY = dict(backbone="resnet18", weights=None, layer="layer2", image_size=32)


def gratings(n_classes=4, per=8, size=32, seed=0):
    """Oriented gratings (the class) under random colour tints and noise (nuisances).

    Random features mostly see the colours; a trained network learns the
    orientation.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = [], []
    for c in range(n_classes):
        theta = np.pi * c / n_classes
        for _ in range(per):
            phase = rng.uniform(0, 2 * np.pi)
            g = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / 6
                                   + phase)
            tint = rng.uniform(0.2, 1.0, 3)
            img = g[..., None] * tint * 255 + rng.normal(0, 20, (size, size, 3))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return images, np.array(labels)


def write_image(path, seed, size=(96, 72)):
    """A distinct noisy picture (blocks of colour plus noise) as a JPEG/PNG file."""
    import os

    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = np.kron(blocks, np.ones((h // 6 + 1, w // 8 + 1, 1), dtype=np.uint8))[:h, :w]
    img = np.clip(img.astype(int) + rng.integers(-20, 20, size=img.shape), 0, 255)
    fmt = None if isinstance(path, (str, os.PathLike)) else "JPEG"  # a file object
    Image.fromarray(img.astype(np.uint8)).save(path, format=fmt, quality=95)
    return path


# ---------------------------------------------------------------------------
# the HTTP service (tests/serve/)
# ---------------------------------------------------------------------------


def upload(client, data, name="q.jpg", **fields):
    """``POST /search`` of the encoded image ``data``, other form ``fields`` as text."""
    return client.post("/search", files={"image": (name, data, "image/jpeg")},
                       data={k: str(v) for k, v in fields.items()})


def assert_error(response, status, *words):
    """A JSON error ``{"detail", "status"}`` of ``status`` naming ``words``;
    returns its detail."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "status"} and body["status"] == status
    assert "Traceback" not in response.text
    for w in words:
        assert w in body["detail"], body["detail"]
    return body["detail"]
