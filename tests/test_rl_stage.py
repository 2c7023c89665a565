"""`posttrain rl` on the tiny preset with a callable reward: one step of each algorithm, on-policy exactness,
sampler/trainer log-prob agreement, group layout, the KL penalty's measured effect, learning, and resume.

The reward used throughout is :func:`vowel_count` (number of vowels in the completion): a random-init tiny
model emits ~4 vowels in 8 tokens and can raise that quickly by preferring vowel-rich tokens.
Runs use ``num_threads=1`` (tiny matmuls; two threads only add synchronisation on a busy 2-core machine).
"""

import copy
import json

import pytest
import torch

from posttrain.config import RLConfig, load_config

HERE = __file__


def vowel_count(prompts, completions, **columns):
    return [float(sum(ch in "aeiou" for ch in c.lower())) for c in completions]


_calls = {"n": 0, "fail_at": None}


def flaky_vowel_count(prompts, completions, **columns):
    """vowel_count that raises on its ``fail_at``-th call (simulates a crash mid-run)."""
    _calls["n"] += 1
    if _calls["fail_at"] is not None and _calls["n"] == _calls["fail_at"]:
        raise KeyboardInterrupt("simulated crash")
    return vowel_count(prompts, completions)


@pytest.fixture
def prompts_file(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}], "answer": str(a + b)}
            for a in range(6) for b in range(6)]
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _cfg(prompts_file, out, *extra) -> RLConfig:
    return load_config(RLConfig, None, [
        "model=preset:tiny", f"data.train={prompts_file}", f"output_dir={out}", "max_steps=1", "lr=1e-2",
        "generation.max_new_tokens=8", "prompts_per_step=2", "group_size=4", "batch_size=4", "progress=false",
        "sample_every=0", "num_threads=1", *extra])


def _loop(cfg, reward=vowel_count):
    from posttrain.engine import Run
    from posttrain.stages.rl import RLTrainer, load

    ld = load(cfg, reward=reward)
    return RLTrainer(cfg, Run.open(cfg, "rl"), ld.policy, ld.tokenizer, ld.prompts, ld.reward, ref_model=ld.ref,
                     value_model=ld.value), ld


def _metrics(out):
    return [json.loads(line) for line in open(f"{out}/metrics.jsonl")]


def _initial_weights():
    from posttrain.models.presets import build_preset

    return {k: v.clone() for k, v in build_preset("tiny")[0].state_dict().items()}


def _final_weights(out):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(f"{out}/model").state_dict()


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_one_step_trains_and_logs(prompts_file, tmp_path, algo):
    from posttrain.stages.rl import run

    out = tmp_path / "run"
    summary = run(_cfg(prompts_file, out, f"algo={algo}", "sample_every=1"), reward=vowel_count)
    (rec,) = _metrics(out)
    assert rec["step"] == 1 and rec["rl_step"] == 1
    for key in ("loss", "grad_norm", "approx_kl", "clip_frac", "ratio_mean", "ratio_max", "entropy", "kl",
                "reward_mean", "reward_std", "response_length", "frac_finished", "beta",
                "reward/vowel_count", "time/generate_s", "time/train_s"):
        assert key in rec and rec[key] == rec[key], key  # present and not nan
    if algo == "ppo":
        assert -10 < rec["explained_variance"] <= 1 and rec["value_loss"] > 0
    assert abs(rec["loss"]) < 1e3 and rec["grad_norm"] > 0
    # the first rollout's policy IS the reference (KL from the sampler's log-probs: 0 up to ~1e-6)
    assert abs(rec["kl"]) < 1e-5
    w0, w1 = _initial_weights(), _final_weights(out)
    changed = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert len(changed) >= len(w0) // 2, changed
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert len(samples) == 2 and samples[0]["prompt"].startswith("<|im_start|>user\nWhat is")
    assert (out / "DONE").is_file() and summary["algo"] == algo and summary["steps"] == 1


def test_ppo_trains_the_value_model_too(prompts_file, tmp_path):
    loop, ld = _loop(_cfg(prompts_file, tmp_path / "run", "algo=ppo", "max_steps=2"))
    v0 = copy.deepcopy(ld.value.state_dict())
    loop.fit()
    changed = [k for k, v in ld.value.state_dict().items() if not torch.equal(v, v0[k])]
    assert "score.weight" in changed and len(changed) > len(v0) // 2
    # value and policy are separate networks (no shared tensors)
    assert not {p.data_ptr() for p in ld.value.parameters()} & {p.data_ptr() for p in ld.policy.parameters()}


@pytest.mark.parametrize("algo,extra", [("ppo", ()), ("grpo", ("minibatch_size=4",)),
                                        ("grpo", ("policy_loss=gspo",)), ("grpo", ("policy_loss=cispo",
                                                                                   "clip_eps_high=0.3"))])
