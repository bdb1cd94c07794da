"""Losses of skretrieval.nn against explicit loops and brute force."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from skretrieval import APLoss, ContrastiveLoss, TripletLoss
from skretrieval.nn import (
    ap_loss,
    contrastive_loss,
    quantized_average_precision,
    triplet_loss,
)

torch.set_default_dtype(torch.float32)


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------
def reference_quantized_ap(scores, relevance, n_bins, lo=-1.0, hi=1.0, tie_aware=False,
                           mask=None):
    """Quantised AP of each row, from the definitions, with explicit loops.

    Works on scalar torch operations so that autograd gives its gradient.
    """
    Q, N = scores.shape
    delta = (hi - lo) / (n_bins - 1)
    centres = [hi - m * delta for m in range(n_bins)]
    out = []
    for q in range(Q):
        keep = [j for j in range(N) if mask is None or bool(mask[q, j])]
        rel = {j: float(relevance[q, j]) for j in keep}
        n_pos = sum(rel.values())
        if n_pos == 0:
            out.append(torch.tensor(float("nan"), dtype=scores.dtype))
            continue
        member = {(j, m): torch.relu(1 - torch.abs(scores[q, j].clamp(lo, hi) - centres[m])
                                     / delta)
                  for j in keep for m in range(n_bins)}
        ap = 0.0
        if not tie_aware:
            # AP_Q = sum_m (C+_m / C_m) c+_m / N+
            C = Cp = 0.0
            for m in range(n_bins):
                c = sum(member[j, m] for j in keep)
                cp = sum(member[j, m] * rel[j] for j in keep)
                C, Cp = C + c, Cp + cp
                if float(torch.as_tensor(C).detach()) > 0:
                    ap = ap + (Cp / C) * cp / n_pos
        else:
            # every relevant item j, in every bin m, with its expected precision
            # among the *other* items: P (P+) before the bin, t (t+) in it
            for j in keep:
                if not rel[j]:
                    continue
                for m in range(n_bins):
                    d = member[j, m]
                    if float(d.detach()) == 0:
                        continue
                    others = [i for i in keep if i != j]
                    P = sum(member[i, b] for i in others for b in range(m)) + 0.0
                    Pp = sum(member[i, b] * rel[i] for i in others for b in range(m)) + 0.0
                    t = sum(member[i, m] for i in others) + 0.0
                    tp = sum(member[i, m] * rel[i] for i in others) + 0.0
                    P, Pp, t, tp = (torch.as_tensor(v, dtype=scores.dtype)
                                    for v in (P, Pp, t, tp))
                    # sum_{i=0}^{t} 1 / (P + 1 + i) and sum_{i=0}^{t} i / (P + 1 + i)
                    H = torch.digamma(P + t + 2) - torch.digamma(P + 1)
                    H_i = (t + 1) - (P + 1) * H
                    r = tp / t if float(t.detach()) > 1e-12 else 0.0
                    expected = ((Pp + 1) * H + r * H_i) / (t + 1)
                    ap = ap + d * expected / n_pos
        out.append(torch.as_tensor(ap, dtype=scores.dtype))
    return torch.stack(out)


def true_ap(scores, relevance):
    """Non-interpolated AP: the mean over the positives of the precision at their rank."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    rel = np.asarray(relevance)[order].astype(bool)
    hits = np.cumsum(rel)
    ranks = np.flatnonzero(rel)
    return float(np.mean(hits[ranks] / (ranks + 1)))


def expected_ap_over_tie_orderings(scores, relevance):
    """AP averaged over every ordering of the tied items (brute force)."""
    scores, relevance = np.asarray(scores), np.asarray(relevance)
    groups = [np.flatnonzero(scores == v) for v in sorted(set(scores.tolist()), reverse=True)]
    total, count = 0.0, 0
    for orders in itertools.product(*[itertools.permutations(g) for g in groups]):
        ranking = np.concatenate([np.array(o) for o in orders])
        rel = relevance[ranking].astype(bool)
        hits = np.cumsum(rel)
        ranks = np.flatnonzero(rel)
        total += np.mean(hits[ranks] / (ranks + 1))
        count += 1
    return total / count


