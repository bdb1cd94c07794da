"""ASMKRetriever: search over local features with aggregated selective match kernels."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..neighbors._base import RetrieverMixin, resolve_n_neighbors
from ..neighbors._items import (ItemIds, check_fingerprints, concatenate_fingerprints,
                                concatenate_labels)
from ..utils._state import LABELS, Attr, StateSpec
from ._features import as_local_features
from ._kernel import (CODEBOOK_BACKENDS, aggregate, assign, binary_similarity, image_norms,
                      selective_kernel, train_codebook)

__all__ = ["ASMKRetriever"]

#: Posting-list entries compared at once in a query (bounds the memory).
_BLOCK = 1 << 21


class ASMKRetriever(RetrieverMixin, BaseEstimator):
    """Image search over local features with ASMK / ASMK* and an inverted file.

    The aggregated selective match kernel of Tolias, Avrithis & Jégou (IJCV
    2016), the search HOW and FIRe run on:

    1. **codebook**: k-means (``n_clusters`` visual words) on a sample of at
       most ``train_size`` local descriptors of the database, or of
       ``fit(..., codebook_features=...)``;
    2. **aggregation**: every descriptor goes to its nearest word (a query's
       to its ``multiple_assignment`` nearest); per image and word the
       residuals ``x - q(x)`` are summed into ``V``, then L2-normalised
       (ASMK, ``binary=False``, stored as float16) or binarised to the signs
       of ``V`` (ASMK*, ``binary=True``, ``d / 8`` bytes);
    3. **kernel**: two images are compared word by word, ``K(X, Y) =
       gamma(X) gamma(Y) sum_c sigma(u_c)``, ``u_c`` the dot product of
       the normalised aggregated residuals (for ASMK*, ``1 - 2 h / d`` with
       ``h`` the Hamming distance of the bits), ``sigma(u) = sign(u)
       |u|^alpha`` above ``tau`` and 0 below (the selectivity), ``gamma`` the
       normalisation that makes ``K(X, X) = 1``;
    4. **inverted file**: one entry (image, word, vector) per word present
       in an image; a query visits the posting lists of its words only.

    Distances returned are ``1 - K(query, image)``, the convention of a
    cosine retriever (``K(X, X) = 1`` as ``cos(x, x) = 1``): ``metric`` is
    ``"cosine"``, so :func:`~skretrieval.utils.similarities_from_distances`
    with it gives back the kernel values (``skretrieval search`` and
    ``serve`` print and answer them as the similarity, higher is better).

    Parameters
    ----------
    n_clusters : int, default=1024
        Codebook size (the paper uses 65,536 on millions of descriptors; a
        small database needs a small codebook).
    binary : bool, default=True
        ASMK* (binary residuals) or full ASMK.
    alpha : float, default=3.0
        Exponent of the selective function.
    tau : float, default=0.0
        Similarity threshold of the selective function.
    multiple_assignment : int, default=1
        Words each query descriptor is assigned to (the database's get one).
    train_size : int, default=100000
        Most descriptors the codebook is trained on (a random sample).
    kmeans : {"minibatch", "kmeans", "faiss"}, default="minibatch"
        scikit-learn's MiniBatchKMeans (fast, approximate centroids), its
        KMeans (Lloyd's iterations, exact on small samples), or FAISS's
        k-means (``pip install skretrieval[faiss]``).
    n_iter : int, default=20
        k-means iterations.
    n_neighbors : int, default=10
        Results of :meth:`kneighbors` by default.
    random_state : int, RandomState or None, default=0
        Seed of the sample and the k-means.

    Attributes
    ----------
    centroids_ : ndarray of shape (n_clusters, n_features_in), float32
        The visual words.
    entry_images_, entry_words_ : ndarray of shape (n_entries,)
        The inverted file's entries: database row and word, by image.
    entry_vectors_ : ndarray of shape (n_entries, d / 8) uint8 or (n_entries, d) float16
        Their aggregated residuals.
    n_samples_fit_ : int
        Images of the database.
    n_features_in_ : int
        Descriptor size.
    ids_ : ndarray of shape (n_samples_fit,)
        Database ids.
    y_ : ndarray or None
        Database labels.
    fingerprints_ : ndarray of str of shape (n_samples_fit,) or None
        Content fingerprints of the images, given to :meth:`fit` or
        :meth:`partial_fit` (``""``: unknown), read by
        :func:`skretrieval.add_to_index` to skip the unchanged images.
    metric : str
        ``"cosine"``, the convention of the distances (``1 - K``): read by
        the callers that turn distances into similarities.

    See Also
    --------
    SIFTExtractor, DeepLocalFeatures : Local features to index.
    skretrieval.reranking.LocalVerificationReranker : Spatial verification of its short list.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval.local import ASMKRetriever, LocalFeatures
    >>> rng = np.random.default_rng(0)
    >>> feats = LocalFeatures([(rng.random((30, 4)), rng.standard_normal((30, 16)))
    ...                        for _ in range(4)])
    >>> asmk = ASMKRetriever(n_clusters=8).fit(feats)
    >>> int(asmk.kneighbors(feats[:1], n_neighbors=2, return_distance=False)[0, 0])
    0
    """

    _fitted_attr = "centroids_"

    _parameter_constraints = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "binary": ["boolean"],
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "tau": [Interval(Real, -1, 1, closed="left")],
        "multiple_assignment": [Interval(Integral, 1, None, closed="left")],
        "train_size": [Interval(Integral, 1, None, closed="left")],
        "kmeans": [StrOptions(set(CODEBOOK_BACKENDS))],
        "n_iter": [Interval(Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    _state_spec = StateSpec(
        {
            "centroids_": Attr("array", dtype="f", shape=("n_clusters", "n_features_in_")),
            "n_features_in_": Attr("int", values=(1, None)),
            "n_samples_fit_": Attr("int", values=(1, None)),
            "entry_images_": Attr("array", dtype="iu", shape=(None,),
                                  values=(0, "n_samples_fit_-1")),
            "entry_words_": Attr("array", dtype="iu", shape=("entry_images_",),
                                 values=(0, "n_clusters-1")),
            "entry_vectors_": Attr("array", dtype=("uint8", "float16"),
                                   shape=("entry_images_", None)),
            "ids_": Attr("array", dtype="iuUO", shape=("n_samples_fit_",)),
            "_next_id": Attr("int"),
            "y_": Attr("array", dtype=LABELS, shape=("n_samples_fit_",), none=True),
            # absent from files written before the index machinery took ASMK
            "fingerprints_": Attr("array", dtype="UO", shape=("n_samples_fit_",),
                                  none=True, optional=True),
        },
        transient={"_postings": None, "_norms": None},
    )

    def __init__(self, n_clusters=1024, *, binary=True, alpha=3.0, tau=0.0,
                 multiple_assignment=1, train_size=100_000, kmeans="minibatch", n_iter=20,
                 n_neighbors=10, random_state=0):
        self.n_clusters = n_clusters
        self.binary = binary
        self.alpha = alpha
        self.tau = tau
        self.multiple_assignment = multiple_assignment
        self.train_size = train_size
        self.kmeans = kmeans
        self.n_iter = n_iter
        self.n_neighbors = n_neighbors
        self.random_state = random_state

    # -- fitting -----------------------------------------------------------------
    def _train(self, D):
        rng = check_random_state(self.random_state)
        if len(D) > self.train_size:
            D = D[np.sort(rng.choice(len(D), self.train_size, replace=False))]
        self.centroids_ = train_codebook(D, self.n_clusters, kmeans=self.kmeans,
                                         seed=int(rng.randint(2**31 - 1)), n_iter=self.n_iter)

    def _encode(self, X, multiple_assignment=1):
        """Entries ``(images, words, vectors)`` of local features ``X``."""
        _, D, offsets = X.concatenated()
        if len(D) and D.shape[1] != self.n_features_in_:
            raise ValueError(f"X has descriptors of {D.shape[1]} dimensions, but "
                             f"{type(self).__name__} is fitted with {self.n_features_in_}")
        owners = np.repeat(np.arange(len(X)), np.diff(offsets))
        words = assign(D, self.centroids_, min(multiple_assignment, self.n_clusters))
        images, word_ids, vectors = aggregate(D, words, owners, self.centroids_, self.binary)
        if not self.binary:
            vectors = vectors.astype(np.float16)
        return images, word_ids, vectors

    @property
    def metric(self):
        """``"cosine"``: distances are ``1 - K``, similarities ``1 - distance``."""
        return "cosine"

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, ids=None, codebook_features=None, fingerprints=None):
        """Learn the codebook and index the database.

        Parameters
        ----------
        X : LocalFeatures
            Database local features.
        y : array-like of shape (n_samples,), default=None
            Database labels.
        ids : array-like of shape (n_samples,), default=None
            Unique ids (default ``0, 1, ...``).
        codebook_features : LocalFeatures or ndarray of shape (n, d), default=None
            Descriptors the codebook is learned on instead of the database's
            (e.g. another collection, as the paper does).
        fingerprints : array-like of str of shape (n_samples,), default=None
            Content fingerprints of the images (see
            :func:`skretrieval.item_fingerprint`), kept in ``fingerprints_``
            so that :func:`skretrieval.add_to_index` tells an unchanged image
            from an edited one.

        Returns
        -------
        self : ASMKRetriever
        """
        X = as_local_features(X)
        n = len(X)
        ids = ItemIds().new_ids(ids, n)
        fingerprints = check_fingerprints(fingerprints, n)
        y = self._check_y(y, n)
        if codebook_features is None:
            D = X.concatenated()[1]
        elif isinstance(codebook_features, np.ndarray):
            D = codebook_features
        else:
            D = as_local_features(codebook_features, "codebook_features").concatenated()[1]
        if D.ndim != 2 or len(D) == 0:
            raise ValueError("no local descriptor to learn the codebook from: "
                             f"the {n} images have no local feature")
        self._train(D)
        self.n_features_in_ = int(self.centroids_.shape[1])
        self.entry_images_, self.entry_words_, self.entry_vectors_ = self._encode(X)
        self.n_samples_fit_ = n
        self.ids_ = ids
        self._next_id = int(ids.max()) + 1 if ids.dtype.kind in "iu" else 0
        self.y_ = y
        self.fingerprints_ = fingerprints
        self._postings = self._norms = None
        return self

    @staticmethod
    def _check_y(y, n):
        if y is None:
            return None
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"y must have one label per image: shape {y.shape} for {n} images")
        return y

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, ids=None, fingerprints=None):
        """Add images to the database (the codebook is kept).

        The first call on an unfitted retriever is a :meth:`fit`.  Later
        calls give exactly the rankings of a :meth:`fit` on all the images
        with the same codebook.

        Parameters
        ----------
        X : LocalFeatures
        y : array-like, default=None
            Their labels (required when the database has labels).
        ids : array-like, default=None
            Their ids (default: the next free ints).
        fingerprints : array-like of str, default=None
            Their content fingerprints (see :meth:`fit`); images added
            without get ``""`` (unknown), and so do the earlier ones when
            fingerprints are first given here.

        Returns
        -------
        self : ASMKRetriever
        """
        if not hasattr(self, "centroids_"):
            return self.fit(X, y, ids=ids, fingerprints=fingerprints)
        X = as_local_features(X)
        n = len(X)
        if (y is None) != (self.y_ is None):
            raise ValueError("partial_fit(X, y): the retriever was fitted "
                             + ("with labels: pass y." if y is None else
                                "without labels: y must be None."))
        y = self._check_y(y, n)
        ids = ItemIds(self.ids_, self._next_id).new_ids(ids, n)
        fingerprints = concatenate_fingerprints(getattr(self, "fingerprints_", None),
                                                self.n_samples_fit_,
                                                check_fingerprints(fingerprints, n), n)
        images, words, vectors = self._encode(X)
        self.entry_images_ = np.concatenate([self.entry_images_, images + self.n_samples_fit_])
        self.entry_words_ = np.concatenate([self.entry_words_, words])
        self.entry_vectors_ = np.concatenate([self.entry_vectors_, vectors])
        if y is not None:
            self.y_ = concatenate_labels(self.y_, y)
        self.ids_ = np.concatenate([self.ids_, ids])
        self.fingerprints_ = fingerprints
        if ids.dtype.kind in "iu":
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        self.n_samples_fit_ += n
        self._postings = self._norms = None
        return self

    def remove(self, ids):
        """Remove images from the database, by id (later rows shift down).

        Raises
        ------
        ValueError
            If an id is unknown or the database would be empty.
        """
        check_is_fitted(self, self._fitted_attr)
        rows = ItemIds(self.ids_).rows_of(ids)
        keep = np.ones(self.n_samples_fit_, bool)
        keep[rows] = False
        if not keep.any():
            raise ValueError("remove() would leave the database empty; fit a new retriever")
        new_row = np.cumsum(keep) - 1
        kept = keep[self.entry_images_]
        self.entry_images_ = new_row[self.entry_images_[kept]]
        self.entry_words_ = self.entry_words_[kept]
        self.entry_vectors_ = self.entry_vectors_[kept]
        self.ids_ = self.ids_[keep]
        if self.y_ is not None:
            self.y_ = self.y_[keep]
        if getattr(self, "fingerprints_", None) is not None:
            self.fingerprints_ = self.fingerprints_[keep]
        self.n_samples_fit_ = int(keep.sum())
        self._postings = self._norms = None
        return self

    def rows_of(self, ids):
        """Database rows of ids."""
        check_is_fitted(self, self._fitted_attr)
        return ItemIds(self.ids_).rows_of(ids)

    # -- search ------------------------------------------------------------------
    def _index(self):
        """Entries sorted by word (stable: by image within a word), word offsets,
        image norms (transient, rebuilt after loading or an update)."""
        if getattr(self, "_postings", None) is None:
            order = np.argsort(self.entry_words_, kind="stable")
            starts = np.searchsorted(self.entry_words_[order], np.arange(self.n_clusters + 1))
            self._postings = (order, starts)
            self._norms = image_norms(self.entry_images_, self.n_samples_fit_,
                                      self.alpha, self.tau)
        return self._postings, self._norms

    def _similarities(self, qv, ev):
        if self.binary:
            return binary_similarity(qv, ev, self.n_features_in_)
        return np.einsum("ij,ij->i", qv.astype(np.float32), ev.astype(np.float32))

    def _scores(self, words, vectors):
        """Kernel of one query (its entries) with every database image."""
        (order, starts), norms = self._index()
        scores = np.zeros(self.n_samples_fit_)
        if len(words) == 0:
            return scores
        lengths = starts[words + 1] - starts[words]
        total = int(lengths.sum())
        ends = np.cumsum(lengths)
        for a in range(0, total, _BLOCK):
            pos = np.arange(a, min(a + _BLOCK, total))
            row = np.searchsorted(ends, pos, side="right")  # which query word
            entry = order[starts[words[row]] + pos - (ends[row] - lengths[row])]
            s = selective_kernel(self._similarities(vectors[row], self.entry_vectors_[entry]),
                                 self.alpha, self.tau)
            scores += np.bincount(self.entry_images_[entry], weights=s,
                                  minlength=self.n_samples_fit_)
        q_norm = image_norms(np.zeros(len(words), np.int64), 1, self.alpha, self.tau)[0]
        return scores * norms * q_norm

    def _query_entries(self, X):
        """Per query, its (words, vectors)."""
        if X is None:
            images, words, vectors = self.entry_images_, self.entry_words_, self.entry_vectors_
            n = self.n_samples_fit_
        else:
            X = as_local_features(X)
            images, words, vectors = self._encode(X, self.multiple_assignment)
            n = len(X)
        order = np.argsort(images, kind="stable")
        bounds = np.searchsorted(images[order], np.arange(n + 1))
        return [(words[order[a:b]], vectors[order[a:b]])
                for a, b in zip(bounds[:-1], bounds[1:])]

    def similarities(self, X=None):
        """Kernel values ``K(query, image)``, shape ``(n_queries, n_samples_fit_)``.

        Parameters
        ----------
        X : LocalFeatures or None
            Queries; None: the database images themselves (their own entry
            included).
        """
        check_is_fitted(self, self._fitted_attr)
        queries = self._query_entries(X)
        return np.array([self._scores(w, v) for w, v in queries]).reshape(
            len(queries), self.n_samples_fit_)

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True, return_ids=False):
        """Rank the database for local-feature queries.

        Parameters
        ----------
        X : LocalFeatures or None
            Queries; None ranks every database image against the others.
        n_neighbors : int or "all", default=None
            Results per query (default ``n_neighbors``).
        return_distance : bool, default=True
        return_ids : bool, default=False
            Ids instead of row numbers.

        Returns
        -------
        distances : ndarray of shape (n_queries, n_neighbors)
            ``1 - K`` (the ties broken by the lower row).
        indices : ndarray of shape (n_queries, n_neighbors)
        """
        check_is_fitted(self, self._fitted_attr)
        loo = X is None
        k = resolve_n_neighbors(n_neighbors, self.n_samples_fit_ - loo,
                                default=min(self.n_neighbors, self.n_samples_fit_ - loo),
                                exclude_self=loo)
        S = self.similarities(X)
        if loo:
            S[np.arange(len(S)), np.arange(len(S))] = -np.inf
        ind = np.argsort(-S, axis=1, kind="stable")[:, :k]
        dist = 1.0 - np.take_along_axis(S, ind, 1)
        if return_ids:
            ind = self.ids_[ind]
        return (dist, ind) if return_distance else ind

    def index_nbytes(self):
        """Bytes of the inverted file (entries' images, words and vectors)."""
        check_is_fitted(self, self._fitted_attr)
        # a database row and a word fit in 4 bytes each at any realistic size
        return int(self.entry_vectors_.nbytes + 8 * len(self.entry_images_))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags
