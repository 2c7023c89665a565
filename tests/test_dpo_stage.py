"""`posttrain dpo`: every registered loss trains, the reference is cached or computed on the fly with the
same result, identical pairs give log 2, DPO learns a synthetic preference, bad input exits 2 with one line.

The model is the ``tiny`` preset (~0.26M params, random init) saved to a folder once per module; the
data are small synthetic conversational preference sets written by the fixtures.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from posttrain.cli import main
from posttrain.config import DPOConfig
from posttrain.io import read_jsonl
from posttrain.losses import PREFERENCE_LOSSES
from posttrain.stages import dpo as dpo_stage

COLOURS = ["red", "blue", "green", "yellow", "black", "white"]


def _pref_rows(n: int, seed: int) -> list[dict]:
    """Chosen: an answer naming a colour; rejected: a refusal of similar length (a pattern a tiny model
    learns, with log-prob differences small enough that no hinge is satisfied at the start)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        c = rng.choice(COLOURS)
        rows.append({
            "prompt": [{"role": "user", "content": f"What colour is item {i}?"}],
            "chosen": [{"role": "assistant", "content": f"The item is {c}."}],
            "rejected": [{"role": "assistant", "content": "I do not know it."}],
        })
    return rows


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from posttrain.models.load import save_model
    from posttrain.models.presets import build_preset

    d = tmp_path_factory.mktemp("dpo")
    model, tok = build_preset("tiny")
    save_model(model, tok, d / "tiny")
    model2, _ = build_preset("tiny", tokenizer=tok, seed=1)
    save_model(model2, tok, d / "tiny_ref")
    rows = _pref_rows(40, 0)
    unpaired = [{"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}
                for r in rows for k in ("chosen", "rejected")]
    return {
        "dir": d, "model": str(d / "tiny"), "ref": str(d / "tiny_ref"),
        "train": _write(d / "train.jsonl", rows[:32]), "eval": _write(d / "eval.jsonl", rows[32:]),
        "kto": _write(d / "kto.jsonl", unpaired[:48]),
    }


def _cfg(world, out, **kw) -> DPOConfig:
    base = dict(model=world["model"], data={"train": world["train"], "max_len": 48, "max_prompt_len": 24},
                output_dir=str(out), max_steps=2, batch_size=4, lr=1e-3, progress=False, sample_prompts=0,
                lr_schedule="constant")
    base.update(kw)
    return DPOConfig(**base)


def _weights(path) -> dict[str, torch.Tensor]:
    """Weights of a model folder or of a run directory's model/."""
    f = path / "model.safetensors"
    return load_file(str(f if f.is_file() else path / "model" / "model.safetensors"))


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_one_step_per_registered_loss(world, tmp_path, monkeypatch, name):
    """Each loss in the registry: 2 steps finish with a finite loss and move the weights; losses that are
    reference-free never load a reference (and cache nothing), the others load exactly one."""
    calls = []
    real = dpo_stage._load_reference
    monkeypatch.setattr(dpo_stage, "_load_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = PREFERENCE_LOSSES[name]
    data = {"train": world["train"] if spec.paired else world["kto"], "max_len": 48, "max_prompt_len": 24}
    out = tmp_path / name
    summary = dpo_stage.run(_cfg(world, out, loss=name, data=data))
    assert math.isfinite(summary["final_loss"])
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert len(recs) == 2 and all(math.isfinite(r["loss"]) for r in recs)
    assert {"rewards/chosen", "rewards/rejected", "margin", "lengths/chosen", "lengths/rejected"} <= set(recs[0])
    init, final = _weights(world["dir"] / "tiny"), _weights(out)
    moved = max(float((init[k] - final[k]).abs().max()) for k in init)
    assert moved > 1e-4
    assert len(calls) == (1 if spec.needs_reference else 0)
    assert summary["needs_reference"] is spec.needs_reference
    assert (out / "ref_logps").is_dir() is spec.needs_reference
    if spec.needs_reference:
        assert "kl" in recs[0]
    assert (out / "DONE").is_file()


def test_identical_chosen_and_rejected_give_log2_through_the_stage_batching(world):
    """With chosen == rejected the two log-ratios are equal whatever the policy and reference, so the DPO
    loss is −log σ(0) = log 2 exactly — here with a reference that DIFFERS from the policy (so the
    log-ratios themselves are far from 0), through the stage's batcher and objective, cached and on the fly.
    A real pair through the same path gives a loss ≠ log 2 (the check has teeth)."""
    from posttrain.data.tokenize import encode_dataset
    from posttrain.models.load import load_causal_lm

    policy, tok = load_causal_lm(world["model"], device="cpu", dtype="fp64")
    ref, _ = load_causal_lm(world["ref"], device="cpu", dtype="fp64")
    rows = _pref_rows(6, 3)
    same = [dict(r, rejected=r["chosen"]) for r in rows]
    enc_same = encode_dataset(tok, same, "preference", max_len=48, max_prompt_len=24).examples
    enc_real = encode_dataset(tok, rows, "preference", max_len=48, max_prompt_len=24).examples
    spec = PREFERENCE_LOSSES["dpo"]
    obj = dpo_stage.PreferenceObjective(spec, 0.1, ref_model=ref)
    idx = list(range(6))
    with torch.no_grad():
        b = dpo_stage.PreferenceBatcher(enc_same, tok.pad_token_id, True, 48)(idx)
        assert b["input_ids"].shape[0] == 12 and b["num_units"] == 6
        loss, m = obj(policy, b, b["num_units"])
        assert float(loss) == pytest.approx(math.log(2), rel=1e-12)
        pl, _ = dpo_stage._sequence_logps(policy, b)
        rl, _ = dpo_stage._sequence_logps(ref, b)
        assert float((pl - rl).abs().min()) > 1e-2  # policy and reference really differ on every row
        cached = dpo_stage.reference_logps(ref, enc_same, paired=True, pad_id=tok.pad_token_id, batch_size=5)
        b2 = dpo_stage.PreferenceBatcher(enc_same, tok.pad_token_id, True, 48, cached)(idx)
        loss2, _ = dpo_stage.PreferenceObjective(spec, 0.1)(policy, b2, b2["num_units"])
        assert float(loss2) == pytest.approx(math.log(2), rel=1e-12)
        b3 = dpo_stage.PreferenceBatcher(enc_real, tok.pad_token_id, True, 48)(idx)
        loss3, _ = obj(policy, b3, b3["num_units"])
        assert abs(float(loss3) - math.log(2)) > 1e-3


def test_cached_reference_logps_equal_on_the_fly(world):
    """The precomputed reference log-probs (length-sorted batches of 5) equal the per-batch on-the-fly ones
    (the training batch layout) within float32 rounding, and sum the completion tokens only."""
    from posttrain.data.tokenize import encode_dataset
    from posttrain.models.load import load_causal_lm
    from posttrain.models.logprobs import sequence_logprobs

    ref, tok = load_causal_lm(world["ref"], device="cpu", dtype="fp32")
    enc = encode_dataset(tok, _pref_rows(7, 5), "preference", max_len=48, max_prompt_len=24).examples
    cached = dpo_stage.reference_logps(ref, enc, paired=True, pad_id=tok.pad_token_id, batch_size=5)
    assert cached.shape == (7, 2)
    for i, e in enumerate(enc):
        for j, s in enumerate((e.chosen, e.rejected)):
            ids = torch.tensor([s.input_ids])
            with torch.no_grad():
                lp = sequence_logprobs(ref, ids, torch.ones_like(ids))["logprobs"][0]
            expect = float((lp * torch.tensor(s.loss_mask, dtype=lp.dtype)).sum())
            assert float(cached[i, j]) == pytest.approx(expect, abs=2e-5)


def test_cached_and_on_the_fly_training_give_the_same_weights(world, tmp_path):
    """precompute_ref=true (cache) and false (reference forward every batch) train to the same weights:
    the difference is float32 rounding (< 1e-5), far below how far the weights moved (> 3e-3; measured: 0.0 here, bit-identical)."""
    a = tmp_path / "cached"
    b = tmp_path / "fly"
    sa = dpo_stage.run(_cfg(world, a, max_steps=6, precompute_ref=True))
    sb = dpo_stage.run(_cfg(world, b, max_steps=6, precompute_ref=False))
    assert sa["reference"]["precomputed"] and not sb["reference"]["precomputed"]
    assert list((a / "ref_logps").iterdir()) and not (b / "ref_logps").exists()
    wa, wb, w0 = _weights(a), _weights(b), _weights(world["dir"] / "tiny")
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    moved = max(float((wa[k] - w0[k]).abs().max()) for k in wa)
    assert diff < 1e-5 and moved > 3e-3, (diff, moved)
    la = [r["loss"] for r in read_jsonl(a / "metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in read_jsonl(b / "metrics.jsonl") if "loss" in r]
    assert la == pytest.approx(lb, abs=1e-5)


def test_reference_cache_is_reused_on_resume_and_restart(world, tmp_path, monkeypatch):
    """A run that dies after precomputing leaves the cache; resuming it (same config: the directory is
    continued) and restarting it (another config, no checkpoint: the directory is cleared) both reuse the
    cached log-probs instead of recomputing them; another reference model gets another key."""
    from posttrain.engine import Trainer

    real_fit = Trainer.fit

    def crash(out, **kw):
        def boom(self, *a, **k):
            raise RuntimeError("killed")

        monkeypatch.setattr(Trainer, "fit", boom)
        with pytest.raises(RuntimeError, match="killed"):
            dpo_stage.run(_cfg(world, out, **kw))
        monkeypatch.setattr(Trainer, "fit", real_fit)
        files = [f.name for f in (out / "ref_logps").iterdir()]
        assert len(files) == 1 and files[0].startswith("train-")
        return files

    computed = []
    real_ref = dpo_stage.reference_logps
    monkeypatch.setattr(dpo_stage, "reference_logps", lambda *a, **k: computed.append(1) or real_ref(*a, **k))
    a, b = tmp_path / "resume", tmp_path / "restart"
    files = crash(a)
    assert computed == [1]
    s = dpo_stage.run(_cfg(world, a))                       # same config: continued
    assert s["reference"]["cache_hits"] == ["train"] and computed == [1] and s["steps"] == 2
    crash(b)
    s = dpo_stage.run(_cfg(world, b, checkpoint_every=1))   # another config: cleared, cache written back
    assert s["reference"]["cache_hits"] == ["train"] and computed == [1, 1]
    assert [f.name for f in (b / "ref_logps").iterdir()] == files
    s = dpo_stage.run(_cfg(world, tmp_path / "other", ref_model=world["ref"]))
    assert s["reference"]["cache_hits"] == [] and computed == [1, 1, 1]


@pytest.mark.parametrize("share_prompt", [False, "auto"])
def test_dpo_raises_preference_accuracy_and_margin(world, tmp_path, share_prompt, monkeypatch):
    """30 DPO steps on 32 synthetic pairs: the first step's loss is log 2 (policy = reference: every margin
    is 0); at the end the held-out pairs are ranked correctly with a clear margin. Unpacked, the first step's
    margins are exactly 0 and accuracy exactly ½ (ties count ½); packed (the default here), the policy's
    log-probs come from another layout than the precomputed reference's, so margins are float rounding
    (|margin| < 1e-5) and the first accuracy is noise around ½."""
    packed = []
    original = dpo_stage.shared_prompt_batch
    monkeypatch.setattr(dpo_stage, "shared_prompt_batch", lambda *a, **k: (packed.append(1), original(*a, **k))[1])
    out = tmp_path / "learn"
    data = {"train": world["train"], "eval": world["eval"], "max_len": 48, "max_prompt_len": 24}
    s = dpo_stage.run(_cfg(world, out, max_steps=30, data=data, lr=5e-4, beta=0.1, share_prompt=share_prompt))
    assert (len(packed) >= 30) is (share_prompt == "auto")  # auto packs these batches (prompts ~ completions)
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert recs[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    if share_prompt is False:
        assert recs[0]["accuracy"] == 0.5 and recs[0]["margin"] == 0.0
    else:
        assert abs(recs[0]["margin"]) < 1e-5
    ev = s["eval"]
    assert ev["accuracy"] == 1.0 and ev["margin"] > 1.0
    assert ev["loss"] < 0.3
    assert ev["rewards/chosen"] > ev["rewards/rejected"]


def test_ranking_to_pairs_by_hand():
    r = {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}  # c > a > b
    pairs = lambda mode: [(x["chosen"], x["rejected"]) for x in dpo_stage.ranking_to_pairs([r], mode)]  # noqa: E731
    assert pairs("all") == [("c", "a"), ("c", "b"), ("a", "b")]
    assert pairs("best_rest") == [("c", "a"), ("c", "b")]
    assert pairs("best_worst") == [("c", "b")]
    with pytest.raises(ValueError, match="unknown mode"):
        dpo_stage.ranking_to_pairs([r], "worst")


def test_rankings_of_two_train_exactly_like_their_pairs(world, tmp_path):
    """Each pair written as a K = 2 ranking (completions [rejected, chosen], ranking [1, 0]) gives the same
    training examples and bit-identical weights after 3 steps; a K = 3 ranking file yields 3 pairs per row
    with ranking_pairs=all and 1 with best_worst."""
    rows = _pref_rows(32, 0)
    ranked = [{"prompt": r["prompt"], "completions": [r["rejected"], r["chosen"]], "ranking": [1, 0]} for r in rows]
    rank_file = _write(tmp_path / "ranked.jsonl", ranked)
    data = lambda f: {"train": f, "max_len": 48, "max_prompt_len": 24}  # noqa: E731
    a = dpo_stage.run(_cfg(world, tmp_path / "pairs", max_steps=3))
    b = dpo_stage.run(_cfg(world, tmp_path / "ranked", max_steps=3, data=data(rank_file)))
    assert a["train_examples"] == b["train_examples"] == 32
    wa, wb = _weights(tmp_path / "pairs"), _weights(tmp_path / "ranked")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    no = [{"role": "assistant", "content": "No."}]
    three = [{"prompt": r["prompt"], "completions": [r["rejected"], r["chosen"], no], "ranking": [1, 0, 2]}
             for r in rows[:8]]
    f3 = _write(tmp_path / "three.jsonl", three)
    s_all = dpo_stage.run(_cfg(world, tmp_path / "all", max_steps=1, data=data(f3)))
    s_bw = dpo_stage.run(_cfg(world, tmp_path / "bw", max_steps=1, data=data(f3), ranking_pairs="best_worst"))
    assert (s_all["train_examples"], s_bw["train_examples"]) == (24, 8)


def test_kto_batches_pair_each_prompt_with_the_next_completion(world):
    """KTO batch: rows 0..B-1 are the labelled examples, row B+k is prompt k + completion k+1 (mod B)."""
    from posttrain.data.tokenize import encode_dataset
    from posttrain.models.load import load_tokenizer

    tok = load_tokenizer(world["model"])
    rows = [json.loads(line) for line in open(world["kto"])][:3]
    enc = encode_dataset(tok, rows, "unpaired", max_len=48, max_prompt_len=24).examples
    b = dpo_stage.PreferenceBatcher(enc, tok.pad_token_id, False, 48)([0, 1, 2])
    assert b["input_ids"].shape[0] == 6 and b["labels"].tolist() == [r["label"] for r in rows]
    for k in range(3):
        p, c = enc[k].example, enc[(k + 1) % 3].example
        expect = p.input_ids[:p.prompt_len] + c.input_ids[c.prompt_len:]
        n = len(expect)
        assert b["input_ids"][3 + k, :n].tolist() == expect
        assert b["loss_mask"][3 + k, :n].tolist() == [0] * p.prompt_len + [1] * (n - p.prompt_len)
        assert b["attention_mask"][3 + k].sum() == n


def test_loss_settings_map_config_to_variant_kwargs():
    assert dpo_stage.loss_settings(DPOConfig(loss="simpo")) == (2.0, {"gamma": 0.5})
    assert dpo_stage.loss_settings(DPOConfig(loss="cdpo", beta=0.3, label_smoothing=0.2)) == (
        0.3, {"label_smoothing": 0.2})
    assert dpo_stage.loss_settings(DPOConfig(loss="ipo", ipo_length_average=False)) == (
        0.1, {"length_average": False})
    assert dpo_stage.loss_settings(DPOConfig(loss="kto", kto_undesirable_weight=1.5)) == (
        0.1, {"desirable_weight": 1.0, "undesirable_weight": 1.5})


# ------------------------------------------------------------------------------------ user errors
def _cli(capsys, args) -> tuple[int, str]:
    rc = main(args)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case,expected", [
    ("identical", ":3: 'chosen' and 'rejected' are identical"),
    ("missing", ":2: column 'rejected' is missing"),
])
def test_bad_data_exits_2_with_one_line_and_no_output_dir(world, tmp_path, capsys, case, expected):
    rows = _pref_rows(4, 1)
    if case == "identical":
        rows[2]["rejected"] = rows[2]["chosen"]
    else:
        del rows[1]["rejected"]
    bad = _write(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    rc, err = _cli(capsys, ["dpo", f"model={world['model']}", f"data.train={bad}", f"output_dir={out}",
                            "progress=false"])
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert expected in err and str(bad) in err
    assert not out.exists()


def test_unknown_loss_and_kto_batch_of_one_are_config_errors(world, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _cli(capsys, ["dpo", "--loss", "dpoo", f"model={world['model']}", f"data.train={world['train']}",
                            f"output_dir={out}"])
    assert rc == 2 and err.count("\n") == 1
    assert "unknown preference loss 'dpoo' (did you mean 'dpo'?)" in err
    assert all(name in err for name in PREFERENCE_LOSSES)
    rc, err = _cli(capsys, ["dpo", "loss=kto", "batch_size=1", f"model={world['model']}",
                            f"data.train={world['kto']}", f"output_dir={out}"])
    assert rc == 2 and "needs batch_size >= 2" in err
    rc, err = _cli(capsys, ["dpo", "model=./no/such/model", f"data.train={world['train']}", f"output_dir={out}"])
    assert rc == 2 and err.strip() == "error: model './no/such/model': no such directory"
    assert not out.exists()


def test_rpo_nll_weight_adds_alpha_times_the_chosen_per_token_nll(world):
    """The objective with nll_weight α equals the plain loss + α · mean_b(−log π(y_w)/|y_w|), with the
    log-probs recomputed here from the batch; its gradient differs from the plain loss's."""
    from posttrain.data.tokenize import encode_dataset
    from posttrain.models.load import load_causal_lm

    policy, tok = load_causal_lm(world["model"], device="cpu", dtype="fp64")
    ref, _ = load_causal_lm(world["ref"], device="cpu", dtype="fp64")
    enc = encode_dataset(tok, _pref_rows(6, 5), "preference", max_len=48, max_prompt_len=24).examples
    b = dpo_stage.PreferenceBatcher(enc, tok.pad_token_id, True, 48)(list(range(6)))
    spec = PREFERENCE_LOSSES["dpo"]
    plain, _ = dpo_stage.PreferenceObjective(spec, 0.1, ref_model=ref)(policy, b, 6)
    rpo, m = dpo_stage.PreferenceObjective(spec, 0.1, ref_model=ref, nll_weight=0.5)(policy, b, 6)
    with torch.no_grad():
        lp, n = dpo_stage._sequence_logps(policy, b)
    nll = float((-lp[:6] / n[:6].double()).mean())
    assert nll > 0.1
    assert float(m["nll"]) == pytest.approx(nll, rel=1e-12)
    assert float(rpo.detach()) == pytest.approx(float(plain.detach()) + 0.5 * nll, rel=1e-12)
    g_plain = torch.autograd.grad(plain, policy.lm_head.weight)[0]
    g_rpo = torch.autograd.grad(rpo, policy.lm_head.weight)[0]
    assert float((g_rpo - g_plain).abs().max()) > 1e-3 * float(g_plain.abs().max())


def test_nll_weight_with_kto_is_a_config_error(world, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _cli(capsys, ["dpo", "loss=kto", "nll_weight=1", f"model={world['model']}",
                            f"data.train={world['kto']}", f"output_dir={out}"])
    assert rc == 2 and err.count("\n") == 1 and "key 'nll_weight'" in err
    assert not out.exists()


def test_kto_objective_uses_the_reference_point_of_the_shifted_pairs(world):
    """The stage's KTO loss equals ``kto_loss`` evaluated by hand: z_0 = max(0, mean over the batch of
    log π(y_{k+1}|x_k) − log π_ref(y_{k+1}|x_k)), each sequence scored on its own (float64)."""
    from posttrain.data.tokenize import encode_dataset
    from posttrain.losses import kto_loss
    from posttrain.models.load import load_causal_lm
    from posttrain.models.logprobs import sequence_logprobs

    policy, tok = load_causal_lm(world["model"], device="cpu", dtype="fp64")
    ref, _ = load_causal_lm(world["ref"], device="cpu", dtype="fp64")
    rows = [json.loads(line) for line in open(world["kto"])][:4]
    enc = encode_dataset(tok, rows, "unpaired", max_len=48, max_prompt_len=24).examples

    def logp(model, ids, mask):
        ids_t = torch.tensor([ids])
        with torch.no_grad():
            lp = sequence_logprobs(model, ids_t, torch.ones_like(ids_t))["logprobs"][0]
        return float((lp * torch.tensor(mask, dtype=lp.dtype)).sum())

    pol = [logp(policy, e.example.input_ids, e.example.loss_mask) for e in enc]
    rf = [logp(ref, e.example.input_ids, e.example.loss_mask) for e in enc]
    kl = []
    for k in range(4):
        ids, mask = dpo_stage._mismatched(enc[k].example, enc[(k + 1) % 4].example, 48)
        kl.append(logp(policy, ids, mask) - logp(ref, ids, mask))
    z0 = max(0.0, sum(kl) / 4)
    labels = torch.tensor([e.label for e in enc])
    expect, _ = kto_loss(torch.tensor(pol, dtype=torch.float64), torch.tensor(rf, dtype=torch.float64), labels,
                         beta=0.1, reference_point=z0)
    b = dpo_stage.PreferenceBatcher(enc, tok.pad_token_id, False, 48)([0, 1, 2, 3])
    loss, m = dpo_stage.PreferenceObjective(PREFERENCE_LOSSES["kto"], 0.1, ref_model=ref)(policy, b, 4.0)
    assert float(loss.detach()) == pytest.approx(float(expect), rel=1e-9)
    assert float(m["kl"]) == pytest.approx(z0, abs=1e-9)
    cached = dpo_stage.reference_logps(ref, enc, paired=False, pad_id=tok.pad_token_id, batch_size=3)
    assert cached.tolist() == pytest.approx(rf, abs=1e-4)  # float32 cache of the same numbers


def test_shared_prompt_layout_gives_the_same_loss_and_gradients(world):
    """share_prompt=true packs prompt + chosen + rejected in one row (4-D mask, restarted positions): the
    DPO loss and every parameter gradient equal those of the [2B, T] layout (float64 weights, ragged lengths;
    measured max |Δgrad| ≈ 2e-8 for gradients of size 0.3, the float32 RMSNorm's rounding), while
    the forward processes fewer tokens (each prompt once)."""
    from posttrain.data.tokenize import encode_dataset
    from posttrain.models.load import load_causal_lm

    policy, tok = load_causal_lm(world["model"], device="cpu", dtype="fp64")
    ref, _ = load_causal_lm(world["ref"], device="cpu", dtype="fp64")
    rows = _pref_rows(5, 7)
    rows[1]["rejected"] = [{"role": "assistant", "content": "No."}]
    rows[3]["chosen"] = [{"role": "assistant", "content": "The item is green, and the box is red too."}]
    enc = encode_dataset(tok, rows, "preference", max_len=48, max_prompt_len=24).examples
    obj = dpo_stage.PreferenceObjective(PREFERENCE_LOSSES["dpo"], 0.1, ref_model=ref)
    results = []
    for share in (False, True):
        b = dpo_stage.PreferenceBatcher(enc, tok.pad_token_id, True, 48, share_prompt=share,
                                        mask_dtype=torch.float64)(list(range(5)))
        policy.zero_grad()
        seen = []
        hook = policy.lm_head.register_forward_hook(lambda mod, i, o: seen.append(i[0].shape[1]))
        loss, m = obj(policy, b, 5.0)
        hook.remove()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
        tokens = b["num_tokens"] if share else int(b["attention_mask"].sum())
        # the head runs from the earliest position whose logits predict a completion token (the shortest
        # prompt's last token) on, not over the prompts before it
        first = int(b["pred_index"][(b["chosen_mask"] + b["rejected_mask"]) > 0].min()) if share else \
            int(b["loss_mask"].any(0).nonzero()[0, 0]) - 1
        assert seen == [b["input_ids"].shape[1] - first] and first > 0
        results.append((float(loss.detach()), grads, tokens, float(m["margin"])))
    (l0, g0, t0, m0), (l1, g1, t1, m1) = results
    assert l1 == pytest.approx(l0, rel=1e-10) and m1 == pytest.approx(m0, abs=1e-10)
    # HF Llama runs RMSNorm in float32 even in a float64 model, so layouts agree to ~1e-8, not 1e-15
    assert max(float((g0[k] - g1[k]).abs().max()) for k in g0) < 1e-6
    assert max(float(g.abs().max()) for g in g0.values()) > 1e-3
    prompt_tokens = sum(e.chosen.prompt_len for e in enc)
    assert t0 - t1 == prompt_tokens


def test_share_prompt_auto_packs_when_the_flop_estimate_is_lower():
    """share_prompt=auto (the default) packs a batch when 2·N·positions + 4·layers·hidden·(query, key) pairs is
    at least 5% lower packed. Shape N = 1000, 2 layers, hidden 10, two pairs each:
    long prompt P = 20, C = R = 4: padded [4, 24] costs 2000·96 + 80·4·576 = 376,320, packed [2, 28]
    2000·56 + 80·2·784 = 237,440 → packed. Short prompt P = 2, C = R = 40: padded [4, 42] 336,000 + 564,480 =
    900,480, packed [2, 82] 328,000 + 1,075,840 = 1,403,840 → padded. Unknown architecture → padded;
    true / false override the estimate."""
    from types import SimpleNamespace

    def pair(P, C, R):
        enc = lambda n: SimpleNamespace(input_ids=list(range(3, 3 + P)) + [7] * n, prompt_len=P,  # noqa: E731
                                        loss_mask=[0] * P + [1] * n)
        return SimpleNamespace(chosen=enc(C), rejected=enc(R))

    shape = (1000, 2, 10)
    long_prompt, short_prompt = [pair(20, 4, 4)] * 2, [pair(2, 40, 40)] * 2
    # (pairs, mode, cost shape, packed?, batch shape): packed rows are P + C + R wide, padded ones P + C
    cases = [(long_prompt, "auto", shape, True, (2, 28)), (short_prompt, "auto", shape, False, (4, 42)),
             (long_prompt, "auto", None, False, (4, 24)), (short_prompt, True, shape, True, (2, 82)),
             (long_prompt, False, shape, False, (4, 24))]
    for exs, mode, cs, packed, batch_shape in cases:
        b = dpo_stage.PreferenceBatcher(exs, 0, True, 128, share_prompt=mode, cost_shape=cs)
        assert b._share(exs) is packed
        batch = b([0, 1])
        assert ("pred_index" in batch) is packed and tuple(batch["input_ids"].shape) == batch_shape
    unpaired = dpo_stage.PreferenceBatcher(long_prompt, 0, False, 128, share_prompt=True, cost_shape=shape)
    assert unpaired._share(long_prompt) is False