def _random_case(seed, Q=3, N=9, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(Q, N, generator=g, dtype=dtype) * 2.2 - 1.1  # some out of range
    relevance = (torch.rand(Q, N, generator=g) < 0.4).to(torch.int64)
    relevance[:, 0] = 1  # every row has a positive
    return scores, relevance


# ---------------------------------------------------------------------------
# quantised AP
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("tie_aware", [False, True])
@pytest.mark.parametrize("n_bins", [2, 5, 11])
def test_quantized_ap_values_and_gradients_match_the_loop(tie_aware, n_bins):
    scores, relevance = _random_case(n_bins)
    mask = torch.ones_like(relevance, dtype=torch.bool)
    mask[1, 3] = mask[2, 0] = False
    s1 = scores.clone().requires_grad_(True)
    s2 = scores.clone().requires_grad_(True)
    got = quantized_average_precision(s1, relevance, n_bins=n_bins, tie_aware=tie_aware,
                                      mask=mask)
    ref = reference_quantized_ap(s2, relevance, n_bins, tie_aware=tie_aware, mask=mask)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert torch.all((got >= 0) & (got <= 1))
    weights = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    (got * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-9, atol=1e-12)
    assert s1.grad.abs().sum() > 0
    assert torch.all(s1.grad[scores.abs() > 1] == 0)  # clamped: no gradient


@pytest.mark.parametrize("tie_aware", [False, True])
def test_quantized_ap_gradcheck(tie_aware):
    g = torch.Generator().manual_seed(1)
    scores = (torch.rand(2, 6, generator=g, dtype=torch.float64) * 1.8 - 0.9)
    relevance = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0]])
    assert torch.autograd.gradcheck(
        lambda s: quantized_average_precision(s, relevance, n_bins=7, tie_aware=tie_aware),
        (scores.requires_grad_(True),))


def test_quantized_ap_with_one_item_per_bin_centre_is_the_true_ap():
    rng = np.random.default_rng(0)
    n_bins = 41
    centres = np.linspace(1, -1, n_bins)
    for _ in range(20):
        pick = rng.choice(n_bins, 12, replace=False)
        scores = centres[pick]
        relevance = (rng.random(12) < 0.4).astype(int)
        relevance[0] = 1
        expected = true_ap(scores, relevance)
        assert expected == pytest.approx(average_precision_score(relevance, scores))
        for tie_aware in (False, True):
            got = quantized_average_precision(torch.tensor(scores)[None],
                                              torch.tensor(relevance)[None],
                                              n_bins=n_bins, tie_aware=tie_aware)
            assert float(got[0]) == pytest.approx(expected, abs=1e-12)


def test_tie_aware_ap_is_the_expected_ap_over_the_orderings_of_ties():
    # scores on bin centres: hard memberships, the items of a bin are ties
    rng = np.random.default_rng(1)
    centres = np.linspace(1, -1, 5)
    for _ in range(15):
        scores = centres[rng.integers(0, 5, 7)]
        relevance = (rng.random(7) < 0.5).astype(int)
        relevance[rng.integers(7)] = 1
        expected = expected_ap_over_tie_orderings(scores, relevance)
        got = quantized_average_precision(torch.tensor(scores)[None],
                                          torch.tensor(relevance)[None], n_bins=5,
                                          tie_aware=True)
        assert float(got[0]) == pytest.approx(expected, abs=1e-12)
        # AP_Q gives every positive of a bin the precision at the end of the bin
        plain = quantized_average_precision(torch.tensor(scores)[None],
                                            torch.tensor(relevance)[None], n_bins=5)
        above = scores[None, :] >= scores[:, None]  # [i, j]: j ranked with or before i
        precision_at_end = (above * relevance).sum(1) / above.sum(1)
        pessimistic = np.sum(precision_at_end * relevance) / relevance.sum()
        assert float(plain[0]) == pytest.approx(pessimistic, abs=1e-12)


def test_quantized_ap_approaches_the_true_ap_as_the_bins_get_finer():
    g = torch.Generator().manual_seed(0)
    n = 500
    relevance = torch.zeros(n)
    relevance[torch.randperm(n, generator=g)[:50]] = 1
    scores = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1 + 0.3 * relevance)
    scores = scores.clamp(-1, 1)
    expected = average_precision_score(relevance.numpy(), scores.numpy())
    errors = {}
    for n_bins in (5, 20, 100, 1000, 10000):
        for tie_aware in (False, True):
            ap = quantized_average_precision(scores[None], relevance[None], n_bins=n_bins,
                                             tie_aware=tie_aware)
            errors[n_bins, tie_aware] = abs(float(ap[0]) - expected)
    e = [errors[m, False] for m in (5, 20, 100, 1000, 10000)]
    assert e[0] > 0.05  # coarse bins: far off
    assert e[0] > e[1] > e[2] > e[3]
    assert e[4] < 2e-3  # fine bins: within 0.002 of the true AP
    # the tie-aware AP leaves each item out of its own counts: no residual
    e = [errors[m, True] for m in (5, 20, 100, 1000, 10000)]
    assert e[0] > e[1] > e[2] > e[3] > e[4] and e[4] < 2e-4
    # the loss of a batch: 1 - the mean true AP of its leave-one-out rankings
    x = torch.nn.functional.normalize(torch.randn(120, 16, generator=g, dtype=torch.float64)
                                      + 2 * torch.eye(16, dtype=torch.float64)[
                                          torch.arange(120) % 4], dim=1)
    labels = torch.arange(120) % 4
    S = (x @ x.T).numpy()
    aps = [true_ap(np.delete(S[i], i), np.delete(labels.numpy() == labels[i].item(), i))
           for i in range(120)]
    target = 1 - np.mean(aps)
    coarse = abs(float(ap_loss(x, labels, n_bins=5)) - target)
    fine = abs(float(ap_loss(x, labels, n_bins=5000)) - target)
    assert fine < 5e-3 and fine < coarse / 10
    coarse = abs(float(ap_loss(x, labels, n_bins=5, tie_aware=True)) - target)
    fine = abs(float(ap_loss(x, labels, n_bins=5000, tie_aware=True)) - target)
    assert fine < 1e-4 < 0.05 < coarse


