"""The algorithm-specific parts of `posttrain rl` (posttrain/stages/rl_algos.py), on numbers worked by hand."""

import math

import pytest
import torch

from posttrain.config import RLConfig
from posttrain.errors import ConfigError
from posttrain.stages.rl_algos import (ADVANTAGE_ESTIMATORS, RLObjective, Scored, policy_loss_spec,
                                       shift_values)

D = torch.float64


def cfg(**kw) -> RLConfig:
    return RLConfig(**kw)


def _scored(scores, kl_per_row, G=2, L=4):
    """Rows whose completion is tokens 1..L-1; log π − log π_ref is spread evenly so Σ_t kl_t = kl_per_row."""
    N = len(scores)
    mask = torch.zeros(N, L, dtype=D)
    mask[:, 1:] = 1
    ref = torch.full((N, L), -2.0, dtype=D) * mask
    per_tok = torch.tensor(kl_per_row, dtype=D)[:, None] / (L - 1)
    logprobs = (ref + per_tok) * mask
    return Scored(torch.tensor(scores, dtype=D), logprobs, ref, mask, G)


def test_grpo_group_normalised_kl_in_loss_and_dr_grpo():
    """G=2, scores [1, 0, 2, 2], KL in the loss (rewards = scores). Group 1: mean 0.5, sample std
    √0.5 = 0.70711 → Â = ±0.70711; group 2 is constant → Â = 0. Dr. GRPO (no std): ±0.5, 0."""
    s = _scored([1.0, 0.0, 2.0, 2.0], [3.0, 0.0, 0.0, 5.0])
    a = ADVANTAGE_ESTIMATORS["grpo"](s, cfg(algo="grpo"), 0.5)
    r = 0.5 / (1 / math.sqrt(2) + 1e-6)
    torch.testing.assert_close(a.advantages, torch.tensor([r, -r, 0.0, 0.0], dtype=D), rtol=1e-12, atol=1e-12)
    assert a.returns is None and a.metrics["frac_zero_std_groups"] == 0.5
    a = ADVANTAGE_ESTIMATORS["grpo"](s, cfg(algo="grpo", scale_rewards="none"), 0.5)
    torch.testing.assert_close(a.advantages, torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=D), rtol=0, atol=1e-12)


def test_kl_in_reward_lowers_the_reward_by_beta_kl():
    """KL sign: Σ_t (log π − log π_ref) = [1, 0, 0, 2], β = 0.5 → R = score − β·KL = [0.5, 0, 2, 1].
    RLOO (G=2): Â_i = R_i − R_other = [0.5, −0.5, 1, −1]; REINFORCE, mean baseline 0.875:
    [−0.375, −0.875, 1.125, 0.125]; GRPO with KL in the reward: both groups ±(0.25|0.5)/std → ±0.70711."""
    s = _scored([1.0, 0.0, 2.0, 2.0], [1.0, 0.0, 0.0, 2.0])
    a = ADVANTAGE_ESTIMATORS["rloo"](s, cfg(algo="rloo"), 0.5)
    torch.testing.assert_close(a.advantages, torch.tensor([0.5, -0.5, 1.0, -1.0], dtype=D), rtol=0, atol=1e-12)
    assert a.metrics["non_score_reward"] == pytest.approx(-0.5 * 3 / 4, abs=1e-12)
    a = ADVANTAGE_ESTIMATORS["reinforce"](s, cfg(algo="reinforce", whiten_advantages=False), 0.5)
    torch.testing.assert_close(a.advantages, torch.tensor([-0.375, -0.875, 1.125, 0.125], dtype=D),
                               rtol=0, atol=1e-12)
    a = ADVANTAGE_ESTIMATORS["grpo"](s, cfg(algo="grpo", kl_mode="reward"), 0.5)
    # group 1: R = [0.5, 0] → centred ±0.25, std 0.35355; group 2: R = [2, 1] → ±0.5, std 0.70711
    expect = torch.tensor([0.25 / (0.25 * math.sqrt(2) + 1e-6), -0.25 / (0.25 * math.sqrt(2) + 1e-6),
                           0.5 / (0.5 * math.sqrt(2) + 1e-6), -0.5 / (0.5 * math.sqrt(2) + 1e-6)], dtype=D)
    torch.testing.assert_close(a.advantages, expect, rtol=1e-12, atol=1e-12)
    # REINFORCE++-style whitening: (R − 0.875) / sqrt(var + 1e-8), var unbiased = 0.72917
    a = ADVANTAGE_ESTIMATORS["reinforce"](s, cfg(algo="reinforce"), 0.5)
    R = torch.tensor([0.5, 0.0, 2.0, 1.0], dtype=D)
    torch.testing.assert_close(a.advantages, (R - 0.875) / torch.sqrt(R.var() + 1e-8), rtol=1e-12, atol=1e-12)


