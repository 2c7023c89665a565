"""Policy-gradient losses: REINFORCE, PPO clip (dual clip, clip-higher), GSPO, CISPO.

Shared arguments (symbols written once here):

* ``logprobs`` ``[B, T]`` = ``log π_θ(o_t | q, o_<t)`` under the current policy (with grad);
* ``old_logprobs`` ``[B, T]`` = ``log π_θold`` under the sampling policy (constant);
* ``ratio`` = ``r_t(θ) = π_θ / π_θold = exp(logprobs − old_logprobs)``;
* ``advantages`` ``[B, T]`` = ``Â_t`` (or ``[B]``, one per sequence, broadcast over tokens; constant);
* ``mask`` ``[B, T]`` the completion tokens;
* ``agg``, ``normaliser``, ``constant_normaliser`` are forwarded to ``reduce.aggregate`` (token mean,
  sequence means, Dr. GRPO's constant normaliser; global counts for accumulation / data parallelism).

All return ``(loss, metrics)``; the loss is to be minimised (the negated surrogate objective).
Metrics (always, local to the micro-batch, independent of ``agg``/``normaliser``):
``approx_kl`` (masked token mean of k3 for KL(π_θold ‖ π_θ): ``(ratio − 1) − log ratio``), ``clip_frac``,
``ratio_mean``, ``ratio_max`` and ``pg_loss`` (the loss value). Entropy needs logits and is logged by
the model layer.
"""

from __future__ import annotations

from typing import Callable

import torch

from posttrain.losses.reduce import aggregate, masked_mean

Metrics = dict[str, torch.Tensor]


