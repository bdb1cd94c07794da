"""Spatial verification of the short list with local features taken from the conv maps.

Philbin et al. (*Object retrieval with large vocabularies and fast spatial
matching*, CVPR 2007) re-rank the top results of a global search by the
number of tentative matches consistent with one geometric transformation
(fitted robustly, RANSAC-like).  DELF (Noh et al., *Large-scale image
retrieval with attentive deep local features*, ICCV 2017) and DELG (Cao,
Araujo & Sim, *Unifying deep local and global features for image search*,
ECCV 2020) take the local features from the network's feature maps: the
strongest cells (by an attention score) are the keypoints, their channel
vectors the descriptors, and the short list is re-ranked by RANSAC inliers.
:class:`SpatialVerificationReranker` does this from the maps the extractor
already computed (no second forward pass).
"""

from __future__ import annotations

from itertools import combinations
from math import comb
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._expansion import weighted_mean
from ._common import ShortListMixin, as_feature_maps
from ..utils._arrays import l2_normalize
from ..utils._progress import progress
from ..utils._state import LABELS, Attr, StateSpec

__all__ = ["SpatialVerificationReranker", "count_inliers", "match_features",
           "top_activations"]

_PCA_SAMPLE = 20_000  # local features the PCA of the descriptors is fitted on
_MIN_SAMPLES = {"similarity": 2, "affine": 3}


def top_activations(maps, max_features, stride=32.0, scales=None):
    """Local features of one image: its strongest conv-map cells.

    Parameters
    ----------
    maps : sequence of ndarray of shape (C, H_s, W_s)
        The image's maps, one per scale.
    max_features : int
        Keep the cells with the largest L2 norm of their ``C``-vector (all
        scales together; zero vectors never).
    stride : float, default=32.0
        Pixels of the resized image per map cell at scale 1.
    scales : sequence of float, default=None
        The scale of each map (default: 1 for all).

    Returns
    -------
    keypoints : ndarray of shape (n, 2), float32
        Cell centres ``(x, y)`` in pixels of the image at scale 1:
        ``((col + 0.5) * stride / s, (row + 0.5) * stride / s)``.
    descriptors : ndarray of shape (n, C), float32
        The L2-normalised channel vectors, strongest first.
    """
    scales = (1.0,) * len(maps) if scales is None else scales
    kps, vecs, norms = [], [], []
    for s, m in zip(scales, maps):
        C, H, W = m.shape
        V = np.asarray(m, dtype=np.float32).reshape(C, H * W).T
        rows, cols = np.divmod(np.arange(H * W), W)
        cell = stride / s
        kps.append(np.stack([(cols + 0.5) * cell, (rows + 0.5) * cell], 1))
        vecs.append(V)
        norms.append(np.linalg.norm(V, axis=1))
    kps, vecs, norms = np.concatenate(kps), np.concatenate(vecs), np.concatenate(norms)
    order = np.argsort(-norms, kind="stable")[:max_features]
    order = order[norms[order] > 0]
    return kps[order].astype(np.float32), l2_normalize(vecs[order]).astype(np.float32)


def match_features(a, b, matching="mutual", ratio=0.9):
    """Tentative matches between two sets of L2-normalised descriptors.

    ``"mutual"``: pairs that are each other's nearest neighbour (cosine);
    ``"ratio"``: Lowe's test, nearest Euclidean distance below ``ratio``
    times the second nearest.  Returns the ``(m, 2)`` index pairs into
    ``a`` and ``b``.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), np.int64)
    S = np.asarray(a, np.float32) @ np.asarray(b, np.float32).T
    best = S.argmax(1)
    if matching == "mutual":
        keep = S.argmax(0)[best] == np.arange(len(a))
    elif len(b) < 2:
        keep = np.ones(len(a), bool)
    else:
        top2 = -np.sort(-S, axis=1)[:, :2]
        d = np.sqrt(np.maximum(2.0 - 2.0 * top2, 0.0))
        keep = d[:, 0] < ratio * d[:, 1]
    i = np.flatnonzero(keep)
    return np.stack([i, best[i]], 1).astype(np.int64)


def _one_blas_thread():
    """BLAS on one thread for the many tiny products of a verification (a
    second thread only adds its wake-up latency, milliseconds on a busy CPU)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _hypotheses(m, n_min, max_trials, rng):
    """Minimal samples (rows of ``n_min`` match indices): every combination
    when there are at most ``max_trials`` of them, else ``max_trials`` draws
    without replacement within a sample (``rng.permuted`` of each row)."""
    if comb(m, n_min) <= max_trials:
        return np.array(list(combinations(range(m), n_min)), dtype=np.int64).reshape(-1, n_min)
    return rng.permuted(np.tile(np.arange(m), (max_trials, 1)), axis=1)[:, :n_min]


