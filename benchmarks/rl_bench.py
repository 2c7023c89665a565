"""posttrain RL vs TRL: steps/s of GRPO and RLOO (TRL 1.16) and PPO (TRL 1.12 ``trl.experimental.ppo``).

Run from the repository root with posttrain's environment; TRL runs in its own virtual environments, in a
subprocess, never imported by posttrain::

    .venv/bin/python benchmarks/rl_bench.py                  # ~10 min on 2 cores
    .venv/bin/python benchmarks/rl_bench.py --algos grpo --rounds 1 --steps 10

The TRL environments are created on first use (gitignored), each under an ``flock``:
``benchmarks/.env-trl`` (``torch==2.13.0`` first, then ``trl==1.16.0``; shared with the other benchmarks)
and ``benchmarks/.env-trl112`` (``torch==2.13.0``, then ``trl==1.12.0``, the last release with PPO).

Setup, the same on both sides: the ``small`` preset (~4.7M-param Llama, random init) saved once as an HF
folder that both load; plain-text prompts of exactly ``--prompt-len`` (32) tokens; ``--new-tokens`` (32) new
tokens at temperature 1 (no top-k / top-p), stopping at eos; fp32 on the CPU with torch's default threads;
AdamW lr 1e-5, clipping at 1.0; no checkpointing, no evaluation, no sample logging during the timed steps.

* GRPO / RLOO: ``G = 4`` completions per prompt, 2 prompts per step = 8 completions per optimizer step
  (TRL's ``per_device_train_batch_size=8`` counts completions), one optimizer step per rollout, a python
  reward function (:func:`vowel_reward`, identical on both sides), KL coefficient β = ``--beta`` (0.04; both
  sides then run a reference model), token-mean loss (TRL's default ``loss_type="dapo"`` for GRPO).
* PPO: 8 prompts per rollout (one completion each), 4 PPO epochs over one minibatch of 8 (= TRL's defaults
  ``num_ppo_epochs=4``, ``num_mini_batches=1``), i.e. 4 optimizer steps per rollout; a reward model
  (the ``small`` backbone with a random score head, saved once) scores the completions; the value model is
  initialised from it; KL 0.05 in the reward (k1), GAE γ = 1, λ = 0.95. TRL 1.12's PPOTrainer is run AS
  SHIPPED: it calls ``gc.collect()`` twice per update (~85% of its step time on CPU per PEERS.md); the
  figure is reported as measured, with that behaviour.

TRL runs with its fastest CPU settings (``bf16=False``, ``use_cpu=True``, gradient/activation checkpointing
off, no logging until the end). posttrain runs in this process; TRL in a subprocess of its venv; the two
alternate (``--rounds`` times each), so machine load affects both alike.

Timing: the steady state, the wall time from the end of step ``--warmup`` to the end of the last step
(rollout, scoring, reference/old/value forwards, updates). For posttrain the per-step split
(``time/generate_s``, ``time/score_s``, ``time/forward_s``, ``time/train_s`` from ``metrics.jsonl``) shows
where the time goes. Results are written to ``benchmarks/results/rl_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "results" / "rl_bench"
sys.path.insert(0, str(HERE))
from peer_env import ensure_env  # noqa: E402  (benchmarks/peer_env.py: .env-trl and .env-trl112)
PEER_ENV = {"grpo": "trl", "rloo": "trl", "ppo": "trl112"}


def vowel_reward(prompts, completions, **kwargs):
    """The reward both sides use for GRPO/RLOO: the number of vowels in the completion."""
    return [float(sum(ch in "aeiou" for ch in str(c).lower())) for c in completions]


# ----------------------------------------------------------------------------------- fixtures
def prepare(args) -> dict:
    """The policy and reward-model folders and the prompts (exactly ``prompt_len`` tokens), shared by both."""
    import random

    from posttrain.models.heads import reward_model_from_causal
    from posttrain.models.load import save_model
    from posttrain.models.presets import build_preset

    WORK.mkdir(parents=True, exist_ok=True)
    model_dir, rm_dir = WORK / f"model-{args.preset}", WORK / f"rm-{args.preset}"
    model, tok = build_preset(args.preset, seed=0)
    if not (model_dir / "config.json").is_file():
        save_model(model, tok, model_dir)
    if not (rm_dir / "config.json").is_file():
        rm, _ = reward_model_from_causal(model, tokenizer=tok, seed=1)
        save_model(rm, tok, rm_dir)
    vocab = tok.get_vocab()
    words = [tok.convert_tokens_to_string([t]) for t, i in sorted(vocab.items(), key=lambda kv: kv[1])
             if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 2]
    words = [w for w in words if len(tok.encode(w, add_special_tokens=False)) == 1]
    rng = random.Random(0)
    prompts = []
    while len(prompts) < 256:
        s = "".join(rng.choice(words) for _ in range(args.prompt_len)).strip()
        if len(tok.encode(s, add_special_tokens=False)) == args.prompt_len:
            prompts.append(s)
    data = WORK / f"prompts-{args.prompt_len}.jsonl"
    # an ``answer`` column makes the file a "verifiable" dataset for posttrain's loader (which has no
    # prompt-only kind yet); neither reward reads it
    data.write_text("".join(json.dumps({"prompt": p, "answer": "0"}) + "\n" for p in prompts))
    return {"model": str(model_dir), "rm": str(rm_dir), "data": str(data)}


def steady(ends: list[float], warmup: int) -> float:
    """Steps per second between the end of step ``warmup`` and the end of the last step."""
    t = ends[warmup - 1:] if warmup > 0 else ends
    return (len(t) - 1) / (t[-1] - t[0])


# ---------------------------------------------------------------------------------- posttrain
def run_posttrain(algo: str, fx: dict, args) -> dict:
    from posttrain.config import RLConfig, load_config
    from posttrain.io import read_jsonl
    from posttrain.stages.rl import run

    out = Path(tempfile.mkdtemp(prefix=f"rl_bench_{algo}_")) / "run"
    common = [f"model={fx['model']}", f"data.train={fx['data']}", f"output_dir={out}", f"max_steps={args.steps}",
              "lr=1e-5", "max_grad_norm=1.0", f"generation.max_new_tokens={args.new_tokens}",
              "generation.temperature=1.0", f"data.max_prompt_len={args.prompt_len + 8}", "progress=false",
              "sample_every=0", "dtype=fp32", "device=cpu", "gold_metric=false", "seed=0"]
    if args.threads:
        common.append(f"num_threads={args.threads}")
    if algo == "ppo":
        extra = ["algo=ppo", f"reward=rm:{fx['rm']}", "prompts_per_step=8", "group_size=1", "ppo_epochs=4",
                 "minibatch_size=8", "batch_size=8", "beta=0.05", "vf_coef=0.1", "lam=0.95"]
    else:
        extra = [f"algo={algo}", f"prompts_per_step={args.batch // args.group}", f"group_size={args.group}",
                 f"batch_size={args.batch}", f"beta={args.beta}"]
    cfg = load_config(RLConfig, None, common + extra + list(args.set))
    t0 = time.perf_counter()
    run(cfg, reward=vowel_reward if algo != "ppo" else None)
    wall = time.perf_counter() - t0
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if "rl_step" in r]
    w = args.warmup
    split = {k: statistics.mean(r[f"time/{k}_s"] for r in recs[w:]) for k in ("generate", "score", "forward",
                                                                                "train", "step")}
    return {"steps_per_s": steady([r["elapsed_s"] for r in recs], w), "wall_s": wall,
            "response_length": statistics.mean(r["response_length"] for r in recs),
            "split_s": split}


# ---------------------------------------------------------------------------------------- TRL
def _trl_common(out: str, args) -> dict:
    return dict(output_dir=out, learning_rate=1e-5, max_grad_norm=1.0, logging_steps=10_000, save_strategy="no",
                report_to="none", bf16=False, use_cpu=True, gradient_checkpointing=False, disable_tqdm=True,
                seed=0, dataloader_num_workers=0, lr_scheduler_type="constant")


def _clock():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, a, state, control, **kw):
            self.ends.append(time.perf_counter())

    return Clock()


def trl_worker(algo: str, fx: dict, args) -> dict:
    """Runs in the TRL venv (imports only torch / transformers / datasets / trl)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    prompts = [json.loads(line)["prompt"] for line in open(fx["data"])]
    tok = AutoTokenizer.from_pretrained(fx["model"])
    out = tempfile.mkdtemp(prefix=f"rl_bench_trl_{algo}_")
    clock = _clock()
    kw = _trl_common(out, args)
    try:
        kw_ckpt = {"activation_checkpointing": False}
        import transformers

        if "activation_checkpointing" not in transformers.TrainingArguments.__dataclass_fields__:
            kw_ckpt = {}
    except Exception:  # pragma: no cover
        kw_ckpt = {}
    t0 = time.perf_counter()
    if algo in ("grpo", "rloo"):
        from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

        Config, Trainer = (GRPOConfig, GRPOTrainer) if algo == "grpo" else (RLOOConfig, RLOOTrainer)
        cfg = Config(**kw, **kw_ckpt, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                     num_generations=args.group, max_completion_length=args.new_tokens, temperature=1.0,
                     max_steps=args.steps, beta=args.beta)
        trainer = Trainer(model=fx["model"], reward_funcs=vowel_reward, args=cfg,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tok, callbacks=[clock])
    else:
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        ds = Dataset.from_list([{"input_ids": x} for x in ids])
        cfg = PPOConfig(**kw, **kw_ckpt, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                        num_mini_batches=1, num_ppo_epochs=4, total_episodes=8 * args.steps,
                        response_length=args.new_tokens, temperature=1.0, stop_token="eos", kl_coef=0.05,
                        vf_coef=0.1, lam=0.95, num_sample_generations=0, local_rollout_forward_batch_size=8)
        policy = AutoModelForCausalLM.from_pretrained(fx["model"], dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(fx["model"], dtype=torch.float32)
        rm = AutoModelForSequenceClassification.from_pretrained(fx["rm"], num_labels=1, dtype=torch.float32)
        vm = AutoModelForSequenceClassification.from_pretrained(fx["rm"], num_labels=1, dtype=torch.float32)
        trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                             value_model=vm, train_dataset=ds, callbacks=[clock])
    trainer.train()
    wall = time.perf_counter() - t0
    return {"steps_per_s": steady(clock.ends, args.warmup), "wall_s": wall, "steps": len(clock.ends)}


