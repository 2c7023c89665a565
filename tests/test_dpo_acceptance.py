"""Measured acceptance of `posttrain dpo` on the toy world (slow: ~15–25 min on 2 CPU cores).

Pipeline (every run directory is reused when it already holds the same finished run):

1. the toy world (``build_world``: datasets + pretrained base model);
2. SFT of the base model on the world's instruction data (the recipes' settings);
3. every loss of ``PREFERENCE_LOSSES`` from the SFT model on the simulated annotators' pairs
   (``preference/train.jsonl``; KTO on ``kto/train.jsonl``) with each loss's default β and the toy-world
   optimiser settings of the tulu3 recipe (:data:`TOY`: one epoch of the 1600 pairs, lr 5e-5; the stage's
   own lr default, 5e-6, is sized for real models and barely moves a 2M-parameter one);
4. Tülu 3's on-policy variant: a reward model on the annotator pairs, ``preference-data`` from the SFT model
   scored by it (best vs worst of 4), then DPO on those pairs;
5. each policy sampled on the world's held-out eval prompts (``evaluate_policy``: 2 samples per prompt,
   temperature 1, the same seed for every model) and judged by the hidden gold reward against the SFT
   model's samples of the same prompts: gold win rate (ties ½), mean gold, KL to SFT, mean length.

Accepted: DPO, IPO and SimPO on annotator pairs each reach a gold win rate >= 65% vs SFT. Every number is
printed as a table and written to ``WORK/acceptance.json``.

Not met so far. Measured (session 7, world 5b46ded304d1; 280 eval prompts × 2 samples, σ ≈ 0.02): with
:data:`TOY`, DPO 0.568 (gold 0.87 → 1.21, KL 1.4), IPO 0.532, SimPO 0.477, DPO on on-policy pairs 0.621. Every
variation tried stays at 0.51–0.59: β 0.03 / 0.3 / 1.0 → 0.537 / 0.548 / 0.536; lr 2e-4 → 0.532; 300 steps →
0.537; lr 2e-5 × 300 steps → 0.570; β 0.3 with lr 1e-4 → 0.564; the RPO term (``nll_weight`` 0.2 / 1) → DPO
0.570 / 0.573, IPO 0.564, SimPO 0.564; best-vs-worst pairs of the annotators' 4-way rankings → 0.507; the rest
of the registry with :data:`TOY`: robust DPO (ε 0.2) 0.584, hinge 0.562, cDPO (ε 0.2) 0.546, APO-zero 0.536,
ORPO 0.534. The per-family gold says why: DPO lifts fact (1.57 → 2.36), reason (1.12 → 2.08) and arith (−0.36
→ 0.65) but lowers emotional (1.62 → 0.44) and howto (−0.37 → −0.65): it pushes the policy towards the chosen
answers' empathy template (``I am sorry you feel <emotion>. That sounds hard. …``), which the 2M-parameter SFT
model, sampled at temperature 1, garbles (``I am angryanks. That sounds feel tired.``), while PPO (on its own
samples) reaches 0.70 on the same evaluation. Iterating step 4 (:func:`iterated`, ``--iterate 3``: each round
samples pairs from the last round's policy, seed = round, and trains from it): 0.580, 0.586, then 0.457 in
round 3 (KL to SFT 15.7: the proxy reward model is over-optimised). Round 1 there is step 4 with another seed
(0.580 vs 0.621): the pipeline's seed spread, ~±0.04, is twice the evaluation's σ. Three seeds of the DPO
stage alone (session 8, ``--set seed=1`` / ``--set seed=2 dpo ipo simpo dpo-on-policy``: only the order of the
pairs changes; SFT model, reward model, on-policy pairs and evaluation are the same): DPO 0.568 / 0.575 / 0.543
(mean 0.562), IPO 0.532 / 0.530 / 0.546 (0.536), SimPO 0.477 / 0.393 / 0.457 (0.442), DPO on on-policy pairs
0.621 / 0.588 / 0.604 (0.604) — every seed of every loss is below 0.65, so the miss is not seed noise.
Session 10 (AMD EPYC; the world built there hashes 595b1ef57980: its float32 pretraining gives another base
model, whose SFT model has gold 0.47), seeds 0 / 1 / 2 of ``dpo ipo simpo``: DPO 0.643 / 0.648 / 0.654 (mean
0.648), IPO 0.668 / 0.646 / 0.671 (0.662), SimPO 0.627 / 0.596 / 0.580 (0.601): on that world IPO meets the
target, DPO is at it within σ, SimPO misses — the same code and settings, so the world instance moves the
result by as much as the losses differ. Session 12 (Intel Xeon, world f6f1b11db062, SFT gold 0.80), seed 0 of
``dpo ipo simpo``: DPO 0.577 (gold 1.24, KL 1.37), IPO 0.530, SimPO 0.482 — the session-7 picture again
(emotional 1.63 → 0.41 and howto −0.37 → −0.79 under DPO, samples garbling the chosen answers' templates at
temperature 1), while the annotators' labels agree with the gold reward on 67% (arith) to 81% (howto) of pairs.
Session 13 (same world): the DPO paper's remedy for preference data not sampled from the reference
(Rafailov et al. 2023, §4 "DPO outline": initialise the reference by maximum likelihood on the preferred
completions): SFT of the SFT model on the 1600 chosen responses (lr 5e-5, batch 16, 100 steps), then DPO with :data:`TOY` from that model as policy and reference. Preferred-FT alone
0.512 (gold 0.88; emotional 1.63 → 1.10, howto −0.37 → −1.20), DPO after it 0.541 (KL to SFT 5.1): the chosen
responses themselves carry the annotators' length bias and label noise, so fitting them lowers the gold of the
same two families DPO lowers; it does not close the gap.

Run: ``.venv/bin/python -m pytest tests/test_dpo_acceptance.py -m slow -s`` or
``.venv/bin/python tests/test_dpo_acceptance.py [--set KEY=VALUE] [LOSS ...]`` (``--set nll_weight=1``: the
RPO variants, in their own WORK folder) or ``... --iterate N``. ``POSTTRAIN_DPO_ACCEPT`` sets WORK
(default ``runs/dpo_acceptance``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from posttrain.world.tasks import FAMILIES

WORK = Path(os.environ.get("POSTTRAIN_DPO_ACCEPT", "runs/dpo_acceptance"))
MAX_LEN, MAX_PROMPT = 96, 48
ACCEPT = {"dpo": 0.65, "ipo": 0.65, "simpo": 0.65}
TOY = {"lr": 5e-5, "batch_size": 16, "max_steps": 100, "warmup_steps": 5}
EVAL = {"per_family": 32, "num_samples": 2, "seed": 0, "generation": {"max_new_tokens": 48, "temperature": 1.0}}


def _world():
    from posttrain.world.build import build_world

    return Path(build_world(log=print).root)


def _sft(world: Path) -> Path:
    from posttrain.config import SFTConfig
    from posttrain.stages.sft import run

    out = WORK / "sft"
    run(SFTConfig(model=str(world / "base_model"),
                  data={"train": str(world / "sft/train.jsonl"), "eval": str(world / "sft/eval.jsonl"),
                        "max_len": MAX_LEN, "max_prompt_len": MAX_PROMPT},
                  output_dir=str(out), max_steps=150, batch_size=32, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1,
                  progress=False, sample_prompts=0))
    return out


def _reward_model(world: Path, sft: Path) -> Path:
    from posttrain.config import RewardModelConfig
    from posttrain.stages.reward_model import run

    out = WORK / "reward_model"
    run(RewardModelConfig(model=str(sft), data={"train": str(world / "preference/train.jsonl"),
                                                "eval": str(world / "preference/eval.jsonl"),
                                                "max_len": MAX_LEN, "max_prompt_len": MAX_PROMPT},
                          output_dir=str(out), max_steps=100, batch_size=16, lr=3e-4, warmup_steps=10,
                          progress=False))
    return out


def _on_policy_pairs(world: Path, sft: Path, rm: Path, out: Path | None = None, seed: int = 0) -> Path:
    from posttrain.config import PreferenceDataConfig
    from posttrain.stages.dpo import preference_data

    out = out or WORK / "preference_data"
    preference_data(PreferenceDataConfig(
        model=str(sft), reward=f"rm:{rm}", num_samples=4, pairs="best_worst", batch_size=64,
        data={"train": str(world / "preference/train.jsonl"), "max_len": MAX_LEN, "max_prompt_len": MAX_PROMPT},
        generation={"max_new_tokens": 40, "temperature": 1.0}, output_dir=str(out), progress=False, seed=seed))
    return out


def iterated(rounds: int) -> list[dict]:
    """Step 4 repeated (iterative on-policy DPO): round ``k`` samples pairs from round ``k−1``'s policy with
    seed ``k``, scores them with the same reward model and trains DPO from that policy (which is also its
    reference); every round is judged against the SFT model."""
    world = _world()
    sft = _sft(world)
    judge, rm, policy, res = Judge(world, sft), _reward_model(world, sft), sft, []
    for k in range(1, rounds + 1):
        pairs = _on_policy_pairs(world, policy, rm, WORK / f"iter{k}-pairs", seed=k)
        policy, _ = _dpo("dpo", policy, str(pairs / "pairs.jsonl"), tag=f"iter{k}")
        res.append(judge(policy))
        print(f"round {k}: " + _row(f"dpo-iter{k}", res[-1]), flush=True)
    return res


def _dpo(name: str, sft: Path, train: str, tag: str | None = None) -> tuple[Path, dict]:
    from posttrain.config import DPOConfig
    from posttrain.stages.dpo import run

    out = WORK / f"dpo-{tag or name}"
    t0 = time.perf_counter()
    extra = {"label_smoothing": 0.1} if name in ("cdpo", "robust_dpo") else {}  # ε = 0 would be plain DPO
    s = run(DPOConfig(model=str(sft), loss=name, **extra, data={"train": train, "max_len": MAX_LEN,
                                                       "max_prompt_len": MAX_PROMPT},
                      output_dir=str(out), progress=False, sample_prompts=0, **TOY))
    s.setdefault("wall_s", round(time.perf_counter() - t0, 1))
    return out, s


class Judge:
    """Samples the SFT baseline once; judges any policy against it on the same prompts and seed."""

    def __init__(self, world: Path, sft: Path):
        from posttrain.eval.policy import evaluate_policy, world_eval_rows
        from posttrain.models.load import load_causal_lm

        self.rows = world_eval_rows(world, per_family=EVAL["per_family"])
        self.sft, self.tok = load_causal_lm(str(sft), device="cpu", dtype="fp32")
        self.base = evaluate_policy(self.sft, self.tok, self.rows, num_samples=EVAL["num_samples"],
                                    generation=EVAL["generation"], seed=EVAL["seed"], max_prompt_len=MAX_PROMPT)

    def __call__(self, model_dir: Path) -> dict:
        from posttrain.eval.policy import evaluate_policy
        from posttrain.models.load import load_causal_lm

        cache = model_dir / "acceptance_eval.json"
        stamp = (model_dir / "model" / "model.safetensors").stat().st_mtime_ns
        if cache.is_file():
            old = json.loads(cache.read_text())
            if old.get("stamp") == stamp and old.get("settings") == EVAL:
                return old["metrics"]
        model, _ = load_causal_lm(str(model_dir), device="cpu", dtype="fp32")
        res = evaluate_policy(model, self.tok, self.rows, reference=self.sft, baseline=self.base,
                              num_samples=EVAL["num_samples"], generation=EVAL["generation"], seed=EVAL["seed"],
                              max_prompt_len=MAX_PROMPT)
        m = {k: v for k, v in res.metrics.items() if isinstance(v, (int, float))}
        cache.write_text(json.dumps({"stamp": stamp, "settings": EVAL, "metrics": m}, indent=1))
        return m


def acceptance(losses: list[str] | None = None) -> dict:
    from posttrain.losses import PREFERENCE_LOSSES

    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = _world()
    sft = _sft(world)
    judge = Judge(world, sft)
    results: dict[str, dict] = {"sft": {k: v for k, v in judge.base.metrics.items()
                                        if k in ("gold", "length") or k.endswith("/gold")}}
    for name in [n for n in losses if n != "dpo-on-policy"] if losses else list(PREFERENCE_LOSSES):
        data = world / ("kto/train.jsonl" if not PREFERENCE_LOSSES[name].paired else "preference/train.jsonl")
        out, s = _dpo(name, sft, str(data))
        results[name] = {"train_s": s.get("train_time_s"), "steps": s.get("steps"), "beta": s.get("beta"),
                         "final_accuracy": s.get("final", {}).get("accuracy"), **judge(out)}
        print(_row(name, results[name]), flush=True)
    if losses is None or "dpo-on-policy" in (losses or []):
        rm = _reward_model(world, sft)
        pairs = _on_policy_pairs(world, sft, rm)
        pd = json.loads((pairs / "summary.json").read_text())
        out, s = _dpo("dpo", sft, str(pairs / "pairs.jsonl"), tag="on-policy")
        results["dpo-on-policy"] = {"train_s": s.get("train_time_s"), "steps": s.get("steps"), "beta": s.get("beta"),
                                    "final_accuracy": s.get("final", {}).get("accuracy"),
                                    "pairs": pd["pairs"], "ties_dropped": pd["ties_dropped"],
                                    "pair_gap_mean": pd["gap"].get("mean"), **judge(out)}
        print(_row("dpo-on-policy", results["dpo-on-policy"]), flush=True)
    results["_meta"] = {"total_s": round(time.perf_counter() - t0, 1), "eval": EVAL, "work": str(WORK)}
    (WORK / "acceptance.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    print(table(results))
    return results


def _row(name: str, r: dict) -> str:
    f = lambda k, fmt="{:.3f}": (fmt.format(r[k]) if isinstance(r.get(k), (int, float)) else "-")  # noqa: E731
    return (f"| {name} | {f('beta', '{:g}')} | {f('steps', '{:d}')} | {f('train_s', '{:.0f}')} | {f('win_rate')} | "
            f"{f('gold')} | {f('kl', '{:.2f}')} | {f('length', '{:.1f}')} | {f('final_accuracy', '{:.2f}')} | "
            f"{_families(r)} |")


def _families(r: dict) -> str:
    """Mean gold per prompt family, in the world's family order (where a loss helps and where it hurts)."""
    return " / ".join(f"{r[f'{k}/gold']:.2f}" if isinstance(r.get(f"{k}/gold"), (int, float)) else "-"
                      for k in FAMILIES)


