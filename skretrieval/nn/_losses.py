"""Losses for training retrieval networks (PyTorch).

* :class:`APLoss` / :func:`ap_loss` -- the listwise loss of Revaud et al.
  (ICCV 2019): ``1 - mAP`` of a batch in which every image is a query
  against all the others, with the average precision made differentiable by
  quantising the similarities into ``n_bins`` soft (triangular) bins
  (:func:`quantized_average_precision`), optionally tie-aware;
* :class:`TripletLoss` / :func:`triplet_loss` -- the ranking loss of Gordo
  et al. (ECCV 2016, IJCV 2017) on (anchor, positive, negative) triplets;
* :class:`ContrastiveLoss` / :func:`contrastive_loss` -- the loss of
  Radenović et al. (TPAMI 2018) on matching and non-matching pairs.

All of them take L2-normalised descriptors (the output of
:class:`skretrieval.RetrievalNet`) and return a scalar to minimise.  They are
differentiable everywhere except on a set of measure zero (bin centres for the
AP loss, the hinge for the margin losses), and are checked against explicit
loops and with :func:`torch.autograd.gradcheck` in ``tests/nn/test_losses.py``.
"""

from __future__ import annotations

from numbers import Integral, Real

import torch
from torch import nn

__all__ = [
    "APLoss",
    "ContrastiveLoss",
    "TripletLoss",
    "ap_loss",
    "contrastive_loss",
    "quantized_average_precision",
    "triplet_loss",
]


def _check_n_bins(n_bins):
    if not isinstance(n_bins, Integral) or isinstance(n_bins, bool) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    return int(n_bins)


def _check_range(score_range):
    try:
        lo, hi = (float(v) for v in score_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"score_range must be a pair (low, high), got {score_range!r}") from None
    if not hi > lo:
        raise ValueError(f"score_range must have low < high, got {score_range!r}")
    return lo, hi


def _bin_counts(scores, relevance, weights, n_bins, lo, hi):
    """Soft counts ``c`` (all items) and ``c_pos`` (relevant items) per bin.

    Bin ``m`` (``m = 0 .. n_bins - 1``) is centred at ``hi - m * delta``,
    ``delta = (hi - lo) / (n_bins - 1)``: bin 0 holds the best scores.  An item
    of score ``s`` (clamped to ``[lo, hi]``) has membership ``max(0, 1 - |s -
    b_m| / delta)`` in bin ``m``: it is split between the two bins around it,
    the memberships summing to one.
    """
    delta = (hi - lo) / (n_bins - 1)
    t = (hi - scores.clamp(lo, hi)) / delta  # in [0, n_bins - 1]
    k = t.detach().floor().clamp(0, n_bins - 2)
    frac = t - k  # membership of bin k + 1; 1 - frac that of bin k
    k = k.long()
    w_hi = (1.0 - frac) * weights
    w_lo = frac * weights
    shape = scores.shape[:-1] + (n_bins,)
    c = scores.new_zeros(shape).scatter_add(-1, k, w_hi).scatter_add(-1, k + 1, w_lo)
    rel = relevance.to(scores.dtype)
    c_pos = (scores.new_zeros(shape).scatter_add(-1, k, w_hi * rel)
             .scatter_add(-1, k + 1, w_lo * rel))
    return c, c_pos, k, w_hi, w_lo


def _expected_precision(P, Pp, t, tp):
    """Expected precision of a relevant item placed uniformly among ``t`` tie-mates.

    ``P`` items (``Pp`` relevant) rank before the tie, which holds ``t`` other
    items (``tp`` relevant).  At position ``i`` of the tie (``i = 0 .. t``) the
    precision is ``(Pp + 1 + i * tp / t) / (P + 1 + i)`` in expectation; the
    average over the positions, with the harmonic sums written with the
    digamma function so that the counts may be fractional.
    """
    H = torch.digamma(P + t + 2) - torch.digamma(P + 1)  # sum_i 1 / (P + 1 + i)
    some = t > 1e-12
    r = torch.where(some, tp / torch.where(some, t, 1.0), torch.zeros_like(t))
    return ((Pp + 1) * H + r * ((t + 1) - (P + 1) * H)) / (t + 1)


