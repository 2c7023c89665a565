"""Tests for posttrain.losses.kl: estimators, KL-penalised rewards, GRPO KL term, controllers."""

import math

import pytest
import torch

from posttrain.losses.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_loss_term,
    kl_penalised_rewards,
)

D = torch.float64


def close(a, b, rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=rtol, atol=atol)


P_LOGITS = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0], dtype=D)
Q_LOGITS = torch.tensor([0.3, 0.9, -0.1, 1.2, 0.4], dtype=D)


def _dists():
    logp = torch.log_softmax(P_LOGITS, 0)
    logq = torch.log_softmax(Q_LOGITS, 0)
    return logp, logq, (logp.exp() * (logp - logq)).sum()


def test_exact_expectations_of_k1_and_k3_equal_kl():
    """Under x ~ π: E[k1] = Σ π log(π/π_ref) = KL and E[k3] = Σ π (π_ref/π − 1) + KL = 0 + KL, exactly."""
    logp, logq, kl = _dists()
    p = logp.exp()
    close((p * kl_k1(logp, logq)).sum(), kl, rtol=1e-12)
    close((p * kl_k3(logp, logq)).sum(), kl, rtol=1e-12)


def test_monte_carlo_unbiasedness_of_k1_k3_and_k2_bias():
    """Seeded 200k samples from π: the sample means of k1 and k3 are within 5 standard errors (std/√N)
    of the exact KL; k3 has the smaller standard deviation. k2's sample mean matches its own exact
    expectation E[½ (log r)²] (which differs from KL: k2 is biased)."""
    logp, logq, kl = _dists()
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x = torch.multinomial(logp.exp(), n, replacement=True, generator=gen)
    lp, lq = logp[x], logq[x]
    for est in (kl_k1, kl_k3):
        s = est(lp, lq)
        se = s.std() / math.sqrt(n)
        assert abs(s.mean() - kl) < 5 * se, (est.__name__, s.mean().item(), kl.item(), se.item())
    assert kl_k3(lp, lq).std() < kl_k1(lp, lq).std()
    k2 = kl_k2(lp, lq)
    exact_k2 = (logp.exp() * 0.5 * (logq - logp) ** 2).sum()
    assert abs(k2.mean() - exact_k2) < 5 * k2.std() / math.sqrt(n)
    assert abs(exact_k2 - kl) > 1e-3  # biased for these distributions


def test_estimator_identities():
    """k2 = ½ (log r)²; k1 = −log r; k3 = r − 1 − log r ≥ 0; k3 − k2 = (log r)³/6 + O((log r)⁴)."""
    lp = torch.tensor([-1.0, -2.0, -0.3, -4.0], dtype=D)
    lq = torch.tensor([-1.5, -1.0, -0.3, -0.5], dtype=D)
    log_r = lq - lp
    close(kl_k1(lp, lq), -log_r)
    close(kl_k2(lp, lq), 0.5 * log_r ** 2)
    close(kl_k3(lp, lq), torch.exp(log_r) - 1 - log_r)
    assert torch.all(kl_k3(lp, lq) >= 0) and torch.all(kl_k2(lp, lq) >= 0)
    close(kl_k3(lp, lq)[2], 0.0)
    small = torch.tensor([1e-3, -2e-3], dtype=D)
    diff = kl_k3(torch.zeros(2, dtype=D), small) - kl_k2(torch.zeros(2, dtype=D), small)
    close(diff / small ** 3, torch.full((2,), 1 / 6, dtype=D), rtol=1e-2)
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_kl_penalised_rewards_hand_worked():
    """β = 0.1, k1 = logprobs − ref.
    Row 0: mask [0, 1, 1, 0], kl = [·, 0.5, −0.2, ·] → rewards [0, −0.05, 0.02 + 1.0, 0] (score 1 at t = 2).
    Row 1: mask [0, 0, 1, 1] (left-offset span), kl = [·, ·, 1, 2] → rewards [0, 0, −0.1, −0.2 + 2.0].
    Row 2: empty mask → all 0 and no score.
    Metrics: kl = mean over rows of Σ_t kl = (0.3 + 3 + 0)/3 = 1.1; non_score_reward = −0.11."""
    lp = torch.tensor([[9.0, -1.0, -2.2, 5.0], [3.0, 3.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0]], dtype=D)
    ref = torch.tensor([[0.0, -1.5, -2.0, 0.0], [0.0, 0.0, -2.0, -3.0], [1.0, 1.0, 1.0, 1.0]], dtype=D)
    m = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    scores = torch.tensor([1.0, 2.0, 5.0], dtype=D)
    rewards, met = kl_penalised_rewards(scores, lp.requires_grad_(True), ref, m, beta=0.1)
    close(rewards, [[0.0, -0.05, 1.02, 0.0], [0.0, 0.0, -0.1, 1.8], [0.0, 0.0, 0.0, 0.0]])
    assert not rewards.requires_grad
    close(met["kl"], 1.1)
    close(met["non_score_reward"], -0.11)
    close(met["score"], 8 / 3)
    # k3 variant: −β·k3 on tokens, score at the last token
    r3, _ = kl_penalised_rewards(scores, lp.detach(), ref, m, beta=0.1, estimator="k3")
    k3 = kl_k3(lp.detach(), ref)
    close(r3[0, 1], -0.1 * k3[0, 1])
    close(r3[1, 3], -0.1 * k3[1, 3] + 2.0)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalised_rewards(scores, lp, ref, m, beta=0.1, estimator="k4")