def test_ppo_gae_by_hand():
    """One row, completion tokens 1..3, score 1, β = 0, V(x_<t) = [·, 0.5, 0.25, 0]. γ = 1:
    λ = 1 → Â_t = 1 − V_t = [0.5, 0.75, 1], returns 1. λ = 0.5: δ = [−0.25, −0.25, 1] →
    Â_3 = 1, Â_2 = −0.25 + 0.5 = 0.25, Â_1 = −0.25 + 0.125 = −0.125; returns Â + V = [0.375, 0.5, 1]."""
    s = _scored([1.0], [0.0], G=1)
    s.values = torch.tensor([[0.0, 0.5, 0.25, 0.0]], dtype=D)
    a = ADVANTAGE_ESTIMATORS["ppo"](s, cfg(algo="ppo", lam=1.0, whiten_advantages=False), 0.0)
    torch.testing.assert_close(a.advantages, torch.tensor([[0.0, 0.5, 0.75, 1.0]], dtype=D), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.returns, torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=D), rtol=0, atol=1e-12)
    a = ADVANTAGE_ESTIMATORS["ppo"](s, cfg(algo="ppo", lam=0.5, whiten_advantages=False), 0.0)
    torch.testing.assert_close(a.advantages, torch.tensor([[0.0, -0.125, 0.25, 1.0]], dtype=D), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.returns, torch.tensor([[0.0, 0.375, 0.5, 1.0]], dtype=D), rtol=0, atol=1e-12)
    # KL as a per-token penalty: with kl_t = 0.3 at each of the 3 tokens and β = 1, λ = 1, V = 0, the
    # return from token t is 1 − 0.3·(3 − t + 1): [1 − 0.9, 1 − 0.6, 1 − 0.3]
    s = _scored([1.0], [0.9], G=1)
    s.values = torch.zeros(1, 4, dtype=D)
    a = ADVANTAGE_ESTIMATORS["ppo"](s, cfg(algo="ppo", lam=1.0, whiten_advantages=False), 1.0)
    torch.testing.assert_close(a.returns, torch.tensor([[0.0, 0.1, 0.4, 0.7]], dtype=D), rtol=0, atol=1e-12)
    assert not a.advantages.requires_grad and not a.returns.requires_grad


def test_shift_values_aligns_state_values_with_logprobs():
    """A token-classification head gives V(x_≤t) at t; the value of the state where token t is chosen is
    V(x_<t) = that of position t − 1 (and 0 at position 0)."""
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert shift_values(v).tolist() == [[0.0, 1.0, 2.0, 3.0]]


def test_policy_loss_spec_settings_and_errors():
    fn, kw = policy_loss_spec(cfg(algo="grpo"))
    assert fn.__name__ == "ppo_clip_loss" and kw == {}
    fn, kw = policy_loss_spec(cfg(algo="grpo", clip_eps_low=0.1, clip_eps_high=0.28, dual_clip_c=3.0))
    assert kw == {"clip_eps_low": 0.1, "clip_eps_high": 0.28, "dual_clip_c": 3.0}
    assert policy_loss_spec(cfg(algo="rloo"))[0].__name__ == "vanilla_pg_loss"
    assert policy_loss_spec(cfg(algo="grpo", policy_loss="gspo"))[0].__name__ == "gspo_loss"
    assert cfg(algo="grpo", policy_loss="gspo").resolved_loss_agg == "seq-mean-token-mean"
    with pytest.raises(ConfigError, match="^config: policy_loss=cispo needs key 'clip_eps_high'$"):
        policy_loss_spec(cfg(policy_loss="cispo"))
    with pytest.raises(ConfigError, match="^config: key 'dual_clip_c' does not apply to policy_loss=gspo$"):
        policy_loss_spec(cfg(policy_loss="gspo", dual_clip_c=3.0))
    with pytest.raises(ConfigError, match="^config: key 'clip_eps_low' does not apply to policy_loss=vanilla$"):
        policy_loss_spec(cfg(policy_loss="vanilla", clip_eps_low=0.1))


