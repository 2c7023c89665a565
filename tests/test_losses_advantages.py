"""Tests for posttrain.losses.advantages: GAE (vs a plain loop), RLOO, GRPO, baselines, whitening."""

import pytest
import torch

from posttrain.losses.advantages import gae, grpo_advantages, reinforce_baseline, rloo_advantages, whiten

D = torch.float64


def close(a, b, rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=rtol, atol=atol)


def gae_loop(rewards, values, mask, gamma, lam):
    """Plain Python GAE per row over its contiguous masked span [s, e): terminal after e − 1."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        idx = [t for t in range(T) if mask[b][t]]
        if not idx:
            continue
        last_adv, next_v = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last_adv = delta + gamma * lam * last_adv
            adv[b][t] = last_adv
            next_v = values[b][t]
    ret = [[adv[b][t] + values[b][t] if mask[b][t] else 0.0 for t in range(T)] for b in range(B)]
    return adv, ret


def test_gae_hand_worked():
    """T = 3, r = [0, 0, 1], V = [0.5, 0.5, 0.5].
    γ = λ = 1: δ = [0, 0, 0.5] → Â = [0.5, 0.5, 0.5], R = [1, 1, 1] (Monte-Carlo return).
    λ = 0: Â = δ = [0, 0, 0.5].
    γ = 0.9, λ = 0.5: δ = [0.45 − 0.5, 0.45 − 0.5, 0.5] = [−0.05, −0.05, 0.5];
    Â_2 = 0.5, Â_1 = −0.05 + 0.45·0.5 = 0.175, Â_0 = −0.05 + 0.45·0.175 = 0.02875."""
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=D)
    v = torch.full((1, 3), 0.5, dtype=D)
    m = torch.ones(1, 3, dtype=torch.bool)
    a, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    close(a, [[0.5, 0.5, 0.5]])
    close(ret, [[1.0, 1.0, 1.0]])
    close(gae(r, v, m, gamma=1.0, lam=0.0)[0], [[0.0, 0.0, 0.5]])
    close(gae(r, v, m, gamma=0.9, lam=0.5)[0], [[0.02875, 0.175, 0.5]])


def test_gae_matches_loop_on_random_ragged_inputs():
    """Spans start at arbitrary offsets (left-padded prompts) and end before T (right padding);
    one row is empty. Outside the mask the output is 0."""
    gen = torch.Generator().manual_seed(0)
    B, T = 8, 11
    r = torch.randn(B, T, dtype=D, generator=gen)
    v = torch.randn(B, T, dtype=D, generator=gen)
    m = torch.zeros(B, T, dtype=torch.bool)
    spans = [(0, 11), (3, 11), (0, 4), (2, 9), (10, 11), (5, 6), (1, 10), (0, 0)]
    for b, (s, e) in enumerate(spans):
        m[b, s:e] = True
    for gamma, lam in ((1.0, 0.95), (0.9, 0.7), (0.99, 1.0)):
        a, ret = gae(r, v, m, gamma=gamma, lam=lam)
        ea, er = gae_loop(r.tolist(), v.tolist(), m.tolist(), gamma, lam)
        close(a, ea)
        close(ret, er)
        assert torch.all(a[~m] == 0) and torch.all(ret[~m] == 0)


def test_gae_is_invariant_to_padding_shift():
    """Moving a span right by k positions (more left padding) moves its advantages by k."""
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(1, 5, dtype=D, generator=gen)
    v = torch.randn(1, 5, dtype=D, generator=gen)
    a, _ = gae(r, v, torch.ones(1, 5, dtype=torch.bool), gamma=0.97, lam=0.9)
    pad = torch.zeros(1, 3, dtype=D)
    m2 = torch.cat([torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)], 1)
    a2, _ = gae(torch.cat([pad + 7, r], 1), torch.cat([pad - 4, v], 1), m2, gamma=0.97, lam=0.9)
    close(a2[:, 3:], a)


def test_rloo_hand_worked():
    """G = 3. Group [1, 2, 3]: baselines (2+3)/2, (1+3)/2, (1+2)/2 → [−1.5, 0, 1.5];
    group [0, 0, 6]: [0 − 3, 0 − 3, 6 − 0] = [−3, −3, 6]. Equals G/(G−1)·(r − mean)."""
    r = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0], dtype=D)
    a = rloo_advantages(r, 3)
    close(a, [-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])
    g = r.view(2, 3)
    close(a, (1.5 * (g - g.mean(1, keepdim=True))).reshape(-1))


def test_grpo_hand_worked_and_dr_grpo():
    """Group [1, 2, 3]: mean 2, sample std 1 → [−1, 0, 1]/(1 + eps); Dr. GRPO: [−1, 0, 1].
    Group [4, 4, 4]: all 0 (no signal). Group [0, 0, 1]: mean 1/3, std √(1/3)."""
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 0.0, 0.0, 1.0], dtype=D)
    a = grpo_advantages(r, 3, eps=1e-6)
    close(a[:3], torch.tensor([-1.0, 0.0, 1.0], dtype=D) / (1 + 1e-6))
    close(a[3:6], [0.0, 0.0, 0.0])
    s = (1 / 3) ** 0.5
    close(a[6:], torch.tensor([-1 / 3, -1 / 3, 2 / 3], dtype=D) / (s + 1e-6))
    close(grpo_advantages(r, 3, scale_by_std=False)[:3], [-1.0, 0.0, 1.0])
    # groups are contiguous: per-group invariance to adding a constant
    close(grpo_advantages(r + torch.tensor([5.0] * 3 + [0.0] * 6, dtype=D), 3), a)


def test_group_errors():
    with pytest.raises(ValueError, match="G >= 2|G must be >= 2"):
        rloo_advantages(torch.zeros(4, dtype=D), 1)
    with pytest.raises(ValueError, match="groups of G=3"):
        grpo_advantages(torch.zeros(4, dtype=D), 3)


def test_reinforce_baseline_and_whiten():
    r = torch.tensor([1.0, 3.0], dtype=D)
    close(reinforce_baseline(r, 0.5), [0.5, 2.5])
    close(reinforce_baseline(r, torch.tensor([1.0, 1.0], dtype=D)), [0.0, 2.0])
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, dtype=D, generator=gen) * 4 + 2
    m = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    w = whiten(x, m, eps=0.0)
    close(w[m].mean(), 0.0, atol=1e-12)
    close(w[m].std(), 1.0)
    assert torch.all(w[~m] == 0)
    wf = whiten(x.reshape(-1), eps=0.0)
    close(wf.mean(), 0.0, atol=1e-12)
    close(wf.std(), 1.0)
