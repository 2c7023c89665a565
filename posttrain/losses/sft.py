"""Supervised fine-tuning (instruction tuning) loss."""

from __future__ import annotations

import torch

from posttrain.losses.reduce import aggregate, masked_sum


def sft_loss(logprobs: torch.Tensor, loss_mask: torch.Tensor, *,
             normaliser: float | torch.Tensor | None = None,
             agg: str = "token-mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the target tokens (maximum likelihood; e.g. InstructGPT's SFT stage,
    Ouyang et al. 2022 §3.5).

    ``L = −Σ_{b,t} m_{b,t} · log π(x_{b,t} | x_{b,<t}) / Σ_{b,t} m_{b,t}``

    Symbols: ``logprobs`` ``[B, T]`` = ``log π(x_t | x_<t)`` (position 0 holds 0 and is never masked),
    ``loss_mask`` ``[B, T]`` = ``m`` (1 on the completion / assistant tokens).
    ``normaliser`` replaces the local token count ``Σ m`` with the global count (see
    ``reduce.aggregate``), so micro-batch losses sum to the global-batch loss. ``agg`` may select
    another ``reduce.AGG_MODES`` mode (default: token mean, as in the paper).

    Metrics (local to this micro-batch, independent of ``normaliser``): ``nll`` (token-mean NLL),
    ``nll_sum`` and ``num_tokens``, so the engine can form the global perplexity
    ``exp(Σ nll_sum / Σ num_tokens)``.
    """
    nll = -logprobs                                                      # [B, T]
    loss = aggregate(nll, loss_mask, agg, normaliser=normaliser)
    with torch.no_grad():
        nll_sum = masked_sum(nll.detach(), loss_mask)
        num_tokens = masked_sum(torch.ones_like(nll), loss_mask)
        metrics = {
            "nll": nll_sum / num_tokens.clamp_min(1e-8),
            "nll_sum": nll_sum,
            "num_tokens": num_tokens,
        }
    return loss, metrics
