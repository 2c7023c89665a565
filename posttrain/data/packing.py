"""Packing: several examples per row of ``max_len`` tokens, with attention that never crosses examples.

How the attention is kept inside each example (checked against transformers 5.24, Llama and Qwen2,
``sdpa`` and ``eager`` attention; see ``tests/test_data_packing.py``)::

    attention_mask[b, 0, q, k] = 0.0                       if seq(q) == seq(k) and k <= q
                               = torch.finfo(dtype).min   otherwise              # [B, 1, L, L]

i.e. a 4-D *additive float* block-diagonal causal mask, plus ``position_ids`` that restart at 0 at every
example start (so RoPE sees each example at its own positions). Why this form:

- transformers (``masking_utils._preprocess_mask_arguments``) passes any 4-D mask through unchanged to
  the attention function. ``eager`` attention ADDS the mask to the scores (``attn_weights +
  attention_mask``), and ``sdpa`` accepts an additive float mask as ``attn_mask``; so an additive mask
  works for both. A *boolean* 4-D mask works for sdpa but is silently wrong for eager (True/False are
  added as 1/0), so it is not used. A float32 mask also works with a float64 model on CPU; pass the
  model's dtype (``dtype=``) to be safe on GPUs (bf16/fp16 SDPA kernels expect the query's dtype).
- A 2-D ``attention_mask`` of ones with restarted ``position_ids`` does NOT isolate examples (the test
  measures the cross-talk): the packed-sequence detection in ``masking_utils`` only runs when
  ``attention_mask is None``.
- ``attention="position_ids"`` returns no ``attention_mask`` at all and lets transformers find the
  example boundaries from the restarted ``position_ids`` (``find_packed_sequence_indices``). It is the
  only form flash-attention can use and costs no ``L x L`` memory, BUT it also needs ``use_cache=False``
  in the forward call: Llama/Qwen2 create a ``DynamicCache`` when ``use_cache`` is left on, and with a
  cache the detection is skipped silently and examples attend to each other.

Padding at the end of a row: ``input_ids = pad_id``, ``loss_mask = 0``, ``position_ids = 0``, and each
pad token attends only to itself (no fully masked attention row, so no NaNs).

Every example's first token has ``loss_mask = 0`` (it would otherwise be "predicted" from the previous
example); an example longer than ``max_len`` is split into ``max_len`` chunks (``overflow="split"``,
each chunk an independent example whose first token is likewise unmasked), truncated, or rejected.
The 4-D mask costs ``B * L * L`` elements (e.g. 8 x 4096^2 float32 = 512 MiB); use
``attention="position_ids"`` for long rows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from posttrain.errors import DataError


@dataclass(frozen=True, slots=True)
class PackedRow:
    input_ids: list[int]
    loss_mask: list[int]
    position_ids: list[int]
    seq_lens: list[int]          # length of each example in this row, in order
    example_indices: list[int]   # index (into the input list) of each example; repeats for split chunks

    def __len__(self) -> int:
        return len(self.input_ids)


def _ids_and_mask(e: Any) -> tuple[list[int], list[int]]:
    if isinstance(e, Mapping):
        return list(e["input_ids"]), list(e["loss_mask"])
    return list(e.input_ids), list(e.loss_mask)


def pack(examples: Sequence[Any], max_len: int, *, strategy: str = "best_fit",
         overflow: str = "split") -> list[PackedRow]:
    """Pack encoded examples (``.input_ids``/``.loss_mask`` or dicts) into rows of at most ``max_len``.

    ``strategy``: ``"best_fit"`` (best-fit decreasing: longest first, each into the fullest row it still
    fits; deterministic) or ``"sequential"`` (input order, a new row when the next one does not fit).
    Examples are never split unless longer than ``max_len``; then ``overflow`` decides: ``"split"`` into
    ``max_len`` chunks, ``"truncate"`` (keep the first ``max_len``), or ``"error"`` (DataError).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if strategy not in ("best_fit", "sequential"):
        raise ValueError(f"strategy must be 'best_fit' or 'sequential', got {strategy!r}")
    if overflow not in ("split", "truncate", "error"):
        raise ValueError(f"overflow must be 'split', 'truncate' or 'error', got {overflow!r}")

    pieces: list[tuple[int, list[int], list[int]]] = []  # (example index, ids, mask)
    for i, e in enumerate(examples):
        ids, mask = _ids_and_mask(e)
        if len(ids) != len(mask):
            raise ValueError(f"example {i}: {len(ids)} input_ids but {len(mask)} loss_mask entries")
        if not ids:
            continue
        if len(ids) <= max_len:
            pieces.append((i, ids, mask))
        elif overflow == "split":
            for s in range(0, len(ids), max_len):
                pieces.append((i, ids[s:s + max_len], mask[s:s + max_len]))
        elif overflow == "truncate":
            pieces.append((i, ids[:max_len], mask[:max_len]))
        else:
            raise DataError(f"example {i} has {len(ids)} tokens, more than max_len={max_len}")

    bins: list[list[int]] = []  # piece indices per row
    if strategy == "sequential":
        used = max_len + 1
        for j, (_, ids, _) in enumerate(pieces):
            if used + len(ids) > max_len:
                bins.append([])
                used = 0
            bins[-1].append(j)
            used += len(ids)
    else:
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j][1]))  # stable
        free: list[tuple[int, int]] = []  # sorted (remaining capacity, row index)
        for j in order:
            n = len(pieces[j][1])
            k = bisect.bisect_left(free, (n, -1))
            if k < len(free):
                cap, b = free.pop(k)
            else:
                cap, b = max_len, len(bins)
                bins.append([])
            bins[b].append(j)
            if cap - n > 0:
                bisect.insort(free, (cap - n, b))

    rows: list[PackedRow] = []
    for members in bins:
        ids: list[int] = []
        mask: list[int] = []
        pos: list[int] = []
        lens: list[int] = []
        idx: list[int] = []
        for j in members:
            i, p_ids, p_mask = pieces[j]
            m = list(p_mask)
            m[0] = 0  # the first token of an example is never predicted
            ids += p_ids
            mask += m
            pos += list(range(len(p_ids)))
            lens.append(len(p_ids))
            idx.append(i)
        rows.append(PackedRow(ids, mask, pos, lens, idx))
    return rows


