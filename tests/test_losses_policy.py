"""Tests for posttrain.losses.policy: REINFORCE, PPO clip (clip-higher, dual clip), GSPO, CISPO."""

import math

import pytest
import torch

from posttrain.losses.policy import POLICY_LOSSES, cispo_loss, gspo_loss, ppo_clip_loss, vanilla_pg_loss
from posttrain.losses.reduce import AGG_MODES

D = torch.float64
KW = {"cispo": {"clip_eps_high": 0.2}}


def close(a, b, rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=rtol, atol=atol)


def _agg_kw(mode):
    return {"constant_normaliser": 8.0} if mode == "seq-mean-token-sum-norm" else {}


# Hand-worked PPO example: one sequence, mask [0, 1, 1, 1], ratios [·, 1.5, 0.5, 1.1], Â [·, 1, −1, 2].
OLD = torch.tensor([[0.0, -1.0, -2.0, -0.7]], dtype=D)
RATIOS = torch.tensor([[1.0, 1.5, 0.5, 1.1]], dtype=D)
ADV = torch.tensor([[0.0, 1.0, -1.0, 2.0]], dtype=D)
MASK = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)


def _new():
    return (OLD + torch.log(RATIOS)).requires_grad_(True)


def test_ppo_clip_hand_worked():
    """ε = 0.2. Token 1: r = 1.5, Â = 1 → −max… = max(−1.5, −1.2) = −1.2 (clipped, grad 0).
    Token 2: r = 0.5, Â = −1 → max(0.5, 0.8) = 0.8 (clipped, grad 0). Token 3: r = 1.1, Â = 2 → −2.2.
    Token mean = (−1.2 + 0.8 − 2.2)/3 = −0.8667; clip_frac = 2/3; d loss/d log π_3 = −Â·r/3 = −2.2/3.
    ratio_mean = 3.1/3, ratio_max = 1.5; approx_kl = mean(r − 1 − log r)."""
    lp = _new()
    loss, met = ppo_clip_loss(lp, OLD, ADV, MASK, clip_eps_low=0.2)
    close(loss, -2.6 / 3)
    close(met["clip_frac"], 2 / 3)
    close(met["ratio_mean"], 3.1 / 3)
    close(met["ratio_max"], 1.5)
    close(met["pg_loss"], -2.6 / 3)
    close(met["approx_kl"], sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1)) / 3)
    close(met["dual_clip_frac"], 0.0)
    (g,) = torch.autograd.grad(loss, lp)
    close(g, [[0.0, 0.0, 0.0, -2.2 / 3]])


def test_ppo_clip_higher():
    """ε_low = 0.2, ε_high = 0.6 (DAPO): token 1 (r = 1.5 < 1.6) is no longer clipped:
    loss = (−1.5 + 0.8 − 2.2)/3 and d loss/d log π_1 = −1·1.5/3 = −0.5."""
    lp = _new()
    loss, met = ppo_clip_loss(lp, OLD, ADV, MASK, clip_eps_low=0.2, clip_eps_high=0.6)
    close(loss, -2.9 / 3)
    close(met["clip_frac"], 1 / 3)
    (g,) = torch.autograd.grad(loss, lp)
    close(g, [[0.0, -0.5, 0.0, -2.2 / 3]])


def test_ppo_dual_clip_bound():
    """Â = −1 with r = 5: PPO gives max(5, 0.8) = 5 (gradient −Â·r = 5); dual clip c = 3 caps it at
    −c·Â = 3 with zero gradient. On random inputs the per-token loss never exceeds c·|Â| where Â < 0."""
    old = torch.zeros(1, 2, dtype=D)
    lp = torch.log(torch.tensor([[1.0, 5.0]], dtype=D)).requires_grad_(True)
    adv = torch.tensor([[0.0, -1.0]], dtype=D)
    m = torch.tensor([[0, 1]], dtype=torch.bool)
    loss, _ = ppo_clip_loss(lp, old, adv, m)
    close(loss, 5.0)
    close(torch.autograd.grad(loss, lp)[0], [[0.0, 5.0]])
    loss, met = ppo_clip_loss(lp, old, adv, m, dual_clip_c=3.0)
    close(loss, 3.0)
    close(met["dual_clip_frac"], 1.0)
    close(met["clip_frac"], 1.0)
    close(torch.autograd.grad(loss, lp)[0], [[0.0, 0.0]])

    gen = torch.Generator().manual_seed(0)
    B, T = 4, 50
    old = torch.randn(B, T, dtype=D, generator=gen)
    lp = old + 2 * torch.randn(B, T, dtype=D, generator=gen)
    adv = torch.randn(B, T, dtype=D, generator=gen)
    ones = torch.ones(B, T, dtype=torch.bool)
    c = 3.0
    for b in range(B):
        for t in range(T):
            sl = (slice(b, b + 1), slice(t, t + 1))
            l, _ = ppo_clip_loss(lp[sl], old[sl], adv[sl], ones[sl], dual_clip_c=c)
            if adv[b, t] < 0:
                assert l <= -c * adv[b, t] + 1e-12
    with pytest.raises(ValueError, match="dual_clip_c"):
        ppo_clip_loss(lp, old, adv, ones, dual_clip_c=1.0)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_ppo_and_cispo_gradients_equal_vanilla_pg_at_ratio_one(mode):
    """At π_θ = π_θold (r = 1): ∇(−Â r) = −Â ∇ log π, the REINFORCE gradient; CISPO's weight is 1 too."""
    gen = torch.Generator().manual_seed(1)
    B, T = 3, 7
    lp0 = torch.randn(B, T, dtype=D, generator=gen) - 2
    adv = torch.randn(B, T, dtype=D, generator=gen)
    m = torch.zeros(B, T, dtype=torch.bool)
    m[0, 1:7], m[1, 3:5], m[2, 2:6] = True, True, True
    grads = {}
    for name, fn in POLICY_LOSSES.items():
        if name == "gspo":
            continue
        lp = lp0.clone().requires_grad_(True)
        loss, met = fn(lp, lp0, adv, m, agg=mode, **_agg_kw(mode), **KW.get(name, {}))
        grads[name] = torch.autograd.grad(loss, lp)[0]
        close(met["ratio_mean"], 1.0)
        close(met["approx_kl"], 0.0)
        close(met["clip_frac"], 0.0)
    close(grads["ppo"], grads["vanilla_pg"])
    close(grads["cispo"], grads["vanilla_pg"])


