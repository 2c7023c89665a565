"""Gold-only judging helpers for the toy world (no model here: sampling lives in posttrain.eval/rollout).

- :func:`win_rate` — how often gold prefers responses A over responses B (ties count ½);
- :func:`gold_summary` — mean gold reward and the rates of helpful / correct answers, per family;
- :func:`eval_prompts` / :func:`eval_rows` — the world's held-out eval prompts of a family.
"""

from __future__ import annotations

import os
from pathlib import Path

from posttrain.errors import ConfigError
from posttrain.io import read_jsonl
from posttrain.world.gold import gold_components, gold_reward
from posttrain.world.tasks import FAMILIES, family_of

EVAL_FAMILIES = FAMILIES + ("fact_seen", "fact_unseen", "all")


def win_rate(prompts: list, responses_a: list, responses_b: list) -> float:
    """Fraction of prompts where gold prefers ``responses_a[i]`` to ``responses_b[i]``; a tie counts ½."""
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise ValueError(f"win_rate: {len(prompts)} prompts, {len(responses_a)} responses A and "
                         f"{len(responses_b)} responses B (must be equal)")
    if not prompts:
        raise ValueError("win_rate: no prompts")
    score = 0.0
    for p, a, b in zip(prompts, responses_a, responses_b):
        ga, gb = gold_reward(p, a), gold_reward(p, b)
        score += 1.0 if ga > gb else 0.5 if ga == gb else 0.0
    return score / len(prompts)


def gold_summary(prompts: list, responses: list) -> dict[str, float]:
    """``gold`` (mean reward), ``helpful``, ``correct`` (rates), ``words`` (mean), ``drift`` (mean drifting
    sentences) over all rows, and the same keys prefixed ``FAMILY/`` per family present."""
    if len(prompts) != len(responses):
        raise ValueError(f"gold_summary: {len(prompts)} prompts but {len(responses)} responses")
    groups: dict[str, list[dict]] = {}
    for p, r in zip(prompts, responses):
        c = gold_components(p, r)
        groups.setdefault("", []).append(c)
        groups.setdefault(str(c["family"]) + "/", []).append(c)
    out: dict[str, float] = {}
    for prefix, cs in sorted(groups.items()):
        n = len(cs)
        out[prefix + "gold"] = sum(c["total"] for c in cs) / n
        out[prefix + "helpful"] = sum(c["helpful"] > 0 for c in cs) / n
        out[prefix + "correct"] = sum(c["correct"] > 0 for c in cs) / n
        out[prefix + "words"] = sum(c["words"] for c in cs) / n
        out[prefix + "drift"] = sum(c["drift"] for c in cs) / n
        out[prefix + "n"] = float(n)
    return out


def eval_rows(world_dir: str | os.PathLike, family: str) -> list[dict]:
    """Rows of the eval prompt set: ``prompt`` (messages), ``family``, ``answer`` and, for facts, ``seen``.

    ``family``: one of fact, emotional, howto, arith, reason, fact_seen (facts the instruction data
    covers), fact_unseen (facts only in pretraining prose) or all."""
    if family not in EVAL_FAMILIES:
        raise ConfigError(f"eval family '{family}' is not one of {', '.join(EVAL_FAMILIES)}")
    root = Path(world_dir)
    if family == "all":
        return [r for f in FAMILIES for r in eval_rows(root, f)]
    base = "fact" if family.startswith("fact") else family
    path = root / "prompts" / f"{base}.jsonl"
    if not path.is_file():
        from posttrain.errors import DataError

        raise DataError("no eval prompts (is this a built toy world? run `posttrain world build`)", file=str(path))
    rows = read_jsonl(path)
    if family == "fact_seen":
        rows = [r for r in rows if r["seen"]]
    elif family == "fact_unseen":
        rows = [r for r in rows if not r["seen"]]
    return rows


def eval_prompts(world_dir: str | os.PathLike, family: str) -> list[list[dict]]:
    """The eval prompts (message lists) of ``family`` (see :func:`eval_rows`)."""
    return [r["prompt"] for r in eval_rows(world_dir, family)]


__all__ = ["win_rate", "gold_summary", "eval_prompts", "eval_rows", "family_of", "EVAL_FAMILIES"]
