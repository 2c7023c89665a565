"""Value-function (critic) loss for PPO."""

from __future__ import annotations

import torch

from posttrain.losses.reduce import aggregate, masked_mean, masked_var


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, *, clip_range: float | None = 0.2, agg: str = "token-mean",
                       normaliser: float | torch.Tensor | None = None,
                       constant_normaliser: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss as in common PPO implementations (OpenAI baselines' PPO2): Schulman et al.
    2017, eq. 9's ``L^VF`` with value clipping:

    ``V^clip_t = V_old,t + clip(V_t − V_old,t, −ε, ε)``,
    ``ℓ_t = ½ · max((V_t − R_t)², (V^clip_t − R_t)²)``, loss ``= agg_t ℓ_t``.

    Symbols: ``values`` ``[B, T]`` = ``V_t`` (with grad), ``old_values`` ``[B, T]`` = ``V_old`` (from the
    rollout), ``returns`` ``[B, T]`` = ``R_t`` (e.g. from ``advantages.gae``), ``clip_range`` = ``ε``
    (``None`` = no clipping, plain ``½ (V − R)²``); ``agg`` / ``normaliser`` / ``constant_normaliser``
    as in ``reduce.aggregate``.
    Departures: the paper's ``L^VF`` is the unclipped squared error; the clipping is the common
    implementation's (it is a pessimistic bound, not a trust region).
    Metrics (local): ``value_loss``, ``value_clip_frac`` (fraction of masked tokens where the clipped
    term is selected, i.e. no gradient), ``explained_variance`` = ``1 − Var(R − V) / Var(R)`` over the
    masked tokens (nan when ``Var(R) = 0``), ``value_mean``, ``returns_mean``.
    """
    if not (values.shape == old_values.shape == returns.shape == mask.shape) or values.dim() != 2:
        raise ValueError("values, old_values, returns and mask must all be the same [B, T]")
    old_values = old_values.detach().to(values.dtype)
    returns = returns.detach().to(values.dtype)
    err = (values - returns) ** 2                                        # [B, T]
    if clip_range is None:
        per_token = 0.5 * err                                            # [B, T]
        clipped = torch.zeros_like(err, dtype=torch.bool)                # [B, T]
    else:
        if clip_range < 0:
            raise ValueError(f"clip_range must be >= 0, got {clip_range}")
        v_clip = old_values + torch.clamp(values - old_values, -clip_range, clip_range)  # [B, T]
        err_clip = (v_clip - returns) ** 2                               # [B, T]
        clipped = err_clip > err                                         # [B, T]
        per_token = 0.5 * torch.where(clipped, err_clip, err)            # [B, T]
    loss = aggregate(per_token, mask, agg, normaliser=normaliser, constant_normaliser=constant_normaliser)
    with torch.no_grad():
        m = mask.to(device=values.device, dtype=values.dtype)            # [B, T]
        v = values.detach()
        var_r = masked_var(returns, m, unbiased=False)
        var_res = masked_var(returns - v, m, unbiased=False)
        ev = torch.where(var_r > 0, 1.0 - var_res / var_r.clamp_min(1e-30),
                         torch.full_like(var_r, float("nan")))
        metrics = {
            "value_loss": loss.detach(),
            "value_clip_frac": masked_mean(clipped.to(m.dtype), m),
            "explained_variance": ev,
            "value_mean": masked_mean(v, m),
            "returns_mean": masked_mean(returns, m),
        }
    return loss, metrics
