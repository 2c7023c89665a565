"""Masked reductions and loss aggregation: the ONE place where losses are reduced.

Symbols used throughout ``posttrain.losses``:

* ``B`` — sequences in the micro-batch, ``T`` — token positions (aligned with ``input_ids``).
* ``mask`` ``[B, T]`` — 1 (or ``True``) at predicted tokens (completion / assistant tokens), 0 elsewhere.
  A float mask with fractional values acts as per-token weights.
* ``l`` ``[B, T]`` — a per-token loss; ``m`` — the mask.

Aggregation modes (``AGG_MODES``):

``"token-mean"``
    ``Σ_{b,t} l·m / Σ_{b,t} m`` — every token in the batch weighs the same (PPO / DAPO style).
``"seq-mean-token-sum"``
    ``(1/B) Σ_b Σ_t l·m`` — per-sequence sums, averaged over sequences.
``"seq-mean-token-mean"``
    ``(1/B) Σ_b (Σ_t l·m / Σ_t m)`` — per-sequence token means, averaged over sequences (GRPO, Shao et al. 2024).
``"seq-mean-token-sum-norm"``
    ``Σ_{b,t} l·m / (B · C)`` with a constant ``C`` (``constant_normaliser``, e.g. the maximum completion
    length) — Dr. GRPO (Liu et al. 2025), which removes the per-sequence length normalisation.

``B`` counts the sequences that have at least one masked token (rows of pure padding don't count).

Global normalisation (gradient accumulation and data parallelism)
-------------------------------------------------------------------
The engine splits a global batch into micro-batches (over accumulation steps and ranks) and *sums* their
gradients. For that sum to be exactly the gradient of the loss on the whole global batch, every
micro-batch must divide by the **global** denominator instead of its local one. Pass it as
``normaliser``: the engine computes ``num_units(mask_k, mode)`` for every micro-batch ``k``, sums them
(all-reduce across ranks, sum over accumulation steps) and passes the total to every ``aggregate`` call.
Then ``Σ_k aggregate(l_k, m_k, mode, normaliser=N)`` equals ``aggregate(l, m, mode)`` on the
concatenated global batch, however it is split. (With DDP, which *averages* gradients over ``W``
ranks, the engine multiplies each local loss by ``W``.) ``normaliser`` replaces ``Σ m`` for
``"token-mean"`` and ``B`` for the sequence modes; ``constant_normaliser`` is never replaced.
"""

from __future__ import annotations

from typing import Literal

import torch

AggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)

_EPS = 1e-8


def _float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The mask as a float tensor in ``like``'s dtype (bool / int masks become 0./1.)."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return mask.to(dtype=dtype, device=like.device)


def _zero_masked(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x`` with masked-out entries replaced by 0, so inf/nan padding never leaks into a sum."""
    return torch.where(m != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``Σ x·m`` over all entries (``dim=None``) or along ``dim``. Entries where ``m == 0`` are ignored
    even if they hold inf/nan."""
    m = _float_mask(mask, x)
    xm = _zero_masked(x, m) * m
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                eps: float = _EPS) -> torch.Tensor:
    """``Σ x·m / max(Σ m, eps)``; an all-zero mask gives 0 (not nan)."""
    m = _float_mask(mask, x)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp_min(eps)


