"""Reward-model training steps/s: ``posttrain reward-model`` vs TRL's ``RewardTrainer``.

Setup (both sides): a reward model built once from a preset (``tiny`` ~0.26M and ``small`` ~4.7M params,
random init; backbone + a normal-init score head, :func:`posttrain.models.heads.reward_model_from_causal`)
and saved to a folder, which both sides load as their starting point (posttrain keeps the saved head,
``head_init=auto``; TRL loads it with ``AutoModelForSequenceClassification``); 512 synthetic preference pairs
whose prompt is exactly ``--prompt-len`` tokens and whose completions are exactly ``--completion-len``
tokens including the eos both libraries append (single-token words, so TRL's joint tokenisation of
prompt + completion and posttrain's separate one give the same ids); batch 8 pairs; Bradley–Terry loss;
AdamW at lr 1e-5 on both sides; fp32; no activation checkpointing; CPU; gradient clipping at 1.0 (both
defaults).

TRL runs with the settings /work/shared/PEERS.md lists as its fastest on CPU: ``bf16=False``,
``use_cpu=True``, ``activation_checkpointing``/``gradient_checkpointing`` off, no logging / saving /
tqdm, ``dataloader_num_workers=0``. Each round is a fresh subprocess, alternating posttrain, TRL, posttrain,
TRL, ... per model, so that load from other processes on a shared machine hits both sides alike; a round
times ``--steps`` optimizer steps after ``--warmup`` untimed ones, step end to step end (data collation
counts). The best round of each side is reported (the least disturbed one) with the median.

TRL lives in its own virtual environment ``benchmarks/.env-trl`` (gitignored), created on first use under
an ``flock`` on ``benchmarks/.env-trl.lock`` if absent: ``python -m venv``, ``pip install torch==2.13.0``,
then ``trl==1.16.0``, then posttrain in editable mode. posttrain never depends on TRL.

posttrain runs as shipped: ``share_prompt=true`` scores a pair as ONE packed row ``[prompt, chosen, rejected]``
(block attention mask), so the shared prompt is computed once — 8·(32 + 2·32) = 768 tokens per step where
TRL runs 2·8·(32 + 32) = 1024. ``--like-for-like`` adds a posttrain side with ``share_prompt=false`` (one
padded row per completion, the same tokens as TRL), which isolates the training-loop overhead.

MFU = 6·N·tokens/s / peak with N the matmul parameters, tokens what each side actually runs through the
model, and peak the measured fp32 matmul rate (:func:`posttrain.engine.trainer.measure_peak_flops`).
``--profile`` times the phases of one posttrain step.

Usage: ``python -m benchmarks.reward_bench [--models tiny,small] [--rounds 3] [--steps 30]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "results" / "reward_bench"
N_ROWS = 512
LR = 1e-5

sys.path.insert(0, str(HERE))
from peer_env import ensure_env  # noqa: E402  (benchmarks/peer_env.py: the shared TRL venv)


# ----------------------------------------------------------------------------------- fixtures
def prepare(model: str, prompt_len: int, completion_len: int) -> dict:
    """The initial reward model folder and the preference data (exact token lengths), shared by both sides."""
    import random

    import torch

    from posttrain.engine.trainer import matmul_params
    from posttrain.models.heads import reward_model_from_causal
    from posttrain.models.load import save_model
    from posttrain.models.presets import build_preset, count_params

    WORK.mkdir(parents=True, exist_ok=True)
    model_dir = WORK / f"rm-{model}"
    torch.manual_seed(0)
    lm, tok = build_preset(model, seed=0)
    rm, tok = reward_model_from_causal(lm, tokenizer=tok, seed=0)
    if not (model_dir / "config.json").is_file():
        save_model(rm, tok, model_dir)
    vocab = tok.get_vocab()
    words = []
    for t, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 2:
            w = tok.convert_tokens_to_string([t])
            if tok.encode(w, add_special_tokens=False) == [i]:
                words.append(w)
    rng = random.Random(0)

    def text(n: int) -> str:
        while True:
            s = "".join(rng.choice(words) for _ in range(n))
            if len(tok.encode(s, add_special_tokens=False)) == n:
                return s

    rows = []
    while len(rows) < N_ROWS:
        p, c, r = text(prompt_len), text(completion_len - 1), text(completion_len - 1)
        # TRL tokenises prompt + completion jointly: keep rows where that equals the separate tokenisation
        if all(len(tok.encode(p + y, add_special_tokens=False)) == prompt_len + completion_len - 1 for y in (c, r)):
            rows.append({"prompt": p, "chosen": c, "rejected": r})
    data = WORK / f"prefs-{prompt_len}-{completion_len}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": str(model_dir), "data": str(data), "params": count_params(rm), "matmul_params": matmul_params(rm)}


# ------------------------------------------------------------------------------------ workers
def worker_posttrain(args) -> dict:
    import shutil

    import torch

    from posttrain.config import RewardModelConfig
    from posttrain.engine.trainer import measure_peak_flops
    from posttrain.io import read_jsonl
    from posttrain.stages.reward_model import run

    out = WORK / f"run-posttrain-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    total = args.warmup + args.steps
    cfg = RewardModelConfig(model=args.model_dir, data={"train": args.data, "max_len": 256, "max_prompt_len": 128},
                            output_dir=str(out), max_steps=total, batch_size=args.batch, lr=LR, loss="bradley_terry",
                            dtype="fp32", device="cpu", progress=False, log_every=1, seed=0,
                            lr_schedule="linear", warmup_steps=0, min_lr_ratio=0.0, share_prompt=not args.no_share,
                            compile=args.compile)
    t0 = time.perf_counter()
    summary = run(cfg)
    wall = time.perf_counter() - t0
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if "steps_per_s" in r]
    timed = [1.0 / r["steps_per_s"] for r in recs][args.warmup:]
    res = {"side": "posttrain" + ("_unshared" if args.no_share else "") + ("_compile" if args.compile else ""), "steps_per_s": len(timed) / sum(timed), "tokens_per_step": recs[-1]["tokens"],
           "wall_s": wall, "final_loss": summary["final_loss"], "peak_flops": measure_peak_flops(torch.device("cpu")),
           "threads": torch.get_num_threads()}
    shutil.rmtree(out, ignore_errors=True)
    return res


def worker_trl(args) -> dict:
    import dataclasses
    import shutil

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    out = WORK / f"run-trl-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    ds = datasets.Dataset.from_list([json.loads(line) for line in open(args.data)])
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, dtype=torch.float32)
    total = args.warmup + args.steps
    kw = dict(output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=total, learning_rate=LR,
              bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, logging_steps=10_000,
              save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, max_length=None,
              seed=0, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, torch_compile=args.compile)
    fields = {f.name for f in dataclasses.fields(RewardConfig)}
    if "activation_checkpointing" in fields:
        kw["activation_checkpointing"] = False
    cfg = RewardConfig(**kw)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, a, state, control, **k):
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    init_s = time.perf_counter() - t0
    ckpt = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
    first = trainer.train_dataset[0]
    trainer.train()
    wall = time.perf_counter() - t0
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]
    timed = deltas[args.warmup:]
    res = {"side": "trl", "steps_per_s": len(timed) / sum(timed), "wall_s": wall, "init_s": init_s,
           "gradient_checkpointing": ckpt, "threads": torch.get_num_threads(),
           "tokens_first_row": [len(first.get("chosen_ids", [])), len(first.get("rejected_ids", []))]}
    shutil.rmtree(out, ignore_errors=True)
    return res


def worker_profile(args) -> dict:
    """Median ms of the phases of one posttrain step (outside the engine: collate, forward + loss, backward,
    clip, AdamW)."""
    import torch

    from posttrain.data.load import load_rows
    from posttrain.data.tokenize import encode_dataset
    from posttrain.models.heads import load_reward_model
    from posttrain.stages.reward_model import RewardBatcher, RewardObjective, units_of

    rm, tok = load_reward_model(args.model_dir, device="cpu", dtype="fp32")
    enc = encode_dataset(tok, load_rows(args.data, kinds=["preference"]), max_len=256, max_prompt_len=128)
    units = units_of(enc.examples, "bradley_terry")
    make, obj = RewardBatcher(units, tok.pad_token_id), RewardObjective("bradley_terry")
    opt = torch.optim.AdamW(rm.parameters(), lr=LR, foreach=True)
    rm.train()
    phases = {k: [] for k in ("collate", "forward+loss", "backward", "clip", "adamw")}
    B = args.batch
    for s in range(args.warmup + args.steps):
        ix = [(s * B + i) % len(units) for i in range(B)]
        t = [time.perf_counter()]
        b = make(ix)
        t.append(time.perf_counter())
        loss, _ = obj(rm, b, float(B))
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0, foreach=True)
        t.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        if s >= args.warmup:
            for k, a, z in zip(phases, t, t[1:]):
                phases[k].append(z - a)
    return {"side": "profile", "phase_ms": {k: 1000 * statistics.median(v) for k, v in phases.items()}}


# --------------------------------------------------------------------------------------- driver
def _run_worker(python: str, which: str, args, fx: dict) -> dict:
    worker, extra = {"posttrain_unshared": ("posttrain", ["--no-share"]),
                     "posttrain_compile": ("posttrain", ["--compile"]),
                     "trl_compile": ("trl", ["--compile"])}.get(which, (which, []))
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, "--model-dir", fx["model"], "--data",
           fx["data"], "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if r.returncode != 0:
        raise SystemExit(f"{which} worker failed:\n{r.stderr[-4000:]}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--completion-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for both sides (0: torch's default)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--like-for-like", action="store_true", help="also run posttrain with share_prompt=false")
    ap.add_argument("--no-share", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--with-compile", action="store_true",
                    help="also run posttrain compile=true and TRL torch_compile=True")
    ap.add_argument("--worker", choices=["posttrain", "trl", "profile"])
    ap.add_argument("--model-dir")
    ap.add_argument("--data")
    args = ap.parse_args(argv)
    if args.worker:
        fn = {"posttrain": worker_posttrain, "trl": worker_trl, "profile": worker_profile}[args.worker]
        print("RESULT " + json.dumps(fn(args)), flush=True)
        return 0

    trl_py = None if args.skip_trl else str(ensure_env("trl"))
    sides = [("posttrain", sys.executable)] + ([("posttrain_unshared", sys.executable)] if args.like_for_like else [])
    sides += [("posttrain_compile", sys.executable)] if args.with_compile else []
    sides += [("trl", trl_py)] if trl_py else []
    sides += [("trl_compile", trl_py)] if trl_py and args.with_compile else []
    table = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        fx = prepare(model, args.prompt_len, args.completion_len)
        print(f"model {model}: {fx['params'] / 1e6:.3f}M params ({fx['matmul_params'] / 1e6:.3f}M in matmuls); "
              f"batch {args.batch} pairs x ({args.prompt_len} + {args.completion_len}) tokens; {args.rounds} rounds "
              f"x {args.steps} timed steps", flush=True)
        results: dict[str, list[dict]] = {s: [] for s, _ in sides}
        for rnd in range(args.rounds):
            for side, py in sides:
                res = _run_worker(py, side, args, fx)
                results[side].append(res)
                print(f"  round {rnd + 1}: {side:9s} {res['steps_per_s']:7.2f} steps/s", flush=True)
        p0 = results["posttrain"][0]
        for side, rs in results.items():
            best = max(r["steps_per_s"] for r in rs)
            # tokens each side actually runs through the model per step (posttrain: the shared prompt once)
            tokens = (rs[0]["tokens_per_step"] if not side.startswith("trl")
                      else args.batch * sum(rs[0]["tokens_first_row"]))
            mfu = 6 * fx["matmul_params"] * tokens * best / p0["peak_flops"]
            table.append((model, side, best, statistics.median(r["steps_per_s"] for r in rs), mfu, tokens))
        if trl_py:
            tr = results["trl"][0]
            print(f"  TRL: gradient checkpointing {tr['gradient_checkpointing']}, threads {tr['threads']}, "
                  f"first row chosen/rejected tokens {tr['tokens_first_row']}; posttrain tokens/step "
                  f"{p0['tokens_per_step']}", flush=True)
        if args.profile:
            prof = _run_worker(sys.executable, "profile", args, fx)
            print("  posttrain step phases (median ms):",
                  json.dumps({k: round(v, 2) for k, v in prof["phase_ms"].items()}), flush=True)
    print("\n| model | side | steps/s (best) | steps/s (median) | ms/step | tokens/step | MFU |")
    print("|---|---|---|---|---|---|---|")
    for model, side, best, med, mfu, tokens in table:
        print(f"| {model} | {side} | {best:.2f} | {med:.2f} | {1000 / best:.1f} | {tokens} | {100 * mfu:.2f}% |")
    if trl_py:
        for model in dict.fromkeys(m for m, *_ in table):
            b = {side: v for m, side, v, *_ in table if m == model}
            line = f"{model}: posttrain / TRL = {b['posttrain'] / b['trl']:.2f}x (best rounds)"
            if "posttrain_unshared" in b:
                line += f"; share_prompt=false / TRL = {b['posttrain_unshared'] / b['trl']:.2f}x"
            if "posttrain_compile" in b:
                line += (f"; compile=true / TRL = {b['posttrain_compile'] / b['trl']:.2f}x, / TRL torch_compile = "
                         f"{b['posttrain_compile'] / b['trl_compile']:.2f}x")
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
