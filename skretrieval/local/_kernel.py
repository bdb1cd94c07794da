"""The pieces of ASMK as array functions: codebook, assignment, aggregation, kernel.

Tolias, Avrithis & Jégou, *Image search with selective match kernels:
aggregation across single and multiple images*, IJCV 2016.  An image's
local descriptors are assigned to visual words; the residuals to the word's
centroid are summed per word and L2-normalised (ASMK), or binarised (ASMK*);
two images are compared word by word with the selective function of the
similarity of their aggregated residuals.
"""

from __future__ import annotations

import numpy as np

from ..utils._arrays import l2_normalize

__all__ = ["CODEBOOK_BACKENDS", "aggregate", "assign", "binary_similarity", "image_norms",
           "popcount", "selective_kernel", "train_codebook"]

#: Bits set in every byte value.
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(
    np.int32)


def popcount(packed):
    """Bits set per row of a ``(n, b)`` uint8 array."""
    return _POPCOUNT[packed].sum(axis=1)


def _kmeans_sklearn(D, k, seed, n_iter):
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, max_iter=n_iter,
                         batch_size=max(4096, 4 * k), compute_labels=False)
    return km.fit(D).cluster_centers_


def _kmeans_lloyd(D, k, seed, n_iter):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, random_state=seed, n_init=1, max_iter=n_iter).fit(D).cluster_centers_


def _kmeans_faiss(D, k, seed, n_iter):
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("codebook='faiss' needs FAISS: pip install skretrieval[faiss]") from exc
    km = faiss.Kmeans(D.shape[1], k, niter=n_iter, seed=int(seed), verbose=False,
                      max_points_per_centroid=max(256, len(D) // k + 1))
    km.train(np.ascontiguousarray(D, dtype=np.float32))
    return km.centroids


#: k-means implementations by name (``ASMKRetriever(kmeans=...)``).
CODEBOOK_BACKENDS = {"minibatch": _kmeans_sklearn, "kmeans": _kmeans_lloyd,
                     "faiss": _kmeans_faiss}


def train_codebook(D, n_clusters, *, kmeans="minibatch", seed=0, n_iter=20):
    """``(n_clusters, d)`` float32 centroids of the descriptors ``D`` (k-means).

    Raises a ValueError when there are fewer descriptors than clusters.
    """
    D = np.asarray(D, dtype=np.float32)
    if len(D) < n_clusters:
        raise ValueError(f"the codebook of {n_clusters} visual words needs at least as many "
                         f"local descriptors, got {len(D)}: lower n_clusters or give more "
                         "images (or codebook_features)")
    C = CODEBOOK_BACKENDS[kmeans](D, n_clusters, seed, n_iter)
    return np.ascontiguousarray(C, dtype=np.float32)


def assign(D, centroids, k=1, block=8192):
    """Indices ``(n, k)`` of the ``k`` nearest centroids of each row of ``D``
    (Euclidean; nearest first, ties to the lower index)."""
    D = np.asarray(D, dtype=np.float32)
    out = np.empty((len(D), k), dtype=np.int64)
    c2 = np.einsum("ij,ij->i", centroids, centroids)
    for a in range(0, len(D), block):
        d2 = c2[None, :] - 2.0 * (D[a:a + block] @ centroids.T)
        if k == 1:
            out[a:a + block, 0] = d2.argmin(1)
            continue
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, np.take_along_axis(d2, part, 1)), axis=1)
        out[a:a + block] = np.take_along_axis(part, order, 1)
    return out


def aggregate(D, words, owners, centroids, binary):
    """Aggregated residuals of every (image, word) pair.

    Parameters
    ----------
    D : ndarray of shape (n, d)
        Local descriptors.
    words : ndarray of shape (n, m)
        The ``m`` visual words each descriptor is assigned to.
    owners : ndarray of shape (n,)
        The image of each descriptor.
    centroids : ndarray of shape (n_words, d)
    binary : bool
        ASMK*: pack the signs of the sums (``V > 0``) into ``ceil(d / 8)``
        bytes; else L2-normalise them (float32).

    Returns
    -------
    images, word_ids : ndarray of shape (e,)
        The (image, word) pairs, sorted by image then word.
    vectors : ndarray of shape (e, d) float32 or (e, ceil(d / 8)) uint8
    """
    n, m = words.shape
    d = centroids.shape[1]
    if n == 0:
        width = (d + 7) // 8 if binary else d
        return (np.zeros(0, np.int64), np.zeros(0, np.int64),
                np.zeros((0, width), np.uint8 if binary else np.float32))
    flat_words = words.reshape(-1)
    flat_owner = np.repeat(np.asarray(owners, np.int64), m)
    residual = (np.repeat(np.asarray(D, np.float32), m, axis=0) - centroids[flat_words])
    key = flat_owner * centroids.shape[0] + flat_words
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    V = np.add.reduceat(residual[order].astype(np.float64), starts, axis=0)
    images, word_ids = np.divmod(key[starts], centroids.shape[0])
    if binary:
        return images, word_ids, np.packbits(V > 0, axis=1)
    return images, word_ids, l2_normalize(V).astype(np.float32)


def binary_similarity(a, b, n_dims):
    """``1 - 2 h / n_dims`` of packed binary rows (``h`` their Hamming distance):
    the normalised dot product of the ``+-1`` vectors (ASMK*)."""
    return 1.0 - 2.0 * popcount(np.bitwise_xor(a, b)) / float(n_dims)


def selective_kernel(u, alpha=3.0, tau=0.0):
    """The selective function ``sigma_alpha(u) = sign(u) |u|^alpha`` if ``u > tau``, else 0."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u > tau, np.sign(u) * np.abs(u) ** alpha, 0.0)


def image_norms(images, n_images, alpha=3.0, tau=0.0):
    """The normalisation ``gamma(X) = (sum_c sigma(1))^(-1/2)`` of every image
    (so that an image's kernel with itself is 1); 0 for an image without words."""
    counts = np.bincount(np.asarray(images, np.int64), minlength=n_images).astype(np.float64)
    self_sim = counts * float(selective_kernel(1.0, alpha, tau))
    return np.where(self_sim > 0, 1.0 / np.sqrt(np.where(self_sim > 0, self_sim, 1.0)), 0.0)
