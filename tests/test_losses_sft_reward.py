"""Tests for posttrain.losses.sft and posttrain.losses.reward."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from posttrain.losses import bradley_terry_loss, kwise_ranking_loss, plackett_luce_loss, sft_loss

D = torch.float64


def close(a, b, rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=rtol, atol=atol)


def softplus(x):  # −log σ(x) = log(1 + e^{−x})
    return math.log1p(math.exp(-x))


# --------------------------------------------------------------------------------------------- SFT

def test_sft_hand_worked():
    """Predicted tokens have p = 1/2, 1/4 (row 0) and 1/8 (row 1):
    NLL = (ln2 + 2 ln2 + 3 ln2)/3 = 2 ln2, perplexity 4; with normaliser 6 the loss is 6 ln2 / 6 = ln2.
    d loss / d logprobs = −m / Σm = −1/3 on the predicted tokens."""
    lp = torch.tensor([[0.0, math.log(0.5), math.log(0.25)], [0.0, math.log(0.125), -7.0]], dtype=D,
                      requires_grad=True)
    m = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    loss, met = sft_loss(lp, m)
    close(loss, 2 * math.log(2))
    close(met["nll"], 2 * math.log(2))
    close(torch.exp(met["nll_sum"] / met["num_tokens"]), 4.0)
    close(met["num_tokens"], 3.0)
    (g,) = torch.autograd.grad(loss, lp)
    close(g, -m.to(D) / 3)
    loss6, met6 = sft_loss(lp, m, normaliser=6)
    close(loss6, math.log(2))
    close(met6["nll"], 2 * math.log(2))  # metrics are local, not scaled by the normaliser
    assert all(not v.requires_grad and v.dim() == 0 for v in met.values())


# ----------------------------------------------------------------------------------- Bradley–Terry

def test_bradley_terry_hand_worked():
    """r_c = [2, 0], r_r = [1, 0]:
    ℓ = [−log σ(1), −log σ(0)] = [log(1 + e^−1), log 2]; accuracy = (1 + ½)/2 = 0.75 (tie counts ½);
    margin = mean(r_c − r_r) = 0.5; d L / d r_c = −σ(−(r_c − r_r))/B = [−σ(−1)/2, −1/4]."""
    rc = torch.tensor([2.0, 0.0], dtype=D, requires_grad=True)
    rr = torch.tensor([1.0, 0.0], dtype=D, requires_grad=True)
    loss, met = bradley_terry_loss(rc, rr)
    close(loss, (softplus(1.0) + math.log(2)) / 2)
    close(met["accuracy"], 0.75)
    close(met["margin"], 0.5)
    close(met["rewards/chosen"], 1.0)
    close(met["rewards/rejected"], 0.5)
    gc, gr = torch.autograd.grad(loss, (rc, rr))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    close(gc, [-sig(-1.0) / 2, -0.25])
    close(gr, -gc)


def test_bradley_terry_margin_and_centering():
    """Margin m = [1, −1] (Llama 2): ℓ = [−log σ(1 − 1), −log σ(0 + 1)] = [log 2, log(1 + e^−1)].
    Centring η = 0.01 adds η·mean((r_c + r_r)²) = 0.01·(9 + 0)/2 = 0.045.
    normaliser 4 halves the 2-pair loss."""
    rc = torch.tensor([2.0, 0.0], dtype=D)
    rr = torch.tensor([1.0, 0.0], dtype=D)
    margin = torch.tensor([1.0, -1.0], dtype=D)
    loss, _ = bradley_terry_loss(rc, rr, margin=margin)
    close(loss, (math.log(2) + softplus(1.0)) / 2)
    loss_c, met = bradley_terry_loss(rc, rr, margin=margin, centering_coef=0.01)
    close(loss_c, (math.log(2) + softplus(1.0)) / 2 + 0.045)
    close(met["centering"], 4.5)
    loss_n, _ = bradley_terry_loss(rc, rr, margin=margin, normaliser=4)
    close(loss_n, loss / 2)


def test_bradley_terry_is_shift_invariant_without_centering_only():
    """Adding a constant to all rewards leaves BT unchanged; the centring term penalises it."""
    gen = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(5, dtype=D, generator=gen), torch.randn(5, dtype=D, generator=gen)
    close(bradley_terry_loss(rc + 3, rr + 3)[0], bradley_terry_loss(rc, rr)[0])
    shifted = bradley_terry_loss(rc + 3, rr + 3, centering_coef=0.1)[0]
    assert shifted > bradley_terry_loss(rc, rr, centering_coef=0.1)[0]


# ------------------------------------------------------------------------------------------ K-wise

def test_kwise_hand_worked():
    """rewards [3, 1, 2], ranking [0, 2, 1] (best = response 0, then 2, then 1). Pairs:
    (0≻2: 3−2 = 1), (0≻1: 3−1 = 2), (2≻1: 2−1 = 1) → ℓ = (2·log(1+e^−1) + log(1+e^−2))/3; accuracy 1,
    margin (1 + 2 + 1)/3 = 4/3."""
    r = torch.tensor([[3.0, 1.0, 2.0]], dtype=D)
    rank = torch.tensor([[0, 2, 1]])
    loss, met = kwise_ranking_loss(r, rank)
    close(loss, (2 * softplus(1.0) + softplus(2.0)) / 3)
    close(met["accuracy"], 1.0)
    close(met["margin"], 4 / 3)
    close(met["rewards/best"], 3.0)
    close(met["rewards/worst"], 1.0)
    # reversed ranking: all three pairs wrong
    loss_rev, met_rev = kwise_ranking_loss(r, torch.tensor([[1, 2, 0]]))
    close(loss_rev, (2 * softplus(-1.0) + softplus(-2.0)) / 3)
    close(met_rev["accuracy"], 0.0)


def _kwise_loop(rewards, ranking, coef):
    out = []
    for r, rk in zip(rewards.tolist(), ranking.tolist()):
        K = len(r)
        pairs = list(itertools.combinations(range(K), 2))  # positions a < b: rk[a] ≻ rk[b]
        nll = sum(softplus(r[rk[a]] - r[rk[b]]) for a, b in pairs) / len(pairs)
        cen = sum((r[i] + r[j]) ** 2 for i, j in pairs) / len(pairs)
        out.append(nll + coef * cen)
    return sum(out) / len(out)


def test_kwise_matches_pairwise_loop_on_random_rankings():
    gen = torch.Generator().manual_seed(3)
    B, K = 6, 5
    r = torch.randn(B, K, dtype=D, generator=gen)
    rank = torch.stack([torch.randperm(K, generator=gen) for _ in range(B)])
    for coef in (0.0, 0.05):
        close(kwise_ranking_loss(r, rank, centering_coef=coef)[0], _kwise_loop(r, rank, coef))


def test_kwise_k2_equals_bradley_terry_and_permutation_invariance():
    gen = torch.Generator().manual_seed(4)
    r = torch.randn(5, 2, dtype=D, generator=gen)
    rank = torch.stack([torch.randperm(2, generator=gen) for _ in range(5)])
    rc, rr = r.gather(1, rank[:, :1]).squeeze(1), r.gather(1, rank[:, 1:]).squeeze(1)
    close(kwise_ranking_loss(r, rank, centering_coef=0.1)[0], bradley_terry_loss(rc, rr, centering_coef=0.1)[0])
    # relabelling the responses (and the ranking with them) changes nothing
    r4 = torch.randn(3, 4, dtype=D, generator=gen)
    rank4 = torch.stack([torch.randperm(4, generator=gen) for _ in range(3)])
    perm = torch.tensor([2, 0, 3, 1])  # new index j holds old response perm[j]
    inv = torch.argsort(perm)
    close(kwise_ranking_loss(r4[:, perm], inv[rank4])[0], kwise_ranking_loss(r4, rank4)[0])


def test_kwise_gradient_matches_formula():
    """d ℓ / d r_k = −(1/C(K,2)) [Σ_{j: k≻j} σ(−(r_k − r_j)) − Σ_{i: i≻k} σ(−(r_i − r_k))]."""
    r = torch.tensor([[0.3, -1.0, 2.0]], dtype=D, requires_grad=True)
    rank = torch.tensor([[1, 0, 2]])  # 1 ≻ 0 ≻ 2
    loss, _ = kwise_ranking_loss(r, rank)
    (g,) = torch.autograd.grad(loss, r)
    rv = r.detach()[0].tolist()
    order = [1, 0, 2]
    expect = [0.0, 0.0, 0.0]
    for a, b in itertools.combinations(range(3), 2):
        i, j = order[a], order[b]
        s = 1 / (1 + math.exp(rv[i] - rv[j]))  # σ(−(r_i − r_j))
        expect[i] -= s / 3
        expect[j] += s / 3
    close(g[0], expect)


def test_kwise_rejects_bad_ranking():
    with pytest.raises(ValueError, match="permutation"):
        kwise_ranking_loss(torch.zeros(1, 3, dtype=D), torch.tensor([[0, 0, 1]]))
    with pytest.raises(ValueError, match="K >= 2"):
        kwise_ranking_loss(torch.zeros(1, 1, dtype=D), torch.tensor([[0]]))


def test_plackett_luce_hand_worked():
    """rewards [3, 1, 2], ranking [0, 2, 1] (0 ≻ 2 ≻ 1). Choice 1: response 0 among {0, 1, 2}:
    −log(e³ / (e³ + e¹ + e²)) = log(1 + e^−2 + e^−1); choice 2: response 2 among {2, 1}: log(1 + e^−1).
    ℓ = log(1 + e^−1 + e^−2) + log(1 + e^−1) = 0.407606 + 0.313262 = 0.720868."""
    r = torch.tensor([[3.0, 1.0, 2.0]], dtype=D)
    loss, met = plackett_luce_loss(r, torch.tensor([[0, 2, 1]]))
    close(loss, math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + math.exp(-1)))
    close(loss, 0.720868, rtol=1e-6, atol=0)
    close(met["rank_loss"], loss)
    close(met["accuracy"], 1.0)  # the pairwise metrics are kwise's
    close(met["margin"], 4 / 3)
    # the worst ranking: 1 ≻ 2 ≻ 0 → log(1 + e² + e³) − 0 ... = log(e¹+e²+e³) − 1 + log(e²+e³) − 2
    loss_rev, _ = plackett_luce_loss(r, torch.tensor([[1, 2, 0]]))
    close(loss_rev, math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 1 + math.log(math.exp(2) + math.exp(3)) - 2)


def _pl_loop(rewards, ranking, coef):
    out = []
    for r, rk in zip(rewards.tolist(), ranking.tolist()):
        K = len(r)
        nll = sum(math.log(sum(math.exp(r[rk[j]]) for j in range(i, K))) - r[rk[i]] for i in range(K - 1))
        pairs = list(itertools.combinations(range(K), 2))
        out.append(nll + coef * sum((r[i] + r[j]) ** 2 for i, j in pairs) / len(pairs))
    return sum(out) / len(out)


def test_plackett_luce_matches_loop_k2_is_bradley_terry_and_shift_invariance():
    gen = torch.Generator().manual_seed(6)
    r = torch.randn(6, 5, dtype=D, generator=gen) * 3
    rank = torch.stack([torch.randperm(5, generator=gen) for _ in range(6)])
    for coef in (0.0, 0.05):
        close(plackett_luce_loss(r, rank, centering_coef=coef)[0], _pl_loop(r, rank, coef))
    close(plackett_luce_loss(r + 7.5, rank)[0], plackett_luce_loss(r, rank)[0])  # a prompt's constant cancels
    r2 = torch.randn(5, 2, dtype=D, generator=gen)
    rank2 = torch.stack([torch.randperm(2, generator=gen) for _ in range(5)])
    rc, rr = r2.gather(1, rank2[:, :1]).squeeze(1), r2.gather(1, rank2[:, 1:]).squeeze(1)
    close(plackett_luce_loss(r2, rank2, centering_coef=0.1)[0], bradley_terry_loss(rc, rr, centering_coef=0.1)[0])
    # K = 3 and up differ from the all-pairs loss: the choices are not independent pairs
    assert abs(float(plackett_luce_loss(r, rank)[0]) - float(kwise_ranking_loss(r, rank)[0])) > 0.1


def test_plackett_luce_gradient_matches_formula():
    """d ℓ / d r_σ(m) = −1[m ≤ K−2] + Σ_{i ≤ min(m, K−2)} softmax over {σ(i), …, σ(K−1)} at σ(m)."""
    r = torch.tensor([[0.3, -1.0, 2.0, 0.5]], dtype=D, requires_grad=True)
    order = [1, 3, 0, 2]
    loss, _ = plackett_luce_loss(r, torch.tensor([order]))
    (g,) = torch.autograd.grad(loss, r)
    rv = r.detach()[0].tolist()
    expect = [0.0] * 4
    for i in range(3):
        z = sum(math.exp(rv[order[j]]) for j in range(i, 4))
        expect[order[i]] -= 1.0
        for j in range(i, 4):
            expect[order[j]] += math.exp(rv[order[j]]) / z
    close(g[0], expect)
    with pytest.raises(ValueError, match="permutation"):
        plackett_luce_loss(torch.zeros(1, 3, dtype=D), torch.tensor([[0, 0, 1]]))


def test_bt_loss_matches_logsigmoid_reference():
    gen = torch.Generator().manual_seed(5)
    rc, rr = torch.randn(8, dtype=D, generator=gen), torch.randn(8, dtype=D, generator=gen)
    close(bradley_terry_loss(rc, rr)[0], -F.logsigmoid(rc - rr).mean())
