"""posttrain SFT vs TRL's SFTTrainer: steps/s, tokens/s and MFU on the same model, data and settings.

Run it from the repository root with the separate TRL environment (TRL is not a dependency of posttrain)::

    python -m venv benchmarks/.env-trl
    benchmarks/.env-trl/bin/pip install torch==2.13.0
    benchmarks/.env-trl/bin/pip install trl==1.16.0
    benchmarks/.env-trl/bin/pip install -e .
    HF_HUB_OFFLINE=1 benchmarks/.env-trl/bin/python benchmarks/sft_bench.py            # ~2-3 min on 2 cores

Setup (the same on both sides): the ``small`` preset (~4.7M-param Llama, random init, saved once as an HF
folder both sides load), 512 prompt-completion rows whose prompt is exactly 32 tokens and completion 31
tokens + eos (so every step processes 8 × 64 = 512 tokens), batch 8, no accumulation, fp32 on CPU, AdamW
lr 1e-4 (linear decay, no warmup), clipping at 1.0, loss on completion tokens only, no activation
checkpointing, no packing, no evaluation or checkpointing during the timed steps. TRL runs with its fastest
CPU settings (bf16=False, use_cpu=True, gradient/activation checkpointing off, its default fused AdamW,
logging once at the end). A third side, ``torch``, is a bare PyTorch loop over the same kind of batches
(the compute floor: what is left when no framework is involved). The sides run alternately (``--rounds``
times each) in one process, so machine load affects all of them alike.

Timing: the steady state, i.e. the wall time between the end of step ``--warmup`` and the end of the last
step (data collation, forward, backward, clipping and the optimizer step included; model loading,
tokenisation and trainer construction excluded). ``wall_s`` additionally reports each side's whole call
(tokenisation, set-up and saving the final model included). MFU = 6 · N · tokens/s / peak with N the
matmul parameters and peak the measured fp32 matmul rate (``posttrain.engine.measure_peak_flops``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_rows(tok, n: int, prompt_tokens: int, completion_tokens: int, seed: int = 0) -> list[dict]:
    """``n`` rows of exactly ``prompt_tokens`` prompt tokens and ``completion_tokens`` completion tokens
    (eos excluded), built from the preset tokenizer's own text."""
    import random

    from posttrain.models.presets import DEFAULT_TEXT

    words = " ".join(DEFAULT_TEXT).split()
    rng = random.Random(seed)

    def exact(k: int, lead_space: bool) -> str:
        while True:
            start = rng.randrange(len(words))
            text = ""
            for w in words[start:] + words[:start]:
                cand = (text + " " + w) if (text or lead_space) else w
                n_tok = len(tok.encode(cand, add_special_tokens=False))
                if n_tok == k:
                    return cand
                if n_tok > k:
                    break
                text = cand

    rows = []
    for _ in range(n):
        p = exact(prompt_tokens, False)
        c = exact(completion_tokens, True)
        joint = tok.encode(p + c, add_special_tokens=False)
        if joint == tok.encode(p, add_special_tokens=False) + tok.encode(c, add_special_tokens=False):
            rows.append({"prompt": p, "completion": c})
    return rows


def steady(times: list[float], warmup: int) -> float:
    """Steps per second between the end of step ``warmup`` and the last step."""
    t = times[warmup - 1:] if warmup > 0 else times
    return (len(t) - 1) / (t[-1] - t[0])


def run_posttrain(model_dir: str, data_file: str, out: Path, args) -> dict:
    from posttrain.config import DataConfig, SFTConfig
    from posttrain.io import read_jsonl
    from posttrain.stages.sft import run

    cfg = SFTConfig(model=model_dir, data=DataConfig(train=data_file, max_len=args.prompt + args.completion + 8,
                                                     max_prompt_len=args.prompt + 4),
                    output_dir=str(out), max_steps=args.steps, batch_size=args.batch, grad_accum=1, lr=1e-4,
                    lr_schedule="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, log_every=1,
                    progress=False, sample_prompts=0, dtype="fp32", device="cpu", seed=0,
                    completion_only_loss=True, num_threads=args.threads, compile=args.compile)
    t0 = time.perf_counter()
    summary = run(cfg)
    wall = time.perf_counter() - t0
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    step_times = [1.0 / r["steps_per_s"] for r in recs]
    ends = [sum(step_times[:i + 1]) for i in range(len(step_times))]
    sps = steady(ends, args.warmup)
    return {"steps_per_s": sps, "tokens_per_step": statistics.mean(r["tokens"] for r in recs),
            "final_loss": summary["final_loss"], "wall_s": wall}


def run_trl(model_dir: str, rows: list[dict], tok, out: Path, args) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []
            self.tokens: list[int] = []

        def on_step_end(self, a, state, control, **kw):
            self.ends.append(time.perf_counter())

    clock = Clock()
    kw = dict(output_dir=str(out), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
              max_steps=args.steps, learning_rate=1e-4, lr_scheduler_type="linear", warmup_steps=0,
              weight_decay=0.0, max_grad_norm=1.0, logging_steps=args.steps, save_strategy="no",
              report_to="none", bf16=False, use_cpu=True, gradient_checkpointing=False,
              activation_checkpointing=False, max_length=args.prompt + args.completion + 8, packing=False,
              completion_only_loss=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
              torch_compile=args.compile)
    t0 = time.perf_counter()
    trainer = SFTTrainer(model=model_dir, args=SFTConfig(**kw), train_dataset=Dataset.from_list(rows),
                         processing_class=tok, callbacks=[clock])
    trainer.train()
    trainer.save_model(str(out / "model"))
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"steps_per_s": steady(clock.ends, args.warmup),
            "tokens_per_step": args.batch * (args.prompt + args.completion + 1),
            "final_loss": logs[-1]["loss"] if logs else None, "wall_s": wall}


