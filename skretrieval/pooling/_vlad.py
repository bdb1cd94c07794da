"""VLAD encoding of the local descriptors of convolutional feature maps.

Every spatial position of a ``(C, H, W)`` map produced by
:class:`~skretrieval.ConvFeatureExtractor` is a ``C``-dimensional local
descriptor.  :class:`VLADEncoder` learns a k-means vocabulary on a bounded
random sample of them and aggregates the descriptors of each image into a
vector of locally aggregated descriptors (VLAD), as Ng, Yang & Davis (2015)
do with the activations of intermediate layers.

Like the poolers, the encoder reads one image at a time (a disk-backed
:class:`~skretrieval.FeatureMaps` is never loaded whole); ``transform`` groups
the descriptors of consecutive images into chunks of bounded size so that the
assignment to the visual words is one matrix product per chunk and the
residuals are accumulated by one sparse product, with no Python loop over
descriptors or words.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted

from ..extraction._maps import FeatureMaps, check_maps, iter_maps
from ..utils._state import Attr, StateSpec
from ._base import check_image, inspect_maps

__all__ = ["VLADEncoder"]

# Upper bound, in array elements, of the per-chunk work arrays of transform:
# the (n_positions, C) descriptors and the (n_maps, k, C) VLAD blocks of the
# maps encoded together (about 32 MB each in float64).
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _map_sizes(X):
    """Per image, the tuple of ``H * W`` of its per-scale maps.

    A :class:`FeatureMaps` (in memory or on disk) and a 4-D array are described
    from their metadata, without reading any map; the items of a list are
    already in memory.
    """
    if isinstance(X, FeatureMaps):
        # the stored references know their shapes: an in-memory array, or a
        # disk reference ("disk", offset, shape, dtype)
        return [
            tuple(
                int(np.prod((ref.shape if isinstance(ref, np.ndarray) else ref[2])[1:]))
                for ref in refs
            )
            for refs in X._refs
        ]
    if isinstance(X, np.ndarray):
        return [(int(X.shape[2] * X.shape[3]),)] * X.shape[0]
    return [tuple(int(x.shape[1] * x.shape[2]) for x in maps) for maps in iter_maps(X)]


def _get_image(X, index):
    """The per-scale float32 maps of image ``index`` of ``X`` (one image read)."""
    if isinstance(X, FeatureMaps):
        return X[index]
    if isinstance(X, np.ndarray):
        return (np.asarray(X[index], dtype=np.float32),)
    return next(iter_maps([X[index]]))


def _descriptors(x):
    """The ``(H * W, C)`` local descriptors of a ``(C, H, W)`` map (a view)."""
    return x.reshape(x.shape[0], -1).T


def _encode_sets(descs, lengths, centers, *, normalize_local, power_norm, intra_norm,
                 normalize):
    """VLAD vectors of several sets of local descriptors at once.

    Parameters
    ----------
    descs : list of ndarray of shape (n_i, C)
        The local descriptors of each set (a set: one map of one image).
    lengths : sequence of int
        ``n_i``, the number of descriptors of each set.
    centers : ndarray of shape (k, C), float64
        The visual words.

    Returns
    -------
    blocks : ndarray of shape (n_sets, k, C), float64
        Per set and word, the residual sum ``v_j``, after the optional signed
        square root.  A word that gets no descriptor has a zero block.
    scales : ndarray of shape (n_sets, k, 1), float64
        The factors that apply the intra-normalisation and the
        L2-normalisation of the set's vector: the VLAD vector of set ``i`` is
        ``(blocks[i] * scales[i]).ravel()``.
    """
    k, C = centers.shape
    n_sets = len(lengths)
    # an own float32 copy (the maps may be read-only views)
    D = np.concatenate(descs, dtype=np.float32)
    P = D.shape[0]
    if normalize_local:
        norms = np.sqrt(np.einsum("ij,ij->i", D, D, dtype=np.float64))
        D *= (1.0 / np.where(norms > 0, norms, 1.0)).astype(np.float32)[:, None]
    # nearest word, in float32: argmin_j ||c_j||^2 - 2 <x, c_j> (||x||^2 is
    # common to all j)
    c32 = centers.astype(np.float32)
    scores = D @ c32.T
    scores *= np.float32(-2.0)
    scores += np.einsum("kc,kc->k", c32, c32)
    assign = scores.argmin(axis=1)
    del scores
    # row of every descriptor in the stacked (n_sets * k, C) residual sums
    n_rows = n_sets * k
    rows = np.repeat(np.arange(n_sets, dtype=np.intp) * k, lengths) + assign
    counts = np.bincount(rows, minlength=n_rows).astype(np.float64)
    # v_j = sum_{x -> j} x - n_j c_j as one sparse product (accumulated in
    # float64): the one-hot assignment of the descriptors, next to -n_j at the
    # column of word j, times the descriptors stacked over the words
    words = np.arange(n_rows, dtype=np.intp) % k
    data = np.concatenate([np.ones(P), -counts])
    row_idx = np.concatenate([rows, np.arange(n_rows)])
    col_idx = np.concatenate([np.arange(P), P + words])
    A = sp.csr_matrix((data, (row_idx, col_idx)), shape=(n_rows, P + k))
    stacked = np.empty((P + k, C), dtype=np.float64)
    stacked[:P] = D
    stacked[P:] = centers
    del D
    V = np.asarray(A @ stacked)
    if power_norm:
        S = np.sqrt(np.abs(V))
        V = np.copysign(S, V, out=S)
    # every normalisation is a scaling of the rows (words): one pass over V
    sq = np.einsum("ij,ij->i", V, V)
    scale = np.ones(n_rows)
    if intra_norm:
        nonzero = sq > 0
        scale[nonzero] = 1.0 / np.sqrt(sq[nonzero])
        sq = nonzero.astype(np.float64)
    if normalize:
        set_sq = sq.reshape(n_sets, k).sum(axis=1)
        set_scale = 1.0 / np.sqrt(np.where(set_sq > 0, set_sq, 1.0))
        scale *= np.repeat(set_scale, k)
    return V.reshape(n_sets, k, C), scale.reshape(n_sets, k, 1)


# ---------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------
class VLADEncoder(TransformerMixin, BaseEstimator):
    """VLAD encoding of the local descriptors of convolutional feature maps.

    Every spatial position of a ``(C, H, W)`` map is a local descriptor
    ``x`` of ``C`` dimensions, L2-normalised first (``normalize_local``).
    :meth:`fit` learns ``k = n_clusters`` visual words ``c_1, ..., c_k`` by
    k-means on a uniform random sample of at most ``max_descriptors`` local
    descriptors of the collection.  :meth:`transform` assigns every local
    descriptor of an image to its nearest word ``NN(x)`` and sums the
    residuals per word [Jegou2010]_:

    .. math::

        v_j = \\sum_{x : NN(x) = j} (x - c_j), \\qquad j = 1, \\dots, k,

    then, in this order, optionally applies the signed square root
    ``sign(z) sqrt(|z|)`` to every component (``power_norm``),
    L2-normalises every block ``v_j`` (intra-normalisation
    [Arandjelovic2013]_, ``intra_norm``) and L2-normalises the concatenation
    ``[v_1, ..., v_k]`` (``normalize``).  The descriptor of an image has ``k *
    C`` dimensions per scale.  This is the encoding of Ng, Yang & Davis
    [Ng2015]_: L2-normalised convolutional local features, a vocabulary of
    100 words, intra-normalisation and L2-normalisation (the paper then
    reduces the VLAD vectors to 128 dimensions with PCA-whitening: append a
    :class:`~skretrieval.PCAWhitener`).

    Parameters
    ----------
    n_clusters : int, default=100
        Number of visual words ``k`` (100 in [Ng2015]_).
    normalize_local : bool, default=True
        L2-normalise every local descriptor before clustering and encoding,
        as [Ng2015]_ does.  A descriptor that is zero at every channel stays
        zero (and still counts, as the residual ``-c_j`` of its word).
    intra_norm : bool, default=True
        L2-normalise the residual sum of each word (intra-normalisation of
        [Arandjelovic2013]_, used by [Ng2015]_).  It gives every word the same
        weight, whatever the number of descriptors assigned to it, which
        limits the effect of bursts of similar descriptors.
    power_norm : bool, default=False
        Apply the signed square root ``sign(z) sqrt(|z|)`` to every component
        of the residual sums (power normalisation with exponent 1/2,
        [Jegou2012]_), before the intra-normalisation.  [Arandjelovic2013]_
        proposes intra-normalisation as an alternative to it, and [Ng2015]_
        does not use it; hence off by default.
    normalize : bool, default=True
        L2-normalise the VLAD vector of each scale and the final descriptor.
        With ``False`` the (power- and intra-normalised, if asked) residual
        sums are returned as they are, summed or concatenated over the scales.
    scale_combination : {"concat", "sum"}, default="concat"
        How the VLAD vectors of the scales of a multi-scale
        :class:`~skretrieval.FeatureMaps` are combined; every scale is encoded
        with the same vocabulary.  ``"concat"`` (the multi-scale descriptor
        of [Ng2015]_, who encode each scale separately and concatenate the
        encodings): the L2-normalised per-scale VLAD vectors are
        concatenated, scale by scale, and the result L2-normalised; the
        dimension is ``k * C * n_scales``.  ``"sum"``: the L2-normalised
        per-scale VLAD vectors are summed and the sum L2-normalised, as the
        poolers' default; the dimension stays ``k * C``.  With a single scale
        both give the same result.
    kmeans : {"minibatch", "full"}, default="minibatch"
        The k-means used to learn the vocabulary, with scikit-learn's
        default settings (one k-means++ initialisation):
        :class:`~sklearn.cluster.MiniBatchKMeans` (fast: mini-batches of
        1024 descriptors) or :class:`~sklearn.cluster.KMeans` (Lloyd
        iterations on the whole sample: several times slower, usually a
        slightly lower inertia).
    max_descriptors : int or None, default=100_000
        Maximum number of local descriptors, drawn uniformly without
        replacement from all the positions of all the scales of all the
        images, on which the vocabulary is learned.  ``None`` uses them all.
        The sample is held in memory during :meth:`fit` as a
        ``(max_descriptors, C)`` float64 array (410 MB for 100,000
        descriptors of 512 channels).
    random_state : int, RandomState instance or None, default=None
        Controls the sampling of the descriptors and the k-means
        initialisation.  Pass an int for reproducible vocabularies.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, C), dtype=float32
        The visual words.  They can be replaced (same shape) by a vocabulary
        learned elsewhere, e.g. on another collection as in [Ng2015]_.
    n_descriptors_ : int
        Number of local descriptors the vocabulary was learned on.
    inertia_ : float
        Sum of squared distances of those descriptors to their closest word.
    n_channels_ : int
        Number of channels ``C`` of the maps seen in :meth:`fit`.
    n_scales_ : int
        Number of scales per image of the maps seen in :meth:`fit`.

    See Also
    --------
    skretrieval.GeMPooler : A ``C``-dimensional global descriptor, without
        vocabulary.
    skretrieval.PCAWhitener : Dimensionality reduction and whitening of the
        (high-dimensional) VLAD vectors.

    Notes
    -----
    Order of the normalisations: signed square root of the raw residual sums,
    then intra-normalisation, then L2-normalisation of each scale's vector,
    then combination of the scales and a last L2-normalisation.  This is the
    order of VLFeat's VLAD implementation; the signed square root is applied
    first because after it the blocks are L2-normalised again, whereas an
    intra-normalisation followed by a square root would no longer give unit
    blocks.  A word that no descriptor of the image is assigned to gives a
    zero block (never NaN).

    The dimension ``k * C`` is large (51,200 for 100 words of 512 channels):
    the output of :meth:`transform` for ``n`` images takes ``4 * n * k * C``
    bytes.  Reduce it with a :class:`~skretrieval.PCAWhitener`.

    Descriptors are assigned in float32 (one matrix product per chunk of
    images); residuals and normalisations are computed in float64; the output
    is float32.

    References
    ----------
    .. [Ng2015] J. Y.-H. Ng, F. Yang and L. S. Davis, "Exploiting local
       features from deep networks for image retrieval", IEEE Conference on
       Computer Vision and Pattern Recognition (CVPR) Workshops, pp. 53-61,
       2015.
    .. [Arandjelovic2013] R. Arandjelović and A. Zisserman, "All about VLAD",
       IEEE Conference on Computer Vision and Pattern Recognition (CVPR),
       pp. 1578-1585, 2013.
    .. [Jegou2010] H. Jégou, M. Douze, C. Schmid and P. Pérez, "Aggregating
       local descriptors into a compact image representation", CVPR, 2010.
    .. [Jegou2012] H. Jégou, F. Perronnin, M. Douze, J. Sánchez, P. Pérez and
       C. Schmid, "Aggregating local image descriptors into compact codes",
       IEEE TPAMI 34(9):1704-1716, 2012.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import VLADEncoder
    >>> rng = np.random.default_rng(0)
    >>> maps = rng.random((10, 8, 5, 6), dtype=np.float32)  # 10 images, C=8
    >>> vlad = VLADEncoder(n_clusters=4, random_state=0).fit(maps)
    >>> vlad.cluster_centers_.shape, vlad.n_descriptors_
    ((4, 8), 300)
    >>> X = vlad.transform(maps)
    >>> X.shape, X.dtype
    ((10, 32), dtype('float32'))
    >>> bool(np.allclose(np.linalg.norm(X, axis=1), 1.0))
    True
    >>> vlad.get_feature_names_out()[:2].tolist()
    ['vladencoder_w0_c0', 'vladencoder_w0_c1']
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "normalize_local": ["boolean"],
        "intra_norm": ["boolean"],
        "power_norm": ["boolean"],
        "normalize": ["boolean"],
        "scale_combination": [StrOptions({"sum", "concat"})],
        "kmeans": [StrOptions({"minibatch", "full"})],
        "max_descriptors": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = StateSpec({
        "cluster_centers_": Attr("array", dtype="f", shape=("n_clusters", "n_channels_")),
        "inertia_": Attr("float"),
        "n_descriptors_": Attr("int"),
        "n_channels_": Attr("int", values=(1, None)),
        "n_scales_": Attr("int", values=(1, None)),
    })

    def __init__(
        self,
        *,
        n_clusters=100,
        normalize_local=True,
        intra_norm=True,
        power_norm=False,
        normalize=True,
        scale_combination="concat",
        kmeans="minibatch",
        max_descriptors=100_000,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.normalize_local = normalize_local
        self.intra_norm = intra_norm
        self.power_norm = power_norm
        self.normalize = normalize
        self.scale_combination = scale_combination
        self.kmeans = kmeans
        self.max_descriptors = max_descriptors
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    # -- fitting ---------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the vocabulary on a random sample of local descriptors.

        Two passes over the maps: the first counts the positions of every map
        (from the metadata of a :class:`~skretrieval.FeatureMaps` or an array,
        nothing is read), the second reads, one image at a time, the images
        that hold sampled positions and copies those descriptors.

        Parameters
        ----------
        X : FeatureMaps, ndarray of shape (n_images, C, H, W) or list
            Feature maps: a :class:`~skretrieval.FeatureMaps`, a 4-D array, a
            list of ``(C, H, W)`` arrays, or a list of per-image sequences of
            ``(C, H, W)`` arrays (one per scale).  All maps must have the same
            number of channels ``C``; ``H`` and ``W`` may vary.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted encoder.
        """
        n_channels, n_scales = inspect_maps(X)
        rng = check_random_state(self.random_state)
        sample = self._sample_descriptors(X, n_channels, rng)
        if self.normalize_local:  # in place: the sample may be large
            norms = np.sqrt(np.einsum("ij,ij->i", sample, sample))
            sample /= np.where(norms > 0, norms, 1.0)[:, None]
        if self.kmeans == "minibatch":
            km = MiniBatchKMeans(n_clusters=self.n_clusters, random_state=rng)
        else:
            km = KMeans(n_clusters=self.n_clusters, random_state=rng)
        km.fit(sample)
        self.cluster_centers_ = np.ascontiguousarray(
            km.cluster_centers_, dtype=np.float32
        )
        self.inertia_ = float(km.inertia_)
        self.n_descriptors_ = int(sample.shape[0])
        self.n_channels_ = n_channels
        self.n_scales_ = n_scales
        return self

    def _sample_descriptors(self, X, n_channels, rng):
        """A uniform sample of the local descriptors, ``(n, C)`` float64.

        float64 because scikit-learn's k-means ran about three times faster
        on float64 than on float32 descriptors in our measurements.
        """
        sizes = _map_sizes(X)
        per_map = np.fromiter(
            (n for image in sizes for n in image), dtype=np.int64
        )
        n_maps_of = np.fromiter((len(image) for image in sizes), dtype=np.intp)
        for i, image in enumerate(sizes):
            for s, n in enumerate(image):
                if n == 0:
                    raise ValueError(
                        f"image {i} (scale {s}) has an empty feature map (no "
                        "spatial position)"
                    )
        total = int(per_map.sum())
        n_sample = total
        if self.max_descriptors is not None:
            n_sample = min(total, int(self.max_descriptors))
        if n_sample < self.n_clusters:
            if n_sample < total:
                why = f"max_descriptors={self.max_descriptors} sampled ones"
            else:
                why = f"{total} local descriptors (spatial positions) in X"
            raise ValueError(
                f"n_clusters={self.n_clusters} visual words cannot be learned "
                f"from {why}: need at least as many descriptors as clusters. "
                "Lower n_clusters or fit on more (or larger) feature maps."
            )
        if n_sample == total:
            idx = np.arange(total, dtype=np.int64)
        else:
            # O(n_sample) memory whatever the number of positions
            idx = np.sort(
                sample_without_replacement(total, n_sample, random_state=rng)
            ).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(per_map)])
        map_of = np.searchsorted(starts, idx, side="right") - 1
        local = idx - starts[map_of]
        # the sampled indices of map m are idx[bounds[m]:bounds[m + 1]]
        bounds = np.searchsorted(map_of, np.arange(len(per_map) + 1))
        first_map = np.concatenate([[0], np.cumsum(n_maps_of)])
        sample = np.empty((n_sample, n_channels), dtype=np.float64)
        for i in range(len(sizes)):
            m0, m1 = first_map[i], first_map[i + 1]
            if bounds[m0] == bounds[m1]:
                continue  # nothing sampled in this image: do not read it
            maps = _get_image(X, i)
            check_image(maps, i, n_channels)
            for s, x in enumerate(maps):
                lo, hi = bounds[m0 + s], bounds[m0 + s + 1]
                if hi > lo:
                    sample[lo:hi] = x.reshape(n_channels, -1)[:, local[lo:hi]].T
        return sample

    # -- transforming ----------------------------------------------------
    def transform(self, X):
        """Encode the local descriptors of each image into a VLAD vector.

        Parameters
        ----------
        X : FeatureMaps, ndarray of shape (n_images, C, H, W) or list
            Feature maps, as for :meth:`fit`, with the number of channels
            seen in :meth:`fit`.  With ``scale_combination="concat"`` every
            image must have the number of scales seen in :meth:`fit`.

        Returns
        -------
        X_new : ndarray of shape (n_images, n_features), dtype=float32
            One VLAD vector per image; ``n_features`` is ``n_clusters * C``,
            times ``n_scales_`` with ``scale_combination="concat"``.  The
            features are ordered scale by scale, then word by word, then
            channel by channel (see :meth:`get_feature_names_out`).
        """
        check_is_fitted(self, ["cluster_centers_", "n_channels_", "n_scales_"])
        self._validate_params()
        n_images = check_maps(X)
        centers = np.ascontiguousarray(self.cluster_centers_, dtype=np.float32)
        k, C = centers.shape
        if C != self.n_channels_:
            raise ValueError(
                f"cluster_centers_ has shape {centers.shape}, but the encoder was "
                f"fitted on maps of {self.n_channels_} channels"
            )
        concat = self.scale_combination == "concat"
        block = k * C
        out = np.zeros(
            (n_images, block * (self.n_scales_ if concat else 1)), dtype=np.float32
        )
        centers64 = centers.astype(np.float64)
        params = dict(
            normalize_local=self.normalize_local,
            power_norm=self.power_norm,
            intra_norm=self.intra_norm,
            normalize=self.normalize,
        )
        # images are encoded in chunks of maps that bound the work arrays
        max_sets = max(1, _CHUNK_ELEMENTS // block)
        max_positions = max(1, _CHUNK_ELEMENTS // C)
        pending, where = [], []
        n_pos = max_scales = 0

        def flush():
            V, scales = _encode_sets(
                pending, [len(d) for d in pending], centers64, **params
            )
            for v, f, (i, s) in zip(V, scales, where):
                if concat:  # scaled straight into the output
                    target = out[i, s * block : (s + 1) * block].reshape(k, C)
                    np.multiply(v, f, out=target, casting="same_kind")
                else:
                    out[i] += (v * f).ravel()
            pending.clear()
            where.clear()

        for i, maps in enumerate(iter_maps(X)):
            if concat and len(maps) != self.n_scales_:
                raise ValueError(
                    f"image {i} has feature maps at {len(maps)} scales, expected "
                    f"{self.n_scales_} (as in fit): scale_combination='concat' "
                    "needs the same number of scales for every image"
                )
            check_image(maps, i, C)
            max_scales = max(max_scales, len(maps))
            for s, x in enumerate(maps):
                d = _descriptors(x)
                if pending and (
                    len(pending) >= max_sets or n_pos + len(d) > max_positions
                ):
                    flush()
                    n_pos = 0
                pending.append(d)
                where.append((i, s))
                n_pos += len(d)
        if pending:
            flush()
        if self.normalize and max_scales > 1:
            # combine the (unit) per-scale vectors: a last L2-normalisation
            rows = max(1, _CHUNK_ELEMENTS // out.shape[1])
            for a in range(0, n_images, rows):
                part = out[a : a + rows]
                norms = np.sqrt(np.einsum("ij,ij->i", part, part, dtype=np.float64))
                part /= np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]
        return out

    # -- feature names ---------------------------------------------------
    def get_feature_names_out(self, input_features=None):
        """Get output feature names for transformation.

        ``vladencoder_w{word}_c{channel}``, word by word; with
        ``scale_combination="concat"`` and maps at several scales,
        ``vladencoder_s{scale}_w{word}_c{channel}``, scale by scale.

        Parameters
        ----------
        input_features : None
            Ignored (the input has no feature names); present for API
            consistency.

        Returns
        -------
        feature_names_out : ndarray of str objects
            Transformed feature names.
        """
        check_is_fitted(self, ["cluster_centers_", "n_channels_", "n_scales_"])
        k, C = self.cluster_centers_.shape
        names = [f"w{w}_c{c}" for w in range(k) for c in range(C)]
        prefix = type(self).__name__.lower()
        if self.scale_combination == "concat" and self.n_scales_ > 1:
            names = [f"s{s}_{n}" for s in range(self.n_scales_) for n in names]
        return np.asarray([f"{prefix}_{n}" for n in names], dtype=object)
