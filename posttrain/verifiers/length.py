"""Length penalties.

DAPO's soft overlong punishment (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at
Scale", eq. 13). With ``L`` the response length in tokens, ``L_max`` the maximum length and ``L_cache`` the
length of the punishment buffer::

    R_length(L) = 0                               if L <= L_max - L_cache
                = ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
                = -1                              if L > L_max

It is added to the task reward. The penalty falls linearly from 0 to -1 across the buffer, so it is
continuous at both ends (``R(L_max) = -1``).
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["soft_overlong_penalty", "soft_overlong_penalties"]


def soft_overlong_penalty(length: int, *, max_len: int, cache_len: int) -> float:
    """DAPO eq. 13 for one response of ``length`` tokens (``0 < cache_len <= max_len``)."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"soft_overlong_penalty: need 0 < cache_len <= max_len, got cache_len={cache_len}, "
                         f"max_len={max_len}")
    if length < 0:
        raise ValueError(f"soft_overlong_penalty: length must be >= 0, got {length}")
    threshold = max_len - cache_len  # L_max - L_cache
    if length <= threshold:
        return 0.0
    if length <= max_len:
        return (threshold - length) / cache_len
    return -1.0


def soft_overlong_penalties(lengths: Iterable[int], *, max_len: int, cache_len: int) -> list[float]:
    """:func:`soft_overlong_penalty` for each length."""
    return [soft_overlong_penalty(int(n), max_len=max_len, cache_len=cache_len) for n in lengths]