def _prepare(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(m [B,T] float, adv [B,T], log_ratio [B,T], ratio [B,T])``; log_ratio is 0 off-mask."""
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
                         f"mask {tuple(mask.shape)} must all be the same [B, T]")
    m = mask.to(device=logprobs.device, dtype=logprobs.dtype)            # [B, T]
    adv = advantages.detach().to(logprobs.dtype)
    if adv.dim() == 1:
        if adv.shape[0] != logprobs.shape[0]:
            raise ValueError(f"advantages {tuple(adv.shape)} must be [B] or [B, T]")
        adv = adv.unsqueeze(1).expand_as(logprobs)                       # [B, T]
    elif adv.shape != logprobs.shape:
        raise ValueError(f"advantages {tuple(adv.shape)} must be [B] or [B, T]")
    diff = logprobs - old_logprobs.detach().to(logprobs.dtype)           # [B, T]
    log_ratio = torch.where(m != 0, diff, torch.zeros_like(diff))        # [B, T]
    return m, adv, log_ratio, torch.exp(log_ratio)


def _masked_max(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    filled = torch.where(m != 0, x, torch.full_like(x, float("-inf")))
    top = filled.max()
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def _metrics(loss: torch.Tensor, log_ratio: torch.Tensor, ratio: torch.Tensor, m: torch.Tensor,
             clip_frac: torch.Tensor, **extra: torch.Tensor) -> Metrics:
    with torch.no_grad():
        lr, r = log_ratio.detach(), ratio.detach()
        out = {
            "approx_kl": masked_mean(torch.expm1(lr) - lr, m),
            "clip_frac": clip_frac.detach(),
            "ratio_mean": masked_mean(r, m),
            "ratio_max": _masked_max(r, m),
            "pg_loss": loss.detach(),
        }
        out.update({k: v.detach() for k, v in extra.items()})
    return out


def vanilla_pg_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, *, agg: str = "token-mean",
                    normaliser: float | torch.Tensor | None = None,
                    constant_normaliser: float | None = None) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE (Williams 1992): ``L = −agg_t(Â_t · log π_θ(o_t))``.

    The policy-gradient theorem's estimator ``∇J = E[Â_t ∇ log π_θ(o_t)]``; with a baseline /
    leave-one-out / group-normalised ``Â`` this is REINFORCE-with-baseline, RLOO (Ahmadian et al. 2024)
    or on-policy GRPO. ``old_logprobs`` is used only for the metrics (``clip_frac`` is 0).
    Departures: none; valid on-policy (one gradient step per batch of samples).
    """
    m, adv, log_ratio, ratio = _prepare(logprobs, old_logprobs, advantages, mask)
    per_token = -adv * logprobs                                          # [B, T]
    loss = aggregate(per_token, m, agg, normaliser=normaliser, constant_normaliser=constant_normaliser)
    no_clip = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    return loss, _metrics(loss, log_ratio, ratio, m, no_clip)


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, *, clip_eps_low: float = 0.2, clip_eps_high: float | None = None,
                  dual_clip_c: float | None = None, agg: str = "token-mean",
                  normaliser: float | torch.Tensor | None = None,
                  constant_normaliser: float | None = None) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), with clip-higher and dual clip:

    ``L^CLIP = E_t[min(r_t Â_t, clip(r_t, 1 − ε_low, 1 + ε_high) Â_t)]``, loss ``= −agg_t L^CLIP_t``.

    * ``clip_eps_high`` = ``ε_high`` (``None`` = ``ε_low``, the paper's symmetric ``ε``); a larger
      ``ε_high`` is DAPO's clip-higher (Yu et al. 2025).
    * ``dual_clip_c`` = ``c > 1`` (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
      Reinforcement Learning"): for ``Â_t < 0`` the objective is further bounded below,
      ``max(min(r Â, clip(r) Â), c·Â)``, so a huge ratio on a bad token cannot dominate the loss.

    Where the clipped term is selected, the gradient is 0. At ``r = 1`` the gradient equals
    REINFORCE's ``−Â ∇ log π``. With ``agg="seq-mean-token-mean"`` this is GRPO's surrogate (Shao et al.
    2024, eq. 3, without the KL term — add ``kl.kl_loss_term``).
    Extra metrics: ``clip_frac`` = fraction of masked tokens where clipping zeroes the gradient,
    ``dual_clip_frac`` (fraction where the dual bound is active; 0 without dual clip).
    """
    eps_low = clip_eps_low
    eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got low={eps_low}, high={eps_high}")
    m, adv, log_ratio, ratio = _prepare(logprobs, old_logprobs, advantages, mask)
    pg_unclipped = -adv * ratio                                          # [B, T]
    pg_clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    clipped = pg_clipped > pg_unclipped                                  # [B, T]
    per_token = torch.where(clipped, pg_clipped, pg_unclipped)           # [B, T]
    dual = torch.zeros_like(clipped)                                     # [B, T]
    if dual_clip_c is not None:
        if dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
        bound = -adv * dual_clip_c                                       # [B, T]  (> 0 where Â < 0)
        dual = (adv < 0) & (per_token > bound)                           # [B, T]
        per_token = torch.where(dual, bound, per_token)                  # [B, T]
    loss = aggregate(per_token, m, agg, normaliser=normaliser, constant_normaliser=constant_normaliser)
    zero_grad = clipped | dual
    return loss, _metrics(loss, log_ratio, ratio, m, masked_mean(zero_grad.to(m.dtype), m),
                          dual_clip_frac=masked_mean(dual.to(m.dtype), m))


def gspo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, *, clip_eps_low: float = 3e-4, clip_eps_high: float = 4e-4,
              agg: str = "seq-mean-token-mean", normaliser: float | torch.Tensor | None = None,
              constant_normaliser: float | None = None) -> tuple[torch.Tensor, Metrics]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): a sequence-level ratio.

    ``s_i(θ) = (π_θ(o_i|q) / π_θold(o_i|q))^{1/|o_i|} = exp(1/|o_i| Σ_t (log π_θ − log π_θold))``,
    ``J = E[1/G Σ_i min(s_i Â_i, clip(s_i, 1 − ε_low, 1 + ε_high) Â_i)]``.

    Implemented in the paper's GSPO-token form: ``s_{i,t} = sg[s_i] · π_θ(o_{i,t}) / sg[π_θ(o_{i,t})]``
    (value ``s_i``, gradient ``s_i ∇ log π_θ(o_{i,t})``), clipped per token, per-token loss
    ``−min(s_{i,t} Â_{i,t}, clip(s_{i,t}) Â_{i,t})``. With ``[B]`` advantages and the default
    ``agg="seq-mean-token-mean"`` this equals GSPO exactly (value and gradient); ``[B, T]`` advantages
    give GSPO-token. Defaults ``ε_low = 3e-4``, ``ε_high = 4e-4`` are the paper's.
    Departures: other ``agg`` modes re-weight sequences by length (not in the paper).
    Metrics: ``clip_frac``, ``ratio_mean``, ``ratio_max`` are over sequences (``s_i``); ``approx_kl`` is
    per token; ``seq_log_ratio_mean`` = mean ``log s_i``.
    """
    if clip_eps_low < 0 or clip_eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got low={clip_eps_low}, high={clip_eps_high}")
    m, adv, log_ratio, ratio = _prepare(logprobs, old_logprobs, advantages, mask)
    log_s = masked_mean(log_ratio, m, dim=-1)                            # [B]   log s_i
    lp = torch.where(m != 0, logprobs, torch.zeros_like(logprobs))       # [B, T]
    s_tok = torch.exp(log_s.detach().unsqueeze(1) + lp - lp.detach())    # [B, T]  value s_i
    pg_unclipped = -adv * s_tok                                          # [B, T]
    pg_clipped = -adv * torch.clamp(s_tok, 1.0 - clip_eps_low, 1.0 + clip_eps_high)  # [B, T]
    clipped = pg_clipped > pg_unclipped                                  # [B, T]
    per_token = torch.where(clipped, pg_clipped, pg_unclipped)           # [B, T]
    loss = aggregate(per_token, m, agg, normaliser=normaliser, constant_normaliser=constant_normaliser)
    with torch.no_grad():
        has = (m.sum(-1) != 0).to(m.dtype)                               # [B]
        s = log_s.detach().exp()                                         # [B]
        seq_clipped = (masked_mean(clipped.to(m.dtype), m, dim=-1) > 0).to(m.dtype)  # [B]
        n = has.sum().clamp_min(1.0)
        metrics = _metrics(loss, log_ratio, ratio, m, (seq_clipped * has).sum() / n,
                           seq_log_ratio_mean=(log_s.detach() * has).sum() / n)
        metrics["ratio_mean"] = (s * has).sum() / n
        metrics["ratio_max"] = _masked_max(s, has)
    return loss, metrics


def cispo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
               mask: torch.Tensor, *, clip_eps_high: float, clip_eps_low: float | None = None,
               agg: str = "token-mean", normaliser: float | torch.Tensor | None = None,
               constant_normaliser: float | None = None) -> tuple[torch.Tensor, Metrics]:
    """CISPO (MiniMax-M1, MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with
    Lightning Attention", §3.1):

    ``J = E[1/Σ_i|o_i| · Σ_i Σ_t sg(r̂_{i,t}) Â_{i,t} log π_θ(o_{i,t})]``,
    ``r̂_{i,t} = clip(r_{i,t}, 1 − ε_low, 1 + ε_high)``.

    The importance-sampling weight is clipped and detached instead of the update, so every token keeps
    a gradient (``sg(r̂) Â ∇ log π``). ``clip_eps_low=None`` (the paper's choice) sets no lower bound.
    The default ``agg="token-mean"`` is the paper's ``1/Σ|o_i|``. Departures: none.
    Extra metrics: ``clip_frac`` = fraction of masked tokens whose weight was clipped.
    """
    if clip_eps_high < 0 or (clip_eps_low is not None and clip_eps_low < 0):
        raise ValueError(f"clip ranges must be >= 0, got low={clip_eps_low}, high={clip_eps_high}")
    m, adv, log_ratio, ratio = _prepare(logprobs, old_logprobs, advantages, mask)
    low = None if clip_eps_low is None else 1.0 - clip_eps_low
    weight = torch.clamp(ratio, min=low, max=1.0 + clip_eps_high).detach()  # [B, T]
    per_token = -weight * adv * logprobs                                 # [B, T]
    loss = aggregate(per_token, m, agg, normaliser=normaliser, constant_normaliser=constant_normaliser)
    was_clipped = (ratio.detach() != weight)                             # [B, T]
    return loss, _metrics(loss, log_ratio, ratio, m, masked_mean(was_clipped.to(m.dtype), m))


POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, Metrics]]] = {
    "vanilla_pg": vanilla_pg_loss,
    "ppo": ppo_clip_loss,
    "gspo": gspo_loss,
    "cispo": cispo_loss,
}