def quantized_average_precision(scores, relevance, *, n_bins=20, tie_aware=False,
                                score_range=(-1.0, 1.0), mask=None):
    """Differentiable average precision of ranked lists, by quantised scores.

    The quantised AP of Revaud et al. [1]_: the scores of a query's list are
    assigned softly to ``n_bins`` bins spread uniformly over ``score_range``
    (triangular memberships ``delta(s, m) = max(0, 1 - |s - b_m| / Delta)``
    around the bin centres ``b_0 = high > b_1 > ... > b_{M-1} = low``), and,
    with ``c_m`` and ``c+_m`` the (soft) numbers of items and of relevant
    items in bin ``m``, ``C_m`` and ``C+_m`` their cumulative sums from the
    best bin, and ``N+`` the number of relevant items,

    .. math::

        \\mathrm{AP}_Q = \\sum_m \\frac{C^+_m}{C_m} \\, \\frac{c^+_m}{N^+}.

    With ``tie_aware=True`` the items of a bin are treated as ties, as in
    the tie-aware AP of He et al. [2]_ used by Revaud et al. (``AP_T``):
    every relevant item ``j`` contributes, in each bin ``m`` it belongs to
    (weight ``delta_jm``), its *expected* precision over the orderings of
    the tie,

    .. math::

        \\mathrm{AP}_T = \\frac{1}{N^+} \\sum_{j \\in +} \\sum_m \\delta_{jm}
        \\frac{(P^+ + 1) H + r \\, (t + 1 - (P + 1) H)}{t + 1},
        \\quad H = \\psi(P + t + 2) - \\psi(P + 1), \\quad r = t^+ / t,

    where ``P`` (``P+``) counts the items (relevant items) of the bins
    before ``m`` and ``t`` (``t+``) those of bin ``m``, item ``j`` itself
    left out of all four, and ``psi`` is the digamma function (for integer
    counts ``H`` is the harmonic sum ``sum_{i=0}^{t} 1 / (P + 1 + i)``).
    With hard memberships (every score on a bin centre) this is exactly the
    AP averaged over all the orderings of the tied items -- the bin-level
    formula of the paper, whose code approximates ``H`` by a logarithm.
    Leaving ``j`` out of its own counts keeps ``AP_T`` in ``[0, 1]`` when an
    item is split between two bins (the bin-level formula then counts the
    item before itself and exceeds 1 with the exact harmonic sum, or gives
    0.75 to two relevant items scored 0.95 and 0.85 with 11 bins when
    it uses the logarithm), and makes it
    tend to the exact AP as the bins get finer.

    Parameters
    ----------
    scores : torch.Tensor of shape (..., n_items)
        Similarities of the items to their query, higher is better.  Scores
        outside ``score_range`` are clamped (no gradient there).
    relevance : torch.Tensor of shape (..., n_items)
        1 (or True) for the items relevant to the query, 0 otherwise.
    n_bins : int, default=20
        Number of bins ``M`` (at least 2).  The quantised AP tends to the AP
        of the ranking as it grows (``tests/nn/test_losses.py`` shows it); the
        paper uses 20 to 25.
    tie_aware : bool, default=False
        Use the tie-aware ``AP_T`` instead of ``AP_Q``.
    score_range : (float, float), default=(-1.0, 1.0)
        Range of the scores: ``(-1, 1)`` for the cosine similarities of
        L2-normalised descriptors.
    mask : torch.Tensor of shape (..., n_items) or None, default=None
        1 (or True) for the items to keep in each list; the others (e.g. the
        query itself) are left out of the ranking.

    Returns
    -------
    ap : torch.Tensor of shape (...)
        The quantised AP of each list, in ``[0, 1]``; ``nan`` for the lists
        without relevant items.

    References
    ----------
    .. [1] J. Revaud, J. Almazán, R. S. Rezende and C. R. de Souza, "Learning
       with average precision: training image retrieval with a listwise
       loss", ICCV 2019.
    .. [2] K. He, F. Cakir, S. A. Bargal and S. Sclaroff, "Hashing as
       tie-aware learning to rank", CVPR 2018.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import quantized_average_precision
    >>> scores = torch.tensor([[0.9, 0.2, 0.5, -0.3]])
    >>> relevance = torch.tensor([[1, 0, 1, 0]])
    >>> float(quantized_average_precision(scores, relevance, n_bins=41)[0])  # exact AP
    1.0
    """
    n_bins = _check_n_bins(n_bins)
    lo, hi = _check_range(score_range)
    if not torch.is_tensor(scores):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if not torch.is_floating_point(scores):
        raise TypeError(f"scores must be floating point, got {scores.dtype}")
    relevance = torch.as_tensor(relevance, device=scores.device)
    if relevance.shape != scores.shape:
        raise ValueError(f"relevance has shape {tuple(relevance.shape)}, scores "
                         f"{tuple(scores.shape)}: they must match")
    if scores.ndim == 0:
        raise ValueError("scores must have at least one dimension (the items)")
    if mask is None:
        weights = scores.new_ones(scores.shape)
    else:
        mask = torch.as_tensor(mask, device=scores.device)
        if mask.shape != scores.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, scores "
                             f"{tuple(scores.shape)}: they must match")
        weights = mask.to(scores.dtype)
    rel = relevance.to(scores.dtype) * weights
    c, c_pos, k, w_hi, w_lo = _bin_counts(scores, rel, weights, n_bins, lo, hi)
    n_pos = rel.sum(-1)
    C = c.cumsum(-1)
    C_pos = c_pos.cumsum(-1)
    if not tie_aware:
        prec = C_pos / C.clamp_min(torch.finfo(scores.dtype).tiny)  # C = 0: c_pos = 0
        ap = (prec * c_pos).sum(-1)
    else:
        # every relevant item, in each of its two bins: the expected precision
        # over the orderings of the bin, counting the *other* items only
        C_prev, Cp_prev = C - c, C_pos - c_pos
        ap = 0
        for b, own, before in ((k, w_hi, 0.0), (k + 1, w_lo, w_hi)):
            P = (C_prev.gather(-1, b) - before).clamp_min(0)
            Pp = torch.minimum((Cp_prev.gather(-1, b) - before * rel).clamp_min(0), P)
            t = (c.gather(-1, b) - own).clamp_min(0)
            tp = torch.minimum((c_pos.gather(-1, b) - own * rel).clamp_min(0), t)
            ap = ap + (own * rel * _expected_precision(P, Pp, t, tp)).sum(-1)
    defined = n_pos > 0
    return torch.where(defined, ap / torch.where(defined, n_pos, 1.0),
                       torch.full_like(ap, float("nan")))


