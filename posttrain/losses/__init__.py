"""Loss math for post-training: pure torch functions returning ``(loss, metrics)``.

Imports only ``torch``, ``math`` and the standard library. See each module's docstring for the
papers, formulas and symbols; ``reduce`` documents the aggregation modes and global normalisation.
"""

from posttrain.losses.advantages import (
    gae,
    grpo_advantages,
    reinforce_baseline,
    rloo_advantages,
    whiten,
)
from posttrain.losses.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_loss_term,
    kl_penalised_rewards,
)
from posttrain.losses.policy import (
    POLICY_LOSSES,
    cispo_loss,
    gspo_loss,
    ppo_clip_loss,
    vanilla_pg_loss,
)
from posttrain.losses.preference import (
    PREFERENCE_LOSSES,
    LossSpec,
    apo_down_loss,
    apo_zero_loss,
    cdpo_loss,
    chosen_nll_term,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
    slic_loss,
)
from posttrain.losses.reduce import (
    AGG_MODES,
    aggregate,
    batch_mean,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    num_units,
)
from posttrain.losses.reward import bradley_terry_loss, kwise_ranking_loss, plackett_luce_loss
from posttrain.losses.sft import sft_loss
from posttrain.losses.value import clipped_value_loss

__all__ = [
    "AGG_MODES", "aggregate", "batch_mean", "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    "num_units",
    "sft_loss",
    "bradley_terry_loss", "kwise_ranking_loss", "plackett_luce_loss",
    "PREFERENCE_LOSSES", "LossSpec", "chosen_nll_term",
    "dpo_loss", "cdpo_loss", "robust_dpo_loss", "ipo_loss", "hinge_loss",
    "slic_loss", "simpo_loss", "orpo_loss", "apo_zero_loss", "apo_down_loss", "kto_loss",
    "kto_reference_point",
    "KL_ESTIMATORS", "kl_k1", "kl_k2", "kl_k3", "kl_penalised_rewards", "kl_loss_term",
    "AdaptiveKLController", "FixedKLController",
    "gae", "reinforce_baseline", "rloo_advantages", "grpo_advantages", "whiten",
    "POLICY_LOSSES", "vanilla_pg_loss", "ppo_clip_loss", "gspo_loss", "cispo_loss",
    "clipped_value_loss",
]
