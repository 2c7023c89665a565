"""Measured acceptance of ``posttrain reward-model`` on the toy world (``python -m posttrain.eval.rm_check``).

Steps (each a normal stage run under ``--out``; finished runs are reused, so a second call only prints):

1. the toy world (``posttrain.world.build.build_world``; reused when built) and an SFT model from its base
   model (``posttrain sft``, the InstructGPT recipe's toy settings), or ``--sft RUN_DIR``;
2. ``pairwise``: a Bradley–Terry RM on the annotator pairs (``preference/train``, 1600 pairs);
3. ``kwise``: a K-wise RM (InstructGPT loss) on rankings (``ranking/train``, K = 4) with the SAME number of
   labelled comparisons: ⌈1600 / C(4,2)⌉ = 267 rankings (1602 comparisons). This is the budget that is
   hardest for the K-wise model — it sees 267 prompts and 1068 distinct completions where the pairwise
   model sees 1600 prompts and 3200 completions — so "at least as accurate" here implies it under the
   other budget (the same number of annotated prompts, where K-wise gets 6× the comparisons);
   ``--budget prompts`` also runs that one (400 rankings vs the first 400 pairs);
4. ``control``: the same 1600 pairs relabelled by annotators WITHOUT the length bias (λ = 0, same noise
   temperatures), so the length effect in ``pairwise`` can be attributed to the planted λ.

Every RM trains with the same optimizer settings and the same number of sequences per step (32) and
steps, from the same SFT backbone, and is evaluated on the same held-out annotator pairs
(``preference/eval``, 320): accuracy against the labels, agreement with the GOLD preference (pairs where
gold ties are left out; the labels' own agreement with gold is the noise level), ECE, and the reward–length
correlation next to gold's. Results go to ``OUT/rm_check.json`` and a table on stdout.

Acceptance: ``pairwise`` agrees with gold on ≥ 75% of held-out pairs; its reward–length correlation is above
gold's and above the λ = 0 control's (the planted bias shows); ``kwise`` is at least as accurate as
``pairwise`` (gold agreement within the ±1 standard error of the difference, or higher).
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
SEQS_PER_STEP = 32
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
    ap.add_argument("--steps", type=int, default=RM["max_steps"], help="optimizer steps per reward model")
    ap.add_argument("--budget", choices=["comparisons", "prompts", "both"], default="comparisons")
    ap.add_argument("--no-control", action="store_true", help="skip the λ = 0 control")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
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
    per = K * (K - 1) // 2
    n_rank = math.ceil(N_PAIRS / per)
    evalf = str(world.preference_eval)
    data = out / "data"
    runs: dict[str, dict] = {}
    plan = [("pairwise", _write_jsonl(data / "pairs.jsonl", pairs[:N_PAIRS]), "bradley_terry", SEQS_PER_STEP // 2)]
    if args.budget in ("comparisons", "both"):
        plan.append(("kwise", _write_jsonl(data / f"rankings-{n_rank}.jsonl", rankings[:n_rank]), "kwise",
                     SEQS_PER_STEP // K))
    if args.budget in ("prompts", "both"):
        n = len(rankings)
        plan.append((f"kwise_{n}_prompts", _write_jsonl(data / f"rankings-{n}.jsonl", rankings), "kwise",
                     SEQS_PER_STEP // K))
        plan.append((f"pairwise_{n}_prompts", _write_jsonl(data / f"pairs-{n}.jsonl", pairs[:n]), "bradley_terry",
                     SEQS_PER_STEP // 2))
    if not args.no_control:
        plan.append(("control_no_length_bias",
                     _write_jsonl(data / "pairs-lambda0.jsonl", relabel_without_length_bias(pairs[:N_PAIRS])),
                     "bradley_terry", SEQS_PER_STEP // 2))
    for name, train, loss, batch in plan:
        runs[name] = _run_rm(name, out, sft_dir, train, evalf, loss, batch, args.steps, args.threads, args.seed)
        e = runs[name]["rm_eval"]
        print(f"{name:24s} gold agreement {e['gold/rm_agreement']:.3f}  label accuracy {e['accuracy']:.3f}  "
              f"length corr {e['length_corr_words']:+.3f}  ({runs[name]['check_wall_s']} s)", flush=True)

    pw = runs["pairwise"]["rm_eval"]
    rows = []
    for name, s in runs.items():
        e = s["rm_eval"]
        rows.append({"run": name, "loss": s["loss_type"], "train_units": s["train"]["units"],
                     "comparisons": s["train"]["comparisons"], "sequences": s["train"]["sequences"],
                     "steps": s["steps"], "train_time_s": s["train_time_s"], "wall_s": s["check_wall_s"],
                     "gold_agreement": e["gold/rm_agreement"], "label_accuracy": e["accuracy"],
                     "labels_vs_gold": e["gold/label_agreement"], "mean_margin": e["mean_margin"], "ece": e["ece"],
                     "length_corr_words": e["length_corr_words"], "length_corr_tokens": e["length_corr"],
                     "gold_length_corr": e["gold/length_corr"],
                     "rm_longer_when_gold_shorter": e["gold/rm_prefers_longer_when_gold_prefers_shorter"],
                     "labels_longer_when_gold_shorter": e["gold/labels_prefer_longer_when_gold_prefers_shorter"]})
    n_gold = pw["gold/pairs"]
    checks = {"pairwise_gold_agreement_ge_0.75": pw["gold/rm_agreement"] >= 0.75,
              "length_bias_rm_corr_above_gold": pw["length_corr_words"] > pw["gold/length_corr"]}
    if "control_no_length_bias" in runs:
        checks["length_bias_rm_corr_above_lambda0_control"] = (
            pw["length_corr_words"] > runs["control_no_length_bias"]["rm_eval"]["length_corr_words"])
    if "kwise" in runs:
        kw = runs["kwise"]["rm_eval"]
        se = _se_diff(kw["gold/rm_agreement"], pw["gold/rm_agreement"], n_gold)
        checks["kwise_at_least_as_accurate_same_comparisons"] = kw["gold/rm_agreement"] >= pw["gold/rm_agreement"] - se
    result = {"world": str(world.root), "sft": sft_dir, "timings": {**timings, "total_s": round(time.perf_counter()
                                                                                             - t_all, 1)},
              "eval_pairs": pw["pairs"], "eval_pairs_without_gold_tie": n_gold, "runs": rows, "checks": checks}
    (out / "rm_check.json").write_text(json.dumps(result, indent=2) + "\n")
    cols = ["run", "loss", "train_units", "comparisons", "steps", "train_time_s", "gold_agreement", "label_accuracy",
            "labels_vs_gold", "ece", "length_corr_words", "gold_length_corr", "rm_longer_when_gold_shorter",
            "labels_longer_when_gold_shorter"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print(f"\nheld-out: {pw['pairs']} annotator pairs ({n_gold} without a gold tie)")
    for k, v in checks.items():
        print(f"  {'PASS' if v else 'FAIL'}  {k}")
    print(f"timings: {json.dumps(result['timings'])}; results in {out / 'rm_check.json'}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
