"""KL(π ‖ π_ref) estimators, KL-penalised rewards, the GRPO KL loss term and KL controllers.

Estimators (Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html), from
tokens sampled from ``π``, with ``log r = log π_ref(x_t) − log π(x_t)`` per token:

* ``k1 = −log r``             — unbiased, high variance, can be negative.
* ``k2 = ½ (log r)²``         — biased (low bias when π ≈ π_ref), low variance, ≥ 0.
* ``k3 = (r − 1) − log r``    — unbiased, lower variance than k1, ≥ 0.

All three are per-token ``[B, T]`` and elementwise; masking is the caller's (or ``reduce``'s) job.
``k3`` is not clamped: a log-ratio of 700 overflows ``exp`` in float64.
"""

from __future__ import annotations

from typing import Callable

import torch

from posttrain.losses.reduce import aggregate, masked_mean, masked_sum


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``k1 = log π(x) − log π_ref(x)`` per token ``[B, T]`` (unbiased)."""
    return logprobs - ref_logprobs                                       # [B, T]


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``k2 = ½ (log π_ref(x) − log π(x))²`` per token ``[B, T]`` (biased, ≥ 0)."""
    log_r = ref_logprobs - logprobs                                      # [B, T]
    return 0.5 * log_r * log_r                                           # [B, T]


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``k3 = (r − 1) − log r``, ``r = π_ref(x)/π(x)``, per token ``[B, T]`` (unbiased, ≥ 0)."""
    log_r = ref_logprobs - logprobs                                      # [B, T]
    return torch.expm1(log_r) - log_r                                    # [B, T]


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3,
}


def _estimator(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown KL estimator {name!r}; expected one of {', '.join(KL_ESTIMATORS)}") from None


def kl_penalised_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, *, beta: float, estimator: str = "k1",
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token rewards for KL-regularised RL (Ziegler et al. 2019, eq. 2; InstructGPT, Ouyang et al.
    2022, eq. 2):

    ``R(x, y) = r_φ(x, y) − β · log(π(y|x) / π_ref(y|x))``, spread over tokens as
    ``rewards_t = −β · kl_t`` at every completion token, plus ``r_φ(x, y)`` at the last one.

    Symbols: ``scores`` ``[B]`` = ``r_φ(x, y)`` (reward model / verifier), ``logprobs`` /
    ``ref_logprobs`` ``[B, T]`` of the sampled tokens under ``π`` (the sampling policy) and ``π_ref``,
    ``mask`` ``[B, T]`` the completion tokens (any contiguous span per row, e.g. after left-padded
    prompts), ``beta`` = ``β``, ``estimator`` = ``"k1"`` (the paper's log-ratio), ``"k2"`` or ``"k3"``.

    Inputs are treated as constants (detached); the result is 0 outside the mask and rows with an
    empty mask get no score. Departures: choosing k2/k3 instead of the paper's k1.
    Metrics: ``kl`` (mean over sequences of ``Σ_t kl_t``), ``non_score_reward`` (mean over sequences of
    ``−β Σ_t kl_t``), ``score`` (mean of ``scores``).
    """
    kl_fn = _estimator(estimator)
    with torch.no_grad():
        logprobs, ref_logprobs = logprobs.detach(), ref_logprobs.detach()
        B, T = logprobs.shape
        m = mask.to(device=logprobs.device, dtype=logprobs.dtype)         # [B, T]
        kl = kl_fn(logprobs, ref_logprobs)                                # [B, T]
        kl_seq = masked_sum(kl, m, dim=-1)                                # [B]
        rewards = torch.where(m != 0, -beta * kl, torch.zeros_like(kl))   # [B, T]
        has_tokens = m.sum(-1) != 0                                       # [B]
        positions = torch.arange(T, device=logprobs.device).expand(B, T)  # [B, T]
        last = torch.where(m != 0, positions, torch.full_like(positions, -1)).max(dim=-1).values.clamp_min(0)  # [B]
        scores = scores.detach().to(device=rewards.device, dtype=rewards.dtype)  # [B]
        score_add = torch.where(has_tokens, scores, torch.zeros_like(kl_seq))  # [B]
        rewards = rewards.scatter_add(1, last.unsqueeze(1), score_add.unsqueeze(1))  # [B, T]
        metrics = {
            "kl": kl_seq.mean(),
            "non_score_reward": (-beta * kl_seq).mean(),
            "score": scores.mean(),
        }
    return rewards, metrics


def kl_loss_term(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, *, beta: float,
                 estimator: str = "k3", agg: str = "token-mean",
                 normaliser: float | torch.Tensor | None = None,
                 constant_normaliser: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL penalty added to the policy loss (GRPO, Shao et al. 2024, eqs. 3–4):

    ``L_KL = β · agg_t D_KL[π_θ ‖ π_ref]_t``, with GRPO's estimator
    ``D_KL = π_ref/π_θ − log(π_ref/π_θ) − 1`` (= ``k3``).

    Symbols: ``logprobs`` ``[B, T]`` = ``log π_θ`` (with grad), ``ref_logprobs`` ``[B, T]`` (constant),
    ``beta`` = ``β``; ``agg`` / ``normaliser`` / ``constant_normaliser`` as in ``reduce.aggregate``.
    Departures: ``estimator`` may select k1/k2 instead of GRPO's k3. As in GRPO, the loss is
    differentiated through the per-token estimate, so its expected gradient is not ``∇ D_KL[π_θ ‖ π_ref]``
    (Tang & Munos 2025, "On a few pitfalls in KL divergence gradient estimation for RL"): even for tokens
    sampled from ``π_θ`` itself, ``E[∇k3] = ∇ KL(π_ref ‖ π_θ)`` (the reverse direction),
    ``E[∇k2] = ∇ KL(π_θ ‖ π_ref)`` and ``E[∇k1] = 0`` (k1 as a loss only adds noise). With samples from
    an older policy nothing is importance-corrected, and the gradient is per token (it ignores the effect
    of ``o_t`` on later tokens' KL).
    Metrics (local): ``kl`` (masked token mean of the estimate), ``kl_loss``.
    """
    kl = _estimator(estimator)(logprobs, ref_logprobs.detach())          # [B, T]
    loss = beta * aggregate(kl, mask, agg, normaliser=normaliser, constant_normaliser=constant_normaliser)
    with torch.no_grad():
        metrics = {"kl": masked_mean(kl.detach(), mask), "kl_loss": loss.detach()}
    return loss, metrics


class FixedKLController:
    """A constant KL coefficient ``β`` (plain Python float)."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    @property
    def value(self) -> float:
        return self.beta

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", §2.2):

    ``e_t = clip(KL_t / KL_target − 1, −0.2, 0.2)``, ``β_{t+1} = β_t · (1 + K_β · e_t)``, ``K_β = n / horizon``

    Symbols: ``init_beta`` = ``β_0``, ``target`` = ``KL_target``, ``horizon`` (the paper uses ``K_β =
    0.1``; here ``K_β = n_steps / horizon`` with ``n_steps`` the number of samples (or steps) since the
    last update). Plain Python floats; ``current_kl`` may be a 0-dim tensor.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    @property
    def value(self) -> float:
        return self.beta

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))
