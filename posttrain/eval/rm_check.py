"""Measured acceptance of ``posttrain reward-model`` on the toy world (``python -m posttrain.eval.rm_check``).

Steps (each a normal stage run under ``--out``; finished runs are reused, so a second call only prints):

1. the toy world (``posttrain.world.build.build_world``; reused when built) and an SFT model from its base
   model (``posttrain sft``, the InstructGPT recipe's toy settings), or ``--sft RUN_DIR``;
2. ``pairwise``: a Bradley–Terry RM on the annotator pairs (``preference/train``, 1600 pairs);
3. K-wise RMs (InstructGPT loss) on rankings (``ranking/train``, K = 4) against pairwise ones, on two
   annotation budgets (``--budget``):

   * the same number of annotated PROMPTS (``kwise_1600_prompts`` vs ``pairwise_1600_prompts``: all 1600
     rankings vs the 1600 pairs). This is the budget InstructGPT's argument is about: a labeller's
     unit of work is a prompt — read it once, then order its K responses — and one ranking yields
     C(K, 2) = 6 comparisons;
   * the same number of labelled COMPARISONS (``kwise``: ⌈1600 / 6⌉ = 267 rankings = 1602 comparisons vs
     ``pairwise``: 1600 pairs). The hardest budget for K-wise: its comparisons come from 267 prompts and
     1068 distinct completions, the pairwise model's from 1600 prompts and 3200 completions, and the 6
     comparisons of one ranking are not independent;
4. ``control``: the same 1600 pairs relabelled by annotators WITHOUT the length bias (λ = 0, same noise
   temperatures), so the length effect in ``pairwise`` can be attributed to the planted λ.

Every RM trains from the same SFT backbone with the same optimizer settings for ONE epoch over its labelled
data (InstructGPT §3.5 trains its RM for a single epoch; more overfit) in about ``--steps`` optimizer steps
(batch = units / steps: 16 pairs, or 3 rankings of the 267; ``--rm-seeds`` repeats every run per seed and
the checks use the means), and is evaluated on the same held-out annotator pairs
(``preference/eval``, 320): accuracy against the labels, agreement with the GOLD preference (pairs where
gold ties are left out; the labels' own agreement with gold is the noise level), ECE, and the reward–length
correlation next to gold's. Results go to ``OUT/rm_check.json`` and a table on stdout.

Acceptance: ``pairwise`` agrees with gold on ≥ 75% of held-out pairs; its reward–length correlation is above
gold's and above the λ = 0 control's (the planted bias shows); K-wise is at least as accurate as pairwise:
strictly on the same prompts, within one standard error of the difference (binomial, on the held-out pairs)
on the same comparisons.

``--plackett-luce`` adds the K-wise runs with ``loss=plackett_luce``. Measured (session 9, ``--sft
runs/dpo_acceptance/sft --no-control --plackett-luce``, one seed, 291 gold-decided held-out pairs, σ ≈ 0.023):
gold agreement on the same comparisons kwise 0.777 / Plackett–Luce 0.797 (pairwise 0.808); on the same
prompts 0.832 / 0.825 (pairwise 0.808) — no difference beyond one σ.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

SFT = dict(data={"max_len": 96, "max_prompt_len": 48}, max_steps=150, batch_size=32, lr=1e-3, warmup_steps=10,
           lr_schedule="cosine", min_lr_ratio=0.1, sample_prompts=0)
RM = dict(data={"max_len": 96, "max_prompt_len": 48}, max_steps=100, lr=3e-4, warmup_steps=10,
          lr_schedule="cosine", min_lr_ratio=0.1)
N_PAIRS = 1600


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    from posttrain.io import write_jsonl

    write_jsonl(path, rows)
    return str(path)


def relabel_without_length_bias(rows: list[dict], seed: int = 1) -> list[dict]:
    """The same pairs labelled by the world's annotator pool with ``length_bias = 0``."""
    from posttrain.world.annotators import AnnotatorPool

    pool = AnnotatorPool(length_bias=0.0, seed=seed)
    out = []
    for r in rows:
        a, b = r["chosen"], r["rejected"]
        keep = pool.prefer(r["prompt"], a, b)
        out.append({"prompt": r["prompt"], "chosen": a if keep else b, "rejected": b if keep else a})
    return out


def _run_rm(name: str, out: Path, model: str, train: str, evalf: str, loss: str, batch: int, steps: int,
            threads: int | None, seed: int) -> dict:
    from posttrain.config import RewardModelConfig
    from posttrain.stages.reward_model import run

    cfg = RewardModelConfig.model_validate({
        **RM, "model": model, "data": {**RM["data"], "train": train, "eval": evalf}, "loss": loss,
        "batch_size": batch, "max_steps": steps, "output_dir": str(out / name), "progress": False,
        "num_threads": threads, "seed": seed})
    t0 = time.perf_counter()
    s = run(cfg)
    s["check_wall_s"] = round(time.perf_counter() - t0, 1)
    return s