@pytest.mark.parametrize("over,message", [
    (dict(prompts_per_step=3, group_size=4, minibatch_size=8),
     "prompts_per_step × group_size (12) must be a multiple of minibatch_size (8)"),
    (dict(prompts_per_step=6, minibatch_size=12, batch_size=8), "minibatch_size (12) must be a multiple of batch_size (8)"),
    (dict(algo="grpo", group_size=1), "algo=grpo needs group_size >= 2"),
    (dict(generation={"temperature": 0.0}), "generation.temperature must be > 0 for RL"),
    (dict(grad_accum=2), "grad_accum is not used by rl"),
])
def test_config_rejects_inconsistent_shapes(over, message):
    from posttrain.config import build_config

    with pytest.raises(ConfigError) as e:
        build_config(RLConfig, over)
    assert str(e.value).startswith("config: " + message)


def test_config_derived_settings():
    c = cfg(algo="ppo", prompts_per_step=4, group_size=4, minibatch_size=8, ppo_epochs=2)
    assert (c.rollout_size, c.updates_per_step, c.micro_batch_size) == (16, 4, 8)
    assert (c.resolved_kl_mode, c.resolved_kl_estimator, c.resolved_policy_loss) == ("reward", "k1", "ppo")
    g = cfg(algo="grpo")
    assert (g.resolved_kl_mode, g.resolved_kl_estimator, g.updates_per_step) == ("loss", "k3", 1)


class _Toy(torch.nn.Module):
    """A causal 'LM' whose logits at t depend on tokens ≤ t (embedding + running mean), float64."""

    def __init__(self, V=7, d=5, value=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(V, d, generator=g, dtype=D))
        self.out = torch.nn.Parameter(torch.randn(d, V, generator=g, dtype=D))
        self.v = torch.nn.Parameter(torch.randn(d, generator=g, dtype=D)) if value else None

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False):
        from types import SimpleNamespace

        h = self.emb[input_ids] * attention_mask[..., None]                         # [B, T, d]
        h = h.cumsum(1) / attention_mask.cumsum(1).clamp_min(1)[..., None]         # [B, T, d]
        out = SimpleNamespace(logits=h @ self.out)
        if self.v is not None:
            out.token_values = (h @ self.v) * attention_mask
        return out


def _batch(N=6, L=7, V=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (N, L), generator=g)
    am = torch.ones(N, L, dtype=torch.long)
    am[0, :2] = 0  # left padding
    am[1, :1] = 0
    cm = torch.zeros(N, L)
    for i in range(N):
        start = 3
        end = L - (i % 3)  # ragged completions
        cm[i, start:end] = 1
        am[i, end:] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0) * am
    return {"input_ids": ids, "attention_mask": am, "position_ids": pos, "completion_mask": cm.to(D),
            "old_logprobs": -torch.rand(N, L, generator=g, dtype=D) * cm,
            "ref_logprobs": -torch.rand(N, L, generator=g, dtype=D) * cm,
            "advantages": torch.randn(N, generator=g, dtype=D),
            "old_values": torch.randn(N, L, generator=g, dtype=D) * cm,
            "returns": torch.randn(N, L, generator=g, dtype=D) * cm}


@pytest.mark.parametrize("algo,agg", [("grpo", "token-mean"), ("grpo", "seq-mean-token-mean"),
                                      ("ppo", "token-mean"), ("rloo", "seq-mean-token-sum-norm")])