def _complex(points):
    """``(n, 2)`` points ``(x, y)`` as complex numbers ``x + iy``."""
    return points[:, 0] + 1j * points[:, 1]


def _similarities(src, dst, samples):
    """``z -> a z + b`` (complex ``a``, ``b``) through each sample of two
    matches; ``ok`` False where the two source points coincide."""
    p, q = src[samples], dst[samples]                     # (T, 2) complex
    dp = p[:, 1] - p[:, 0]
    ok = np.abs(dp) > 1e-9 * (1.0 + np.abs(p[:, 0]))
    a = np.where(ok, (q[:, 1] - q[:, 0]) / np.where(ok, dp, 1.0), 0.0)
    return a, q[:, 0] - a * p[:, 0], ok


def _affines(src, dst, samples):
    """``[x, y, 1] @ M`` (``M`` 3 x 2) through each sample of three matches;
    ``ok`` False where the three source points are (nearly) collinear."""
    P = np.concatenate([src[samples], np.ones(samples.shape + (1,))], axis=2)  # (T, 3, 3)
    det = np.linalg.det(P)
    scale = np.abs(src[samples] - src[samples].mean(1, keepdims=True)).max((1, 2)) + 1e-12
    ok = np.abs(det) > 1e-6 * scale ** 2
    P[~ok] = np.eye(3)
    return np.linalg.solve(P, dst[samples]), ok


def _inlier_masks(src, dst, transform, samples, threshold):
    """``(T, m)`` inlier masks of the transforms through each sample."""
    if transform == "similarity":
        zs, zd = _complex(src), _complex(dst)
        a, b, ok = _similarities(zs, zd, samples)
        residual = np.abs(a[:, None] * zs[None] + b[:, None] - zd[None])
    else:
        M, ok = _affines(src, dst, samples)
        pred = np.concatenate([src, np.ones((len(src), 1))], 1) @ M  # (T, m, 2)
        residual = np.linalg.norm(pred - dst[None], axis=2)
    return (residual < threshold) & ok[:, None]


def _refit_inliers(src, dst, transform, inliers, threshold):
    """Inlier mask of the least-squares transform of the matches ``inliers``
    (LO-RANSAC's local optimisation, one step)."""
    s, d = src[inliers], dst[inliers]
    if transform == "similarity":  # Umeyama's similarity without reflection
        zs, zd = _complex(s), _complex(d)
        cs, cd = zs - zs.mean(), zd - zd.mean()
        norm = float(np.sum(np.abs(cs) ** 2))
        if norm <= 0:
            return inliers
        a = np.sum(np.conj(cs) * cd) / norm
        b = zd.mean() - a * zs.mean()
        return np.abs(a * _complex(src) + b - _complex(dst)) < threshold
    A = np.concatenate([s, np.ones((len(s), 1))], 1)
    M, _, rank, _ = np.linalg.lstsq(A, d, rcond=None)
    if rank < 3:
        return inliers
    pred = np.concatenate([src, np.ones((len(src), 1))], 1) @ M
    return np.linalg.norm(pred - dst, axis=1) < threshold


