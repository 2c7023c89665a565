"""Measured acceptance of ``posttrain rejection-sampling`` and ``posttrain best-of-n`` on the toy world:
``python -m posttrain.stages.rs_check [--sft RUN] [--rm RUN] [--out runs/rs_check]``.

1. An SFT model (``--sft``) and a K-wise reward model on the world's rankings (``--rm``); by default both are
   trained here exactly as ``posttrain.stages.rl_check`` trains them (the instructgpt recipe's toy settings).
2. ``rejection_sampling``: N = 8 completions per training prompt from the SFT model, scored by the reward model
   (never by gold), the top-1 per prompt kept, then SFT of the SFT model on the selection. Judged by the hidden
   gold reward against the SFT model on the world's held-out eval prompts (same sampling settings and seeds on
   both sides; ties count ½; two sampling seeds).
3. ``best_of_n``: on the held-out eval prompts, N = 64 SFT samples per prompt; for n = 1, 2, 4, ..., 64 the
   proxy (RM) and gold reward of the completion best-of-n picks by the proxy, with the analytic KL
   ``log n − (n − 1)/n``. Expected shape: proxy rises monotonically with n; gold rises less, then flattens or
   falls (the RM is a proxy with a length bias).

Results: ``OUT/rs_check.json`` and tables on stdout. Finished runs are reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

FAMILIES = ("fact", "emotional", "howto", "arith", "reason")
TOY = {"max_len": 96, "max_prompt_len": 48}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posttrain.stages.rs_check", description=__doc__.split("\n")[0])
    ap.add_argument("--world", default=None)
    ap.add_argument("--sft", default=None, help="SFT run dir (default: train one under --out)")
    ap.add_argument("--rm", default=None, help="reward-model run dir (default: train one under --out)")
    ap.add_argument("--out", default="runs/rs_check")
    ap.add_argument("--n", type=int, default=8, help="rejection sampling: completions per prompt")
    ap.add_argument("--bon-n", type=int, default=64, help="best-of-n: largest n (= samples per prompt)")
    args = ap.parse_args(argv)

    from posttrain.config import BestOfNConfig, RejectionSamplingConfig
    from posttrain.eval.policy import evaluate_policy, world_eval_rows
    from posttrain.io import atomic_write_json, write_jsonl
    from posttrain.models.load import load_causal_lm
    from posttrain.stages.rejection_sampling import best_of_n, run as rs_run
    from posttrain.stages.rl_check import _rm, _sft  # the same toy SFT and K-wise RM as the RL check
    from posttrain.world.build import build_world

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = Path(build_world(args.world).root)
    sft = Path(args.sft) if args.sft else _sft(world, out, False, None)
    rm = Path(args.rm) if args.rm else _rm(world, sft, out, False, None)[0]
    report: dict = {"world": str(world), "sft": str(sft), "rm": str(rm)}

    rs = rs_run(RejectionSamplingConfig(
        model=str(sft), reward=f"rm:{rm}", num_samples=args.n, select="top1", output_dir=str(out / "rs"),
        progress=False, data={"train": str(world / "preference/train.jsonl"), "max_train_rows": 800, **TOY},
        generation={"max_new_tokens": 40, "temperature": 1.0}, max_steps=60, batch_size=32, lr=3e-4,
        warmup_steps=5, sft={"sample_prompts": 0}))
    report["rejection_sampling_summary"] = {k: v for k, v in rs.items() if isinstance(v, (int, float, str, dict))}

    rows = world_eval_rows(world, FAMILIES, per_family=32)
    base, tok = load_causal_lm(str(sft), device="cpu", dtype="fp32")
    pol, _ = load_causal_lm(str(out / "rs"), device="cpu", dtype="fp32")
    evals = []
    for seed in (0, 1):
        gen = {"temperature": 1.0, "max_new_tokens": 40}
        m = evaluate_policy(pol, tok, rows, reference=base, baseline=base, seed=seed, generation=gen,
                            max_prompt_len=48).metrics
        evals.append({k: m[k] for k in ("win_rate", "gold", "baseline/gold", "kl", "length")})
    report["rejection_sampling_eval"] = evals

    prompts = out / "bon_prompts.jsonl"
    write_jsonl(prompts, [{"prompt": r["prompt"]} for r in rows])
    bon = best_of_n(BestOfNConfig(model=str(sft), reward=f"rm:{rm}", max_n=args.bon_n,
                                  data={"train": str(prompts), **TOY}, output_dir=str(out / "best_of_n"),
                                  generation={"max_new_tokens": 40, "temperature": 1.0}, progress=False))
    table = bon["table"]
    report["best_of_n"] = table
    report["wall_time_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "rs_check.json", report)

    print(f"\nrejection sampling (N={args.n}, RM-scored, top-1, then SFT) vs SFT on {len(rows)} held-out prompts:")
    for s, e in enumerate(evals):
        print(f"  seed {s}: gold win-rate {e['win_rate']:.3f}, gold {e['gold']:.3f} (SFT {e['baseline/gold']:.3f}), "
              f"KL {e['kl']:.2f}, length {e['length']:.1f}")
    print("\nbest-of-n on the SFT model (proxy = RM, gold = hidden gold):")
    print("  n     KL     proxy   gold   gold(oracle)  length")
    for r in table:
        print(f"  {int(r['n']):<4}  {r['kl']:.3f}  {r['proxy']:+.3f}  {r['gold']:+.3f}  "
              f"{r.get('gold_oracle', float('nan')):+.3f}        {r.get('length', float('nan')):.1f}")
    print(f"({report['wall_time_s']:.0f} s; {out / 'rs_check.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