def test_quantized_ap_stays_in_the_unit_interval():
    # an item between two bin centres is split between them; neither variant
    # may count it before itself and exceed 1
    g = torch.Generator().manual_seed(7)
    for _ in range(200):
        n = int(torch.randint(2, 25, (1,), generator=g))
        scores = torch.rand(1, n, generator=g, dtype=torch.float64) * 2.2 - 1.1
        relevance = (torch.rand(1, n, generator=g) < 0.5).long()
        relevance[0, 0] = 1
        for n_bins in (2, 5, 20, 100):
            for tie_aware in (False, True):
                ap = float(quantized_average_precision(scores, relevance, n_bins=n_bins,
                                                       tie_aware=tie_aware)[0])
                assert -1e-12 <= ap <= 1 + 1e-12
    # two relevant items ranked first: AP 1 whatever the bins
    both = quantized_average_precision(torch.tensor([[0.95, 0.85, -0.5]]),
                                       torch.tensor([[1, 1, 0]]), n_bins=11, tie_aware=True)
    assert float(both[0]) == pytest.approx(1.0)


def test_quantized_ap_of_rows_without_positives_is_nan_and_inputs_are_checked():
    ap = quantized_average_precision(torch.tensor([[0.5, 0.1], [0.9, -0.5]]),
                                     torch.tensor([[0, 0], [1, 0]]))
    assert torch.isnan(ap[0]) and float(ap[1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_bins"):
        quantized_average_precision(torch.zeros(1, 3), torch.zeros(1, 3), n_bins=1)
    with pytest.raises(ValueError, match="must match"):
        quantized_average_precision(torch.zeros(1, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="low < high"):
        quantized_average_precision(torch.zeros(1, 3), torch.zeros(1, 3), score_range=(1, 0))
    with pytest.raises(TypeError, match="floating"):
        quantized_average_precision(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3))


# ---------------------------------------------------------------------------
# AP loss of a batch
# ---------------------------------------------------------------------------
def test_ap_loss_ranks_every_image_against_the_others():
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(10, 5, generator=g, dtype=torch.float64),
                                      dim=1).requires_grad_(True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])  # label 3: no positive
    loss = ap_loss(x, labels, n_bins=9)
    # reference: each query against the other images, queries without positive skipped
    S = x @ x.T
    aps = []
    for i in range(10):
        others = [j for j in range(10) if j != i]
        rel = (labels[others] == labels[i]).long()
        if rel.sum() == 0:
            continue
        aps.append(reference_quantized_ap(S[i, others][None], rel[None], 9)[0])
    ref = 1 - torch.stack(aps).mean()
    torch.testing.assert_close(loss, ref)
    g1, = torch.autograd.grad(loss, x)
    g2, = torch.autograd.grad(ref, x)
    torch.testing.assert_close(g1, g2)
    x = x.detach()
    assert float(APLoss(n_bins=9)(x, labels)) == pytest.approx(float(loss.detach()))
    tie = APLoss(n_bins=9, tie_aware=True)(x, labels)
    assert 0 <= float(tie) <= 1 and float(tie) != pytest.approx(float(loss.detach()))


def test_ap_loss_is_zero_for_separated_classes_and_needs_positives():
    x = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0], [0.95, 0.05], [0.0, 1.0], [0.05, 0.95]]), dim=1)
    assert float(ap_loss(x, [0, 0, 1, 1])) == pytest.approx(0.0, abs=1e-6)
    assert float(ap_loss(x, [0, 1, 0, 1])) > 0.3
    with pytest.raises(ValueError, match="shares its label"):
        ap_loss(x, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="labels must have shape"):
        ap_loss(x, [0, 1])


