"""Advantage estimators: GAE, REINFORCE baseline, RLOO leave-one-out, GRPO group normalisation, whitening.

These return tensors (not ``(loss, metrics)``): they are computed without gradient from rollouts.
Group convention: rewards of one prompt's ``G`` samples are contiguous — index ``i`` belongs to
group ``i // G`` (``N = n_prompts · G``).
"""

from __future__ import annotations

import torch

from posttrain.losses.reduce import masked_whiten


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float,
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation", §3):

    ``δ_t = r_t + γ·V_{t+1} − V_t``, ``Â_t = Σ_l (γλ)^l δ_{t+l} = δ_t + γλ·Â_{t+1}``, returns ``R_t = Â_t + V_t``.

    Symbols: ``rewards`` ``[B, T]`` = ``r_t`` (e.g. ``kl.kl_penalised_rewards``), ``values`` ``[B, T]`` =
    ``V_t``, the value of the state in which token ``t`` is chosen (aligned like ``logprobs``),
    ``mask`` ``[B, T]`` the completion tokens, ``gamma`` = ``γ``, ``lam`` = ``λ``.

    The episode of a row is its masked span, which may start anywhere (left-padded prompts) and end
    anywhere (right padding): ``V`` and ``Â`` beyond the last masked token are 0 (terminal). Each maximal
    run of masked tokens is treated as one episode ending at its last token. Output is 0 outside the mask.
    Vectorised over ``B``; loops over ``T``. No gradient.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must all be the same [B, T]")
    with torch.no_grad():
        rewards, values = rewards.detach(), values.detach().to(rewards.dtype)
        m = mask.to(device=rewards.device, dtype=torch.bool)             # [B, T]
        B, T = rewards.shape
        zero = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # [B]
        advantages = torch.zeros_like(rewards)                           # [B, T]
        next_value, next_adv = zero, zero                                # [B]
        for t in range(T - 1, -1, -1):
            mt = m[:, t]                                                 # [B]
            delta = rewards[:, t] + gamma * next_value - values[:, t]    # [B]
            adv_t = torch.where(mt, delta + gamma * lam * next_adv, zero)  # [B]
            advantages[:, t] = adv_t
            next_value = torch.where(mt, values[:, t], zero)             # [B]
            next_adv = adv_t                                             # [B]
        returns = torch.where(m, advantages + values, torch.zeros_like(values))  # [B, T]
    return advantages, returns


def reinforce_baseline(rewards: torch.Tensor, baseline: float | torch.Tensor) -> torch.Tensor:
    """REINFORCE with a baseline (Williams 1992): ``A_i = r_i − b`` (``b`` a scalar, or ``[B]``
    per-sample, e.g. ReMax's greedy-decoding reward). ``rewards`` ``[B]`` → ``[B]``."""
    rewards = rewards.detach()
    b = torch.as_tensor(baseline, dtype=rewards.dtype, device=rewards.device).detach()
    return rewards - b                                                   # [B]


def _groups(rewards: torch.Tensor, G: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N], got {tuple(rewards.shape)}")
    if G < 2:
        raise ValueError(f"group size G must be >= 2 (a group of one has no baseline), got {G}")
    if rewards.shape[0] % G:
        raise ValueError(f"N={rewards.shape[0]} rewards do not split into groups of G={G}")
    return rewards.detach().view(-1, G)                                  # [N/G, G]


def rloo_advantages(rewards: torch.Tensor, G: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!";
    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization"):

    ``A_i = r_i − 1/(G−1) · Σ_{j≠i} r_j = G/(G−1) · (r_i − mean_g r)``

    Symbols: ``rewards`` ``[N]``, ``G`` = samples per prompt (contiguous groups). Returns ``[N]``.
    """
    r = _groups(rewards, G)                                              # [N/G, G]
    loo_mean = (r.sum(dim=1, keepdim=True) - r) / (G - 1)                # [N/G, G]
    return (r - loo_mean).reshape(-1)                                    # [N]


def grpo_advantages(rewards: torch.Tensor, G: int, *, scale_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024, "DeepSeekMath", §4.1.2 outcome supervision):

    ``A_i = (r_i − mean_g r) / (std_g r + eps)``; ``scale_by_std=False`` gives Dr. GRPO's
    ``A_i = r_i − mean_g r`` (Liu et al. 2025, "Understanding R1-Zero-Like Training").

    Symbols: ``rewards`` ``[N]``, ``G`` = group size (contiguous groups). ``std`` is the sample standard
    deviation (Bessel-corrected, as in common implementations; the paper does not say). A group
    whose rewards are all equal gets advantages 0. Returns ``[N]``.
    """
    r = _groups(rewards, G)                                              # [N/G, G]
    centred = r - r.mean(dim=1, keepdim=True)                            # [N/G, G]
    if scale_by_std:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)           # [N/G, G]
    return centred.reshape(-1)                                           # [N]


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, *, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """``(x − μ) / sqrt(σ² + eps)`` over the (masked) entries of ``x`` (any shape), e.g. PPO advantage
    whitening over the batch. ``shift_mean=False`` keeps the mean. Masked-out entries become 0.
    Thin wrapper over ``reduce.masked_whiten``; no gradient."""
    x = x.detach()
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    return masked_whiten(x, mask, shift_mean=shift_mean, eps=eps)
