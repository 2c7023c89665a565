"""Per-token log-probabilities and entropies of a causal LM, in the shared token-space convention.

Convention (shared by every stage and loss): per-token tensors are ``[B, T]`` aligned with
``input_ids``; position ``t`` holds ``log p(x_t | x_<t)``; position 0 holds 0 and is never in a loss
mask. Here position ``t`` also holds 0 when ``x_t`` or ``x_{t-1}`` is padding, so the first real token
of a left-padded row gets 0 exactly like position 0 of the unpadded row (it has no context either),
and left-padded batches give the same numbers as each row run alone.

The log-softmax is never materialised: ``log p(y) = z_y − logsumexp(z)`` takes one gather and one
reduction over the vocabulary, optionally over chunks of the sequence to bound the float32 working
memory for large vocabularies. Half-precision logits are upcast to float32 chunk by chunk.
"""

from __future__ import annotations

import torch

__all__ = ["token_logprobs", "token_entropy", "sequence_logprobs", "gathered_logprobs", "indexed_logprobs",
           "position_ids_from_mask", "model_logits", "first_target", "takes_logits_to_keep"]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: ``cumsum(mask) − 1`` (pads get 0). [B, T] → [B, T]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _chunks(T: int, chunk_size: int | None):
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    step = T if not chunk_size else chunk_size
    for s in range(0, T, max(step, 1)):
        yield s, min(s + step, T)


def _logprobs_entropy(logits: torch.Tensor, labels: torch.Tensor | None, *, temperature: float = 1.0,
                      chunk_size: int | None = None, with_entropy: bool = False):
    """Shared kernel: log z_y − logsumexp(z) and/or entropy, over sequence chunks.

    ``logits`` [B, T, V] (already aligned with ``labels`` [B, T]); logits are divided by
    ``temperature`` inside each chunk. Labels < 0 (ignore index) give log-prob 0.
    """
    B, T, V = logits.shape
    wd = _work_dtype(logits.dtype)
    lp_parts, ent_parts = [], []
    for s, e in _chunks(T, chunk_size):
        z = logits[:, s:e].to(wd)  # [B, c, V]
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)  # [B, c]
        if labels is not None:
            y = labels[:, s:e]  # [B, c]
            z_y = z.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, c]
            lp_parts.append(torch.where(y >= 0, z_y - lse, torch.zeros_like(lse)))
        if with_entropy:
            # H = −Σ p log p = logsumexp(z) − Σ p z ; −inf logits have p = 0 and contribute 0.
            p = torch.exp(z - lse.unsqueeze(-1))  # [B, c, V]
            pz = torch.where(p > 0, p * z, torch.zeros_like(z))  # [B, c, V]
            ent_parts.append(lse - pz.sum(-1))  # [B, c]
    lp = torch.cat(lp_parts, dim=1) if labels is not None else None  # [B, T]
    ent = torch.cat(ent_parts, dim=1) if with_entropy else None  # [B, T]
    return lp, ent


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, *,
                   chunk_size: int | None = None) -> torch.Tensor:
    """``out[b, t] = log softmax(logits[b, t])[labels[b, t]]`` = ``z_y − logsumexp(z)``.

    logits [B, T, V] and labels [B, T] are already aligned (no shift here). ``chunk_size`` splits the
    sequence dimension; the result is the same. Labels < 0 give 0. Returns [B, T] in float32 (float64
    for float64 logits).
    """
    lp, _ = _logprobs_entropy(logits, labels, chunk_size=chunk_size)
    return lp


