"""Format rewards.

``think_format_reward(completion)`` (the DeepSeek-R1 format reward, Guo et al. 2025, §2.2.2, with the answer
written after the reasoning instead of inside ``<answer>`` tags): 1.0 when the completion is exactly one
``<think>…</think>`` block at the start (leading whitespace allowed; the reasoning may be empty) followed by a
non-empty answer, else 0.0. A second ``<think>`` or ``</think>`` anywhere makes it 0.
"""

from __future__ import annotations

import re

__all__ = ["think_format_reward", "split_think"]

_THINK = re.compile(r"\A\s*<think>(.*?)</think>(.*)\Z", re.DOTALL)


def split_think(completion: str) -> tuple[str, str] | None:
    """``(reasoning, answer)`` of a well-formed ``<think>reasoning</think>answer`` completion, else None."""
    if completion.count("<think>") != 1 or completion.count("</think>") != 1:
        return None
    m = _THINK.match(completion)
    if m is None:
        return None
    return m.group(1).strip(), m.group(2).strip()


def think_format_reward(completion: str) -> float:
    """1.0 for ``<think>…</think>`` followed by a non-empty answer, else 0.0."""
    parts = split_think(completion)
    return 1.0 if parts is not None and parts[1] else 0.0
