"""Spatial verification of any retriever's short list with real local features.

:class:`~skretrieval.reranking.SpatialVerificationReranker` verifies with the cells of
the conv maps it re-ranks; :class:`~skretrieval.reranking.LocalVerificationReranker` takes its local features from
a local feature extractor (:class:`~skretrieval.local.SIFTExtractor`,
:class:`~skretrieval.local.DeepLocalFeatures`) and re-ranks the short list of
any retriever over the same images (a global pipeline, or an
:class:`~skretrieval.local.ASMKRetriever`), by the inliers of a geometric
model fitted by OpenCV's robust estimators (USAC / MAGSAC, RANSAC) or by the
package's own vectorised RANSAC.

Which short-listed images count as verified follows the field's rule
(Philbin et al., CVPR 2007): only those whose inliers are too many to be
chance, by an *a contrario* test (Moisan & Stival, IJCV 2004; Moisan,
Moulon & Monasse, IPOL 2012) on one-to-one matches, go first; the others
keep the retriever's order.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.special import comb
from scipy.stats import binom
from sklearn.base import BaseEstimator, _fit_context, clone
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..local._features import as_local_features
from ..neighbors._base import RetrieverMixin, resolve_n_neighbors
from ..utils._progress import progress
from ..utils._state import LABELS, Attr, StateSpec
from ._spatial import count_inliers, match_features

__all__ = ["FALLBACKS", "LocalVerificationReranker", "ORDERS", "distinct_matches",
           "false_alarms", "verified_order", "verify_matches"]

#: Matches a model needs at least.
_MIN_MATCHES = {"similarity": 2, "affine": 3, "homography": 4}
#: The estimators each ``method`` tries, in order, until one runs.
FALLBACKS = {"auto": ("magsac", "ransac", "own"), "magsac": ("magsac", "own"),
             "ransac": ("ransac", "own"), "own": ("own",)}


#: The sort key of the verified images of a short list, per ``order``: their inlier
#: count, or 1 for all of them (the retriever's order among them).
ORDERS = {"inliers": lambda counts: counts,
          "retriever": lambda counts: (counts > 0).astype(counts.dtype)}


def verified_order(counts, order="retriever"):
    """The re-ranked order of a short list from its verified inlier counts.

    Parameters
    ----------
    counts : array-like of int of shape (R,)
        Inliers of the short list's images in the retriever's order, 0 for
        those that did not verify.
    order : {"retriever", "inliers"}, default="retriever"
        How the verified images are ordered among themselves: in the
        retriever's order, or by inliers (ties: the retriever's order).

    Returns
    -------
    order : ndarray of shape (R,)
        Positions in the retriever's list: verified images first, then the
        others in the retriever's order.
    key : ndarray of shape (R,)
        Their sort key, decreasing along ``order``.

    Examples
    --------
    >>> from skretrieval.reranking import verified_order
    >>> verified_order([0, 7, 0, 12])[0].tolist()
    [1, 3, 0, 2]
    >>> verified_order([0, 7, 0, 12], "inliers")[0].tolist()
    [3, 1, 0, 2]
    """
    counts = np.asarray(counts, dtype=np.float64)
    R = len(counts)
    k = ORDERS[order](counts)
    perm = np.lexsort((np.arange(R), -k))
    return perm, k[perm] + (R - perm) / (R + 1.0)


def _cv2_flag(cv2, name):
    return {"magsac": getattr(cv2, "USAC_MAGSAC", None), "ransac": cv2.RANSAC}[name]


def _cv2_similarity(cv2, flag, src, dst, threshold, max_trials):
    return cv2.estimateAffinePartial2D(src, dst, method=flag, ransacReprojThreshold=threshold,
                                       maxIters=max_trials, confidence=0.999)[1]


def _cv2_affine(cv2, flag, src, dst, threshold, max_trials):
    return cv2.estimateAffine2D(src, dst, method=flag, ransacReprojThreshold=threshold,
                                maxIters=max_trials, confidence=0.999)[1]


def _cv2_homography(cv2, flag, src, dst, threshold, max_trials):
    return cv2.findHomography(src, dst, flag, threshold, maxIters=max_trials,
                              confidence=0.999)[1]


_CV2_MODELS = {"similarity": _cv2_similarity, "affine": _cv2_affine,
               "homography": _cv2_homography}


def _opencv(name, src, dst, transform, threshold, max_trials, rng):
    import cv2  # ImportError: the next estimator of the fall-back order

    flag = _cv2_flag(cv2, name)
    if flag is None:
        raise AttributeError(f"this OpenCV has no {name}")
    cv2.setRNGSeed(int(rng.integers(2**31 - 1)))
    mask = _CV2_MODELS[transform](cv2, flag, src.astype(np.float32), dst.astype(np.float32),
                                  float(threshold), int(max_trials))
    return 0 if mask is None else int(np.count_nonzero(mask))


def _own(name, src, dst, transform, threshold, max_trials, rng):
    # the package's RANSAC fits similarities and affinities (a homography is
    # verified as an affinity)
    model = "affine" if transform == "homography" else transform
    return count_inliers(src, dst, model, threshold, min(max_trials, 1000), 1, rng)


_ESTIMATORS = {"magsac": _opencv, "ransac": _opencv, "own": _own}


def false_alarms(n_matches, n_inliers, area, residual_threshold, transform="affine",
                 max_trials=2000):
    """Expected number of chance verifications as good as ``n_inliers`` (the NFA).

    The *a contrario* test of a geometric verification (Moisan & Stival,
    IJCV 2004; Moisan, Moulon & Monasse, IPOL 2012), with a binomial
    background model: under the null hypothesis the ``n_matches`` tentative
    matches are unrelated, each query position falling anywhere in the
    query's keypoint region (``area`` square pixels), so a fixed model
    predicts a match within ``residual_threshold`` pixels with probability
    ``p = min(1, pi * residual_threshold**2 / area)``.  A hypothesis fitted
    to a minimal sample of ``s`` matches (2 for a similarity, 3 for an
    affinity, 4 for a homography) explains those ``s``; each of the other
    ``n_matches - s`` is an inlier with probability ``p``.  Over the ``N =
    min(max_trials, C(n_matches, s))`` hypotheses tried,

    ``NFA = N * P(Binomial(n_matches - s, p) >= n_inliers - s)``,

    the expected number of random configurations with as many inliers.  An
    NFA below 1 (or a smaller significance level) means the inliers are
    significantly more than a random configuration gives.

    Parameters
    ----------
    n_matches, n_inliers : int or array-like of int
        Tentative matches and inliers.
    area : float or array-like
        Square pixels in which the query positions lie (e.g. the bounding
        box of the query's keypoints).
    residual_threshold : float
        Inlier distance in pixels.
    transform : {"similarity", "affine", "homography"}, default="affine"
    max_trials : int, default=2000
        Most hypotheses.

    Returns
    -------
    nfa : float or ndarray
        ``inf`` where there are fewer matches than a minimal sample.

    Examples
    --------
    >>> from skretrieval.reranking import false_alarms
    >>> nfa = false_alarms([20, 20, 20], [4, 5, 6], 600 * 600, 8.0)
    >>> [bool(v <= 1) for v in nfa]
    [False, True, True]
    """
    s = _MIN_MATCHES[transform]
    m = np.asarray(n_matches, dtype=np.float64)
    k = np.asarray(n_inliers, dtype=np.float64)
    p = np.minimum(1.0, np.pi * float(residual_threshold) ** 2
                   / np.maximum(np.asarray(area, dtype=np.float64), 1e-12))
    n_tests = np.minimum(float(max_trials), comb(m, s))
    tail = binom.sf(k - s - 1, np.maximum(m - s, 0), p)
    nfa = np.where(m >= s, n_tests * tail, np.inf)
    return float(nfa) if nfa.ndim == 0 else nfa


def distinct_matches(pairs, q_pos, d_pos, strength):
    """One-to-one tentative matches in positions.

    SIFT puts several keypoints (one per dominant orientation) at one
    position, and many query descriptors may pick the same database
    descriptor: such matches repeat one piece of geometric evidence, and a
    model through that position counts it several times.  Keeps, strongest
    first, the matches whose query position and database position (rounded
    to a pixel) no stronger match already uses.

    Parameters
    ----------
    pairs : ndarray of shape (m, 2)
        Query and database keypoint indices of the matches.
    q_pos, d_pos : ndarray of shape (n_q, 2) and (n_d, 2)
        Keypoint positions.
    strength : ndarray of shape (m,)
        The matches' similarities.

    Returns
    -------
    pairs : ndarray of shape (m', 2)
        The kept matches, strongest first.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pairs = pairs[np.argsort(-np.asarray(strength), kind="stable")]
    for side, pos in ((0, q_pos), (1, d_pos)):
        key = np.round(np.asarray(pos)[pairs[:, side], :2]).astype(np.int64)
        _, first = np.unique(key, axis=0, return_index=True)
        pairs = pairs[np.sort(first)]
    return pairs


def _region_area(points):
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return 0.0
    return float(np.prod(points.max(0) - points.min(0)))


def verify_matches(src, dst, transform="affine", method="auto", residual_threshold=8.0,
                   max_trials=2000, min_inliers=5, rng=None, *, significance=None,
                   area=None):
    """Inliers of ``dst ~ T(src)`` for a model class, by the first estimator that runs.

    Parameters
    ----------
    src, dst : ndarray of shape (m, 2)
        Matched positions ``(x, y)``.
    transform : {"similarity", "affine", "homography"}, default="affine"
    method : {"auto", "magsac", "ransac", "own"}, default="auto"
        The estimators tried, in order (:data:`FALLBACKS`): ``"auto"`` is
        OpenCV's USAC with MAGSAC++ scoring (``cv2.USAC_MAGSAC``, OpenCV >=
        4.5), then OpenCV's RANSAC, then the package's own vectorised RANSAC
        (:func:`~skretrieval.reranking.count_inliers`, which verifies a
        homography as an affine transform); an estimator is skipped when
        OpenCV is missing, lacks it, or raises.
    residual_threshold : float, default=8.0
        Inlier distance in pixels.
    max_trials : int, default=2000
        Most hypotheses.
    min_inliers : int, default=5
        Fewer inliers count as 0.
    rng : numpy Generator, int or None
        Seed (OpenCV's RNG is seeded from it).
    significance : float or None, default=None
        With a value, inliers whose :func:`false_alarms` (NFA) exceeds it
        also count as 0: too few to be told from chance.
    area : float or None, default=None
        The query region of the NFA (None: the bounding box of ``dst``,
        at least ``residual_threshold`` squared).

    Returns
    -------
    inliers : int
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if len(src) < max(min_inliers, _MIN_MATCHES[transform]):
        return 0
    rng = np.random.default_rng(rng)
    names = FALLBACKS[method]
    count = 0
    for name in names:
        try:
            count = _ESTIMATORS[name](name, src, dst, transform, residual_threshold,
                                      max_trials, rng)
            break
        except Exception:  # OpenCV missing, without this estimator, or failing: the next
            if name == names[-1]:
                raise
    if count < min_inliers:
        return 0
    if significance is not None:
        if area is None:
            area = max(_region_area(dst), float(residual_threshold) ** 2)
        if false_alarms(len(src), count, area, residual_threshold, transform,
                        max_trials) > significance:
            return 0
    return count


def _final_step(retriever):
    return retriever[-1] if isinstance(retriever, Pipeline) else retriever


class LocalVerificationReranker(RetrieverMixin, BaseEstimator):
    """Any retriever's short list re-ranked by spatial verification of local features.

    ``retriever`` (cloned and fitted on the same ``X``) ranks the database;
    its top ``n_rerank`` results per query are then verified with local
    features: the query's and the database image's descriptors are matched
    (Lowe's ratio test or mutual nearest neighbours, :func:`match_features`),
    a geometric model is fitted to the matched keypoint positions by a
    robust estimator (:func:`verify_matches`: USAC/MAGSAC, RANSAC, or the
    package's RANSAC, in that fall-back order), and the short list is
    re-ordered by the field's rule (Philbin et al., CVPR 2007):

    * **only verified images move**: an image is verified when its inliers
      are at least ``min_inliers`` *and* significantly more than chance
      gives for its number of tentative matches: the *a contrario* test of
      :func:`false_alarms` (the expected number of random configurations
      with as many inliers, NFA) must be at most ``significance``;
    * verified images go first, in the retriever's order
      (``order="retriever"``) or by inlier count (``order="inliers"``,
      ties: the retriever's order); every other image keeps the
      retriever's order after them, so that when nothing verifies the
      ranking is exactly the retriever's; results below the short list
      keep the retriever's order (:func:`verified_order`);
    * inliers are counted on **one-to-one matches** (``distinct=True``,
      :func:`distinct_matches`): SIFT's several orientations at one
      position, or many query descriptors matching one database
      descriptor, are one piece of evidence, not several.

    ``distinct=False, significance=None, order="inliers"`` gives the rule
    before these (any ``min_inliers`` inliers of all tentative matches
    verify, and verified images are ordered by inliers).  By default the
    verified images keep the retriever's order: on the benchmarks an
    image that verifies can still be the wrong one (a look-alike object,
    a scene sharing a patch with the query), and its inlier count says
    little about which of two verified images is right, while the
    retriever's order does.

    Two ways to give the local features:

    * ``local`` is a local feature extractor
      (:class:`~skretrieval.local.SIFTExtractor`,
      :class:`~skretrieval.local.DeepLocalFeatures`): ``X`` is a list of images, given both to
      ``retriever`` (e.g. a pipeline ``ConvFeatureExtractor -> GeMPooler ->
      NearestNeighborRetriever``, or ``SIFTExtractor -> ASMKRetriever``)
      and to ``local`` (cloned, fitted on ``X``);
    * ``local=None``: ``X`` is :class:`~skretrieval.local.LocalFeatures`,
      searched by ``retriever`` (e.g. :class:`~skretrieval.local.ASMKRetriever`) and verified
      as they are.

    Parameters
    ----------
    retriever : estimator or Pipeline
        Fitted on ``X`` (cloned); its last step has ``kneighbors``.
    local : estimator or None, default=None
        The local feature extractor (see above).
    n_rerank : int, default=100
        Length of the short list verified per query.
    matching : {"ratio", "mutual"}, default="ratio"
        Tentative matches (on L2-normalised descriptors such as RootSIFT).
    ratio : float, default=0.8
        Lowe's ratio.
    transform : {"similarity", "affine", "homography"}, default="affine"
        Geometric model.
    method : {"auto", "magsac", "ransac", "own"}, default="auto"
        Robust estimator (see :func:`verify_matches`).
    residual_threshold : float or None, default=None
        Inlier distance in pixels; None: 8 px, or the median keypoint scale
        of the database when larger (a deep feature's cell).
    max_trials : int, default=2000
        Most hypotheses per pair.
    min_inliers : int, default=5
        Fewer inliers count as not verified.
    significance : float or None, default=1.0
        Largest NFA (:func:`false_alarms`) of a verified image: with 1,
        fewer than one random configuration of the same tentative matches
        is expected to give as many inliers (the *a contrario* rule); the
        query region of the background model is the bounding box of the
        query's keypoints.  None: ``min_inliers`` alone decides.
    distinct : bool, default=True
        Make the tentative matches one-to-one in positions before fitting
        the model (:func:`distinct_matches`); False keeps every match.
    order : {"retriever", "inliers"}, default="retriever"
        The order of the verified images among themselves
        (:func:`verified_order`).
    random_state : int, RandomState or None, default=0
        Seed; the draws of a (query, database image) pair depend on it and
        on the database row only.
    verbose : int, default=0
        Progress bar of the queries when > 0.

    Attributes
    ----------
    retriever_ : estimator
        The fitted retriever.
    local_ : estimator or None
        The fitted local feature extractor.
    keypoints_ : ndarray of shape (n_local, 2), float32
        Database keypoint positions, image after image.
    descriptors_ : ndarray of shape (n_local, d), float16
        Their descriptors.
    offsets_ : ndarray of shape (n_samples + 1,)
        Image ``i`` owns rows ``offsets_[i]:offsets_[i + 1]``.
    threshold_ : float
        The inlier distance used.
    y_ : ndarray or None
        Database labels.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.local import ASMKRetriever, LocalFeatures
    >>> from skretrieval.reranking import LocalVerificationReranker
    >>> rng = np.random.default_rng(0)
    >>> feats = LocalFeatures([(rng.random((30, 4)) * 100, rng.standard_normal((30, 16)))
    ...                        for _ in range(4)])
    >>> sv = LocalVerificationReranker(ASMKRetriever(n_clusters=8), n_rerank=3).fit(feats)
    >>> int(sv.kneighbors(feats[:1], n_neighbors=2, return_distance=False)[0, 0])
    0
    """

    _fitted_attr = "offsets_"

    _parameter_constraints = {
        "retriever": [HasMethods(["fit"])],
        "local": [HasMethods(["fit", "transform"]), None],
        "n_rerank": [Interval(Integral, 0, None, closed="left")],
        "matching": [StrOptions({"mutual", "ratio"})],
        "ratio": [Interval(Real, 0, 1, closed="right")],
        "transform": [StrOptions(set(_MIN_MATCHES))],
        "method": [StrOptions(set(FALLBACKS))],
        "residual_threshold": [Interval(Real, 0, None, closed="neither"), None],
        "max_trials": [Interval(Integral, 1, None, closed="left")],
        "min_inliers": [Interval(Integral, 1, None, closed="left")],
        "significance": [Interval(Real, 0, None, closed="neither"), None],
        "distinct": ["boolean"],
        "order": [StrOptions(set(ORDERS))],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    _state_spec = StateSpec({
        "retriever_": Attr("estimator"),
        "local_": Attr("estimator", none=True),
        "keypoints_": Attr("array", dtype="f", shape=(None, 2)),
        "descriptors_": Attr("array", dtype="f", shape=("keypoints_", None)),
        "offsets_": Attr("array", dtype="iu", shape=(None,), values=(0, "keypoints_")),
        "threshold_": Attr("float"),
        "y_": Attr("array", dtype=LABELS, shape=(None,), none=True),
    })

    def __init__(self, retriever, local=None, *, n_rerank=100, matching="ratio", ratio=0.8,
                 transform="affine", method="auto", residual_threshold=None, max_trials=2000,
                 min_inliers=5, significance=1.0, distinct=True, order="retriever", random_state=0,
                 verbose=0):
        self.retriever = retriever
        self.local = local
        self.n_rerank = n_rerank
        self.matching = matching
        self.ratio = ratio
        self.transform = transform
        self.method = method
        self.residual_threshold = residual_threshold
        self.max_trials = max_trials
        self.min_inliers = min_inliers
        self.significance = significance
        self.distinct = distinct
        self.order = order
        self.random_state = random_state
        self.verbose = verbose

    def _local_features(self, X):
        if self.local_ is None:
            return as_local_features(X)
        return as_local_features(self.local_.transform(X), "the local extractor's output")

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the retriever on ``X`` and store the database's local features.

        Parameters
        ----------
        X : list of images, or LocalFeatures (``local=None``)
        y : array-like of shape (n_samples,), default=None
            Database labels.

        Returns
        -------
        self : LocalVerificationReranker
        """
        if self.local is None:
            feats = as_local_features(X)
            self.local_ = None
        else:
            self.local_ = clone(self.local)
            feats = as_local_features(self.local_.fit_transform(X), "the local extractor's output")
        self.retriever_ = clone(self.retriever).fit(X, y)
        if not hasattr(_final_step(self.retriever_), "kneighbors"):
            raise ValueError("the retriever (or its last step) must have kneighbors")
        kp, desc, offsets = feats.concatenated()
        self.keypoints_ = np.ascontiguousarray(kp[:, :2], dtype=np.float32)
        self.descriptors_ = desc.astype(np.float16)
        self.offsets_ = offsets
        scales = kp[:, 2][kp[:, 2] > 0]
        self.threshold_ = float(self.residual_threshold if self.residual_threshold is not None
                                else max(8.0, float(np.median(scales)) if len(scales) else 8.0))
        self.y_ = None if y is None else np.asarray(y)
        return self

    @property
    def n_samples_fit_(self):
        return len(self.offsets_) - 1

    def database_features(self, i):
        """Keypoint positions ``(n, 2)`` and descriptors ``(n, d)`` of database image ``i``."""
        a, b = self.offsets_[i], self.offsets_[i + 1]
        return self.keypoints_[a:b], self.descriptors_[a:b].astype(np.float32)

    def _search(self, X, k):
        final = _final_step(self.retriever_)
        if X is not None and isinstance(self.retriever_, Pipeline):
            X = self.retriever_[:-1].transform(X)
        return final.kneighbors(X, n_neighbors=k)

    def _seed(self):
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    def _verify(self, query, i, seed):
        q_kp, q_desc = query
        d_kp, d_desc = self.database_features(i)
        pairs = match_features(q_desc, d_desc, self.matching, self.ratio)
        if self.distinct and len(pairs):
            strength = np.einsum("ij,ij->i", q_desc[pairs[:, 0]], d_desc[pairs[:, 1]])
            pairs = distinct_matches(pairs, q_kp, d_kp, strength)
        return verify_matches(d_kp[pairs[:, 1]], q_kp[pairs[:, 0], :2], self.transform,
                              self.method, self.threshold_, self.max_trials, self.min_inliers,
                              np.random.default_rng([seed, int(i)]),
                              significance=self.significance,
                              area=max(_region_area(q_kp), self.threshold_ ** 2))

    def _queries(self, X):
        if X is None:
            return [self.database_features(i) for i in range(self.n_samples_fit_)]
        return [(kp[:, :2], desc) for kp, desc in self._local_features(X)]

    def inliers(self, X, indices):
        """Inlier counts of queries against database images, shape of ``indices``.

        Parameters
        ----------
        X : list of images, LocalFeatures or None
            Queries (None: the database images, by row).
        indices : array-like of int of shape (n_queries, m)
        """
        check_is_fitted(self, self._fitted_attr)
        indices = np.asarray(indices, dtype=np.int64)
        queries, seed = self._queries(X), self._seed()
        return np.array([[self._verify(f, i, seed) for i in row]
                         for f, row in zip(queries, indices)], dtype=np.int64).reshape(
                             indices.shape)

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Search, then verify the short list.

        The distances of the short list become ``d_R - 1 - (v + (R - r) /
        (R + 1))`` (``v`` the inliers with ``order="inliers"``, else 1 for
        a verified image, 0 for the others; ``d_R`` the retriever's
        distance of the last short-listed result, ``r`` a result's rank in
        the retriever's list of ``R``): they sort as the re-ranking does and stay below those of
        the rest, which keep the retriever's distances.

        Parameters
        ----------
        X : list of images, LocalFeatures or None
            Queries (as given to ``fit``); None ranks every database image
            against the others.
        n_neighbors : int or "all", default=None
            Results per query (default: the retriever's ``n_neighbors``, or 10).
        return_distance : bool, default=True

        Returns
        -------
        distances, indices : ndarray of shape (n_queries, n_neighbors)
        """
        check_is_fitted(self, self._fitted_attr)
        n_avail = self.n_samples_fit_ - (X is None)
        default = getattr(_final_step(self.retriever_), "n_neighbors", 10)
        k = resolve_n_neighbors(n_neighbors, n_avail, default=min(default, n_avail),
                                exclude_self=X is None)
        depth = max(k, min(self.n_rerank, n_avail))
        dist, ind = self._search(X, depth)
        dist, ind = np.array(dist, dtype=np.float64), np.array(ind)
        queries, seed = self._queries(X), self._seed()
        R = min(self.n_rerank, ind.shape[1])
        for j in progress(range(len(ind)), desc="verifying", unit="query", verbose=self.verbose):
            if R == 0:
                break
            short = ind[j, :R].copy()
            counts = np.array([self._verify(queries[j], i, seed) for i in short])
            order, key = verified_order(counts, self.order)
            dist[j, :R] = dist[j, R - 1] - 1.0 - key
            ind[j, :R] = short[order]
        dist, ind = dist[:, :k], ind[:, :k]
        return (dist, ind) if return_distance else ind

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags
