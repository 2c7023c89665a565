"""Batched generation with a KV cache and reward sources.

* :mod:`posttrain.rollout.sampler` — ``generate`` / ``sample_n`` returning a :class:`Rollout`.
* :mod:`posttrain.rollout.rewards` — ``RewardSource`` implementations and ``build_reward``.
"""

from posttrain.rollout.rewards import (CallableReward, CombinedReward, GoldReward, OverlongPenalty,
                                       RewardModelReward, RewardSource, VerifierReward, build_reward,
                                       load_callable)
from posttrain.rollout.sampler import Rollout, generate, native_supported, sample_n

__all__ = ["Rollout", "generate", "sample_n", "native_supported", "RewardSource", "CallableReward",
           "load_callable", "RewardModelReward", "VerifierReward", "GoldReward", "OverlongPenalty",
           "CombinedReward", "build_reward"]