def test_kl_loss_term_value_and_gradient():
    """k3 with r = π_ref/π: d k3 / d log π = −r + 1. Token-mean over 3 tokens, β = 0.04:
    loss = 0.04·mean(k3), grad = 0.04·(1 − r)/3 on the masked tokens, 0 elsewhere."""
    lp = torch.tensor([[0.0, -1.0, -2.0, -0.5]], dtype=D, requires_grad=True)
    ref = torch.tensor([[0.0, -1.2, -1.0, -3.0]], dtype=D)
    m = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    loss, met = kl_loss_term(lp, ref, m, beta=0.04)
    log_r = (ref - lp.detach())[0, 1:]
    k3 = torch.exp(log_r) - 1 - log_r
    close(loss, 0.04 * k3.mean())
    close(met["kl"], k3.mean())
    (g,) = torch.autograd.grad(loss, lp)
    close(g[0, 1:], 0.04 * (1 - torch.exp(log_r)) / 3)
    close(g[0, 0], 0.0)
    # aggregation modes and normaliser are forwarded
    loss_n, _ = kl_loss_term(lp, ref, m, beta=0.04, normaliser=6)
    close(loss_n, loss / 2)
    loss_k1, _ = kl_loss_term(lp, ref, m, beta=1.0, estimator="k1", agg="seq-mean-token-sum")
    close(loss_k1, (lp.detach() - ref)[0, 1:].sum())


def test_adaptive_kl_controller():
    """β0 = 0.1, target 6, horizon 10000, n = 256 (K = 0.0256):
    KL 12 → e = clip(1) = 0.2 → β = 0.1·1.00512; then KL 3 → e = −0.5 → −0.2 → β·(1 − 0.00512);
    then KL 6.6 → e = 0.1 → β·1.00256."""
    ctl = AdaptiveKLController(0.1, 6.0, 10000)
    b1 = ctl.update(12.0, 256)
    assert math.isclose(b1, 0.1 * 1.00512, rel_tol=1e-12)
    b2 = ctl.update(torch.tensor(3.0), 256)
    assert math.isclose(b2, 0.1 * 1.00512 * 0.99488, rel_tol=1e-12)
    b3 = ctl.update(6.6, 256)
    assert math.isclose(b3, b2 * 1.00256, rel_tol=1e-12)
    assert isinstance(ctl.value, float) and ctl.value == b3
    fresh = AdaptiveKLController(1.0, 1.0, 1.0)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.state_dict() == ctl.state_dict()
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 1000) == 0.05 and fixed.value == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, 0.0, 10)


def test_kl_loss_term_expected_gradient_direction_per_estimator():
    """Exact expectation over a two-token vocabulary (the float mask carries the weights π(x), one row,
    seq-mean-token-sum ⇒ loss = Σ_x π(x)·k(x)). π = softmax([θ, 0]) at θ = 0 → π = [½, ½],
    ∇_θ log π = [½, −½]; π_ref = [¾, ¼].
    E[∇k1] = Σ π ∇log π = ¼ − ¼ = 0.
    E[∇k2] = Σ π log(π/π_ref) ∇log π = ¼·log(2/3) − ¼·log 2 = −¼ log 3 = ∇KL(π ‖ π_ref) ≈ −0.274653.
    E[∇k3] = Σ (π − π_ref) ∇log π = (−¼)·½ + (¼)·(−½) = −¼ = ∇KL(π_ref ‖ π) = −Σ π_ref ∇log π
    = −(⅜ − ⅛): the reverse KL's gradient, not the forward one (as the docstring states)."""
    expected = {"k1": 0.0, "k2": -0.25 * math.log(3.0), "k3": -0.25}
    ref = torch.log(torch.tensor([[0.75, 0.25]], dtype=D))
    for est, want in expected.items():
        theta = torch.zeros(1, dtype=D, requires_grad=True)
        lp = torch.log_softmax(torch.cat([theta, torch.zeros(1, dtype=D)]), 0).unsqueeze(0)  # [1, 2]
        loss, _ = kl_loss_term(lp, ref, lp.detach().exp(), beta=1.0, estimator=est, agg="seq-mean-token-sum")
        (g,) = torch.autograd.grad(loss, theta)
        close(g[0], want, rtol=1e-9, atol=1e-12)