def test_objective_micro_batches_sum_to_the_full_batch_gradient(algo, agg):
    """With the engine's global normaliser (Σ of the micro-batches' num_units), the gradients of micro-batches
    of 2 rows sum to the gradient of the whole 6-row batch (policy loss + KL term + value loss), float64."""
    from posttrain.losses.kl import FixedKLController
    from posttrain.stages.rl import _microbatch

    c = cfg(algo=algo, loss_agg=agg, beta=0.3, kl_mode="loss", vf_coef=0.5, generation={"max_new_tokens": 4})
    obj = RLObjective(c, FixedKLController(0.3), constant_normaliser=4.0 if agg.endswith("norm") else None)
    t = _batch()
    model = _Toy(value=algo == "ppo")
    rows = torch.arange(6)
    full = _microbatch(t, rows, agg)
    loss, _ = obj(model, full, full["num_units"])
    g_full = torch.autograd.grad(loss, list(model.parameters()))
    parts = [_microbatch(t, r, agg) for r in rows.split(2)]
    total = sum(p["num_units"] for p in parts)
    assert total == full["num_units"]
    g_sum = [torch.zeros_like(p) for p in model.parameters()]
    for p in parts:
        loss_k, _ = obj(model, p, total)
        for acc, g in zip(g_sum, torch.autograd.grad(loss_k, list(model.parameters()))):
            acc += g
    for a, b in zip(g_full, g_sum):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_microbatch_trims_shared_padding_and_keeps_values():
    """Rows 2–3 of the toy batch use columns 0..6 minus the right padding they share; trimming keeps every
    masked token and the micro-batch forward gives the same log-probs as the untrimmed rows."""
    from posttrain.stages.rl import _microbatch
    from posttrain.stages.rl_algos import forward_policy

    t = _batch()
    rows = torch.tensor([2, 5])  # both end at L − 2 → the last column is padding for both
    mb = _microbatch(t, rows, "token-mean")
    assert mb["span"] == (0, 5) and mb["input_ids"].shape == (2, 5)
    assert mb["num_units"] == float(t["completion_mask"][rows].sum()) and mb["num_examples"] == 2
    model = _Toy()
    full = {k: v[rows] for k, v in t.items()}
    a = forward_policy(model, mb, temperature=0.7)["logprobs"]
    b = forward_policy(model, full, temperature=0.7)["logprobs"][:, :5]
    torch.testing.assert_close(a * mb["completion_mask"], b * mb["completion_mask"], rtol=0, atol=1e-12)


def test_objective_detaches_advantages_and_value_targets():
    from posttrain.losses.kl import FixedKLController
    from posttrain.stages.rl import _microbatch

    c = cfg(algo="ppo", beta=0.1)
    obj = RLObjective(c, FixedKLController(0.1), constant_normaliser=None)
    t = _batch()
    mb = _microbatch(t, torch.arange(6), "token-mean")
    for k in ("advantages", "returns", "old_values", "old_logprobs", "ref_logprobs"):
        mb[k] = mb[k].clone().requires_grad_(True)
    model = _Toy(value=True)
    loss, metrics = obj(model, mb, mb["num_units"])
    loss.backward()
    for k in ("advantages", "returns", "old_values", "old_logprobs", "ref_logprobs"):
        assert mb[k].grad is None, k
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    for key in ("approx_kl", "clip_frac", "ratio_mean", "ratio_max", "entropy", "explained_variance",
                "value_loss"):
        assert key in metrics and torch.isfinite(metrics[key])


def test_select_groups_keeps_groups_with_signal_in_draw_order():
    """Groups (G = 2) of scores [0,0 | 1,0 | 1,1 | 0,1]: groups 1 and 3 have signal (their two rewards differ).
    keep=2 → rows of groups 1, 3 = [2, 3, 6, 7]; keep=3 → one group without signal fills in, the first drawn
    (group 0), and the rows stay in draw order: [0, 1, 2, 3, 6, 7]."""
    from posttrain.stages.rl_algos import select_groups

    scores = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    rows, m = select_groups(scores, 2, 2)
    assert rows.tolist() == [2, 3, 6, 7]
    assert m == {"groups_with_signal_frac": 0.5, "groups_without_signal_kept": 0.0}
    rows, m = select_groups(scores, 2, 3)
    assert rows.tolist() == [0, 1, 2, 3, 6, 7]
    assert m["groups_without_signal_kept"] == 1.0
    # a reward-model score that differs in the last float bit is signal; exactly equal scores are not
    next_up = float(torch.nextafter(torch.tensor(0.5), torch.tensor(1.0)))
    rows, _ = select_groups(torch.tensor([0.5, 0.5, 0.5, next_up]), 2, 1)
    assert rows.tolist() == [2, 3]
    with pytest.raises(ValueError, match="whole groups"):
        select_groups(scores, 2, 5)


def test_config_dynamic_sampling_draws_oversample_prompts():
    c = cfg(algo="grpo", group_size=4, prompts_per_step=6, dynamic_sampling=True, oversample=1.5)
    assert c.prompts_drawn == 9 and c.rollout_size == 24
    assert cfg(algo="grpo", group_size=4, prompts_per_step=6, oversample=3.0).prompts_drawn == 6  # off
    with pytest.raises(Exception, match="group_size >= 2"):
        cfg(algo="reinforce", group_size=1, dynamic_sampling=True)