def count_inliers(src, dst, transform="similarity", residual_threshold=32.0,
                  max_trials=100, min_inliers=4, rng=None):
    """RANSAC inliers of ``dst ~ T(src)``, all hypotheses at once.

    The hypotheses are the transforms of class ``transform`` through minimal
    samples of the matches (2 for a similarity, 3 for an affine transform):
    every combination when there are at most ``max_trials``, else
    ``max_trials`` random samples (Fischler & Bolles, 1981).  They are
    scored together as one array (no Python loop per trial); the best one
    (most matches within ``residual_threshold`` pixels, the first on ties)
    is refitted by least squares on its inliers and kept when that keeps at
    least as many (LO-RANSAC, Chum et al., 2003, one step).

    Returns the number of inliers, or 0 when there are fewer than
    ``min_inliers`` matches or inliers, or every sample is degenerate.
    """
    n_min = _MIN_SAMPLES[transform]
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if len(src) < max(min_inliers, n_min + 1):
        return 0
    samples = _hypotheses(len(src), n_min, max_trials, np.random.default_rng(rng))
    masks = _inlier_masks(src, dst, transform, samples, residual_threshold)
    best = masks[int(masks.sum(1).argmax())]
    if not best.any():
        return 0
    refit = _refit_inliers(src, dst, transform, best, residual_threshold)
    count = int(max(best.sum(), refit.sum()))
    return count if count >= min_inliers else 0