def token_entropy(logits: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy of each next-token distribution, ``H = logsumexp(z) − Σ_v softmax(z)_v z_v``.

    [B, T, V] → [B, T]."""
    _, ent = _logprobs_entropy(logits, None, chunk_size=chunk_size, with_entropy=True)
    return ent


def first_target(mask: torch.Tensor) -> int:
    """The first position (column) at which any row of ``mask`` ``[B, T]`` is set, or 1 when none is: the
    ``from_position`` of :func:`sequence_logprobs` for a loss over ``mask``."""
    cols = mask.any(dim=0).nonzero()  # [n, 1]
    return max(int(cols[0, 0]), 1) if cols.numel() else 1


def takes_logits_to_keep(model) -> bool:
    """Whether ``model``'s forward (under DDP, ``torch.compile`` and PEFT wrappers) has HF's ``logits_to_keep``."""
    import inspect

    while True:
        inner = getattr(model, "module", None)  # DDP
        if inner is None:
            inner = getattr(model, "_orig_mod", None)  # torch.compile
        if inner is None and hasattr(model, "get_base_model"):
            inner = model.get_base_model()  # PEFT
        if inner is None or inner is model:
            break
        model = inner
    key = type(model)
    if key not in _LOGITS_TO_KEEP:
        fwd = getattr(model, "forward", None)
        _LOGITS_TO_KEEP[key] = fwd is not None and "logits_to_keep" in inspect.signature(fwd).parameters
    return _LOGITS_TO_KEEP[key]


_LOGITS_TO_KEEP: dict[type, bool] = {}


def model_logits(model, from_position: int = 0, **inputs) -> torch.Tensor:
    """``model(**inputs).logits[:, from_position:]`` ``[B, T − from_position, V]``, computing the LM head only
    for those positions when the model takes HF's ``logits_to_keep`` (the rest of the forward is the same).
    For a large vocabulary the head is a large share of the FLOPs and of the float32 working memory, and a
    loss over completions never uses the logits of the prompt positions before the last one."""
    T = inputs["input_ids"].shape[1]
    if from_position > 0 and takes_logits_to_keep(model):
        inputs["logits_to_keep"] = T - from_position
    logits = model(**inputs, use_cache=False).logits  # [B, T or T − from_position, V]
    return logits[:, from_position:] if logits.shape[1] == T else logits


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                      position_ids: torch.Tensor | None = None, temperature: float = 1.0,
                      with_entropy: bool = False, chunk_size: int | None = None,
                      from_position: int = 1) -> dict[str, torch.Tensor]:
    """Run ``model`` once and return per-token log-probs (and entropies) in token space.

    Returns ``{"logprobs": [B, T]}`` (plus ``"entropy": [B, T]`` when ``with_entropy``) where position
    ``t ≥ 1`` holds ``log p(x_t | x_<t)`` computed from logits at ``t − 1`` divided by ``temperature``
    (the sampling temperature, so that log-probs match the distribution the samples came from), and
    ``entropy[t]`` is the entropy of that same distribution. Position 0, padded positions, and the first
    real token of a left-padded row hold 0.

    ``from_position`` (≥ 1): only positions ``t ≥ from_position`` are computed, earlier ones hold 0, and the
    LM head runs only on positions ``≥ from_position − 1`` (:func:`model_logits`); pass
    :func:`first_target` of the loss mask. ``position_ids`` default to ``cumsum(attention_mask) − 1`` so left
    padding gives the same result as the unpadded row. Gradients flow (no ``no_grad`` here).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    T = input_ids.shape[1]
    if not 1 <= from_position <= max(T - 1, 1):
        raise ValueError(f"from_position must be in [1, {max(T - 1, 1)}], got {from_position}")
    mask = attention_mask.bool()  # [B, T]
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)  # [B, T]
    s = from_position - 1
    logits = model_logits(model, s, input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids)[:, :-1]  # [B, T-1-s, V] predicts x_{s+1} … x_{T-1}
    lp, ent = _logprobs_entropy(logits, input_ids[:, s + 1:], temperature=temperature,
                                chunk_size=chunk_size, with_entropy=with_entropy)  # [B, T-1-s]
    if s:
        pad = lp.new_zeros(lp.shape[0], s)  # [B, s] positions 1 … s, not computed
        lp = torch.cat([pad, lp], dim=1)  # [B, T-1]
        ent = torch.cat([pad, ent], dim=1) if ent is not None else None
    return _token_space(lp, ent, mask)


def _token_space(lp: torch.Tensor, ent: torch.Tensor | None, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Shifted per-token values ``[B, T-1]`` (predicting ``x_1 … x_{T-1}``) → the ``[B, T]`` convention."""
    valid = mask[:, 1:] & mask[:, :-1]  # [B, T-1] both x_t and its predecessor are real tokens
    zero = lp.new_zeros(lp.shape[0], 1)  # [B, 1]
    result = {"logprobs": torch.cat([zero, lp.masked_fill(~valid, 0.0)], dim=1)}  # [B, T]
    if ent is not None:
        result["entropy"] = torch.cat([zero, ent.masked_fill(~valid, 0.0)], dim=1)  # [B, T]
    return result


def indexed_logprobs(logits: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log softmax(logits[rows] / τ)[labels]`` (and the entropy of ``softmax(logits[rows] / τ)``) without
    materialising ``logits[rows]``: ``logsumexp`` (and entropy) once per row of ``logits`` ``[N, V]``, then a
    gather of one logit per ``(rows, labels)`` entry. ``rows`` and ``labels`` have any common shape ``S``;
    returns tensors of shape ``S`` (float32, or float64 for float64 logits). For layouts where one position's
    logits serve several targets (a shared prompt's last token predicts each completion's first)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = logits.to(_work_dtype(logits.dtype))  # [N, V]
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)  # [N]
    lp = z[rows, labels] - lse[rows]  # [S]
    ent = None
    if with_entropy:
        p = torch.exp(z - lse.unsqueeze(-1))  # [N, V]
        pz = torch.where(p > 0, p * z, torch.zeros_like(z))  # [N, V]
        ent = (lse - pz.sum(-1))[rows]  # [S]
    return lp, ent


def gathered_logprobs(logits: torch.Tensor, index: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, *, temperature: float = 1.0,
                      with_entropy: bool = False) -> dict[str, torch.Tensor]:
    """:func:`sequence_logprobs` of a ``[B, T]`` batch whose logits were computed in another layout.

    ``logits`` ``[N, V]`` are per-position outputs of some forward (e.g. the packed rows of prefix sharing,
    flattened) and ``index`` ``[B, T]`` says which of the ``N`` rows holds the output at ``(b, t)`` of the
    padded batch. The result is the same as running :func:`sequence_logprobs` on the padded batch, but
    ``logsumexp`` and entropy are computed once per row of ``logits`` (a shared prompt position serves every
    completion behind it) and no ``[B, T, V]`` copy is made (:func:`indexed_logprobs`).
    """
    lp, ent = indexed_logprobs(logits, index[:, :-1], input_ids[:, 1:], temperature=temperature,
                               with_entropy=with_entropy)  # [B, T-1]: logits at t−1 predict x_t
    return _token_space(lp, ent, attention_mask.bool())