def _check_descriptors(descriptors, labels):
    if not torch.is_tensor(descriptors) or descriptors.ndim != 2:
        raise ValueError("descriptors must be a 2-D torch.Tensor (n_images, dim), got "
                         f"{getattr(descriptors, 'shape', type(descriptors).__name__)}")
    labels = torch.as_tensor(labels, device=descriptors.device)
    if labels.shape != descriptors.shape[:1]:
        raise ValueError(f"labels must have shape ({descriptors.shape[0]},), got "
                         f"{tuple(labels.shape)}")
    return labels


def ap_loss(descriptors, labels, *, n_bins=20, tie_aware=False, score_range=(-1.0, 1.0)):
    """Listwise AP loss of a batch: ``1 - mAP``, every image a query.

    Every image of the batch is a query; its list is every *other* image of
    the batch, ranked by the inner product of the descriptors (the cosine
    similarity for L2-normalised descriptors), and the relevant images are
    those with its label.  The loss is ``1 -`` the mean
    :func:`quantized_average_precision` over the queries that have at least
    one relevant image in the batch [1]_.

    Parameters
    ----------
    descriptors : torch.Tensor of shape (n_images, dim)
        L2-normalised descriptors of the batch.
    labels : array-like or torch.Tensor of shape (n_images,)
        Integer labels (same label = relevant).
    n_bins : int, default=20
        Number of quantisation bins.
    tie_aware : bool, default=False
        Use the tie-aware AP.
    score_range : (float, float), default=(-1.0, 1.0)
        Range of the similarities.

    Returns
    -------
    loss : torch.Tensor
        Scalar ``1 - mAP``, in ``[0, 1]``.

    Raises
    ------
    ValueError
        If no image of the batch shares its label with another one.

    References
    ----------
    .. [1] J. Revaud, J. Almazán, R. S. Rezende and C. R. de Souza, "Learning
       with average precision: training image retrieval with a listwise
       loss", ICCV 2019.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import ap_loss
    >>> d = torch.nn.functional.normalize(torch.tensor(
    ...     [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    >>> float(ap_loss(d, [0, 0, 1, 1]))
    0.0
    """
    labels = _check_descriptors(descriptors, labels)
    n = descriptors.shape[0]
    scores = descriptors @ descriptors.T
    relevance = labels[:, None] == labels[None, :]
    mask = ~torch.eye(n, dtype=torch.bool, device=descriptors.device)
    ap = quantized_average_precision(scores, relevance & mask, n_bins=n_bins,
                                     tie_aware=tie_aware, score_range=score_range,
                                     mask=mask)
    valid = ~torch.isnan(ap)
    if not bool(valid.any()):
        raise ValueError("no image of the batch shares its label with another: the AP "
                         "loss needs at least two images of some label per batch")
    return 1.0 - ap[valid].mean()


