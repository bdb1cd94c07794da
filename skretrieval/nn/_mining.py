"""Batches of :class:`~skretrieval.RetrievalNetTrainer`: AP-loss batches, mined tuples."""

from __future__ import annotations

import numpy as np

__all__ = ["ap_batches", "mine_tuples"]


def ap_batches(codes, steps, rng, images_per_label, batch_size):
    """``steps`` batches of ``images_per_label`` images of random labels
    (label codes ``codes``), ``batch_size`` images at most."""
    members = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]
    for _ in range(steps):
        batch = []
        for c in rng.permutation(len(members)):
            k = min(images_per_label, len(members[c]), batch_size - len(batch))
            if k < 2:
                break
            batch.extend(rng.choice(members[c], k, replace=False).tolist())
        yield np.asarray(batch)


def mine_tuples(describe, codes, n_anchors, rng, *, n_negatives, pool_size, dim):
    """Anchors, random positives and hard negatives.

    Parameters
    ----------
    describe : callable
        ``describe(indices)``: the ``(len(indices), dim)`` descriptors of
        those training images with the current network.
    codes : ndarray of int
        Label code of every training image.
    n_anchors : int
        Tuples to mine (the training images in turn, in random orders).
    rng : numpy Generator
    n_negatives : int
        Negatives per tuple, of distinct labels (fewer labels: fewer).
    pool_size : int or None
        Images among which the negatives are mined (None: all).
    dim : int
        Dimension of the descriptors.

    Returns
    -------
    tuples : ndarray of shape (n_anchors, 2 + n_negatives)
        Rows ``(anchor, positive, negatives...)`` of image indices.
    """
    n = len(codes)
    n_neg = min(n_negatives, int(codes.max()))
    anchors = np.concatenate([rng.permutation(n)
                              for _ in range(-(-n_anchors // n))])[:n_anchors]
    if pool_size is None or pool_size >= n:
        pool = np.arange(n)
    else:
        pool = np.sort(rng.choice(n, pool_size, replace=False))
    needed = np.union1d(pool, anchors)
    desc = np.zeros((n, dim), dtype=np.float32)
    desc[needed] = describe(needed)
    members = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]
    sims = desc[anchors] @ desc[pool].T
    tuples = np.empty((n_anchors, 2 + n_neg), dtype=np.int64)
    for t, a in enumerate(anchors):
        same = members[codes[a]]
        others = same[same != a]
        tuples[t, 0], tuples[t, 1] = a, others[rng.integers(len(others))]
        tuples[t, 2:] = _hard_negatives(codes, pool, sims[t], a, n_neg, rng)
    return tuples


def _hard_negatives(codes, pool, sims, a, n_neg, rng):
    """The ``n_neg`` most similar images of ``pool`` to anchor ``a`` of distinct
    labels other than its own (random other labels when the pool runs out)."""
    pool_codes = codes[pool]
    row = np.where(pool_codes == codes[a], -np.inf, sims)
    chosen, seen = [], set()
    for j in np.argsort(-row, kind="stable"):
        if not np.isfinite(row[j]):
            break
        c = pool_codes[j]
        if c not in seen:
            seen.add(c)
            chosen.append(pool[j])
            if len(chosen) == n_neg:
                break
    while len(chosen) < n_neg:  # a pool too small: random other labels
        j = rng.integers(len(codes))
        if codes[j] != codes[a]:
            chosen.append(j)
    return chosen
