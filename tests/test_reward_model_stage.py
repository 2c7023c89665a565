"""`posttrain reward-model`: a measured training effect, K-wise batching, saving in the standard HF form."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from posttrain.cli import main
from posttrain.config import RewardModelConfig
from posttrain.data.load import load_rows
from posttrain.data.tokenize import encode_completion, encode_dataset, encode_prompt
from posttrain.eval.rm import evaluate_reward_model
from posttrain.models.heads import reward_model_from_causal, score_sequences
from posttrain.models.presets import build_preset
from posttrain.stages.reward_model import RewardBatcher, RewardObjective, resolve_loss, run, units_of

POS = ["good", "warm", "happy", "kind", "bright", "calm", "nice", "fresh"]
NEG = ["bad", "cold", "sad", "grey", "wet", "slow", "tired", "old"]
TOPICS = ["river", "garden", "city", "library", "baker", "music", "ocean", "weather", "forest", "map",
          "train", "moon", "fox", "owl", "letter", "school", "bread", "book", "clock", "street"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def preference_rows(topics, n, seed, margin=False):
    """Chosen answers use positive adjectives, rejected ones negative adjectives (same template)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        t = rng.choice(topics)
        a, b = rng.sample(POS, 2)
        c, d = rng.sample(NEG, 2)
        row = {"prompt": f"Tell me about the {t}.", "chosen": f"The {t} is {a} and {b}.",
               "rejected": f"The {t} is {c} and {d}."}
        if margin:
            row["margin"] = float(rng.randint(0, 2))
        rows.append(row)
    return rows


def ranking_rows(n, seed, ks=(3, 4)):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        K = ks[i % len(ks)]
        t = rng.choice(TOPICS)
        comps = [f"The {t} is {w}." for w in rng.sample(POS + NEG, K)]
        rows.append({"prompt": f"Tell me about the {t}.", "completions": comps,
                     "ranking": rng.sample(range(K), K)})
    return rows