class APLoss(nn.Module):
    """Listwise average-precision loss of Revaud et al. (ICCV 2019).

    ``loss(descriptors, labels)`` is ``1 - mAP`` of the batch, every image a
    query against all the others, with the differentiable quantised AP (see
    :func:`ap_loss` and :func:`quantized_average_precision`).

    Parameters
    ----------
    n_bins : int, default=20
        Number of quantisation bins (the paper uses 20 to 25).
    tie_aware : bool, default=False
        Use the tie-aware AP (``AP_T`` of the paper) instead of ``AP_Q``.
    score_range : (float, float), default=(-1.0, 1.0)
        Range of the similarities (cosine: ``(-1, 1)``).

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import APLoss
    >>> d = torch.nn.functional.normalize(torch.randn(8, 4), dim=1).requires_grad_()
    >>> loss = APLoss(n_bins=10)(d, [0, 0, 1, 1, 2, 2, 3, 3])
    >>> loss.backward()
    >>> d.grad.shape
    torch.Size([8, 4])
    """

    def __init__(self, n_bins=20, *, tie_aware=False, score_range=(-1.0, 1.0)):
        super().__init__()
        self.n_bins = _check_n_bins(n_bins)
        self.tie_aware = bool(tie_aware)
        self.score_range = _check_range(score_range)

    def forward(self, descriptors, labels):
        return ap_loss(descriptors, labels, n_bins=self.n_bins, tie_aware=self.tie_aware,
                       score_range=self.score_range)

    def extra_repr(self):
        return f"n_bins={self.n_bins}, tie_aware={self.tie_aware}"


def _check_margin(margin):
    if not isinstance(margin, Real) or isinstance(margin, bool) or margin < 0:
        raise ValueError(f"margin must be a non-negative number, got {margin!r}")
    return float(margin)


def _reduce(values, reduction):
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _distance(a, b, squared):
    sq = ((a - b) ** 2).sum(-1)
    if squared:
        return sq
    # sqrt has an infinite derivative at 0: keep it finite for identical vectors
    return sq.clamp_min(1e-12).sqrt()


def triplet_loss(anchors, positives, negatives, *, margin=0.1, squared=True,
                 reduction="mean"):
    """Triplet margin loss of Gordo et al.

    For every triplet, ``max(0, margin + d(a, p) - d(a, n))``, where ``d`` is
    the squared Euclidean distance (``squared=True``, as Gordo et al. [1]_;
    for unit vectors ``d = 2 - 2 cos``) or the Euclidean distance.

    Parameters
    ----------
    anchors, positives : torch.Tensor of shape (n, dim)
        Query descriptors and a matching descriptor of each.
    negatives : torch.Tensor of shape (n, dim) or (n, k, dim)
        One or ``k`` non-matching descriptors per anchor (``k`` triplets per
        anchor).
    margin : float, default=0.1
        Margin ``m`` (Gordo et al. use 0.1 with squared distances of unit
        vectors).
    squared : bool, default=True
        Squared Euclidean distances.
    reduction : {"mean", "sum", "none"}, default="mean"
        Mean or sum over all the triplets, or the ``(n,)`` / ``(n, k)`` values.

    Returns
    -------
    loss : torch.Tensor

    References
    ----------
    .. [1] A. Gordo, J. Almazán, J. Revaud and D. Larlus, "Deep image
       retrieval: learning global representations for image search", ECCV
       2016; "End-to-end learning of deep visual representations for image
       retrieval", IJCV 124(2), 2017.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import triplet_loss
    >>> a, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    >>> n = torch.tensor([[1.0, 0.0]])
    >>> round(float(triplet_loss(a, p, n, margin=0.1)), 6)  # 0.1 + 2 - 0
    2.1
    """
    margin = _check_margin(margin)
    if anchors.ndim != 2 or positives.shape != anchors.shape:
        raise ValueError("anchors and positives must both have shape (n, dim), got "
                         f"{tuple(anchors.shape)} and {tuple(positives.shape)}")
    if negatives.ndim == 2:
        if negatives.shape != anchors.shape:
            raise ValueError(f"negatives of shape {tuple(negatives.shape)} do not match "
                             f"the anchors {tuple(anchors.shape)}")
        a, p = anchors, positives
    elif negatives.ndim == 3 and negatives.shape[0] == anchors.shape[0] \
            and negatives.shape[2] == anchors.shape[1]:
        a, p = anchors[:, None, :], positives[:, None, :]
    else:
        raise ValueError("negatives must have shape (n, dim) or (n, k, dim), got "
                         f"{tuple(negatives.shape)}")
    d_pos = _distance(a, p, squared)
    d_neg = _distance(a, negatives, squared)
    return _reduce(torch.relu(margin + d_pos - d_neg), reduction)