def run_floor(model_dir: str, rows: list[dict], tok, out: Path, args) -> dict:
    """The compute floor: a bare PyTorch loop over the same batches (forward, masked token-mean NLL,
    backward, clipping, fused AdamW) with no framework around it; shows what each framework adds."""
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.data.collate import collate_lm
    from posttrain.data.tokenize import encode_example

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    enc = [encode_example(tok, r["prompt"], r["completion"], max_len=args.prompt + args.completion + 8)
           for r in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    g = torch.Generator().manual_seed(0)
    ends = []
    for step in range(args.steps):
        idx = torch.randint(len(enc), (args.batch,), generator=g).tolist()
        b = collate_lm([enc[i] for i in idx], tok.pad_token_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, b["input_ids"][:, 1:, None])[..., 0]
        m = b["loss_mask"][:, 1:].float()
        loss = -(lp * m).sum() / m.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return {"steps_per_s": steady(ends, args.warmup), "tokens_per_step": int(b["attention_mask"].sum()),
            "final_loss": float(loss.detach()), "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--completion", type=int, default=31, help="completion tokens before eos")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--only", choices=["posttrain", "trl", "torch"], default=None)
    ap.add_argument("--no-floor", action="store_true", help="skip the bare-PyTorch reference loop")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile on both sides (posttrain compile=true, TRL torch_compile=True)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sft_bench.json"))
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from posttrain.engine import measure_peak_flops
    from posttrain.engine.trainer import matmul_params
    from posttrain.io import atomic_write_json
    from posttrain.models.load import save_model
    from posttrain.models.presets import build_preset

    work = Path(tempfile.mkdtemp(prefix="sft_bench."))
    model, tok = build_preset(args.preset, seed=0)
    n_matmul = matmul_params(model)
    n_params = sum(p.numel() for p in model.parameters())
    save_model(model, tok, work / "model")
    del model
    rows = make_rows(tok, args.rows, args.prompt, args.completion)
    data_file = work / "train.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    peak = measure_peak_flops(torch.device("cpu"))
    print(f"model: preset:{args.preset}, {n_params / 1e6:.2f}M params ({n_matmul / 1e6:.2f}M in matmuls); "
          f"{len(rows)} rows of {args.prompt}+{args.completion}+eos tokens; batch {args.batch}; "
          f"{torch.get_num_threads()} threads; measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")

    results: dict[str, list[dict]] = {"posttrain": [], "trl": [], "torch": []}
    sides = [args.only] if args.only else ["posttrain", "trl"] + ([] if args.no_floor else ["torch"])
    for r in range(args.rounds):
        for side in sides:
            out = work / f"{side}-{r}"
            if side == "posttrain":
                res = run_posttrain(str(work / "model"), str(data_file), out, args)
            elif side == "trl":
                res = run_trl(str(work / "model"), rows, tok, out, args)
            else:
                res = run_floor(str(work / "model"), rows, tok, out, args)
            res["tokens_per_s"] = res["steps_per_s"] * res["tokens_per_step"]
            res["mfu"] = 6 * n_matmul * res["tokens_per_s"] / peak
            results[side].append(res)
            print(f"round {r + 1} {side:9s}: {res['steps_per_s']:6.2f} steps/s  {res['tokens_per_s']:8.0f} tok/s  "
                  f"MFU {100 * res['mfu']:5.2f}%  loss {res['final_loss']:.4f}  wall {res['wall_s']:.1f}s",
                  flush=True)

    med = {s: {k: statistics.median(x[k] for x in v) for k in ("steps_per_s", "tokens_per_s", "mfu", "wall_s")}
           for s, v in results.items() if v}
    print()
    print(f"{'':10s} {'steps/s':>8s} {'tok/s':>8s} {'MFU':>7s} {'wall s':>7s}   (medians of {args.rounds} rounds, "
          f"{args.steps} steps, first {args.warmup} excluded)")
    for s, m in med.items():
        print(f"{s:10s} {m['steps_per_s']:8.2f} {m['tokens_per_s']:8.0f} {100 * m['mfu']:6.2f}% {m['wall_s']:7.1f}")
    if "posttrain" in med and "trl" in med:
        ratio = med["posttrain"]["steps_per_s"] / med["trl"]["steps_per_s"]
        print(f"posttrain / TRL: {ratio:.2f}x steps/s (target >= 1.5x); wall-time ratio "
              f"{med['trl']['wall_s'] / med['posttrain']['wall_s']:.2f}x")
        med["ratio_steps_per_s"] = ratio
    if "torch" in med:
        for side in ("posttrain", "trl"):
            if side in med:
                print(f"{side} at {100 * med[side]['steps_per_s'] / med['torch']['steps_per_s']:.0f}% of the bare-PyTorch "
                      f"loop's steps/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"args": vars(args), "peak_flops": peak, "params": n_params,
                                 "matmul_params": n_matmul, "rounds": results, "median": med})
    return 0


if __name__ == "__main__":
    sys.exit(main())