def block_causal_mask(seq_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``seq_ids [B, L]`` (same id = same example) -> additive mask ``[B, 1, L, L]``: 0 where query q may
    attend key k (same example and k <= q), ``finfo(dtype).min`` elsewhere."""
    L = seq_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()  # [L, L]
    allowed = (seq_ids[:, :, None] == seq_ids[:, None, :]) & causal  # [B, L, L]
    zero = torch.zeros((), dtype=dtype)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, neg)[:, None]  # [B, 1, L, L]


def prefix_sharing_mask(segments: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive mask of prefix sharing (one row = a shared prompt followed by several completions):
    ``segments [B, L]`` with 0 on the prompt, ``j ≥ 1`` on completion ``j`` and a negative value on padding
    -> ``[B, 1, L, L]``: 0 where query q may attend key k (k ≤ q, both real, and k in the prompt or in q's own
    completion; a padding position attends only itself, so no row of the softmax is empty),
    ``finfo(dtype).min`` elsewhere. Each completion then sees exactly the context it has in its own
    unpacked sequence (the reward-model, DPO and RL ``share_prompt`` layouts)."""
    L = segments.shape[1]
    q, k = segments[:, :, None], segments[:, None, :]  # [B, L, 1], [B, 1, L]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()  # [L, L]
    allowed = causal & (q >= 0) & (k >= 0) & ((k == 0) | (k == q))  # [B, L, L]
    allowed |= torch.eye(L, dtype=torch.bool, device=segments.device) & (q < 0)  # padding sees itself
    zero = torch.zeros((), dtype=dtype, device=segments.device)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=segments.device)
    return torch.where(allowed, zero, neg)[:, None]  # [B, 1, L, L]


def collate_packed(rows: Sequence[PackedRow], *, pad_id: int = 0, attention: str = "4d",
                   dtype: torch.dtype = torch.float32, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Packed rows -> ``input_ids``, ``loss_mask``, ``position_ids`` ([B, L], L = longest row or
    ``pad_to``) and, for ``attention="4d"``, ``attention_mask`` [B, 1, L, L] (additive, ``dtype``).
    With ``attention="position_ids"`` there is no ``attention_mask``; call the model with
    ``use_cache=False`` (see the module docstring)."""
    if attention not in ("4d", "position_ids"):
        raise ValueError(f"attention must be '4d' or 'position_ids', got {attention!r}")
    if not rows:
        raise ValueError("collate_packed needs at least one row")
    L = max(len(r) for r in rows)
    if pad_to is not None:
        L = max(L, pad_to)
    B = len(rows)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)  # [B, L]
    loss_mask = torch.zeros(B, L, dtype=torch.long)  # [B, L]
    position_ids = torch.zeros(B, L, dtype=torch.long)  # [B, L]
    # pad tokens get distinct negative ids (each attends only to itself)
    seq_ids = -torch.arange(1, L + 1, dtype=torch.long).repeat(B, 1)  # [B, L]
    for b, r in enumerate(rows):
        n = len(r)
        input_ids[b, :n] = torch.as_tensor(r.input_ids, dtype=torch.long)
        loss_mask[b, :n] = torch.as_tensor(r.loss_mask, dtype=torch.long)
        position_ids[b, :n] = torch.as_tensor(r.position_ids, dtype=torch.long)
        seq_ids[b, :n] = torch.repeat_interleave(torch.arange(len(r.seq_lens)),
                                                 torch.as_tensor(r.seq_lens))
    out = {"input_ids": input_ids, "loss_mask": loss_mask, "position_ids": position_ids}
    if attention == "4d":
        out["attention_mask"] = block_causal_mask(seq_ids, dtype)  # [B, 1, L, L]
    return out