def masked_var(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, *,
               unbiased: bool = True, eps: float = _EPS) -> torch.Tensor:
    """Masked variance ``Σ m·(x − μ)² / (Σ m − 1)`` (``unbiased=True``, Bessel) or ``/ Σ m``.

    With one (or no) masked entry the unbiased variance is returned as 0.
    """
    m = _float_mask(mask, x)
    if dim is None:
        count = m.sum()
        mu = masked_sum(x, m) / count.clamp_min(eps)
    else:
        count = m.sum(dim, keepdim=True)
        mu = masked_sum(x, m, dim).unsqueeze(dim) / count.clamp_min(eps)
    centred = _zero_masked(x - mu, m)
    sq = masked_sum(centred * centred, m, dim)
    if dim is not None:
        count = count.squeeze(dim)
    denom = count - 1 if unbiased else count
    return sq / denom.clamp_min(eps)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, *,
                  shift_mean: bool = True, unbiased: bool = True, eps: float = _EPS) -> torch.Tensor:
    """``(x − μ) / sqrt(σ² + eps)`` with masked mean and variance (over everything, or along ``dim``).

    ``shift_mean=False`` adds ``μ`` back (scale only, as in PPO reward whitening). Masked-out entries
    of the result are 0.
    """
    m = _float_mask(mask, x)
    if dim is None:
        mu = masked_mean(x, m)
        var = masked_var(x, m, unbiased=unbiased)
    else:
        mu = masked_mean(x, m, dim).unsqueeze(dim)
        var = masked_var(x, m, dim, unbiased=unbiased).unsqueeze(dim)
    out = (x - mu) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mu
    return _zero_masked(out, m)


def _check_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {', '.join(AGG_MODES)}")


def num_units(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The local count a micro-batch contributes to the global ``normaliser`` of ``aggregate``.

    Tokens (``Σ m``) for ``"token-mean"``; sequences with at least one masked token for the sequence
    modes. Returned as a 0-dim float tensor so the engine can all-reduce and sum it.
    """
    _check_mode(mode)
    m = mask if mask.is_floating_point() else mask.to(torch.get_default_dtype())
    if mode == "token-mean":
        return m.sum()
    return (m.sum(-1) != 0).to(m.dtype).sum()


def _as_tensor(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", *,
              normaliser: float | torch.Tensor | None = None,
              constant_normaliser: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar with one of ``AGG_MODES`` (see module docstring).

    ``normaliser`` replaces the local denominator (``Σ m`` for ``"token-mean"``, ``B`` for the
    sequence modes) with a global count summed over ranks and accumulation micro-batches
    (``num_units``), so that summing the micro-batch losses gives exactly the global-batch loss.
    ``constant_normaliser`` is the constant ``C`` of ``"seq-mean-token-sum-norm"`` (required there,
    rejected elsewhere).
    """
    _check_mode(mode)
    if per_token.shape != mask.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} differ in shape")
    if (mode == "seq-mean-token-sum-norm") != (constant_normaliser is not None):
        raise ValueError("constant_normaliser is required by (and only by) mode 'seq-mean-token-sum-norm'")
    m = _float_mask(mask, per_token)                                     # [B, T]
    if mode == "token-mean":
        denom = m.sum() if normaliser is None else _as_tensor(normaliser, per_token)
        return masked_sum(per_token, m) / denom.clamp_min(_EPS)
    n_seq = num_units(m, mode) if normaliser is None else _as_tensor(normaliser, per_token)
    if mode == "seq-mean-token-sum":
        per_seq = masked_sum(per_token, m, dim=-1)                       # [B]
    elif mode == "seq-mean-token-mean":
        per_seq = masked_mean(per_token, m, dim=-1)                      # [B]
    else:  # seq-mean-token-sum-norm (Dr. GRPO)
        if constant_normaliser <= 0:
            raise ValueError(f"constant_normaliser must be > 0, got {constant_normaliser}")
        per_seq = masked_sum(per_token, m, dim=-1) / constant_normaliser  # [B]
    return per_seq.sum() / n_seq.clamp_min(_EPS)


def batch_mean(x: torch.Tensor, *, normaliser: float | torch.Tensor | None = None) -> torch.Tensor:
    """Mean of a per-example loss ``[B]``: ``Σ_b x_b / B``, or ``/ normaliser`` (the global number of
    examples over ranks and accumulation micro-batches, as for ``aggregate``)."""
    denom = _as_tensor(x.shape[0] if normaliser is None else normaliser, x)
    return x.sum() / denom.clamp_min(_EPS)