def cfg_for(tmp_path, train, evalf=None, **kw):
    base = dict(model="preset:tiny", data={"train": train, "eval": evalf}, output_dir=str(tmp_path / "run"),
                max_steps=40, lr=1e-3, batch_size=8, warmup_steps=0, min_lr_ratio=0.0, progress=False,
                num_threads=1, seed=0)
    base.update(kw)
    return RewardModelConfig.model_validate(base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run shared by the tests below (~3 s on 2 cores)."""
    tmp = tmp_path_factory.mktemp("rm")
    train = write_jsonl(tmp / "train.jsonl", preference_rows(TOPICS[:14], 200, seed=0))
    evalf = write_jsonl(tmp / "eval.jsonl", preference_rows(TOPICS[14:], 60, seed=1))
    cfg = cfg_for(tmp, train, evalf)
    torch.manual_seed(0)
    init, tok = reward_model_from_causal("preset:tiny", device="cpu", head_init="normal", seed=0)
    before = evaluate_reward_model(init, tok, load_rows(evalf, kinds=["preference"]))
    summary = run(cfg)
    return {"cfg": cfg, "summary": summary, "before": before, "eval": evalf, "tmp": tmp}


def test_training_raises_held_out_accuracy(trained):
    """Held-out topics (never in training): the untrained RM is at chance level or worse, the trained one
    orders (almost) every pair right, with a positive margin, and the loss fell far below log 2."""
    before, after = trained["before"], trained["summary"]["rm_eval"]
    assert before["pairs"] == after["pairs"] == 60
    assert before["accuracy"] < 0.7
    assert after["accuracy"] >= 0.9
    assert after["mean_margin"] > 1.0
    assert trained["summary"]["final_loss"] < 0.5 * math.log(2)
    assert trained["summary"]["loss_type"] == "bradley_terry"
    assert trained["summary"]["train"]["units"] == trained["summary"]["train"]["comparisons"] == 200
    # the engine's eval (loss_fn on data.eval) agrees with eval/rm.py's accuracy
    assert trained["summary"]["eval"]["accuracy"] == pytest.approx(after["accuracy"], abs=1e-9)
    assert 0.0 <= after["ece"] <= 1.0


def test_saved_model_reloads_with_auto_class_and_gives_identical_scores(trained):
    """RUN/model loads with plain AutoModelForSequenceClassification; its scores equal the in-memory
    model's (written to samples.jsonl at the end of training), via HF's own forward, score_sequences and
    posttrain's `rm:PATH` reward source."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from posttrain.rollout.rewards import build_reward

    model_dir = trained["tmp"] / "run" / "model"
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert hf.config.num_labels == 1 and type(hf).__name__ == "LlamaForSequenceClassification"
    samples = [json.loads(x) for x in (trained["tmp"] / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8
    seqs, expected = [], []
    for s in samples:
        for col in ("chosen", "rejected"):
            seqs.append(encode_prompt(tok, s["prompt"]) + encode_completion(tok, s[col]))
            expected.append(s[f"reward_{col}"])
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    with torch.no_grad():
        hf_scores = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
        ours = score_sequences(hf, ids, mask)
    torch.testing.assert_close(ours, torch.tensor(expected), rtol=0, atol=1e-5)
    torch.testing.assert_close(hf_scores, torch.tensor(expected), rtol=0, atol=1e-5)
    rm = build_reward(f"rm:{trained['tmp'] / 'run'}", device="cpu")
    got = rm([s["prompt"] for s in samples for _ in (0, 1)],
             [s[c] for s in samples for c in ("chosen", "rejected")])
    assert got == pytest.approx(expected, abs=1e-5)


def test_finished_run_is_reused(trained, capsys):
    again = run(trained["cfg"])
    assert again["rm_eval"]["accuracy"] == trained["summary"]["rm_eval"]["accuracy"]


def _tiny_rm64():
    torch.manual_seed(0)
    lm, tok = build_preset("tiny")
    rm, tok = reward_model_from_causal(lm.double(), tokenizer=tok, seed=3)
    return rm.eval(), tok


@torch.no_grad()
def _standalone_ranked_scores(rm, tok, rows):
    """Each ranking row's rewards, best first, every completion scored alone (prompt + completion, no padding)."""
    out = []
    for r in rows:
        ids = [encode_prompt(tok, r["prompt"]) + encode_completion(tok, r["completions"][j]) for j in r["ranking"]]
        out.append([float(score_sequences(rm, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)))
                    for s in ids])
    return out


@pytest.mark.parametrize("share_prompt", [True, False])
def test_kwise_batch_equals_mean_of_pairwise_bt_losses_per_prompt(tmp_path, share_prompt):
    """InstructGPT's K-wise loss through the stage's batching: rankings of K = 3 and K = 4 in ONE batch (one
    forward over all 14 completions: 4 packed rows sharing each prompt, or 14 padded rows) give loss = mean
    over prompts of (mean over the prompt's C(K,2) pairs of −log σ(r_better − r_worse)), with every
    completion scored alone (prompt + completion, no padding) for the reference."""
    rows = ranking_rows(4, seed=5)
    path = write_jsonl(tmp_path / "rank.jsonl", rows)
    data = load_rows(path, kinds=["ranking"])
    rm, tok = _tiny_rm64()
    enc = encode_dataset(tok, data, max_len=64, max_prompt_len=32)
    units = units_of(enc.examples, "kwise")
    assert [len(u.seqs) for u in units] == [3, 4, 3, 4]
    batch = RewardBatcher(units, tok.pad_token_id, share_prompt=share_prompt, mask_dtype=torch.float64)(range(4))
    assert batch["input_ids"].shape[0] == (4 if share_prompt else 14) and batch["num_units"] == 4.0
    n_prompt = [e.ranked[0].prompt_len for e in enc.examples]
    n_all = sum(len(s.input_ids) for e in enc.examples for s in e.ranked)
    saved = sum(p * (len(e.ranked) - 1) for p, e in zip(n_prompt, enc.examples))
    assert batch["num_tokens"] == (n_all - saved if share_prompt else n_all)
    loss, metrics = RewardObjective("kwise")(rm, batch, None)

    per_prompt = []
    for rs in _standalone_ranked_scores(rm, tok, rows):
        pairs = [-F.logsigmoid(torch.tensor(rs[i] - rs[j], dtype=torch.float64))
                 for i in range(len(rs)) for j in range(i + 1, len(rs))]
        per_prompt.append(sum(pairs) / len(pairs))
    expected = sum(per_prompt) / len(per_prompt)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss.detach(), expected.to(torch.float64), rtol=1e-6, atol=0)

    # the same rankings expanded into independent pairs weigh a K=4 prompt 6/3 = 2x a K=3 prompt: different
    pair_units = units_of(enc.examples, "bradley_terry")
    assert len(pair_units) == 3 + 6 + 3 + 6
    pb = RewardBatcher(pair_units, tok.pad_token_id, share_prompt=share_prompt,
                       mask_dtype=torch.float64)(range(len(pair_units)))
    pair_loss, _ = RewardObjective("bradley_terry")(rm, pb, None)
    flat = sum(per_prompt[i] * [3, 6, 3, 6][i] for i in range(4)) / 18
    torch.testing.assert_close(pair_loss.detach(), flat.to(torch.float64), rtol=1e-6, atol=0)
    assert abs(float(pair_loss.detach()) - float(loss.detach())) > 1e-4


def test_plackett_luce_through_the_stage_batching(tmp_path):
    """``loss=plackett_luce``: rankings of K = 3 and 4 in one packed batch give the mean over prompts of
    Σ_i [log Σ_{j≥i} e^{r_σ(j)} − r_σ(i)] with every completion scored alone; the stage trains with it."""
    rows = ranking_rows(4, seed=5)
    data = load_rows(write_jsonl(tmp_path / "rank.jsonl", rows), kinds=["ranking"])
    rm, tok = _tiny_rm64()
    units = units_of(encode_dataset(tok, data, max_len=64, max_prompt_len=32).examples, "plackett_luce")
    assert [len(u.seqs) for u in units] == [3, 4, 3, 4]  # a ranking stays one unit
    batch = RewardBatcher(units, tok.pad_token_id, mask_dtype=torch.float64)(range(4))
    loss, _ = RewardObjective("plackett_luce")(rm, batch, None)
    per_prompt = [sum(math.log(sum(math.exp(x) for x in rs[i:])) - rs[i] for i in range(len(rs) - 1))
                  for rs in _standalone_ranked_scores(rm, tok, rows)]
    torch.testing.assert_close(loss.detach(), torch.tensor(sum(per_prompt) / 4, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    kw, _ = RewardObjective("kwise")(rm, batch, None)
    assert abs(float(kw.detach()) - float(loss.detach())) > 1e-2
    s = run(cfg_for(tmp_path, str(tmp_path / "rank.jsonl"), max_steps=2, loss="plackett_luce",
                    output_dir=str(tmp_path / "pl")))
    assert s["loss_type"] == "plackett_luce" and math.isfinite(s["final_loss"])


def test_packed_scores_equal_standalone_scores():
    """Prefix sharing is exact: each completion's reward in a packed row [prompt, y_1, ..., y_K] (block mask,
    restarted positions) equals the reward of prompt + y_k scored alone, also with an empty prompt
    (implicit-prompt pairs) and rows of different lengths padded in one batch. Float64, |Δ| < 1e-10."""
    from posttrain.data.tokenize import encode_example
    from posttrain.stages.reward_model import RewardUnit, score_packed

    rm, tok = _tiny_rm64()
    specs = [("Tell me about the fox.", ["The fox is kind.", "The fox is sad and old.", "Bye."]),
             ("", [" The cat sat on the mat.", " The dog sat on the log."]),
             ("What is two plus two? Please answer.", ["Two plus two is four."] * 2)]
    units = [RewardUnit(tuple(encode_example(tok, p, c, max_len=64) for c in cs)) for p, cs in specs]
    b = RewardBatcher(units, tok.pad_token_id, mask_dtype=torch.float64)(range(3))
    with torch.no_grad():
        got = score_packed(rm, b["input_ids"], b["attention_mask"], b["position_ids"], b["pool_index"])
        want = [float(score_sequences(rm, torch.tensor([s.input_ids]), torch.ones(1, len(s), dtype=torch.long)))
                for u in units for s in u.seqs]
    assert got.shape == (7,)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-10)
    assert abs(want[0] - want[1]) > 1e-3  # the completions really differ


def test_kwise_gradient_independent_of_micro_batch_split(tmp_path):
    """With the engine's global normaliser (number of prompts in the step), two micro-batches of 2 prompts
    give the same gradient as one micro-batch of 4 — each prompt counts once however the step is split."""
    rows = ranking_rows(4, seed=7)
    data = load_rows(write_jsonl(tmp_path / "rank.jsonl", rows), kinds=["ranking"])
    rm, tok = _tiny_rm64()
    rm.train()
    units = units_of(encode_dataset(tok, data, max_len=64, max_prompt_len=32).examples, "kwise")
    make = RewardBatcher(units, tok.pad_token_id, mask_dtype=torch.float64)
    obj = RewardObjective("kwise", centering_coef=0.1)

    def grads(splits):
        rm.zero_grad(set_to_none=True)
        for ix in splits:
            loss, _ = obj(rm, make(ix), 4.0)
            loss.backward()
        return [p.grad.clone() for p in rm.parameters() if p.grad is not None]

    whole = grads([[0, 1, 2, 3]])
    split = grads([[0, 3], [1, 2]])
    assert len(whole) == len(split) > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_kwise_stage_on_rankings_and_margin_auto(tmp_path):
    """Ranking data selects the K-wise loss and counts prompts as units; a `margin` column selects the
    margin loss. Both train (finite loss, eval accuracy reported)."""
    rank = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24, seed=2))
    s = run(cfg_for(tmp_path, rank, rank, max_steps=3, output_dir=str(tmp_path / "k")))
    assert s["loss_type"] == "kwise"
    assert s["train"]["units"] == 24 and s["train"]["comparisons"] == 12 * 3 + 12 * 6
    assert s["rm_eval"]["pairs"] == 12 * 3 + 12 * 6
    assert math.isfinite(s["final_loss"])
    marg = write_jsonl(tmp_path / "m.jsonl", preference_rows(TOPICS, 16, seed=3, margin=True))
    s = run(cfg_for(tmp_path, marg, max_steps=2, output_dir=str(tmp_path / "m")))
    assert s["loss_type"] == "margin" and s["rm_eval"] is None
    assert resolve_loss("auto", load_rows(marg, kinds=["preference", "ranking"])) == "margin"


