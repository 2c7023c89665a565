"""DPO steps/s: ``posttrain dpo`` vs TRL's ``DPOTrainer`` on the same model, data and settings.

Setup (both sides): the ``small`` preset (~4.7M params, random init) saved once to a folder; 512 synthetic
preference pairs whose prompt is exactly ``--prompt-len`` tokens and whose completions are exactly
``--completion-len`` tokens including the eos both libraries append; batch 8 pairs; β = 0.1; sigmoid loss;
fp32; learning rate 1e-6 (TRL's default) on both sides; no activation checkpointing; CPU.

Rounds alternate (posttrain, TRL, posttrain, TRL, ...), each in a fresh subprocess, so that load from other
processes hits both sides alike; each round times ``--steps`` optimizer steps after ``--warmup`` untimed
ones (step end to step end, so data collation counts). The best round of each side is reported (the least
disturbed one on a shared machine) together with the median.

Variants: posttrain's defaults (cached reference log-probs, ``precompute_ref=true``: the reference is run once
over the dataset before training; ``share_prompt=auto``, which packs this shape: each pair's prompt computed
once, one ``[B, P+C+R]`` forward with a 4-D mask), the same with ``share_prompt=false`` (the ``[2B, P+C]``
layout TRL uses), and on the fly unpacked (``precompute_ref=false``, a reference
forward per step like TRL's default); TRL with its default (``precompute_ref_log_probs=False``) and with
``precompute_ref_log_probs=True`` (its fastest setting). ``--with-compile`` adds posttrain ``compile=true``
and TRL ``torch_compile=True``. The one-off precompute cost is reported separately.

TRL runs in its own virtual environment ``benchmarks/.env-trl`` (gitignored; created on first use under an
``flock`` on ``benchmarks/.env-trl.lock``: ``torch==2.13.0`` first, then ``trl==1.16.0``), never in
posttrain's.

``--profile`` also times the phases of one posttrain step (collate, forward + loss, backward, clip,
AdamW) and prints torch.profiler's top operators. MFU = 6·N·tokens/s / peak with N the matmul parameters and
peak the measured fp32 matmul rate (:func:`posttrain.engine.trainer.measure_peak_flops`).

Usage: ``python -m benchmarks.dpo_bench [--rounds 3] [--steps 20] [--profile]``
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
WORK = HERE / "results" / "dpo_bench"
N_ROWS = 512

sys.path.insert(0, str(HERE))
from peer_env import ensure_env  # noqa: E402  (benchmarks/peer_env.py: the shared TRL venv)


# ----------------------------------------------------------------------------------- fixtures
def prepare(args) -> dict:
    """The model folder and the preference data (exact token lengths), shared by both sides."""
    import random

    from posttrain.models.load import save_model
    from posttrain.models.presets import build_preset, count_params

    WORK.mkdir(parents=True, exist_ok=True)
    model_dir = WORK / f"model-{args.model}"
    model, tok = build_preset(args.model, seed=0)
    if not (model_dir / "config.json").is_file():
        save_model(model, tok, model_dir)
    # words that are one token each (" word"), so a string of k of them is exactly k tokens
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

    rows = [{"prompt": text(args.prompt_len), "chosen": text(args.completion_len - 1),
             "rejected": text(args.completion_len - 1)} for _ in range(N_ROWS)]
    data = WORK / f"prefs-{args.prompt_len}-{args.completion_len}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from posttrain.engine.trainer import matmul_params

    return {"model": str(model_dir), "data": str(data), "params": count_params(model),
            "matmul_params": matmul_params(model)}


# ------------------------------------------------------------------------------------ workers
def worker_posttrain(args) -> dict:
    import shutil

    import torch

    from posttrain.config import DPOConfig
    from posttrain.engine.trainer import measure_peak_flops
    from posttrain.io import read_jsonl
    from posttrain.stages.dpo import run

    out = WORK / f"run-posttrain-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    total = args.warmup + args.steps
    cfg = DPOConfig(model=args.model_dir, data={"train": args.data, "max_len": 256, "max_prompt_len": 128},
                    output_dir=str(out), max_steps=total, batch_size=args.batch, lr=args.lr, beta=0.1, loss="dpo",
                    dtype="fp32", device="cpu", precompute_ref=args.precompute, progress=False, sample_prompts=0,
                    log_every=1, seed=0, ref_batch_size=64, compile=args.compile,
                    share_prompt={"true": True, "false": False}.get(args.share_prompt, args.share_prompt))
    t0 = time.perf_counter()
    summary = run(cfg)
    wall = time.perf_counter() - t0
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if "steps_per_s" in r]
    step_times = [1.0 / r["steps_per_s"] for r in recs]
    timed = step_times[args.warmup:]
    tokens = recs[-1]["tokens"]
    res = {"side": "posttrain", "precompute": args.precompute, "share_prompt": args.share_prompt,
           "steps_per_s": len(timed) / sum(timed), "mfu_engine": recs[-1].get("mfu"),
           "tokens_per_step": tokens, "wall_s": wall, "ref_precompute_s": summary["reference"]["time_s"],
           "final_loss": summary["final_loss"], "peak_flops": measure_peak_flops(torch.device("cpu")),
           "threads": torch.get_num_threads()}
    shutil.rmtree(out, ignore_errors=True)
    return res


def worker_trl(args) -> dict:
    import shutil

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    out = WORK / f"run-trl-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    rows = [json.loads(line) for line in open(args.data)]
    ds = datasets.Dataset.from_list(rows)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    total = args.warmup + args.steps
    kw = dict(output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=total,
              learning_rate=args.lr, beta=0.1, loss_type=["sigmoid"], bf16=False, fp16=False, use_cpu=True,
              gradient_checkpointing=False, logging_steps=10_000, save_strategy="no", report_to=[],
              disable_tqdm=True, dataloader_num_workers=0, max_length=None, seed=0,
              precompute_ref_log_probs=args.precompute, torch_compile=args.compile)
    import dataclasses

    if "activation_checkpointing" in {f.name for f in dataclasses.fields(DPOConfig)}:
        kw["activation_checkpointing"] = False
    cfg = DPOConfig(**kw)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **k):
            stamps.append(time.perf_counter())

        def on_train_begin(self, a, state, control, **k):
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    t_init = time.perf_counter() - t0
    ckpt = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
    first = trainer.train_dataset[0]
    trainer.train()
    wall = time.perf_counter() - t0
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]
    timed = deltas[args.warmup:]
    n_prompt = len(first.get("prompt_input_ids", first.get("prompt_ids", [])))
    n_c = len(first.get("chosen_input_ids", first.get("chosen_ids", [])))
    res = {"side": "trl", "precompute": args.precompute, "steps_per_s": len(timed) / sum(timed), "wall_s": wall,
           "init_s": t_init, "gradient_checkpointing": ckpt, "threads": torch.get_num_threads(),
           "tokens_first_row": [n_prompt, n_c], "columns": sorted(first.keys())}
    shutil.rmtree(out, ignore_errors=True)
    return res


def worker_profile(args) -> dict:
    """Phases of one posttrain DPO step (cached reference), and torch.profiler's top operators."""
    import torch

    from posttrain.data.load import load_rows
    from posttrain.data.tokenize import encode_dataset
    from posttrain.engine.trainer import measure_peak_flops
    from posttrain.losses.preference import PREFERENCE_LOSSES
    from posttrain.models.load import load_causal_lm
    from posttrain.stages.common import cost_shape
    from posttrain.stages.dpo import PreferenceBatcher, PreferenceObjective, reference_logps

    model, tok = load_causal_lm(args.model_dir, device="cpu", dtype="fp32")
    ref, _ = load_causal_lm(args.model_dir, device="cpu", dtype="fp32")
    ref.requires_grad_(False)
    enc = encode_dataset(tok, load_rows(args.data, kinds=["preference"]), max_len=256, max_prompt_len=128).examples
    cached = reference_logps(ref, enc, paired=True, pad_id=tok.pad_token_id, batch_size=64)
    share = {"true": True, "false": False}.get(args.share_prompt, args.share_prompt)
    batcher = PreferenceBatcher(enc, tok.pad_token_id, True, 256, cached, share_prompt=share,
                                cost_shape=cost_shape(model))  # the stage's default layout (auto: packed here)
    obj = PreferenceObjective(PREFERENCE_LOSSES["dpo"], 0.1)
    fly = PreferenceObjective(PREFERENCE_LOSSES["dpo"], 0.1, ref_model=ref)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=True)  # as the engine's build_optimizer
    model.train()
    phases = {k: [] for k in ("collate", "forward+loss", "backward", "clip", "adamw", "ref_forward")}
    B = args.batch
    for s in range(args.warmup + args.steps):
        ix = list(range((s * B) % N_ROWS, (s * B) % N_ROWS + B))
        t = [time.perf_counter()]
        b = batcher(ix)
        t.append(time.perf_counter())
        loss, _ = obj(model, b, float(B))
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        t.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        with torch.no_grad():
            fly._reference(b, slice(None))
        t.append(time.perf_counter())
        if s >= args.warmup:
            for k, a, z in zip(phases, t, t[1:]):
                phases[k].append(z - a)
    ms = {k: 1000 * statistics.median(v) for k, v in phases.items()}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(3):
            b = batcher(list(range(s * B, s * B + B)))
            loss, _ = obj(model, b, float(B))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)
    return {"side": "profile", "phase_ms": ms, "peak_flops": measure_peak_flops(torch.device("cpu")),
            "tokens_per_step": int(b["num_tokens"]) if "num_tokens" in b else int(b["attention_mask"].sum()),
            "profiler": table}


