"""Reward functions the recipes use as ``callable:posttrain.recipes.rewards:NAME`` reward specs.

DeepSeek R1 (Guo et al. 2025, §2.2.2) trains reasoning with two rule-based rewards: an accuracy reward (the
final answer is checked) and a format reward (the reasoning is inside ``<think>…</think>``). In its later
stages the prompts are a MIX of reasoning prompts (with a checkable answer) and general prompts (judged by a
reward model). :func:`r1_rule_reward` scores only the rows that carry an ``answer`` and gives 0 to the others,
so it can be summed with a reward model (``callable:posttrain.recipes.rewards:r1_rule_reward+rm:PATH*0.5``)
over a mixed prompt set without pushing the ``<think>`` format onto general prompts.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["r1_rule_reward", "FORMAT_WEIGHT"]

FORMAT_WEIGHT = 0.5


def r1_rule_reward(prompts: Sequence, completions: Sequence[str], answer: Sequence | None = None,
                   **columns: Any) -> list[float]:
    """``accuracy + 0.5 · format`` for rows with an answer (accuracy: ``math_reward`` of the completion's
    final answer; format: ``think_format_reward``), 0 for rows without one.

    Worked examples (answer 7): ``"<think>3 + 4 = 7</think> Tom has 7 apples."`` → 1 + 0.5 = 1.5;
    ``"Tom has 7 apples."`` → 1 + 0 = 1; ``"<think>…</think> Tom has 8 apples."`` → 0 + 0.5 = 0.5."""
    from posttrain.verifiers.format import split_think, think_format_reward
    from posttrain.verifiers.math import math_reward

    answers = list(answer) if answer is not None else [None] * len(completions)
    out = []
    for c, a in zip(completions, answers):
        if a is None or a == "":
            out.append(0.0)
            continue
        parts = split_think(c)
        final = parts[1] if parts is not None else c
        out.append(float(math_reward(final, a)) + FORMAT_WEIGHT * think_format_reward(c))
    return out