def table(results: dict) -> str:
    lines = ["| loss | β | steps | train s | gold win rate vs SFT | gold | KL to SFT | length | train acc | "
             "gold " + " / ".join(FAMILIES) + " |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| sft | - | - | - | 0.500 | {results['sft']['gold']:.3f} | 0 | {results['sft']['length']:.1f} | - | "
             f"{_families(results['sft'])} |"]
    lines += [_row(k, v) for k, v in results.items() if k not in ("sft", "_meta")]
    return "\n".join(lines)


@pytest.mark.slow
def test_dpo_ipo_simpo_beat_sft_on_gold():
    res = acceptance()
    for name, threshold in ACCEPT.items():
        assert res[name]["win_rate"] >= threshold, (name, res[name])


def _main(argv: list[str]) -> None:
    """``[--set KEY=VALUE ...] [LOSS ...]``: ``--set`` overrides a DPO config key for every loss (e.g.
    ``--set nll_weight=1`` for the RPO variants); the runs, the SFT model included (deterministic: the
    same weights as WORK's), then go to ``WORK-KEY-VALUE``."""
    global WORK
    import yaml

    losses, over, rounds = [], {}, 0
    it = iter(argv)
    for a in it:
        if a == "--iterate":
            rounds = int(next(it))
        elif a == "--set":
            key, _, value = next(it).partition("=")
            over[key] = yaml.safe_load(value)
        else:
            losses.append(a)
    if over:
        TOY.update(over)
        WORK = WORK.with_name(WORK.name + "".join(f"-{k}-{v}" for k, v in over.items()))
    if rounds:
        iterated(rounds)
    else:
        acceptance(losses or None)


if __name__ == "__main__":
    _main(sys.argv[1:])
