"""Collation: lists of token ids -> padded LongTensors.

``collate_lm`` / ``collate_pairs`` pad on the right by default (training: positions 0..n-1 are the real
tokens, so ``position_ids`` default to ``arange`` and need not be passed); ``collate_prompts`` pads on the
left (generation: every row's next token goes at the same column). Padded positions have
``attention_mask = 0`` and ``loss_mask = 0``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch


def _ids_and_mask(e: Any) -> tuple[Sequence[int], Sequence[int]]:
    if isinstance(e, Mapping):
        return e["input_ids"], e["loss_mask"]
    return e.input_ids, e.loss_mask


def pad_sequences(seqs: Sequence[Sequence[int]], pad_value: int, side: str = "right", *,
                  pad_to: int | None = None) -> torch.Tensor:
    """Stack ``seqs`` into a ``[B, T]`` LongTensor, ``T = max(len) `` (or ``pad_to`` when larger),
    filling with ``pad_value`` on ``side`` ("right" or "left")."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    T = max(len(s) for s in seqs)
    if pad_to is not None:
        T = max(T, pad_to)
    out = torch.full((len(seqs), T), pad_value, dtype=torch.long)  # [B, T]
    for i, s in enumerate(seqs):
        n = len(s)
        if n == 0:
            continue
        row = torch.as_tensor(list(s), dtype=torch.long)
        if side == "right":
            out[i, :n] = row
        else:
            out[i, T - n:] = row
    return out


def collate_lm(examples: Sequence[Any], pad_id: int, side: str = "right", *,
               pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Encoded examples (``.input_ids``/``.loss_mask`` or dicts with those keys) -> ``input_ids``,
    ``attention_mask``, ``loss_mask``, each ``[B, T]`` (LongTensors)."""
    ids, masks = zip(*(_ids_and_mask(e) for e in examples)) if examples else ((), ())
    input_ids = pad_sequences(ids, pad_id, side, pad_to=pad_to)  # [B, T]
    attention_mask = pad_sequences([[1] * len(s) for s in ids], 0, side, pad_to=pad_to)  # [B, T]
    loss_mask = pad_sequences(masks, 0, side, pad_to=pad_to)  # [B, T]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def collate_pairs(chosen: Sequence[Any], rejected: Sequence[Any], pad_id: int, side: str = "right", *,
                  pad_to: int | None = None) -> dict[str, Any]:
    """Preference pairs as ONE ``[2B, T]`` batch for a single concatenated forward: rows ``0..B-1`` are
    the chosen responses, rows ``B..2B-1`` the rejected ones (row ``i`` and ``B + i`` are a pair).
    Returns ``input_ids``, ``attention_mask``, ``loss_mask`` ([2B, T]) and ``num_pairs`` (= B)."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen but {len(rejected)} rejected examples")
    batch: dict[str, Any] = collate_lm(list(chosen) + list(rejected), pad_id, side, pad_to=pad_to)
    batch["num_pairs"] = len(chosen)
    return batch


def collate_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompt id lists, LEFT-padded for batched generation: ``input_ids`` and ``attention_mask``
    ([B, T])."""
    input_ids = pad_sequences(prompts, pad_id, "left")  # [B, T]
    attention_mask = pad_sequences([[1] * len(p) for p in prompts], 0, "left")  # [B, T]
    return {"input_ids": input_ids, "attention_mask": attention_mask}
