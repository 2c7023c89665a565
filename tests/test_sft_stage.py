"""SFT / pretrain stages end to end on the tiny preset: user errors before the run dir exists, packed ==
unpacked loss, completion-only masks, LoRA (merged and adapter saves), finished-run handling, pretraining."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from posttrain.cli import main as cli_main  # noqa: E402
from posttrain.config import DataConfig, LoraConfig, PretrainConfig, SFTConfig  # noqa: E402
from posttrain.io import read_jsonl  # noqa: E402


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def qa_rows(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        a, b = (int(x) for x in torch.randint(1, 10, (2,), generator=g))
        tail = " Thank you for asking." * (i % 3)  # ragged completion lengths
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                     "completion": [{"role": "assistant", "content": f"{a} plus {b} is {a + b}.{tail}"}]})
    return rows


def chat_rows(n: int) -> list[dict]:
    out = []
    for r in qa_rows(n, seed=1):
        out.append({"messages": [{"role": "system", "content": "Be brief."}, *r["prompt"], *r["completion"],
                                 {"role": "user", "content": "Thanks!"},
                                 {"role": "assistant", "content": "You are welcome."}]})
    return out


def sft_cfg(tmp_path, **kw) -> SFTConfig:
    data = kw.pop("data", None) or DataConfig(train=write_jsonl(tmp_path / "train.jsonl", qa_rows(24)),
                                              eval=write_jsonl(tmp_path / "eval.jsonl", qa_rows(6, seed=9)),
                                              max_len=64, max_prompt_len=32)
    base = dict(model="preset:tiny", data=data, output_dir=str(tmp_path / "run"), max_steps=4, lr=3e-3,
                batch_size=4, progress=False, peak_flops=1e11, sample_prompts=2,
                generation={"max_new_tokens": 6, "temperature": 0.0})
    base.update(kw)
    return SFTConfig(**base)


# ------------------------------------------------------------------------------- user errors, run dir
def test_bad_dataset_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(qa_rows(1)[0]) + "\n" + '{"prompt": "hi", "completion": 3}\n')
    out = tmp_path / "run"
    code = cli_main(["sft", "model=preset:tiny", f"data.train={bad}", f"output_dir={out}", "progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"error: {bad}:2: column 'completion'") and "\n" not in err
    assert not out.exists()


def test_missing_model_exits_2_and_writes_nothing(tmp_path, capsys):
    train = write_jsonl(tmp_path / "t.jsonl", qa_rows(2))
    out = tmp_path / "run"
    code = cli_main(["sft", "model=./no/such/model", f"data.train={train}", f"output_dir={out}"])
    assert code == 2 and capsys.readouterr().err.strip() == "error: model './no/such/model': no such directory"
    assert not out.exists()


def test_sft_run_writes_a_complete_run_dir_and_refuses_a_different_config(tmp_path, capsys):
    from posttrain.stages.sft import run

    cfg = sft_cfg(tmp_path, eval_every=2, sample_every=2)
    summary = run(cfg)
    rd = Path(cfg.output_dir)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "samples.jsonl", "DONE", "model/config.json"):
        assert (rd / name).exists(), name
    assert summary["steps"] == 4 and summary["train_examples"] == 24
    assert summary["eval"]["loss"] > 0 and summary["eval"]["ppl"] == pytest.approx(
        float(torch.tensor(summary["eval"]["nll"]).exp()), rel=1e-6)
    assert summary["truncation"]["truncated_completions"] == 0
    recs = read_jsonl(rd / "metrics.jsonl")
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if "eval/loss" in r] == [2, 4]
    samples = read_jsonl(rd / "samples.jsonl")
    assert sorted({s["step"] for s in samples}) == [2, 4] and len(samples) == 4
    assert samples[0]["prompt"].endswith("<|im_start|>assistant\n")
    # the model loads with plain transformers and differs from the random init
    from transformers import AutoModelForCausalLM

    from posttrain.models.presets import build_preset

    trained = AutoModelForCausalLM.from_pretrained(rd / "model")
    init, _ = build_preset("tiny", seed=0)
    assert not torch.equal(trained.lm_head.weight, init.lm_head.weight)
    # same config: reused; different config: one-line refusal, exit 2
    assert run(cfg)["steps"] == 4
    capsys.readouterr()
    code = cli_main(["sft", "--config", str(rd / "config.yaml"), "lr=0.01"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err == (f"error: output_dir '{rd}' holds a finished run with a different config "
                   "(lr: 0.003 -> 0.01); choose another output_dir or delete it")


# ---------------------------------------------------------------------------------------- numerics
def _all_loss(model, items, packing, max_len, pad_id, bs):
    from posttrain.stages.sft import make_batches, sft_loss_fn

    n, make = make_batches(items, packing=packing, max_len=max_len, pad_id=pad_id, mask_dtype=torch.float64)
    batches = [make(list(range(i, min(i + bs, n)))) for i in range(0, n, bs)]
    total = sum(float(b["num_units"]) for b in batches)
    loss = sum(sft_loss_fn(model, b, total)[0] for b in batches)
    return loss, n


def test_packed_and_unpacked_loss_and_gradients_are_equal(tmp_path):
    """Same examples, same model (float64): token-mean NLL over all completion tokens and its gradient
    agree to 1e-10 whether examples are padded one per row or packed several per row."""
    from posttrain.data.tokenize import encode_dataset
    from posttrain.data.load import load_rows
    from posttrain.models.presets import build_preset

    model, tok = build_preset("tiny", seed=3)
    model = model.double()
    rows = load_rows(write_jsonl(tmp_path / "t.jsonl", qa_rows(8)), kinds=["prompt_completion"])
    items = encode_dataset(tok, rows, max_len=64, max_prompt_len=32).examples
    lu, nu = _all_loss(model, items, False, 160, tok.pad_token_id, 3)
    gu = torch.autograd.grad(lu, list(model.parameters()))
    lp, npk = _all_loss(model, items, True, 160, tok.pad_token_id, 2)
    gp = torch.autograd.grad(lp, list(model.parameters()))
    assert npk < nu  # packing did put several examples in a row
    assert float(lp.detach()) == pytest.approx(float(lu.detach()), rel=1e-10)
    assert max(float((a - b).abs().max()) for a, b in zip(gu, gp)) < 1e-10


def test_completion_only_loss_counts_only_completion_tokens(tmp_path):
    from posttrain.data.load import load_rows
    from posttrain.data.tokenize import encode_dataset
    from posttrain.models.presets import build_preset

    _, tok = build_preset("tiny")
    rows = load_rows(write_jsonl(tmp_path / "c.jsonl", chat_rows(3)), kinds=["conversational"])
    only = encode_dataset(tok, rows, max_len=128, assistant_only_loss=True).examples
    every = encode_dataset(tok, rows, max_len=128, assistant_only_loss=False).examples
    for a, b in zip(only, every):
        assert sum(b.loss_mask) == len(b.input_ids) - 1
        # both assistant turns (content + <|im_end|>) are in the loss, nothing else
        text = tok.decode([t for t, m in zip(a.input_ids, a.loss_mask) if m])
        assert "You are welcome.<|im_end|>" in text and "Thanks" not in text and "Be brief" not in text


def test_sft_on_conversational_data_with_packing(tmp_path):
    from posttrain.stages.sft import run

    data = DataConfig(train=write_jsonl(tmp_path / "c.jsonl", chat_rows(16)), max_len=256, max_prompt_len=32)
    s = run(sft_cfg(tmp_path, data=data, packing=True, sample_prompts=1, max_steps=3, batch_size=2))
    assert s["packing"] and s["train_units"] < 16 and s["final_loss"] < 7.0
    samples = read_jsonl(Path(s["run_dir"]) / "samples.jsonl")
    assert len(samples) == 1 and samples[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert "You are welcome" not in samples[0]["prompt"]  # prompt is cut before the last assistant turn


# -------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("save", ["merged", "adapter"])
def test_lora_trains_only_adapters_and_saves(tmp_path, save):
    from transformers import AutoModelForCausalLM

    from posttrain.models.presets import build_preset
    from posttrain.stages.sft import run

    cfg = sft_cfg(tmp_path, lora=LoraConfig(enabled=True, r=4, alpha=8.0, save=save), lr=1e-2,
                  sample_prompts=0, data=None)
    s = run(cfg)
    out = Path(s["model_dir"])
    init, _ = build_preset("tiny", seed=0)
    if save == "adapter":
        assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
        from safetensors.torch import load_file

        w = load_file(out / "adapter_model.safetensors")
        assert w and all("lora_" in k for k in w)
        assert any(float(v.abs().max()) > 0 for k, v in w.items() if "lora_B" in k)  # B moved from zero init
        return
    merged = AutoModelForCausalLM.from_pretrained(out)
    sd, sd0 = merged.state_dict(), init.state_dict()
    assert not any("lora" in k for k in sd)
    changed = {k for k in sd if not torch.equal(sd[k], sd0[k])}
    assert changed and all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"))
                           for k in changed)


def test_lora_bad_target_module_is_a_config_error(tmp_path):
    from posttrain.errors import ConfigError
    from posttrain.stages.sft import run

    cfg = sft_cfg(tmp_path, lora=LoraConfig(enabled=True, target_modules=["qkv"]))
    with pytest.raises(ConfigError, match=r"^lora.target_modules: 'qkv' is not a linear layer of this model"):
        run(cfg)


# ---------------------------------------------------------------------------------------- pretrain
def test_pretrain_is_quiet_packs_and_learns(tmp_path, capsys):
    from posttrain.stages.pretrain import run

    words = "the red fox jumps over the lazy brown dog near the quiet river bank".split()
    docs = [{"text": " ".join(words[(i + j) % len(words)] for j in range(8 + i % 9))} for i in range(60)]
    cfg = PretrainConfig(model="preset:tiny", data=DataConfig(train=write_jsonl(tmp_path / "c.jsonl", docs),
                                                              eval=write_jsonl(tmp_path / "e.jsonl", docs[:8]),
                                                              max_len=64, max_prompt_len=8),
                         output_dir=str(tmp_path / "pre"), max_steps=12, lr=1e-2, batch_size=4, progress=False,
                         peak_flops=1e11, warmup_steps=2)
    s = run(cfg)
    assert capsys.readouterr().out == ""
    assert s["packing"] and s["train_units"] < 60 and s["documents"] == 60
    losses = [r["loss"] for r in read_jsonl(Path(s["run_dir"]) / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < 0.6 * losses[0]
    assert s["eval"]["ppl"] < 100  # vocabulary is 512 tokens: far below uniform
    assert (Path(s["model_dir"]) / "config.json").is_file()