def test_user_errors_exit_2_with_one_line_and_no_run_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    good = write_jsonl(tmp_path / "p.jsonl", preference_rows(TOPICS, 8, seed=0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "hi", "chosen": "a", "rejected": 3}) + "\n")
    out = tmp_path / "out"
    common = ["model=preset:tiny", f"output_dir={out}", "progress=false", "max_steps=1"]
    cases = [
        ([f"data.train={bad}"], f"{bad}:2: column 'rejected'"),
        ([f"data.train={good}", "loss=margin"], "'margin' needs preference rows with a 'margin' column"),
        ([f"data.train={good}", f"model={tmp_path}/nope"], f"model '{tmp_path}/nope': no such directory"),
        ([f"data.train={tmp_path / 'missing.jsonl'}"], "no such file"),
    ]
    for args, needle in cases:
        assert main(["reward-model", *common, *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
        assert not out.exists()


def test_two_ranks_equal_one_rank(tmp_path):
    """`torchrun --nproc_per_node=2` (gloo), batch 2 × accumulation 2 per rank, trains the same reward model as
    one process with batch 8 (same global batch: the engine all-reduces the pair count and undoes DDP's
    gradient averaging; DDP wraps the correctly pooled SequenceScorer forward)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    train = write_jsonl(tmp_path / "t.jsonl", preference_rows(TOPICS, 32, seed=4))
    common = ["reward-model", "model=preset:tiny", f"data.train={train}", "max_steps=3", "lr=1e-3", "warmup_steps=0",
              "progress=false", "device=cpu", "dtype=fp32", "adam_eps=1e-6"]
    # Adam divides by |g| + eps: with eps 1e-8, a gradient at rounding level (~1e-9, summed in another order
    # across ranks) moves its weight by an arbitrary fraction of lr (measured: 6.6e-5 apart on an AMD EPYC)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "posttrain.cli", *common, "batch_size=2", "grad_accum=2",
                          f"output_dir={tmp_path / 'ddp'}"], env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert main([*common, "batch_size=8", f"output_dir={tmp_path / 'one'}", "num_threads=1"]) == 0
    a = load_file(tmp_path / "ddp" / "model" / "model.safetensors")
    b = load_file(tmp_path / "one" / "model" / "model.safetensors")
    init = reward_model_from_causal("preset:tiny", device="cpu", seed=0)[0].state_dict()
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((b[k] - init[k]).abs().max()) for k in b if k in init)
    assert diff < 2e-5 and moved > 1e-3
