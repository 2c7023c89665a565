"""Learning-rate schedules: linear warmup, then cosine / linear decay or constant, down to ``min_lr_ratio``.

The learning rate is a pure function of the optimizer step, so resuming a run is just "continue at step s"
(nothing but the step needs saving). Steps are 0-based: step ``s`` is the ``s+1``-th optimizer update.

With peak ``lr``, ``W = warmup_steps``, ``S = total_steps`` and ``m = min_lr_ratio``::

    warmup   (s < W):   lr · (s + 1) / W                    # the first update already moves; s = W-1 → lr
    decay    (s ≥ W):   p = (s − W) / max(1, S − W − 1)     # 0 at the first post-warmup step, 1 at the last
        cosine:   lr · (m + (1 − m) · ½ · (1 + cos(π p)))
        linear:   lr · (m + (1 − m) · (1 − p))
        constant: lr

so the first step after warmup runs at the peak and the last step (s = S − 1) exactly at ``m · lr``.
Steps past ``S`` stay at the final value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "linear", "constant"):
            raise ValueError(f"unknown lr schedule {self.kind!r}")
        if self.total_steps < 1:
            raise ValueError("total_steps must be >= 1")

    def multiplier(self, step: int) -> float:
        """lr(step) / lr."""
        W, S, m = self.warmup_steps, self.total_steps, self.min_lr_ratio
        if step < W:
            return (step + 1) / W
        if self.kind == "constant":
            return 1.0
        p = min(1.0, max(0.0, (step - W) / max(1, S - W - 1)))
        if self.kind == "cosine":
            return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))
        return m + (1.0 - m) * (1.0 - p)

    def __call__(self, step: int) -> float:
        """The learning rate for optimizer step ``step`` (0-based)."""
        return self.lr * self.multiplier(step)


def from_config(cfg, total_steps: int) -> LRSchedule:
    """The schedule a :class:`posttrain.config.StageConfig` asks for."""
    return LRSchedule(lr=cfg.lr, total_steps=total_steps, warmup_steps=cfg.warmup_steps,
                      kind=cfg.lr_schedule, min_lr_ratio=cfg.min_lr_ratio)
