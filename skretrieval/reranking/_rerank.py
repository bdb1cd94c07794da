"""Re-ranking of the short list with regional descriptors (CAM proposals, R-MAC regions).

Jimenez, Alvarez & Giro-i-Nieto (BMVC 2017) re-rank the top results of the
global search with object proposals derived from the class activation maps of
each database image: boxes around the thresholded CAMs are pooled from the
image's feature maps and matched to the query; the best box's similarity
re-orders the short list, before query expansion.  The R-MAC grid of Tolias
et al. is a second proposal source.  The regional descriptors are computed
once at ``fit`` from the maps the extractor already produced (no second
forward pass) and are all that is kept: the maps themselves are not stored.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy import ndimage
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._expansion import weighted_mean
from ._common import ShortListMixin, as_feature_maps, l2_float32
from ..extraction._maps import FeatureMaps
from ..utils._progress import progress
from ..utils._state import LABELS, Attr, StateSpec
from ..pooling._functional import region_grid

__all__ = ["RegionReranker", "cam_boxes"]

_CHUNK = 32  # images whose regions are described together


def cam_boxes(cam, thresholds=(0.01, 0.1, 0.2, 0.3, 0.4)):
    """Boxes around the largest connected component of a thresholded CAM.

    Parameters
    ----------
    cam : ndarray of shape (H, W)
        One class activation map.
    thresholds : sequence of float
        Fractions of the CAM's maximum (Jimenez et al.: 1, 10, 20, 30, 40 %).

    Returns
    -------
    boxes : ndarray of shape (n_boxes, 4), float
        Relative boxes ``(y0, x0, y1, x1)`` in [0, 1], one per threshold
        (duplicates kept; the caller removes them).
    """
    cam = np.asarray(cam, dtype=np.float64)
    H, W = cam.shape
    lo, top = cam.min(), cam.max()
    out = []
    for t in thresholds:
        mask = cam >= lo + t * (top - lo) if top > lo else np.ones_like(cam, bool)
        labels, n = ndimage.label(mask)
        if n > 1:  # the largest component (ties: the first)
            sizes = np.bincount(labels.ravel())[1:]
            mask = labels == 1 + int(np.argmax(sizes))
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        out.append((rows[0] / H, cols[0] / W, (rows[-1] + 1) / H, (cols[-1] + 1) / W))
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def _crop(arr, box):
    """Cells of a ``(K, H, W)`` array inside a relative box (at least one)."""
    H, W = arr.shape[1:]
    y0, x0 = min(int(np.floor(box[0] * H + 1e-9)), H - 1), min(int(np.floor(box[1] * W + 1e-9)), W - 1)
    y1 = max(y0 + 1, min(H, int(np.ceil(box[2] * H - 1e-9))))
    x1 = max(x0 + 1, min(W, int(np.ceil(box[3] * W - 1e-9))))
    return arr[:, y0:y1, x0:x1]


class RegionReranker(ShortListMixin, BaseEstimator):
    """Global search, then re-ranking of the short list with regional descriptors.

    The final step of a pipeline after :class:`ConvFeatureExtractor`: it
    takes the feature maps, describes every image with ``aggregator`` (e.g.
    ``make_pipeline(GeMPooler(), PCAWhitener(128))`` or a
    :class:`CAMWeighter`), searches with ``retriever``, and re-orders the top
    ``n_rerank`` results of every query by
    ``max(global similarity, max_b similarity(query, region b))`` over the
    database image's regions.  The regions are pooled from the maps with the
    same fitted ``aggregator`` (maps and CAMs cropped to the box), so a
    region vector lives in the space of the global vectors.  Optionally, as
    in Jimenez et al., the query is then expanded with its top ``qe_k``
    re-ranked results and searched again.

    Results beyond the short list keep the order and distances of the global
    search, and no database item is ever dropped: because a re-ranked score
    is at least the global similarity, the re-ranked distances stay below
    those of the rest of the list (cosine or inner-product retrievers).

    Parameters
    ----------
    aggregator : estimator
        Transformer (or pipeline) from feature maps to L2-normalisable
        ``(n, D)`` vectors; cloned and fitted at ``fit``.
    retriever : estimator, default=None
        Search over the global vectors (cloned); None:
        ``NearestNeighborRetriever()``.  A
        :class:`QueryExpansionRetriever` adds DBA / QE *before* re-ranking.
    n_rerank : int, default=100
        Length ``R`` of the short list re-ranked per query.
    proposals : {"cam", "rmac", "both"}, default="cam"
        Region source: boxes around the thresholded CAMs of each image's top
        ``cam_classes`` classes (needs ``ConvFeatureExtractor(cams=K)``), the
        R-MAC grid, or both.
    cam_classes : int, default=6
        Classes whose CAMs give proposals (the paper's top 6).
    cam_thresholds : tuple of float, default=(0.01, 0.1, 0.2, 0.3, 0.4)
        Fractions of each CAM's range; one box (around the largest connected
        component) per class and threshold.
    rmac_levels : int, default=3
        Levels of the R-MAC grid.
    qe_k : int, default=0
        Average the query with its top ``qe_k`` re-ranked results (alpha-QE
        weights) and search again; 0 disables it.
    qe_alpha : float, default=0.0
        Similarity power of those weights (0: average QE, the paper's).
    dtype : {"float32", "float16"}, default="float32"
        Storage of the regional descriptors.
    verbose : int, default=0
        Show progress bars on stderr (database images described by regions
        at ``fit``, queries re-ranked) when > 0.

    Attributes
    ----------
    aggregator_ : estimator
        The fitted aggregator.
    retriever_ : estimator
        The fitted global search.
    global_ : ndarray of shape (n_samples, D)
        L2-normalised global database vectors.
    region_vectors_ : ndarray of shape (n_regions, D)
        Regional descriptors of every database image, image after image.
    region_offsets_ : ndarray of shape (n_samples + 1,)
        Image ``i`` owns rows ``region_offsets_[i]:region_offsets_[i + 1]``.
    region_boxes_ : ndarray of shape (n_regions, 4)
        Their relative boxes ``(y0, x0, y1, x1)``.
    y_ : ndarray or None
        Database labels.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import FeatureMaps, GeMPooler, RegionReranker
    >>> rng = np.random.default_rng(0)
    >>> maps = FeatureMaps([(rng.random((8, 6, 6)),) for _ in range(5)])
    >>> rr = RegionReranker(GeMPooler(), proposals="rmac", n_rerank=3).fit(maps)
    >>> rr.kneighbors(maps[:2], n_neighbors=4)[1].shape
    (2, 4)
    """

    _fitted_attr = "region_vectors_"

    _parameter_constraints = {
        "aggregator": [HasMethods(["fit", "transform"])],
        "retriever": [HasMethods(["fit", "kneighbors"]), None],
        "n_rerank": [Interval(Integral, 0, None, closed="left")],
        "proposals": [StrOptions({"cam", "rmac", "both"})],
        "cam_classes": [Interval(Integral, 1, None, closed="left")],
        "cam_thresholds": ["array-like"],
        "rmac_levels": [Interval(Integral, 1, None, closed="left")],
        "qe_k": [Interval(Integral, 0, None, closed="left")],
        "qe_alpha": [Interval(Real, 0, None, closed="left")],
        "dtype": [StrOptions({"float32", "float16"})],
        "verbose": ["verbose"],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py):
    # region_offsets_[i]:region_offsets_[i + 1] are the rows of image i's regions.
    _state_spec = StateSpec({
        "aggregator_": Attr("estimator"),
        "global_": Attr("array", dtype="f", shape=(None, None)),
        "y_": Attr("array", dtype=LABELS, shape=("global_",), none=True),
        "retriever_": Attr("estimator"),
        "region_vectors_": Attr("array", dtype="f", shape=(None, "global_[1]")),
        "region_boxes_": Attr("array", dtype="fiu", shape=("region_vectors_", 4)),
        "region_offsets_": Attr("array", dtype="iu", shape=("global_+1",),
                                values=(0, "region_vectors_")),
    })

    def __init__(self, aggregator, retriever=None, *, n_rerank=100, proposals="cam",
                 cam_classes=6, cam_thresholds=(0.01, 0.1, 0.2, 0.3, 0.4), rmac_levels=3,
                 qe_k=0, qe_alpha=0.0, dtype="float32", verbose=0):
        self.aggregator = aggregator
        self.retriever = retriever
        self.n_rerank = n_rerank
        self.proposals = proposals
        self.cam_classes = cam_classes
        self.cam_thresholds = cam_thresholds
        self.rmac_levels = rmac_levels
        self.qe_k = qe_k
        self.qe_alpha = qe_alpha
        self.dtype = dtype
        self.verbose = verbose

    def __setstate__(self, state):
        state.setdefault("verbose", 0)  # pickled before the parameter existed
        super().__setstate__(state)

    # -- proposals -----------------------------------------------------------
    def _boxes(self, X, i, maps):
        """Relative boxes of image ``i`` (duplicates removed, order kept)."""
        boxes = []
        if self.proposals in ("cam", "both"):
            if not X.has_cams:
                raise ValueError(
                    "proposals='cam' needs class activation maps: extract with "
                    "ConvFeatureExtractor(cams=K) (or use proposals='rmac')")
            cams = X.class_activations(i).maps[0]
            for cam in cams[: self.cam_classes]:
                boxes.append(cam_boxes(cam, tuple(self.cam_thresholds)))
        if self.proposals in ("rmac", "both"):
            H, W = maps[0].shape[1:]
            grid = region_grid(H, W, levels=self.rmac_levels).astype(np.float64)
            boxes.append(grid / np.array([H, W, H, W], dtype=np.float64))
        boxes = np.concatenate(boxes)
        _, first = np.unique(np.round(boxes, 6), axis=0, return_index=True)
        return boxes[np.sort(first)]

    def _describe_regions(self, X, indices):
        """Boxes and regional vectors of the images ``indices``."""
        crops = FeatureMaps(scales=X.scales)
        owners, all_boxes = [], []
        for i in indices:
            maps = X[i]
            acts = X.class_activations(i) if X.has_cams else None
            for box in self._boxes(X, i, maps):
                entry = tuple(_crop(m, box) for m in maps)
                cams = None
                if acts is not None:
                    cams = (acts.classes, acts.scores, tuple(_crop(a, box) for a in acts.maps))
                crops.append(entry, cams)
                owners.append(i)
                all_boxes.append(box)
        V = l2_float32(self.aggregator_.transform(crops))
        return np.asarray(owners), np.asarray(all_boxes, np.float32), V.astype(self.dtype)

    # -- fitting ---------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Describe the database globally and by regions, and index it.

        Parameters
        ----------
        X : FeatureMaps
            Database feature maps (with CAMs for ``proposals="cam"``).
        y : array-like of shape (n_samples,), default=None
            Database labels (for :meth:`score`).

        Returns
        -------
        self : RegionReranker
        """
        X, n = as_feature_maps(X)
        self._fit_global(X, y)
        counts = np.zeros(n, np.int64)
        vectors, boxes = [], []
        with progress(total=n, desc="regions", unit="img", verbose=self.verbose) as bar:
            for a in range(0, n, _CHUNK):
                owners, b, V = self._describe_regions(X, range(a, min(n, a + _CHUNK)))
                counts += np.bincount(owners, minlength=n)
                vectors.append(V)
                boxes.append(b)
                bar.update(min(n, a + _CHUNK) - a)
        self.region_vectors_ = np.concatenate(vectors)
        self.region_boxes_ = np.concatenate(boxes)
        self.region_offsets_ = np.concatenate([[0], np.cumsum(counts)])
        return self

    # -- searching -------------------------------------------------------------
    def _rerank(self, Q, dist, ind):
        """Re-order the first ``n_rerank`` columns by the best region."""
        R = min(self.n_rerank, ind.shape[1])
        if R == 0:
            return dist, ind
        dist, ind = dist.copy(), ind.copy()
        off = self.region_offsets_
        for j in progress(range(ind.shape[0]), desc="re-ranking", unit="query",
                          verbose=self.verbose):
            short = ind[j, :R]
            score = self._similarity(dist[j, :R]).astype(np.float64)
            q = Q[j].astype(np.float32)
            for r, i in enumerate(short):
                regions = self.region_vectors_[off[i]:off[i + 1]]
                if len(regions):
                    score[r] = max(score[r], float((regions.astype(np.float32) @ q).max()))
            order = np.argsort(-score, kind="stable")
            ind[j, :R] = short[order]
            dist[j, :R] = self._distance(score[order])
        return dist, ind

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Search, re-rank the short list, optionally expand the query.

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
        check_is_fitted(self, "region_vectors_")
        Q, rows = self._queries(X)
        k, depth = self._depths(rows, n_neighbors, self.n_rerank)
        dist, ind = self._rerank(Q, *self._search(Q, rows, depth))
        if self.qe_k > 0:
            top = min(self.qe_k, depth)
            Q2 = weighted_mean(Q, self.global_, ind[:, :top],
                                self._similarity(dist[:, :top]), self.qe_alpha)
            dist, ind = self._search(Q2, rows, k)
        dist, ind = dist[:, :k], ind[:, :k]
        return (dist, ind) if return_distance else ind