def test_ap_loss_gradient_pulls_positives_up():
    x = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.6, -0.8]]), dim=1).requires_grad_(True)
    loss = ap_loss(x, [0, 0, 1, 1], n_bins=10)
    loss.backward()
    step = torch.nn.functional.normalize(x - 0.05 * x.grad, dim=1)
    assert float(ap_loss(step.detach(), [0, 0, 1, 1], n_bins=10)) < float(loss.detach())


# ---------------------------------------------------------------------------
# triplet and contrastive losses
# ---------------------------------------------------------------------------
def reference_triplet(a, p, n, margin, squared):
    total, count = 0.0, 0
    negs = n if n.ndim == 3 else n[:, None, :]
    for i in range(a.shape[0]):
        for k in range(negs.shape[1]):
            dp = sum((a[i, j] - p[i, j]) ** 2 for j in range(a.shape[1]))
            dn = sum((a[i, j] - negs[i, k, j]) ** 2 for j in range(a.shape[1]))
            if not squared:
                dp, dn = torch.sqrt(dp), torch.sqrt(dn)
            total = total + torch.relu(margin + dp - dn)
            count += 1
    return total / count


def reference_contrastive(x1, x2, same, margin):
    total = 0.0
    for i in range(x1.shape[0]):
        d = torch.sqrt(sum((x1[i, j] - x2[i, j]) ** 2 for j in range(x1.shape[1])))
        if same[i]:
            total = total + 0.5 * d**2
        else:
            total = total + 0.5 * torch.relu(margin - d) ** 2
    return total / x1.shape[0]


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("k", [None, 3])
def test_triplet_loss_matches_the_loop(squared, k):
    g = torch.Generator().manual_seed(4)
    norm = torch.nn.functional.normalize
    a = norm(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1)
    p = norm(a + 0.6 * torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1)
    shape = (5, 4) if k is None else (5, k, 4)
    n = norm(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)
    margin = 1.0
    inputs = [t.clone().requires_grad_(True) for t in (a, p, n)]
    got = triplet_loss(*inputs, margin=margin, squared=squared)
    ref_inputs = [t.clone().requires_grad_(True) for t in (a, p, n)]
    ref = reference_triplet(*ref_inputs, margin, squared)
    torch.testing.assert_close(got, ref)
    assert 0 < float(got.detach())
    got.backward()
    ref.backward()
    for t1, t2 in zip(inputs, ref_inputs):
        torch.testing.assert_close(t1.grad, t2.grad)
    assert torch.autograd.gradcheck(
        lambda *t: triplet_loss(*t, margin=margin, squared=squared),
        tuple(t.detach().clone().requires_grad_(True) for t in (a, p, n)))
    loss = TripletLoss(margin, squared=squared)(a, p, n)
    assert float(loss) == pytest.approx(float(got.detach()))
    per = triplet_loss(a, p, n, margin=margin, squared=squared, reduction="none")
    assert per.shape == ((5,) if k is None else (5, k))
    assert float(triplet_loss(a, p, n, margin=margin, squared=squared,
                              reduction="sum")) == pytest.approx(float(per.sum()))


def test_contrastive_loss_matches_the_loop():
    g = torch.Generator().manual_seed(5)
    norm = torch.nn.functional.normalize
    x1 = norm(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=-1)
    x2 = norm(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=-1)
    same = torch.tensor([1, 0, 1, 0, 0, 1, 0, 0])
    t1, t2 = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    r1, r2 = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    got = contrastive_loss(t1, t2, same, margin=1.2)
    ref = reference_contrastive(r1, r2, same, 1.2)
    torch.testing.assert_close(got, ref)
    got.backward()
    ref.backward()
    torch.testing.assert_close(t1.grad, r1.grad)
    torch.testing.assert_close(t2.grad, r2.grad)
    assert torch.autograd.gradcheck(lambda a, b: contrastive_loss(a, b, same, margin=1.2),
                                    (x1.clone().requires_grad_(True),
                                     x2.clone().requires_grad_(True)))
    assert float(ContrastiveLoss(1.2)(x1, x2, same)) == pytest.approx(float(got.detach()))
    # identical vectors: finite gradient (no 0/0 of the square root)
    x = x1.clone().requires_grad_(True)
    contrastive_loss(x, x.detach().clone(), [0] * 8, margin=0.7).backward()
    assert torch.isfinite(x.grad).all()


def test_margin_losses_check_their_inputs():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="margin"):
        triplet_loss(x, x, x, margin=-1)
    with pytest.raises(ValueError, match="negatives"):
        triplet_loss(x, x, torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match="same must have shape"):
        contrastive_loss(x, x, [1, 0])
    with pytest.raises(ValueError, match="reduction"):
        triplet_loss(x, x, x, reduction="max")
