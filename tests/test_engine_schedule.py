"""Learning-rate schedule values worked by hand.

lr = 1, total S = 10, warmup W = 2, min_lr_ratio m = 0.1:
  warmup:  step 0 → 1/2 = 0.5, step 1 → 2/2 = 1.0
  decay:   p = (s − 2) / (10 − 2 − 1) = (s − 2)/7
    cosine  s=2: p=0 → 1.0;  s=5: p=3/7, cos(3π/7) = 0.2225209340 → 0.1 + 0.9·½·1.2225209340 = 0.6501344203
            s=9: p=1 → 0.1;  s=20 (past the end) → 0.1
    linear  s=5: 0.1 + 0.9·(1 − 3/7) = 0.1 + 0.9·4/7 = 0.6142857143;  s=9 → 0.1
    constant: 1.0 after warmup.
"""

import pytest

from posttrain.config import StageConfig
from posttrain.engine.schedule import LRSchedule, from_config


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def test_cosine_by_hand():
    s = LRSchedule(lr=1.0, total_steps=10, warmup_steps=2, kind="cosine", min_lr_ratio=0.1)
    assert s(0) == approx(0.5)
    assert s(1) == approx(1.0)
    assert s(2) == approx(1.0)
    assert s(5) == approx(0.6501344203)
    assert s(9) == approx(0.1)
    assert s(20) == approx(0.1)
    values = [s(i) for i in range(2, 10)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing after warmup


def test_linear_and_constant_by_hand():
    lin = LRSchedule(lr=2.0, total_steps=10, warmup_steps=2, kind="linear", min_lr_ratio=0.1)
    assert lin(0) == approx(1.0)
    assert lin(5) == approx(2.0 * 0.6142857143)
    assert lin(9) == approx(0.2)
    const = LRSchedule(lr=3e-4, total_steps=10, warmup_steps=4, kind="constant")
    assert [const(i) for i in range(4)] == [approx(3e-4 * k / 4) for k in (1, 2, 3, 4)]
    assert const(9) == approx(3e-4)


def test_no_warmup_starts_at_peak_and_ends_at_min():
    s = LRSchedule(lr=1.0, total_steps=5, kind="cosine", min_lr_ratio=0.0)
    # p = s/4: cos(0)=1 → 1; cos(π/4) → ½(1+0.7071067812) = 0.8535533906; cos(π/2) → 0.5; last → 0
    assert [s(i) for i in range(5)] == [approx(v) for v in (1.0, 0.8535533906, 0.5, 0.1464466094, 0.0)]
    one = LRSchedule(lr=1.0, total_steps=1, kind="linear")
    assert one(0) == approx(1.0)


def test_from_config():
    cfg = StageConfig(lr=0.5, warmup_steps=1, lr_schedule="linear", min_lr_ratio=0.2, max_steps=3)
    s = from_config(cfg, total_steps=3)
    # W=1: step 0 → 1·0.5; step 1: p=0 → 0.5; step 2: p=1 → 0.2·0.5
    assert [s(i) for i in range(3)] == [approx(0.5), approx(0.5), approx(0.1)]
    with pytest.raises(ValueError):
        LRSchedule(lr=1.0, total_steps=3, kind="exp")
