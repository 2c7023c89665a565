"""posttrain.verifiers.format (think format) and posttrain.verifiers.length (DAPO soft overlong penalty)."""

from __future__ import annotations

import pytest

from posttrain.verifiers.format import split_think, think_format_reward
from posttrain.verifiers.length import soft_overlong_penalties, soft_overlong_penalty


@pytest.mark.parametrize("completion, reward", [
    ("<think>2 + 2 is 4</think>The answer is 4.", 1.0),
    ("  <think>\nstep 1\nstep 2\n</think>\n\n4", 1.0),  # whitespace around is fine
    ("<think></think>4", 1.0),  # empty reasoning is allowed; the answer is what must be there
    ("<think>2 + 2 is 4</think>", 0.0),  # no answer
    ("<think>2 + 2 is 4</think>   \n ", 0.0),  # whitespace is not an answer
    ("The answer is 4.", 0.0),  # no think block
    ("4 <think>because</think> 4", 0.0),  # text before the think block
    ("<think>a</think>4<think>b</think>5", 0.0),  # two blocks
    ("<think>a<think>b</think>4", 0.0),  # nested / unbalanced
    ("</think>4<think>", 0.0),  # wrong order
    ("<think>unfinished reasoning", 0.0),
])
def test_think_format_reward(completion, reward):
    assert think_format_reward(completion) == reward


def test_split_think_parts():
    assert split_think(" <think> why </think> because ") == ("why", "because")
    assert split_think("no tags") is None


def test_soft_overlong_penalty_by_hand():
    """L_max = 20, L_cache = 5 (DAPO eq. 13): L <= 15 -> 0; 15 < L <= 20 -> (15 - L) / 5; L > 20 -> -1.
    16 -> -0.2, 18 -> -0.6, 20 -> -1 (continuous at L_max), 21 -> -1."""
    f = lambda n: soft_overlong_penalty(n, max_len=20, cache_len=5)
    assert [f(n) for n in (0, 10, 15)] == [0.0, 0.0, 0.0]
    assert f(16) == pytest.approx(-0.2, abs=1e-15)
    assert f(18) == pytest.approx(-0.6, abs=1e-15)
    assert f(20) == -1.0 and f(21) == -1.0 and f(10_000) == -1.0
    assert soft_overlong_penalties([15, 16, 21], max_len=20, cache_len=5) == [f(15), f(16), f(21)]
    # the whole buffer: cache_len = max_len starts penalising right away
    assert soft_overlong_penalty(1, max_len=4, cache_len=4) == -0.25


def test_soft_overlong_penalty_is_monotone_and_bounded():
    values = [soft_overlong_penalty(n, max_len=64, cache_len=16) for n in range(0, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert min(values) == -1.0 and max(values) == 0.0


@pytest.mark.parametrize("kw", [dict(max_len=10, cache_len=0), dict(max_len=10, cache_len=11)])
def test_soft_overlong_penalty_rejects_bad_buffers(kw):
    with pytest.raises(ValueError):
        soft_overlong_penalty(5, **kw)