def run_trl(algo: str, fx: dict, args) -> dict:
    py = ensure_env(PEER_ENV[algo])
    cmd = [str(py), str(Path(__file__).resolve()), "--worker", algo, "--fixtures", json.dumps(fx),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--group", str(args.group), "--new-tokens", str(args.new_tokens), "--beta", str(args.beta),
           "--prompt-len", str(args.prompt_len)] + (["--threads", str(args.threads)] if args.threads else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"TRL {algo} worker failed (rc={r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algos", default="grpo,rloo,ppo")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="completions per optimizer step (grpo/rloo)")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads on both sides (default: torch's choice, i.e. the cores)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra posttrain config override (repeatable), e.g. --set share_prompt=false")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fixtures", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results" / "rl_bench.json"))
    args = ap.parse_args(argv)
    if args.worker:
        res = trl_worker(args.worker, json.loads(args.fixtures), args)
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    sys.path.insert(0, str(ROOT))
    import torch

    from posttrain.io import atomic_write_json

    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    for a in algos:
        ensure_env(PEER_ENV[a])
    fx = prepare(args)
    print(f"preset:{args.preset}; prompts {args.prompt_len} tokens; {args.new_tokens} new tokens; "
          f"{args.threads or torch.get_num_threads()} threads; steps {args.steps} (warmup {args.warmup}); rounds {args.rounds}",
          flush=True)
    results: dict[str, dict[str, list]] = {a: {"posttrain": [], "trl": []} for a in algos}
    for rnd in range(args.rounds):
        for a in algos:
            p = run_posttrain(a, fx, args)
            results[a]["posttrain"].append(p)
            print(f"round {rnd + 1} {a:5s} posttrain {p['steps_per_s']:.2f} steps/s  split "
                  + " ".join(f"{k} {v * 1e3:.0f}ms" for k, v in p["split_s"].items()), flush=True)
            t = run_trl(a, fx, args)
            results[a]["trl"].append(t)
            print(f"round {rnd + 1} {a:5s} TRL       {t['steps_per_s']:.2f} steps/s", flush=True)
    table = {}
    for a in algos:
        p = statistics.median(r["steps_per_s"] for r in results[a]["posttrain"])
        t = statistics.median(r["steps_per_s"] for r in results[a]["trl"])
        split = {k: statistics.median(r["split_s"][k] for r in results[a]["posttrain"])
                 for k in results[a]["posttrain"][0]["split_s"]}
        table[a] = {"posttrain_steps_per_s": p, "trl_steps_per_s": t, "ratio": p / t, "posttrain_split_s": split,
                    "peer": "trl==1.12.0 trl.experimental.ppo (as shipped, gc.collect per update)" if a == "ppo"
                    else "trl==1.16.0"}
    print("\nalgo   posttrain steps/s   TRL steps/s   ratio   posttrain time per step: generate / score / "
          "forward / train")
    for a, row in table.items():
        s = row["posttrain_split_s"]
        print(f"{a:5s}  {row['posttrain_steps_per_s']:17.2f}   {row['trl_steps_per_s']:11.2f}   "
              f"{row['ratio']:5.2f}x  {s['generate'] * 1e3:.0f} / {s['score'] * 1e3:.0f} / "
              f"{s['forward'] * 1e3:.0f} / {s['train'] * 1e3:.0f} ms (of {s['step'] * 1e3:.0f})")
    atomic_write_json(args.out, {"settings": vars(args), "table": table, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