def _se_diff(p1: float, p2: float, n: int) -> float:
    """Standard error of a difference of two agreement rates on the same n pairs (independence bound)."""
    return math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(n, 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default=None, help="a built world folder, used as is (default: build or reuse "
                                                  "POSTTRAIN_WORLD or .posttrain/world)")
    ap.add_argument("--sft", default=None, help="an SFT run dir / model folder (default: train one)")
    ap.add_argument("--out", default="runs/rm_check", help="where the runs go")
    ap.add_argument("--steps", type=int, default=RM["max_steps"],
                    help="about this many optimizer steps per reward model (one epoch over its data)")
    ap.add_argument("--budget", choices=["comparisons", "prompts", "both"], default="both",
                    help="annotation budget(s) of the K-wise vs pairwise comparison")
    ap.add_argument("--no-control", action="store_true", help="skip the λ = 0 control")
    ap.add_argument("--plackett-luce", action="store_true",
                    help="also train the K-wise runs with loss=plackett_luce (reported, not a check)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="seed of the SFT run")
    ap.add_argument("--rm-seeds", default="0", help="comma-separated seeds; every reward model is trained once "
                                                    "per seed and the checks use the means")
    args = ap.parse_args(argv)

    from posttrain.data.load import load_rows
    from posttrain.world.build import build_world, load_world

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    # an explicit --world is used as it is (never rebuilt); the default world is built when missing
    world = load_world(args.world) if args.world else build_world()
    sft_dir = args.sft
    timings = {}
    if sft_dir is None:
        from posttrain.config import SFTConfig
        from posttrain.stages.sft import run as sft_run

        t0 = time.perf_counter()
        cfg = SFTConfig.model_validate({**SFT, "model": str(world.base_model),
                                        "data": {**SFT["data"], "train": str(world.sft_train),
                                                 "eval": str(world.sft_eval)},
                                        "output_dir": str(out / "sft"), "progress": False,
                                        "num_threads": args.threads, "seed": args.seed})
        sft_run(cfg)
        timings["sft_s"] = round(time.perf_counter() - t0, 1)
        sft_dir = str(out / "sft")

    pairs = load_rows(world.preference_train, kinds=["preference"]).rows
    rankings = load_rows(world.ranking_train, kinds=["ranking"]).rows
    K = len(rankings[0]["completions"])
    n_rank = math.ceil(N_PAIRS / (K * (K - 1) // 2))
    evalf = str(world.preference_eval)
    data = out / "data"
    plan = [("pairwise", _write_jsonl(data / "pairs.jsonl", pairs[:N_PAIRS]), "bradley_terry", N_PAIRS)]
    if args.budget in ("comparisons", "both"):
        plan.append(("kwise", _write_jsonl(data / f"rankings-{n_rank}.jsonl", rankings[:n_rank]), "kwise", n_rank))
        if args.plackett_luce:
            plan.append(("plackett_luce", str(data / f"rankings-{n_rank}.jsonl"), "plackett_luce", n_rank))
    if args.budget in ("prompts", "both"):
        n = len(rankings)
        plan.append((f"kwise_{n}_prompts", _write_jsonl(data / f"rankings-{n}.jsonl", rankings), "kwise", n))
        if args.plackett_luce:
            plan.append((f"plackett_luce_{n}_prompts", str(data / f"rankings-{n}.jsonl"), "plackett_luce", n))
        plan.append((f"pairwise_{n}_prompts", _write_jsonl(data / f"pairs-{n}.jsonl", pairs[:n]), "bradley_terry", n))
    if not args.no_control:
        plan.append(("control_no_length_bias",
                     _write_jsonl(data / "pairs-lambda0.jsonl", relabel_without_length_bias(pairs[:N_PAIRS])),
                     "bradley_terry", N_PAIRS))
    seeds = [int(x) for x in str(args.rm_seeds).split(",") if x.strip()]
    rows: list[dict] = []
    for name, train, loss, units in plan:
        # one epoch over the labelled data in about --steps optimizer steps (InstructGPT trains its RM for a
        # single epoch: more overfit); the batch follows from the data size
        batch = max(1, round(units / args.steps))
        steps = math.ceil(units / batch)
        for seed in seeds:
            run_name = name if seed == seeds[0] else f"{name}_seed{seed}"
            s = _run_rm(run_name, out, sft_dir, train, evalf, loss, batch, steps, args.threads, seed)
            e = s["rm_eval"]
            rows.append({"run": name, "seed": seed, "loss": s["loss_type"], "train_units": s["train"]["units"],
                         "comparisons": s["train"]["comparisons"], "sequences": s["train"]["sequences"],
                         "batch": batch, "steps": s["steps"], "epochs": s["train"]["epochs"],
                         "train_time_s": s["train_time_s"], "wall_s": s["check_wall_s"],
                         "gold_agreement": e["gold/rm_agreement"], "label_accuracy": e["accuracy"],
                         "labels_vs_gold": e["gold/label_agreement"], "mean_margin": e["mean_margin"],
                         "ece": e["ece"], "length_corr_words": e["length_corr_words"],
                         "length_corr_tokens": e["length_corr"], "gold_length_corr": e["gold/length_corr"],
                         "rm_longer_when_gold_shorter": e["gold/rm_prefers_longer_when_gold_prefers_shorter"],
                         "labels_longer_when_gold_shorter": e["gold/labels_prefer_longer_when_gold_prefers_shorter"],
                         "gold_pairs": e["gold/pairs"], "eval_pairs": e["pairs"]})
            print(f"{run_name:28s} gold agreement {e['gold/rm_agreement']:.3f}  label accuracy {e['accuracy']:.3f}  "
                  f"length corr {e['length_corr_words']:+.3f}  ({s['check_wall_s']} s)", flush=True)

    def mean(name: str, key: str) -> float:
        vals = [r[key] for r in rows if r["run"] == name]
        return sum(vals) / len(vals)

    metrics = ["gold_agreement", "label_accuracy", "ece", "length_corr_words", "rm_longer_when_gold_shorter"]
    means = {name: {k: mean(name, k) for k in metrics} for name, *_ in plan}
    n_gold = rows[0]["gold_pairs"]
    pw = means["pairwise"]
    checks = {"pairwise_gold_agreement_ge_0.75": pw["gold_agreement"] >= 0.75,
              "length_bias_rm_corr_above_gold": pw["length_corr_words"] > rows[0]["gold_length_corr"]}
    if "control_no_length_bias" in means:
        checks["length_bias_rm_corr_above_lambda0_control"] = (
            pw["length_corr_words"] > means["control_no_length_bias"]["length_corr_words"])
    if "kwise" in means:
        kw = means["kwise"]["gold_agreement"]
        se = _se_diff(kw, pw["gold_agreement"], n_gold)
        checks["same_comparisons_kwise_gold_agreement_ge_pairwise_minus_1se"] = kw >= pw["gold_agreement"] - se
        checks["(info) same_comparisons_kwise_gold_agreement_ge_pairwise_strictly"] = kw >= pw["gold_agreement"]
    n_all = len(rankings)
    if f"kwise_{n_all}_prompts" in means:
        checks["same_prompts_kwise_gold_agreement_ge_pairwise"] = (
            means[f"kwise_{n_all}_prompts"]["gold_agreement"] >= means[f"pairwise_{n_all}_prompts"]["gold_agreement"])
    result = {"world": str(world.root), "sft": sft_dir, "rm_seeds": seeds,
              "timings": {**timings, "total_s": round(time.perf_counter() - t_all, 1)},
              "eval_pairs": rows[0]["eval_pairs"], "eval_pairs_without_gold_tie": n_gold,
              "gold_length_corr": rows[0]["gold_length_corr"], "labels_vs_gold": rows[0]["labels_vs_gold"],
              "means": means, "runs": rows, "checks": checks}
    (out / "rm_check.json").write_text(json.dumps(result, indent=2) + "\n")
    cols = ["run", "seed", "loss", "train_units", "comparisons", "batch", "steps", "train_time_s", "gold_agreement",
            "label_accuracy", "ece", "length_corr_words", "rm_longer_when_gold_shorter"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print(f"\nmeans over seeds {seeds}:")
    for name, m in means.items():
        print(f"  {name:24s} " + "  ".join(f"{k} {v:+.3f}" for k, v in m.items()))
    print(f"held-out: {rows[0]['eval_pairs']} annotator pairs ({n_gold} without a gold tie); labels agree with gold "
          f"on {rows[0]['labels_vs_gold']:.3f}; gold reward vs length corr {rows[0]['gold_length_corr']:+.3f}; "
          f"labels pick the longer response on {rows[0]['labels_longer_when_gold_shorter']:.3f} of the pairs where "
          f"gold prefers the shorter")
    for k, v in checks.items():
        print(f"  {'PASS' if v else 'FAIL'}  {k}")
    print(f"timings: {json.dumps(result['timings'])}; results in {out / 'rm_check.json'}")
    return 0 if all(v for k, v in checks.items() if not k.startswith("(info)")) else 1


if __name__ == "__main__":
    sys.exit(main())