def test_first_minibatch_is_exactly_on_policy(prompts_file, tmp_path, algo, extra):
    """The first update's ratio π_θ/π_θold is exactly 1 (old log-probs come from the same forward code over
    the same micro-batches), so nothing is clipped; later minibatches of the same rollout are off-policy."""
    from posttrain.stages.rl import run

    out = tmp_path / "run"
    run(_cfg(prompts_file, out, f"algo={algo}", "max_steps=2", *extra), reward=vowel_count)
    recs = [r for r in _metrics(out)]
    for rec in recs:
        assert rec["first_ratio_max"] == 1.0 and rec["first_clip_frac"] == 0.0
    if "minibatch_size=4" in extra:  # 2 minibatches per step: the second one sees an updated policy
        assert recs[0]["ratio_max"] > 1.0 and recs[0]["step"] == 2
    else:
        assert recs[0]["ratio_mean"] == 1.0 and recs[0]["approx_kl"] == 0.0


def test_old_logprobs_equal_a_full_forward_at_the_sampling_temperature(prompts_file, tmp_path):
    """Old log-probs (rollout forward over left-padded micro-batches) equal (a) the sampler's own
    temperature-scaled log-probs and (b) a forward of each row alone without padding, within 1e-5 — at
    T = 0.7 with top-k 50 (importance ratios use the unfiltered temperature-scaled policy). Also checks the
    group layout (row i ↔ prompt i // G), the masks (no prompt token, the stop token included) and KL = 0."""
    from posttrain.models.logprobs import sequence_logprobs

    cfg = _cfg(prompts_file, tmp_path / "run", "algo=grpo", "prompts_per_step=3", "generation.temperature=0.7",
               "generation.top_k=50", "generation.max_new_tokens=24", "batch_size=4", "recompute_logprobs=true")
    loop, ld = _loop(cfg)
    # Make rows stop early, but not all: the final hidden states of this random model share a large mean
    # direction u, so w_stop = 2.5·u/|u|² gives <|im_end|> a logit ≈ 2.5 (p ≈ 5% per token at T = 0.7).
    im_end = ld.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        ids = torch.tensor([ld.prompts.ids[0]])
        u = ld.policy.model(input_ids=ids).last_hidden_state[0].mean(0)
        ld.policy.lm_head.weight[im_end] = 2.5 * u / u.norm() ** 2
        ld.ref.lm_head.weight.copy_(ld.policy.lm_head.weight)
    b = loop.rollout(0)
    t = b.tensors
    mask = t["completion_mask"].bool()
    assert b.metrics["sampler_logprob_max_diff"] < 1e-5
    assert 0 < int(b.finished.sum()) < len(b), "need both finished and cut-off rows"
    assert (t["attention_mask"] == 0).any(), "need left/right padding"
    worst = 0.0
    for r in range(len(b)):
        real = t["attention_mask"][r].bool()
        ids = t["input_ids"][r][real][None]
        alone = sequence_logprobs(ld.policy, ids, torch.ones_like(ids), temperature=0.7)["logprobs"][0]
        got = t["old_logprobs"][r][real]
        m = mask[r][real]
        worst = max(worst, float((alone - got)[m].abs().max().detach()))
        # masks: the completion follows the prompt; the last masked token is a stop token iff finished
        P = int(real.sum()) - int(m.sum())
        assert not m[:P].any() and m[P:].all()
        last = int(ids[0, -1])
        assert (last in loop.stop_ids) == bool(b.finished[r])
    assert worst < 1e-5
    G = cfg.group_size
    idx = loop.sampler.rank_indices(0)
    assert b.prompt_index == [i for i in idx for _ in range(G)]
    prompt_part = t["input_ids"][:, : int(t["input_ids"].shape[1] - mask.sum(1).max())]
    for r in range(len(b)):
        assert torch.equal(prompt_part[r], prompt_part[(r // G) * G])
    torch.testing.assert_close(t["ref_logprobs"], t["old_logprobs"], rtol=0, atol=0)
    assert b.metrics["kl"] == 0.0
    assert t["advantages"].shape == (len(b),) and not t["advantages"].requires_grad


def test_skipping_the_old_logprob_forward_changes_nothing(prompts_file, tmp_path):
    """One on-policy update per rollout: π_old = sg(π_θ) in the loss gives bit-identical training to a
    recomputed old-log-prob forward (GRPO with the KL in the loss: advantages depend on scores only)."""
    from posttrain.stages.rl import run

    for flag in ("true", "false"):
        run(_cfg(prompts_file, tmp_path / flag, "algo=grpo", "max_steps=3", f"recompute_logprobs={flag}"),
            reward=vowel_count)
    wa, wb = _final_weights(tmp_path / "true"), _final_weights(tmp_path / "false")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = _metrics(tmp_path / "true"), _metrics(tmp_path / "false")
    assert [m["loss"] for m in ma] == [m["loss"] for m in mb]
    assert all(m["sampler_logprob_max_diff"] < 1e-5 for m in ma) and "sampler_logprob_max_diff" not in mb[0]


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce", "ppo"])
def test_reward_goes_up(prompts_file, tmp_path, algo):
    """16 steps × 16 completions × 8 tokens raise the vowel count measurably (it starts near 4-5)."""
    from posttrain.stages.rl import run

    out = tmp_path / "run"
    run(_cfg(prompts_file, out, f"algo={algo}", "max_steps=16", "beta=0.01", "prompts_per_step=4",
             "batch_size=8"), reward=vowel_count)
    r = [m["reward_mean"] for m in _metrics(out)]
    first, last = sum(r[:3]) / 3, sum(r[-3:]) / 3
    assert last > first + 1.5, (first, last)


@pytest.mark.parametrize("algo,extra", [("rloo", ()), ("grpo", ())])
def test_kl_penalty_keeps_the_policy_closer_to_the_reference(prompts_file, tmp_path, algo, extra):
    """Same seeds and rewards; β = 0 lets KL(π‖π_ref) grow several times more than β = 1
    (rloo: KL in the reward; grpo: k3 KL as a loss term). Measured here (seeds 0/1/2, mean of the last 5
    steps): rloo 12.1/5.1/11.8 vs 1.9/2.2/1.8; grpo 7.1/16.3/6.4 vs 1.0/0.6/1.2."""
    from posttrain.stages.rl import run

    kls = {}
    for beta in (0.0, 1.0):
        out = tmp_path / f"b{beta}"
        run(_cfg(prompts_file, out, f"algo={algo}", "max_steps=15", f"beta={beta}", "prompts_per_step=4",
                 "batch_size=8", *extra), reward=vowel_count)
        kls[beta] = sum(m["kl"] for m in _metrics(out)[-5:]) / 5  # k1 per completion, last 5 steps
    assert kls[0.0] > 2 * kls[1.0] and kls[1.0] >= 0, kls


def test_adaptive_kl_controller_moves_beta_and_is_checkpointed(prompts_file, tmp_path):
    """kl_target far below the measured KL → β grows every step (Ziegler et al. 2019: ×(1 + 0.2·N/horizon))."""
    from posttrain.stages.rl import run

    out = tmp_path / "run"
    run(_cfg(prompts_file, out, "algo=rloo", "max_steps=4", "beta=0.1", "kl_target=0.001", "kl_horizon=80",
             "checkpoint_every=2"), reward=vowel_count)
    betas = [m["beta"] for m in _metrics(out)]
    # step 1: KL = 0 (policy = reference) → e = −0.2 → β·(1 − 0.02); then KL ≫ target → e = +0.2
    up, down = 1 + 0.2 * 8 / 80, 1 - 0.2 * 8 / 80
    assert betas == pytest.approx([0.1, 0.1 * down, 0.1 * down * up, 0.1 * down * up * up], rel=1e-12)
    state = torch.load(out / "checkpoints" / "step-4" / "state.pt", weights_only=False)
    assert state["extra"]["kl_controller"]["beta"] == pytest.approx(betas[-1] * up, rel=1e-12)


def test_resume_reproduces_the_uninterrupted_run(prompts_file, tmp_path):
    """4 steps uninterrupted vs a run that crashes during step 3 and is resumed from its step-2 checkpoint
    (weights, optimizer, RNGs, KL controller, sampling generator): identical final weights and metrics."""
    from posttrain.stages.rl import run

    extra = ("algo=ppo", "max_steps=4", "checkpoint_every=2", "kl_target=0.5", "minibatch_size=4")
    a, b = tmp_path / "a", tmp_path / "b"
    run(_cfg(prompts_file, a, *extra), reward=vowel_count)
    _calls.update(n=0, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(prompts_file, b, *extra), reward=flaky_vowel_count)
    assert (b / "checkpoints" / "step-4").is_dir() and not (b / "DONE").exists()  # 2 updates per step
    _calls.update(n=0, fail_at=None)
    summary = run(_cfg(prompts_file, b, *extra), reward=flaky_vowel_count)
    assert summary["resumed_from"] == 4
    wa, wb = _final_weights(a), _final_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = _metrics(a), _metrics(b)
    assert [m["step"] for m in mb] == [2, 4, 6, 8]
    for x, y in zip(ma, mb):
        assert x["reward_mean"] == y["reward_mean"] and x["beta"] == y["beta"] and x["loss"] == y["loss"]


def odd_sums_only(prompts, completions, *, answer, **columns):
    """vowel_count on prompts whose answer is odd; 1.0 for every completion of the others (no signal)."""
    return [float(sum(ch in "aeiou" for ch in c.lower())) if int(a) % 2 else 1.0
            for c, a in zip(completions, answer)]


def test_dynamic_sampling_trains_on_groups_with_signal(prompts_file, tmp_path):
    """dynamic_sampling, oversample 4: 8 prompts drawn per step, the 2 kept are groups whose rewards differ —
    never an even-sum prompt (all its rewards are 1.0) while enough odd-sum groups had signal; the batch size
    is fixed; the drawn prompts are the step's sampler positions; the logged reward covers the kept rows."""
    cfg = _cfg(prompts_file, tmp_path / "run", "dynamic_sampling=true", "oversample=4", "beta=0.01")
    trainer, ld = _loop(cfg, reward=odd_sums_only)
    drawn = trainer.sampler.rank_indices(0)
    assert len(drawn) == 8
    batch = trainer.rollout(0)
    assert len(batch) == 8 and batch.tensors["input_ids"].shape[0] == 8
    groups = [batch.prompt_index[i] for i in range(0, 8, 4)]
    assert set(groups) <= set(drawn) and groups == sorted(groups, key=drawn.index)  # draw order
    by_group = batch.scores.view(2, 4)
    signal = (by_group.amax(1) > by_group.amin(1)).tolist()
    n_drawn_signal = round(batch.metrics["groups_with_signal_frac"] * 8)
    assert sum(signal) == min(2, n_drawn_signal) and n_drawn_signal >= 1
    assert all(s or n_drawn_signal < 2 for s in signal)  # a filler only when too few groups had signal
    even = [i for i in drawn if int(ld.prompts.columns[i]["answer"]) % 2 == 0]
    assert even and n_drawn_signal >= 2 and not set(even) & set(groups)  # this draw filters something out
    assert batch.metrics["reward_mean"] == pytest.approx(float(batch.scores.mean()), rel=1e-12)
    assert "reward_mean_drawn" in batch.metrics
    upd = trainer.update(batch, 0)
    assert torch.isfinite(torch.tensor(upd["loss"]))


def test_cli_rl_with_a_callable_reward_file(prompts_file, tmp_path):
    from posttrain.cli import main

    out = tmp_path / "cli"
    rc = main(["rl", "--algo", "rloo", "model=preset:tiny", f"data.train={prompts_file}", f"output_dir={out}",
               "max_steps=1", "generation.max_new_tokens=4", "prompts_per_step=2", "group_size=2",
               f"reward=callable:{HERE}:vowel_count", "progress=false", "num_threads=1"])
    assert rc == 0 and (out / "model" / "config.json").is_file() and (out / "DONE").is_file()


@pytest.mark.parametrize("rows,message", [
    ([{"prompt": "hi", "answer": "1"}, {"prompt": 3, "answer": "2"}],
     "prompts.jsonl:2: column 'prompt' must be text or a list of messages, got int"),
    ([{"text": "no prompt here"}], "no rows of"),
])
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys, rows, message):
    from posttrain.cli import main

    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "never"
    rc = main(["rl", "model=preset:tiny", f"data.train={p}", f"output_dir={out}", "reward=gold"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_policy_loss_settings_are_config_errors(prompts_file, tmp_path, capsys):
    from posttrain.cli import main

    out = tmp_path / "never"
    rc = main(["rl", "model=preset:tiny", f"data.train={prompts_file}", f"output_dir={out}",
               "policy_loss=cispo", f"reward=callable:{HERE}:vowel_count"])
    assert rc == 2 and "policy_loss=cispo needs key 'clip_eps_high'" in capsys.readouterr().err
    assert not out.exists()


def test_policy_with_value_passes_logits_to_keep_to_the_policy():
    """PPO's policy + value module: ``logits_to_keep = k`` gives the policy's last ``k`` positions of logits
    (equal to the full forward's, float64 1e-12) and the value model's values at every position."""
    from posttrain.models.presets import build_preset
    from posttrain.stages.rl import PolicyWithValue

    policy = build_preset("tiny", seed=1)[0].double()
    value = build_preset("tiny", seed=2)[0].double()
    both = PolicyWithValue(policy, value)
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    full, part = both(ids, am), both(ids, am, logits_to_keep=4)
    assert part.logits.shape[1] == 4 and full.logits.shape[1] == 9 and part.token_values.shape == (2, 9)
    torch.testing.assert_close(part.logits, full.logits[:, -4:], rtol=0, atol=1e-12)
    torch.testing.assert_close(part.token_values, full.token_values, rtol=0, atol=0)