class SpatialVerificationReranker(ShortListMixin, BaseEstimator):
    """Global search, then spatial verification of the short list (RANSAC inliers).

    The last step of a pipeline after :class:`ConvFeatureExtractor`, like
    :class:`RegionReranker`: the feature maps are described globally by
    ``aggregator`` (e.g. :class:`GeMPooler`) and searched with ``retriever``;
    the top ``n_rerank`` results of every query are then verified
    geometrically, from the same maps (no second forward pass):

    1. **local features** (:func:`top_activations`): the ``max_features``
       cells of strongest L2 norm (all scales together), their position in
       pixels (``stride`` px per cell at scale 1) as keypoint, their
       channel vector, L2-normalised, projected on the first
       ``n_components`` principal axes of the database's local descriptors
       and L2-normalised again, as descriptor;
    2. **matching** (:func:`match_features`): mutual nearest neighbours or
       Lowe's ratio test between the query's and the database image's
       descriptors;
    3. **geometry** (:func:`count_inliers`): a similarity or affine transform
       fitted by RANSAC, its ``max_trials`` hypotheses scored as one array,
       the best refitted by least squares on its inliers; inliers within
       ``residual_threshold`` px, counts below ``min_inliers`` set to 0;
    4. the short list is re-ordered by inlier count, ties broken by the
       global similarity.  Optionally the query is then expanded with its
       top ``qe_k`` *verified* results (Chum et al., ICCV 2007): every
       verified result stays first, in verified order, and the rest comes
       from the search of the expanded query.

    Deviations from the papers: the score of a cell is its activation norm
    (DELF/DELG learn an attention score; the norm is the training-free
    version, as in the "strongest activations" of off-the-shelf maps);
    keypoints are cell centres on the coarse grid of the last conv layer
    (stride 32: a few pixels of precision lost, hence the default
    threshold of one cell); hypotheses come from minimal samples of
    correspondences (Philbin et al. hypothesise from one affine-covariant
    region, which a conv cell does not give), all of them when there are
    fewer than ``max_trials`` (no early stop: the trials cost one array
    operation); DELG's minimum of inliers
    and its addition of the global score are replaced by ``min_inliers`` and
    the tie-break.

    Memory: the database's local features are stored as float16, at most
    ``max_features * (2 * d + 4) + 8`` bytes per image (``d`` the
    descriptor size: 26,008 bytes with the defaults and ``C >= 128``, or
    256,408 bytes for MobileNetV2's 1280 channels without PCA).  Time:
    one ``(max_features x max_features)`` product and one vectorised RANSAC
    (``max_trials x matches`` residuals) per short-listed image: 12-38 ms
    per query for 40 images on 2 CPU cores (``benchmarks/bench_rerank.py``).

    Parameters
    ----------
    aggregator : estimator
        Transformer (or pipeline) from feature maps to ``(n, D)`` global
        vectors; cloned and fitted at ``fit``.
    retriever : estimator, default=None
        Search over the global vectors (cloned; cosine or inner product);
        None: ``NearestNeighborRetriever()``.  A
        :class:`QueryExpansionRetriever` adds DBA / QE *before* verification.
    n_rerank : int, default=100
        Length of the short list verified per query.
    max_features : int, default=100
        Local features kept per image.
    n_components : int or None, default=128
        Size of the local descriptors after PCA (at most ``C``); None keeps
        the ``C`` channels.
    stride : float, default=32.0
        Pixels per map cell at scale 1 (32 for MobileNetV2, ResNet, VGG's
        last block).
    matching : {"mutual", "ratio"}, default="mutual"
        Tentative matches: mutual nearest neighbours, or Lowe's ratio test.
    ratio : float, default=0.9
        Threshold of the ratio test.
    transform : {"similarity", "affine"}, default="similarity"
        Geometric model of the verification.
    residual_threshold : float or None, default=None
        Inlier distance in pixels; None: ``stride`` (one cell).
    max_trials : int, default=100
        RANSAC hypotheses per short-listed image (every minimal sample when
        there are fewer).
    min_inliers : int, default=4
        Fewer inliers than this count as 0 (not verified).
    qe_k : int, default=0
        Expand the query with its top ``qe_k`` verified results (alpha-QE
        weights of the global similarity); 0 disables it.
    qe_alpha : float, default=3.0
        Similarity power of those weights.
    random_state : int, RandomState or None, default=0
        Seed of RANSAC; the draws of a (query, database image) pair depend
        on it and on the database index only.
    verbose : int, default=0
        Show a progress bar of the queries verified on stderr when > 0.

    Attributes
    ----------
    aggregator_, retriever_ : estimator
        The fitted aggregator and global search.
    global_ : ndarray of shape (n_samples, D)
        L2-normalised global database vectors.
    local_keypoints_ : ndarray of shape (n_local, 2), float16
        Keypoints ``(x, y)`` in pixels, image after image.
    local_descriptors_ : ndarray of shape (n_local, d), float16
        Their descriptors.
    local_offsets_ : ndarray of shape (n_samples + 1,)
        Image ``i`` owns rows ``local_offsets_[i]:local_offsets_[i + 1]``.
    local_mean_, local_components_ : ndarray or None
        The PCA of the local descriptors (None without PCA).
    y_ : ndarray or None
        Database labels.

    See Also
    --------
    LocalVerificationReranker : The same verification on the local features of
        any extractor (SIFT, deep local features), OpenCV's estimators, over the
        short list of any retriever.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import FeatureMaps, GeMPooler, SpatialVerificationReranker
    >>> rng = np.random.default_rng(0)
    >>> maps = FeatureMaps([(rng.random((8, 6, 6)),) for _ in range(5)])
    >>> sv = SpatialVerificationReranker(GeMPooler(), n_rerank=3, max_features=20).fit(maps)
    >>> sv.kneighbors(maps[:2], n_neighbors=4)[1].shape
    (2, 4)
    """

    _fitted_attr = "local_offsets_"

    _parameter_constraints = {
        "aggregator": [HasMethods(["fit", "transform"])],
        "retriever": [HasMethods(["fit", "kneighbors"]), None],
        "n_rerank": [Interval(Integral, 0, None, closed="left")],
        "max_features": [Interval(Integral, 1, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "stride": [Interval(Real, 0, None, closed="neither")],
        "matching": [StrOptions({"mutual", "ratio"})],
        "ratio": [Interval(Real, 0, 1, closed="right")],
        "transform": [StrOptions({"similarity", "affine"})],
        "residual_threshold": [Interval(Real, 0, None, closed="neither"), None],
        "max_trials": [Interval(Integral, 1, None, closed="left")],
        "min_inliers": [Interval(Integral, 1, None, closed="left")],
        "qe_k": [Interval(Integral, 0, None, closed="left")],
        "qe_alpha": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    _state_spec = StateSpec({
        "aggregator_": Attr("estimator"),
        "global_": Attr("array", dtype="f", shape=(None, None)),
        "y_": Attr("array", dtype=LABELS, shape=("global_",), none=True),
        "retriever_": Attr("estimator"),
        "local_keypoints_": Attr("array", dtype="f", shape=(None, 2)),
        "local_descriptors_": Attr("array", dtype="f", shape=("local_keypoints_", None)),
        "local_offsets_": Attr("array", dtype="iu", shape=("global_+1",),
                               values=(0, "local_keypoints_")),
        "local_mean_": Attr("array", dtype="f", shape=(None,), none=True),
        "local_components_": Attr("array", dtype="f",
                                  shape=("local_descriptors_[1]", "local_mean_"), none=True),
    })

    def __init__(self, aggregator, retriever=None, *, n_rerank=100, max_features=100,
                 n_components=128, stride=32.0, matching="mutual", ratio=0.9,
                 transform="similarity", residual_threshold=None, max_trials=100,
                 min_inliers=4, qe_k=0, qe_alpha=3.0, random_state=0, verbose=0):
        self.aggregator = aggregator
        self.retriever = retriever
        self.n_rerank = n_rerank
        self.max_features = max_features
        self.n_components = n_components
        self.stride = stride
        self.matching = matching
        self.ratio = ratio
        self.transform = transform
        self.residual_threshold = residual_threshold
        self.max_trials = max_trials
        self.min_inliers = min_inliers
        self.qe_k = qe_k
        self.qe_alpha = qe_alpha
        self.random_state = random_state
        self.verbose = verbose

    # -- local features --------------------------------------------------------
    def _raw_features(self, X, i):
        return top_activations(X[i], self.max_features, self.stride, X.scales)

    def _project(self, D):
        if self.local_components_ is None:
            return D
        return l2_normalize((D - self.local_mean_) @ self.local_components_.T).astype(np.float32)

    def _fit_pca(self, X, n):
        """Principal axes of the local descriptors of (a sample of) the database."""
        C = X.n_channels if X.n_channels is not None else X[0][0].shape[0]
        self.local_mean_ = self.local_components_ = None
        if self.n_components is None or self.n_components >= C:
            return
        per_image = max(1, _PCA_SAMPLE // self.max_features)
        images = np.unique(np.linspace(0, n - 1, min(n, per_image)).round().astype(int))
        D = np.concatenate([self._raw_features(X, i)[1] for i in images])
        d = min(self.n_components, len(D))
        self.local_mean_ = D.mean(0).astype(np.float32)
        centred = (D - self.local_mean_).astype(np.float64)
        _, V = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        self.local_components_ = np.ascontiguousarray(V[:, ::-1][:, :d].T, dtype=np.float32)

    def query_features(self, X):
        """Keypoints and (projected) descriptors of the images of ``X``.

        Parameters
        ----------
        X : FeatureMaps
            Query maps.

        Returns
        -------
        features : list of (keypoints, descriptors)
            float32 arrays of shapes ``(n_i, 2)`` and ``(n_i, d)``.
        """
        check_is_fitted(self, self._fitted_attr)
        X, n = as_feature_maps(X)
        out = []
        for i in range(n):
            kp, D = self._raw_features(X, i)
            out.append((kp, self._project(D)))
        return out

    def database_features(self, i):
        """Stored keypoints and descriptors of database image ``i`` (float32)."""
        a, b = self.local_offsets_[i], self.local_offsets_[i + 1]
        return (self.local_keypoints_[a:b].astype(np.float32),
                self.local_descriptors_[a:b].astype(np.float32))

    # -- fitting ---------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Describe the database globally and by local features, and index it.

        Parameters
        ----------
        X : FeatureMaps
            Database feature maps.
        y : array-like of shape (n_samples,), default=None
            Database labels (for :meth:`score`).

        Returns
        -------
        self : SpatialVerificationReranker
        """
        X, n = as_feature_maps(X)
        self._fit_global(X, y)
        self._fit_pca(X, n)
        kps, descs, counts = [], [], np.zeros(n, np.int64)
        for i in range(n):
            kp, D = self._raw_features(X, i)
            kps.append(kp.astype(np.float16))
            descs.append(self._project(D).astype(np.float16))
            counts[i] = len(kp)
        self.local_keypoints_ = np.concatenate(kps)
        self.local_descriptors_ = np.concatenate(descs)
        self.local_offsets_ = np.concatenate([[0], np.cumsum(counts)])
        return self

    # -- verification ----------------------------------------------------------
    def _verify(self, features, i, seed):
        """Inliers between query features and database image ``i``."""
        q_kp, q_desc = features
        d_kp, d_desc = self.database_features(i)
        pairs = match_features(q_desc, d_desc, self.matching, self.ratio)
        threshold = self.stride if self.residual_threshold is None else self.residual_threshold
        return count_inliers(d_kp[pairs[:, 1]], q_kp[pairs[:, 0]], self.transform, threshold,
                             self.max_trials, self.min_inliers,
                             np.random.default_rng([seed, int(i)]))

    def inliers(self, X, indices):
        """Inlier counts of query images against database images.

        Parameters
        ----------
        X : FeatureMaps or None
            Query maps (None: the database images themselves, by row).
        indices : array-like of int of shape (n_queries, m)
            Database images to verify for every query.

        Returns
        -------
        counts : ndarray of shape (n_queries, m), int
        """
        check_is_fitted(self, self._fitted_attr)
        indices = np.asarray(indices, dtype=np.int64)
        feats = self._query_local(X, len(indices))
        seed = self._seed()
        with _one_blas_thread():
            return np.array([[self._verify(f, i, seed) for i in row]
                             for f, row in zip(feats, indices)], dtype=np.int64).reshape(
                                 indices.shape)

    def _seed(self):
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    def _query_local(self, X, n):
        if X is None:
            return [self.database_features(i) for i in range(n)]
        return self.query_features(X)

    def _rerank(self, feats, dist, ind, seed):
        """Short list ordered by inliers (then global similarity); the verified."""
        R = min(self.n_rerank, ind.shape[1])
        dist, ind = dist.copy(), ind.copy()
        verified = []
        with _one_blas_thread():
            for j in progress(range(ind.shape[0]), desc="verifying", unit="query",
                              verbose=self.verbose):
                if R == 0:
                    verified.append(np.zeros(0, np.int64))
                    continue
                short = ind[j, :R].copy()
                sim = self._similarity(dist[j, :R]).astype(np.float64)
                counts = np.array([self._verify(feats[j], i, seed) for i in short])
                order = np.lexsort((-sim, -counts))
                key = counts[order] + (1.0 + np.clip(sim[order], -1, 1)) / 2.5
                dist[j, :R] = dist[j, R - 1] - 1.0 - key
                ind[j, :R] = short[order]
                verified.append(short[order][counts[order] > 0])
        return dist, ind, verified

    def _expand(self, Q, rows, k, dist, ind, verified):
        """Search the expanded queries; the verified results stay first."""
        out_d, out_i = np.empty((len(Q), k)), np.empty((len(Q), k), np.int64)
        for j in range(len(Q)):
            top = verified[j][: self.qe_k]
            if len(top) == 0:
                out_d[j], out_i[j] = dist[j, :k], ind[j, :k]
                continue
            sims = self.global_[top] @ Q[j]
            q2 = weighted_mean(Q[j:j + 1], self.global_, top[None], sims[None], self.qe_alpha)
            r = None if rows is None else rows[j:j + 1]
            d2, i2 = self._search(q2, r, k)
            rest = ~np.isin(i2[0], verified[j])
            head = np.isin(ind[j], verified[j])
            d_head = dist[j][head][:k]
            tail_d, tail_i = d2[0][rest], i2[0][rest]
            base = tail_d[0] if len(tail_d) else d_head[-1]
            shift = base - (d_head[-1] if len(d_head) else base) - 1.0
            out_d[j] = np.concatenate([d_head + min(shift, 0.0), tail_d])[:k]
            out_i[j] = np.concatenate([ind[j][head][:k], tail_i])[:k]
        return out_d, out_i

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Search, verify the short list, optionally expand the query.

        The returned distances of the verified short list are
        ``d_R - 1 - (inliers + (1 + s) / 2.5)`` (``d_R`` the global distance
        of the last short-listed result, ``s`` the global similarity), so
        that they sort as the re-ranking does and stay below those of the
        unverified rest, whose distances are the global search's.

        Parameters
        ----------
        X : FeatureMaps or None
            Query maps; None ranks every database image against the others.
        n_neighbors : int or "all", default=None
            Results per query (default: the retriever's ``n_neighbors``).
        return_distance : bool, default=True

        Returns
        -------
        distances, indices : ndarray of shape (n_queries, n_neighbors)
        """
        check_is_fitted(self, self._fitted_attr)
        Q, rows = self._queries(X)
        k, depth = self._depths(rows, n_neighbors, self.n_rerank)
        dist, ind = self._search(Q, rows, depth)
        feats = self._query_local(X, len(Q))
        dist, ind, verified = self._rerank(feats, dist, ind, self._seed())
        if self.qe_k > 0:
            dist, ind = self._expand(Q, rows, k, dist, ind, verified)
        dist, ind = dist[:, :k], ind[:, :k]
        return (dist, ind) if return_distance else ind