def test_vanilla_pg_hand_worked_and_sequence_advantages():
    """−Â log π: tokens (Â, log π) = (1, −1), (−1, −2), (2, −0.7) with Â given per sequence as [B]
    broadcasting: Â = 2 for all → token mean of −2·(−1 −2 −0.7)/3 = 7.4/3. Per-token Â:
    (1·1 − 1·2·... ) = (1 − 2 + 1.4)/3 = 0.4/3."""
    lp = OLD.clone()
    loss, _ = vanilla_pg_loss(lp, OLD, torch.tensor([2.0], dtype=D), MASK)
    close(loss, 7.4 / 3)
    loss, met = vanilla_pg_loss(lp, OLD, ADV, MASK)
    close(loss, (1.0 - 2.0 + 1.4) / 3)
    close(met["clip_frac"], 0.0)


def _gspo_direct(lp, old, adv_seq, m, lo, hi):
    """The paper's sequence-level formula: −1/B Σ_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t Δ)."""
    mf = m.to(D)
    s = torch.exp(((lp - old) * mf).sum(-1) / mf.sum(-1))
    obj = torch.minimum(s * adv_seq, torch.clamp(s, 1 - lo, 1 + hi) * adv_seq)
    return -obj.mean()


def test_gspo_hand_worked():
    """One sequence, log-ratios [0.2, 0.4] → log s = 0.3, s = e^0.3 ≈ 1.34986; Â = 1, ε_high = 0.4
    (not clipped): loss = −e^0.3, d loss/d log π_t = −Â·s/|y| = −e^0.3/2 for both tokens.
    With ε_high = 0.2 it is clipped at 1.2: loss −1.2, gradient 0, clip_frac 1."""
    old = torch.tensor([[0.0, -1.0, -2.0]], dtype=D)
    lp = (old + torch.tensor([[0.0, 0.2, 0.4]], dtype=D)).requires_grad_(True)
    m = torch.tensor([[0, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([1.0], dtype=D)
    loss, met = gspo_loss(lp, old, adv, m, clip_eps_low=0.2, clip_eps_high=0.4)
    close(loss, -math.exp(0.3))
    close(met["ratio_mean"], math.exp(0.3))
    close(met["seq_log_ratio_mean"], 0.3)
    close(met["clip_frac"], 0.0)
    (g,) = torch.autograd.grad(loss, lp)
    close(g, [[0.0, -math.exp(0.3) / 2, -math.exp(0.3) / 2]])
    loss, met = gspo_loss(lp, old, adv, m, clip_eps_low=0.2, clip_eps_high=0.2)
    close(loss, -1.2)
    close(met["clip_frac"], 1.0)
    close(torch.autograd.grad(loss, lp)[0], torch.zeros(1, 3, dtype=D))


def test_gspo_token_form_equals_sequence_formula():
    """With [B] advantages and seq-mean-token-mean, the GSPO-token implementation equals the paper's
    sequence-level objective in value and gradient, across ragged masks and with some sequences
    clipped (both sides)."""
    gen = torch.Generator().manual_seed(2)
    B, T = 6, 9
    old = torch.randn(B, T, dtype=D, generator=gen) - 2
    # per-row shifts of log s: row 0 (Â > 0, s ≈ e^0.2) and row 1 (Â < 0, s ≈ e^−0.2) clip;
    # row 3 (Â < 0, s > 1) and the near-1 rows do not.
    shift = torch.tensor([0.2, -0.2, 0.0, 0.2, 0.01, -0.01], dtype=D).unsqueeze(1)
    lp = (old + shift + 0.01 * torch.randn(B, T, dtype=D, generator=gen)).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.5, -0.3], dtype=D)
    m = torch.zeros(B, T, dtype=torch.bool)
    for b, (s, e) in enumerate([(1, 9), (2, 5), (0, 3), (4, 9), (3, 8), (1, 2)]):
        m[b, s:e] = True
    lo, hi = 0.05, 0.08
    loss, met = gspo_loss(lp, old, adv, m, clip_eps_low=lo, clip_eps_high=hi)
    ref = _gspo_direct(lp, old, adv, m, lo, hi)
    close(loss, ref)
    close(torch.autograd.grad(loss, lp)[0], torch.autograd.grad(ref, lp)[0])
    close(met["clip_frac"], 2 / 6)


def test_cispo_hand_worked():
    """ε_high = 0.2, no lower bound. Tokens (r, Â, log π): (1.5, 1, −1+log1.5), (0.5, −1, …), (1.1, 2, …).
    Weights sg(clip(r, −, 1.2)) = [1.2, 0.5, 1.1]; per-token −w·Â·log π; gradient −w·Â/3 on every token
    (never zeroed, unlike PPO): [−0.4, 0.5/3, −2.2/3]. clip_frac 1/3. With ε_low = 0.2 the
    second weight becomes 0.8."""
    lp = _new()
    loss, met = cispo_loss(lp, OLD, ADV, MASK, clip_eps_high=0.2)
    lpd = lp.detach()[0]
    close(loss, -(1.2 * 1 * lpd[1] + 0.5 * -1 * lpd[2] + 1.1 * 2 * lpd[3]) / 3)
    close(met["clip_frac"], 1 / 3)
    (g,) = torch.autograd.grad(loss, lp)
    close(g, [[0.0, -0.4, 0.5 / 3, -2.2 / 3]])
    loss, met = cispo_loss(lp, OLD, ADV, MASK, clip_eps_high=0.2, clip_eps_low=0.2)
    close(torch.autograd.grad(loss, lp)[0], [[0.0, -0.4, 0.8 / 3, -2.2 / 3]])
    close(met["clip_frac"], 2 / 3)


@pytest.mark.parametrize("name", list(POLICY_LOSSES))
def test_padding_garbage_is_ignored_and_metrics_present(name):
    """nan in logprobs / old_logprobs off the mask changes neither the loss nor the gradients."""
    gen = torch.Generator().manual_seed(3)
    B, T = 3, 6
    old = torch.randn(B, T, dtype=D, generator=gen) - 1
    lp_clean = old + 0.1 * torch.randn(B, T, dtype=D, generator=gen)
    adv = torch.randn(B, dtype=D, generator=gen)
    m = torch.zeros(B, T, dtype=torch.bool)
    m[0, 2:6], m[1, 1:3], m[2, 3:5] = True, True, True
    results = []
    for garbage in (False, True):
        lp = lp_clean.clone()
        o = old.clone()
        if garbage:
            lp[~m] = float("nan")
            o[~m] = float("nan")
        lp.requires_grad_(True)
        loss, met = POLICY_LOSSES[name](lp, o, adv, m, **KW.get(name, {}))
        (g,) = torch.autograd.grad(loss, lp)
        results.append((loss.detach(), g))
        for k in ("approx_kl", "clip_frac", "ratio_mean", "ratio_max", "pg_loss"):
            assert k in met and met[k].dim() == 0 and torch.isfinite(met[k])
    close(results[1][0], results[0][0])
    close(results[1][1], results[0][1])
    assert torch.all(results[0][1][~m] == 0)


@pytest.mark.parametrize("name", list(POLICY_LOSSES))
def test_micro_batch_split_with_global_normaliser(name):
    from posttrain.losses.reduce import num_units
    gen = torch.Generator().manual_seed(4)
    B, T = 5, 6
    old = torch.randn(B, T, dtype=D, generator=gen) - 1
    lp = (old + 0.2 * torch.randn(B, T, dtype=D, generator=gen)).requires_grad_(True)
    adv = torch.randn(B, T, dtype=D, generator=gen)
    m = torch.zeros(B, T, dtype=torch.bool)
    for b, (s, e) in enumerate([(1, 6), (2, 4), (0, 3), (3, 6), (1, 2)]):
        m[b, s:e] = True
    for mode in ("token-mean", "seq-mean-token-mean"):
        full, _ = POLICY_LOSSES[name](lp, old, adv, m, agg=mode, **KW.get(name, {}))
        N = num_units(m[:2], mode) + num_units(m[2:], mode)
        split = sum(POLICY_LOSSES[name](lp[s], old[s], adv[s], m[s], agg=mode, normaliser=N,
                                        **KW.get(name, {}))[0] for s in (slice(0, 2), slice(2, 5)))
        close(split, full)
        close(torch.autograd.grad(split, lp)[0], torch.autograd.grad(full, lp)[0])
