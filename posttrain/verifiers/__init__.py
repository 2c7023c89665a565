"""Checkable rewards: math answer equivalence, format, length penalties."""

from posttrain.verifiers.format import split_think, think_format_reward
from posttrain.verifiers.length import soft_overlong_penalties, soft_overlong_penalty
from posttrain.verifiers.math import answers_equivalent, extract_answer, math_reward

VERIFIERS = {
    "math": math_reward,  # (completion, answer) -> 1/0
}
"""Verifiers usable as ``verifier:NAME`` reward specs: ``fn(completion, answer) -> float``."""

__all__ = ["extract_answer", "answers_equivalent", "math_reward", "think_format_reward", "split_think",
           "soft_overlong_penalty", "soft_overlong_penalties", "VERIFIERS"]
