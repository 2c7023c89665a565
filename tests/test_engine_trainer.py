"""Trainer: global normalisation over accumulation, exact resume, divergence detection, eval loss, metrics."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.engine import Run, StepSampler, Trainer
from posttrain.errors import TrainingDiverged
from posttrain.io import read_jsonl
from posttrain.losses.reduce import num_units
from test_engine_utils import clone, collate, lm_loss, ragged_examples, stage_cfg, state, tiny_llama


def _train(tmp_path, model, examples, *, loss_fn=lm_loss, make=None, **kw):
    cfg = stage_cfg(tmp_path, **kw)
    run = Run.open(cfg, "test")
    trainer = Trainer(cfg, run, model)
    sampler = StepSampler.from_config(cfg, len(examples))
    summary = trainer.fit(sampler, make or (lambda ix: collate(examples, ix)), loss_fn)
    return trainer, summary


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_batch8_equals_batch2_times_accumulation4(tmp_path):
    """Ragged completion lengths (1..12 tokens) make per-micro-batch token means differ from the global
    mean; the global normaliser makes 8×1 and 2×4 give the same gradients, hence the same weights after
    3 AdamW steps (float64, |Δ| < 1e-12). Dropping ``num_units`` (per-micro-batch means, averaged)
    changes the result by orders of magnitude more."""
    ex = ragged_examples(24)
    base = tiny_llama(0)
    init = state(base)
    a, b, c = clone(base), clone(base), clone(base)
    ta, sa = _train(tmp_path / "a", a, ex, batch_size=8, grad_accum=1)
    tb, sb = _train(tmp_path / "b", b, ex, batch_size=2, grad_accum=4)
    sa_, sb_ = state(a), state(b)
    assert _max_diff(sa_, sb_) < 1e-12
    assert _max_diff(sa_, init) > 1e-3  # the weights did move
    assert sa["final_loss"] == pytest.approx(sb["final_loss"], rel=1e-12)
    # per-micro-batch means (no global normaliser) give a different update
    no_units = lambda ix: {k: v for k, v in collate(ex, ix).items() if k != "num_units"}  # noqa: E731
    _train(tmp_path / "c", c, ex, batch_size=2, grad_accum=4, make=no_units)
    assert _max_diff(state(c), sa_) > 1e6 * max(_max_diff(sa_, sb_), 1e-18)


def test_logged_loss_is_global_token_mean(tmp_path):
    """The step loss logged equals the token-mean NLL over all 8 examples computed in one batch."""
    ex = ragged_examples(8)
    model = tiny_llama(1)
    ref = clone(model)
    full = collate(ex, list(range(8)))
    with torch.no_grad():
        expected, _ = lm_loss(ref, full, None)
    cfg = stage_cfg(tmp_path, batch_size=2, grad_accum=4, max_steps=1)
    run = Run.open(cfg, "test")
    tr = Trainer(cfg, run, model)
    m = tr.step([collate(ex, [0, 1]), collate(ex, [2, 3]), collate(ex, [4, 5]), collate(ex, [6, 7])], lm_loss)
    assert m["loss"] == pytest.approx(float(expected), rel=1e-12)
    # nll (a mean metric) is unit-weighted, so it also equals the global mean; num_tokens is summed
    assert m["nll"] == pytest.approx(float(expected), rel=1e-12)
    assert m["num_tokens"] == float(full["loss_mask"].sum()) == m["num_units"]
    assert m["nll_sum"] == pytest.approx(float(expected) * m["num_tokens"], rel=1e-12)
    assert m["tokens"] == int(full["attention_mask"].sum()) and m["examples"] == 8


def _crash_after(step_to_crash):
    calls = {"n": 0}

    class Crash(RuntimeError):
        pass

    def loss_fn(model, batch, normaliser):
        calls["n"] += 1
        if calls["n"] == step_to_crash:
            raise Crash("simulated kill")
        return lm_loss(model, batch, normaliser)

    return loss_fn, Crash


def test_resume_is_exact_with_dropout(tmp_path):
    """Crash at step 5 of 6 (checkpoints every 2, keep 2), resume in a fresh Trainer from the *initial*
    weights: the final weights are bit-identical to an uninterrupted run (dropout is on, so the RNG state
    must be restored too) and metrics.jsonl holds steps 1..6 once each."""
    ex = ragged_examples(20)
    base = tiny_llama(2, dropout=0.2)
    kw = dict(max_steps=6, batch_size=4, grad_accum=2, checkpoint_every=2, keep_checkpoints=2)
    ref = clone(base)
    _train(tmp_path / "ref", ref, ex, **kw)

    crashy, Crash = _crash_after(5 * 2)  # the 5th step's first micro-batch (2 micro-batches per step)
    with pytest.raises(Crash):
        _train(tmp_path / "run", clone(base), ex, loss_fn=crashy, **kw)
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-4"]
    resumed = clone(base)
    tr, summary = _train(run_dir, resumed, ex, **kw)
    assert tr.resumed_from == 4 and summary["resumed_from"] == 4
    for k, v in state(ref).items():
        assert torch.equal(v, state(resumed)[k]), k
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    ref_losses = [r["loss"] for r in read_jsonl(tmp_path / "ref" / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r] == ref_losses
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-4", "step-6"]


class Counter:
    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, s):
        self.n = s["n"]


def test_extra_state_is_checkpointed(tmp_path):
    ex = ragged_examples(8)
    cfg = stage_cfg(tmp_path, max_steps=3, checkpoint_every=1)
    counter, gen, plain = Counter(), torch.Generator().manual_seed(7), {"beta": 0.1}
    tr = Trainer(cfg, Run.open(cfg, "test"), tiny_llama(0),
                 extra_state={"counter": counter, "gen": gen, "plain": plain})

    def on_step(step, m):
        counter.n += 10
        torch.rand(3, generator=gen)
        plain["beta"] = plain["beta"] * 2

    tr.fit(StepSampler.from_config(cfg, 8), lambda ix: collate(ex, ix), lm_loss, on_step=on_step)
    expected_draw = torch.rand(2, generator=gen)
    c2, g2, p2 = Counter(), torch.Generator(), {}
    tr2 = Trainer(cfg, Run.open(cfg, "test"), tiny_llama(0), extra_state={"counter": c2, "gen": g2, "plain": p2})
    assert tr2.step_count == 3 and c2.n == 30 and p2 == {"beta": pytest.approx(0.8)}
    assert torch.equal(torch.rand(2, generator=g2), expected_draw)


def test_nan_loss_raises_and_keeps_last_checkpoint(tmp_path):
    ex = ragged_examples(8)
    cfg = stage_cfg(tmp_path, max_steps=5, checkpoint_every=2, batch_size=4)
    model = tiny_llama(0)
    tr = Trainer(cfg, Run.open(cfg, "test"), model)
    calls = {"n": 0}

    def loss_fn(m, batch, normaliser):
        calls["n"] += 1
        loss, metrics = lm_loss(m, batch, normaliser)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    with pytest.raises(TrainingDiverged) as err:
        tr.fit(StepSampler.from_config(cfg, 8), lambda ix: collate(ex, ix), loss_fn)
    ckpt = tmp_path / "checkpoints" / "step-2"
    assert str(err.value) == f"step 3: loss is nan; last good checkpoint kept at {ckpt}"
    assert err.value.exit_code == 2
    saved = torch.load(ckpt / "weights.pt")
    for name, p in model.named_parameters():  # no update was applied at the diverged step
        assert torch.equal(p.detach(), saved[name])
    assert tr.step_count == 2


def test_inf_grad_norm_raises(tmp_path):
    ex = ragged_examples(4)
    cfg = stage_cfg(tmp_path, max_steps=2, batch_size=4)
    model = tiny_llama(0)
    before = state(model)
    model.lm_head.weight.register_hook(lambda g: g * float("inf"))
    tr = Trainer(cfg, Run.open(cfg, "test"), model)
    with pytest.raises(TrainingDiverged, match=r"^step 1: gradient norm is (inf|nan); no checkpoint was written"):
        tr.step([collate(ex, [0, 1, 2, 3])], lm_loss)
    assert _max_diff(state(model), before) == 0.0


def test_eval_loss_is_global_token_mean_for_any_batching(tmp_path):
    ex = ragged_examples(10)
    cfg = stage_cfg(tmp_path)
    model = tiny_llama(3)
    tr = Trainer(cfg, Run.open(cfg, "test"), model)
    with torch.no_grad():
        expected, _ = lm_loss(model, collate(ex, list(range(10))), None)
    for bs in (1, 3, 10):
        res = tr.eval_loss([collate(ex, list(range(i, min(i + bs, 10)))) for i in range(0, 10, bs)], lm_loss)
        assert res["loss"] == pytest.approx(float(expected), rel=1e-12)
        assert res["nll"] == pytest.approx(float(expected), rel=1e-12)
        assert res["num_units"] == float(sum(sum(e["loss_mask"]) for e in ex))


def test_metrics_records_and_eval_hook(tmp_path):
    ex = ragged_examples(16)
    cfg = stage_cfg(tmp_path, max_steps=4, batch_size=4, eval_every=2, log_every=2, peak_flops=1e9)
    tr = Trainer(cfg, Run.open(cfg, "test"), tiny_llama(0))
    evals = []

    def evaluate(model):
        assert not model.training
        evals.append(tr.step_count)
        return tr.eval_loss([collate(ex, [0, 1, 2, 3])], lm_loss)

    summary = tr.fit(StepSampler.from_config(cfg, 16), lambda ix: collate(ex, ix), lm_loss, evaluate=evaluate)
    assert evals == [2, 4]  # every 2 steps and at the end (not twice at step 4)
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == [2, 4]
    for key in ("lr", "grad_norm", "tokens_per_s", "examples_per_s", "mfu", "epoch", "nll", "num_tokens"):
        assert key in train[0]
    assert train[0]["epoch"] == pytest.approx(0.5) and train[1]["epoch"] == pytest.approx(1.0)
    assert 0 < train[0]["mfu"] and train[0]["tokens_per_s"] > 0
    # mfu = 6·N·tok/s / peak with the configured peak
    assert train[0]["mfu"] == pytest.approx(6 * tr._n_matmul * train[0]["tokens_per_s"] / 1e9, rel=1e-9)
    assert [r["step"] for r in recs if "eval/loss" in r] == [2, 4]
    assert summary["steps"] == 4 and "eval" in summary and summary["final_loss"] == train[-1]["loss"]
    json.dumps(summary)


def test_no_units_microbatches_are_averaged(tmp_path):
    """Without num_units each micro-batch loss is a mean, and the step loss is their average."""
    ex = ragged_examples(4)
    cfg = stage_cfg(tmp_path)
    tr = Trainer(cfg, Run.open(cfg, "test"), tiny_llama(4))
    b1, b2 = collate(ex, [0, 1]), collate(ex, [2, 3])
    with torch.no_grad():
        l1, _ = lm_loss(tr.module, b1, None)
        l2, _ = lm_loss(tr.module, b2, None)
    strip = lambda b: {k: v for k, v in b.items() if k != "num_units"}  # noqa: E731
    m = tr.step([strip(b1), strip(b2)], lm_loss)
    assert m["loss"] == pytest.approx(float(l1 + l2) / 2, rel=1e-12)
    assert "num_units" not in m and num_units(b1["loss_mask"], "token-mean") != num_units(b2["loss_mask"], "token-mean")


def test_tensorboard_events_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ex = ragged_examples(8)
    cfg = stage_cfg(tmp_path, max_steps=2, batch_size=4, tensorboard=True)
    tr = Trainer(cfg, Run.open(cfg, "test"), tiny_llama(0))
    tr.fit(StepSampler.from_config(cfg, 8), lambda ix: collate(ex, ix), lm_loss)
    tr.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    recs = [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert losses == pytest.approx(recs, rel=1e-6)


def test_compile_trains_the_same_weights(tmp_path):
    """``compile=true`` runs the loss through a torch.compile wrapper that shares the parameters: 3 AdamW
    steps on ragged float64 batches give the eager run's weights to |Δ| < 1e-5 against weight moves > 1e-3
    (measured 1.5e-6: HF's RMSNorm normalises in float32 even in a float64 model, the fused kernel rounds
    that float32 step differently, and AdamW's first steps, ≈ lr·sign(g) at lr 1e-2, amplify it), the saved
    state dict has the plain module's keys, and compilation really happened (dynamo built a graph)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ex = ragged_examples(16)
    base = tiny_llama(0)
    init = state(base)
    a, b = clone(base), clone(base)
    _, sa = _train(tmp_path / "eager", a, ex, batch_size=8)
    tb, sb = _train(tmp_path / "compiled", b, ex, batch_size=8, compile=True)
    assert tb.train_model is not tb.model and counters["stats"]["unique_graphs"] >= 1
    assert set(state(b)) == set(init)
    assert _max_diff(state(a), state(b)) < 1e-5 and _max_diff(state(a), init) > 1e-3
    assert sb["final_loss"] == pytest.approx(sa["final_loss"], rel=1e-6)


def _saved_bytes(model, batch) -> int:
    """Bytes of the tensors autograd saves for the backward of ``lm_loss`` on ``batch`` (activation memory)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = lm_loss(model, batch, None)
    loss.backward()
    return total[0]


def test_gradient_checkpointing_trains_the_same_weights_with_less_saved_activation(tmp_path):
    """``gradient_checkpointing=true``: 3 AdamW steps on ragged float64 batches give the same weights as without
    (|Δ| < 1e-12: the recomputed forward is the same arithmetic), while the tensors autograd keeps for the
    backward shrink — measured on a 4-layer model, 16 sequences of 64 tokens: 28.6 MB → 2.7 MB (the checkpointed
    layers keep only their inputs); a model without an HF module is a config error."""
    from posttrain.engine.trainer import enable_gradient_checkpointing
    from posttrain.errors import ConfigError

    ex = ragged_examples(16)
    base = tiny_llama(0)
    init = state(base)
    a, b = clone(base), clone(base)
    _train(tmp_path / "plain", a, ex, batch_size=8)
    tb, _ = _train(tmp_path / "ckpt", b, ex, batch_size=8, gradient_checkpointing=True)
    assert b.is_activation_checkpointing and not a.is_activation_checkpointing
    assert _max_diff(state(a), state(b)) < 1e-12 and _max_diff(state(a), init) > 1e-3

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    big = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False))
    ids = torch.randint(3, 64, (16, 64), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones(16, 64)}
    big.train()
    plain = _saved_bytes(big, batch)
    assert enable_gradient_checkpointing(big) == 1
    ckpt = _saved_bytes(big, batch)
    assert ckpt < 0.5 * plain, (plain, ckpt)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