# --------------------------------------------------------------------------------------- driver
def _run_worker(python: str, which: str, args, fx: dict, precompute: bool, share: str = "auto",
                compiled: bool = False) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", which, "--model-dir", fx["model"], "--data",
           fx["data"], "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--lr", str(args.lr)] + (["--precompute"] if precompute else []) + (["--share-prompt", share] if which != "trl" else []) \
        + (["--compile"] if compiled else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if which != "trl":
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if r.returncode != 0:
        raise SystemExit(f"{which} worker failed:\n{r.stderr[-4000:]}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--model", default="small")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--completion-len", type=int, default=32)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--worker", choices=["posttrain", "trl", "profile"])
    ap.add_argument("--model-dir")
    ap.add_argument("--data")
    ap.add_argument("--precompute", action="store_true")
    ap.add_argument("--share-prompt", choices=["auto", "true", "false"], default="auto")
    ap.add_argument("--compile", action="store_true", help="worker: torch.compile (posttrain compile=true, "
                    "TRL torch_compile=True)")
    ap.add_argument("--with-compile", action="store_true", help="add the torch.compile variants of both sides")
    args = ap.parse_args(argv)
    if args.worker:
        fn = {"posttrain": worker_posttrain, "trl": worker_trl, "profile": worker_profile}[args.worker]
        print("RESULT " + json.dumps(fn(args)), flush=True)
        return 0

    fx = prepare(args)
    trl_py = None if args.skip_trl else str(ensure_env("trl"))
    me = sys.executable
    # (label, side, python, precompute reference, share prompt, torch.compile)
    variants = [("posttrain (default)", "posttrain", me, True, "auto", False),
                ("posttrain share_prompt=false", "posttrain", me, True, "false", False),
                ("posttrain on the fly, unpacked", "posttrain", me, False, "false", False)]
    if args.with_compile:
        variants += [("posttrain compile=true", "posttrain", me, True, "auto", True)]
    if trl_py:
        variants += [("TRL (default)", "trl", trl_py, False, "false", False),
                     ("TRL precompute_ref_log_probs", "trl", trl_py, True, "false", False)]
        if args.with_compile:
            variants += [("TRL torch_compile", "trl", trl_py, False, "false", True)]
    results: dict[str, list[dict]] = {v[0]: [] for v in variants}
    print(f"model {args.model}: {fx['params'] / 1e6:.2f}M params ({fx['matmul_params'] / 1e6:.2f}M in matmuls); "
          f"batch {args.batch} pairs x ({args.prompt_len} + {args.completion_len}) tokens; "
          f"{args.rounds} rounds x {args.steps} timed steps", flush=True)
    for rnd in range(args.rounds):
        for label, which, py, pre, share, compiled in variants:
            res = _run_worker(py, which, args, fx, pre, share, compiled)
            results[label].append(res)
            print(f"  round {rnd + 1}: {label:30s} {res['steps_per_s']:6.2f} steps/s", flush=True)
    best = {k: max(r["steps_per_s"] for r in v) for k, v in results.items()}
    med = {k: statistics.median(r["steps_per_s"] for r in v) for k, v in results.items()}
    p0 = results["posttrain (default)"][0]
    tokens = 2 * args.batch * (args.prompt_len + args.completion_len)
    peak = max(r["peak_flops"] for k, v in results.items() for r in v if "peak_flops" in r)
    print(f"\n| variant | reference log-probs | steps/s (best of {args.rounds}) | steps/s (median) | ms/step | "
          f"MFU |")
    print("|---|---|---|---|---|---|")
    for label, which, _, pre, share, compiled in variants:
        sps = best[label]
        mfu = 6 * fx["matmul_params"] * tokens * sps / peak
        print(f"| {label} | {'precomputed' if pre else 'on the fly'} | {sps:.2f} | {med[label]:.2f} | "
              f"{1000 / sps:.0f} | {100 * mfu:.1f}% |")
    print(f"\nMFU = 6·N·tokens/s / peak, N = {fx['matmul_params'] / 1e6:.2f}M matmul params, {tokens} tokens/step "
          f"(2B sequences of prompt + completion; the packed default processes "
          f"{tokens - args.batch * args.prompt_len} but is credited the same useful work); measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s. An on-the-fly "
          f"reference forward is extra work not counted.")
    print(f"posttrain one-off reference precompute over {N_ROWS} pairs: {p0['ref_precompute_s']:.2f} s")
    if trl_py:
        ours = best["posttrain (default)"]
        for lab in ("TRL (default)", "TRL precompute_ref_log_probs"):
            print(f"posttrain default / {lab}: {ours / best[lab]:.2f}x; share_prompt=false / {lab}: "
                  f"{best['posttrain share_prompt=false'] / best[lab]:.2f}x")
        if args.with_compile:
            print(f"posttrain compile=true / TRL (default): {best['posttrain compile=true'] / best['TRL (default)']:.2f}x; "
                  f"/ TRL torch_compile: {best['posttrain compile=true'] / best['TRL torch_compile']:.2f}x")
        print("like for like (both on the fly, unpacked): "
              f"{best['posttrain on the fly, unpacked'] / best['TRL (default)']:.2f}x")
        tr = results["TRL (default)"][0]
        print(f"TRL: gradient checkpointing {tr['gradient_checkpointing']}, threads {tr['threads']}, first row "
              f"prompt/chosen tokens {tr['tokens_first_row']}, columns {tr['columns']}")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results.json").write_text(json.dumps({"results": results, "best": best, "median": med,
                                                   "args": vars(args), "fixture": fx}, indent=1))
    if args.profile:
        prof = _run_worker(me, "profile", args, fx, True)
        print("\nposttrain step phases (median ms):", json.dumps({k: round(v, 1) for k, v in prof["phase_ms"].items()}))
        print(prof["profiler"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