def contrastive_loss(x1, x2, same, *, margin=0.7, reduction="mean"):
    """Contrastive loss of Radenović et al.

    For every pair at Euclidean distance ``d``: ``d**2 / 2`` for a matching
    pair (``same`` true) and ``max(0, margin - d)**2 / 2`` for a non-matching
    one [1]_.

    Parameters
    ----------
    x1, x2 : torch.Tensor of shape (n, dim)
        The descriptors of the two sides of each pair.
    same : array-like or torch.Tensor of shape (n,)
        1 (or True) for matching pairs, 0 for non-matching.
    margin : float, default=0.7
        Margin ``tau`` (Radenović et al. use 0.7 to 0.85 with unit vectors).
    reduction : {"mean", "sum", "none"}, default="mean"
        Mean or sum over the pairs, or the ``(n,)`` values.

    Returns
    -------
    loss : torch.Tensor

    References
    ----------
    .. [1] F. Radenović, G. Tolias and O. Chum, "Fine-tuning CNN image
       retrieval with no human annotation", TPAMI 41(7), 2019 (online 2018).

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import contrastive_loss
    >>> x1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    >>> x2 = torch.tensor([[0.6, 0.8], [0.6, 0.8]])  # at distance sqrt(0.8)
    >>> contrastive_loss(x1, x2, [1, 0], reduction="none")
    tensor([0.4000, 0.0000])
    """
    margin = _check_margin(margin)
    if x1.ndim != 2 or x2.shape != x1.shape:
        raise ValueError("x1 and x2 must both have shape (n, dim), got "
                         f"{tuple(x1.shape)} and {tuple(x2.shape)}")
    same = torch.as_tensor(same, device=x1.device)
    if same.shape != x1.shape[:1]:
        raise ValueError(f"same must have shape ({x1.shape[0]},), got {tuple(same.shape)}")
    y = same.to(x1.dtype)
    sq = ((x1 - x2) ** 2).sum(-1)
    d = sq.clamp_min(1e-12).sqrt()
    values = 0.5 * y * sq + 0.5 * (1 - y) * torch.relu(margin - d) ** 2
    return _reduce(values, reduction)


class TripletLoss(nn.Module):
    """Triplet margin loss (Gordo et al.); see :func:`triplet_loss`.

    Parameters
    ----------
    margin : float, default=0.1
        Margin ``m``.
    squared : bool, default=True
        Squared Euclidean distances.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import TripletLoss
    >>> a = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    >>> loss = TripletLoss(margin=0.1)(a, a, -a)  # perfect triplets
    >>> float(loss)
    0.0
    """

    def __init__(self, margin=0.1, *, squared=True):
        super().__init__()
        self.margin = _check_margin(margin)
        self.squared = bool(squared)

    def forward(self, anchors, positives, negatives):
        return triplet_loss(anchors, positives, negatives, margin=self.margin,
                            squared=self.squared)

    def extra_repr(self):
        return f"margin={self.margin}, squared={self.squared}"


class ContrastiveLoss(nn.Module):
    """Contrastive loss (Radenović et al.); see :func:`contrastive_loss`.

    Parameters
    ----------
    margin : float, default=0.7
        Margin ``tau``.

    Examples
    --------
    >>> import torch
    >>> from skretrieval.losses import ContrastiveLoss
    >>> x = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    >>> float(ContrastiveLoss(margin=0.7)(x, x, [1, 1, 1, 1]))
    0.0
    """

    def __init__(self, margin=0.7):
        super().__init__()
        self.margin = _check_margin(margin)

    def forward(self, x1, x2, same):
        return contrastive_loss(x1, x2, same, margin=self.margin)

    def extra_repr(self):
        return f"margin={self.margin}"
