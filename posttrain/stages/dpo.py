"""``posttrain dpo`` (direct alignment: the whole DPO family and KTO) and ``posttrain preference-data``.

``run(cfg: DPOConfig)``
    A trainable policy ``π_θ`` and, for losses whose :class:`~posttrain.losses.preference.LossSpec` says
    ``needs_reference``, a frozen reference ``π_ref`` (``cfg.ref_model``, default: the initial policy).
    Reference-free losses (``simpo``, ``orpo``, ``slic``) never load one. Each step is ONE forward of the
    policy over a ``[2B, T]`` batch: rows ``0..B-1`` are the chosen completions, rows ``B..2B-1`` the
    rejected ones. KTO batches hold the ``B`` labelled examples, then ``B`` mismatched pairs
    ``(x_i, y_{i+1 mod B})`` (shifted completions) whose log-ratios give the reference point ``z_0``
    (Ethayarajh et al. 2024 §4); no gradient flows through ``z_0``, so the mismatched rows get their own
    no-grad forward and the backward pass covers only the labelled rows. Sequence log-probs are sums over
    the completion tokens (``loss_mask``); the loss itself comes from the registry — this file holds no
    loss math. ``share_prompt`` (default ``auto``: per batch, when a FLOP estimate says it is cheaper) packs
    each pair as ``prompt + chosen + rejected`` in one row instead (a 4-D mask keeps the two completions
    apart; :func:`shared_prompt_batch`): the same log-probs, up to float rounding, with every prompt processed
    once. K-wise ranking data (``prompt``, ``completions``, ``ranking``) train as pairs
    (:func:`ranking_to_pairs`, ``ranking_pairs``: all / best_rest / best_worst). ``nll_weight=α > 0`` adds RPO's term ``α · chosen_nll_term`` (the chosen
    completions' per-token NLL) to any paired loss and logs it as ``nll``.

    Reference log-probs are computed ONCE over the dataset before training (``precompute_ref=true``,
    default) and cached in ``RUN/ref_logps/<split>-<key>.pt``, where ``key`` hashes the tokenised dataset and
    the reference model's weights (:func:`model_fingerprint`); a resumed or re-run stage with the same data
    and reference reuses the file. ``precompute_ref=false`` runs the reference on every batch instead. For
    KTO only the labelled examples' reference log-probs can be cached (the mismatched pairs depend on the
    batch), so the reference still runs on the ``B`` mismatched rows of each batch.

    Metrics per step: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``margin``, ``accuracy`` (from the
    loss), ``kl`` (mean ``log π_θ(y|x) − log π_ref(y|x)`` over the batch's completions — an estimate of
    ``KL(π_θ ‖ π_ref)`` on the dataset's completions, which are not samples of ``π_θ``; KTO reports its
    ``z_0``), ``logps/chosen``, ``logps/rejected``, ``lengths/chosen``, ``lengths/rejected`` (completion
    tokens), and the same on ``data.eval`` (``eval/`` prefix) every ``eval_every`` steps and at the end.

``preference_data(cfg: PreferenceDataConfig)``
    Tülu 3's on-policy preference data: ``K`` samples per prompt from ``cfg.model`` with the shared rollout
    sampler, scored by a reward source (``rollout.rewards.build_reward``: ``rm:PATH``, ``gold``,
    ``callable:mod:fn``, ...), turned into pairs (best vs worst, or every pair whose score gap exceeds
    ``min_gap``; ties and identical texts dropped) written to ``RUN/pairs.jsonl`` in the data format of the
    input prompts (conversational prompts → assistant-message completions), plus ``RUN/summary.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import statistics
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from posttrain.config import DPOConfig, PreferenceDataConfig
from posttrain.data.packing import prefix_sharing_mask
from posttrain.errors import ConfigError, DataError
from posttrain.losses.preference import PREFERENCE_LOSSES, LossSpec, chosen_nll_term, kto_reference_point
from posttrain.losses.reduce import masked_sum, num_units
from posttrain.stages import common

__all__ = ["run", "preference_data", "resolve_loss", "loss_settings", "DEFAULT_BETA", "PreferenceBatcher",
           "PreferenceObjective", "reference_logps", "model_fingerprint", "dataset_fingerprint",
           "make_pairs", "RefCache"]

# β when cfg.beta is null. SimPO's β multiplies a length-normalised log-prob, so it is ~20× DPO's
# (Meng et al. 2024 use 2.0–2.5); ORPO's "β" is its λ (paper: 0.1); IPO's is τ.
DEFAULT_BETA: dict[str, float] = {
    "dpo": 0.1, "cdpo": 0.1, "robust_dpo": 0.1, "ipo": 0.1, "hinge": 0.1, "slic": 0.1, "simpo": 2.0,
    "orpo": 0.1, "apo_zero": 0.1, "apo_down": 0.1, "kto": 0.1,
}
_FALLBACK_BETA = 0.1

# Variant keyword of a loss function -> the DPOConfig field that sets it.
_VARIANT_FIELDS: dict[str, str] = {
    "label_smoothing": "label_smoothing",
    "gamma": "simpo_gamma",
    "length_average": "ipo_length_average",
    "desirable_weight": "kto_desirable_weight",
    "undesirable_weight": "kto_undesirable_weight",
}
_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------- the loss
def resolve_loss(name: str) -> LossSpec:
    """The registry entry for ``name``; an unknown name is a one-line ConfigError listing the names."""
    spec = PREFERENCE_LOSSES.get(name)
    if spec is None:
        import difflib

        hint = difflib.get_close_matches(name, list(PREFERENCE_LOSSES), n=1)
        raise ConfigError(f"config: key 'loss': unknown preference loss '{name}'"
                          + (f" (did you mean '{hint[0]}'?)" if hint else "")
                          + f"; expected one of {', '.join(PREFERENCE_LOSSES)}")
    return spec


def loss_settings(cfg: DPOConfig, spec: LossSpec | None = None) -> tuple[float, dict[str, Any]]:
    """``(beta, variant_kwargs)`` for the configured loss: β (``cfg.beta`` or the loss's default) and the
    loss's own keyword arguments that the config sets (``label_smoothing``, ``gamma``, ...)."""
    spec = spec or resolve_loss(cfg.loss)
    beta = cfg.beta if cfg.beta is not None else DEFAULT_BETA.get(cfg.loss, _FALLBACK_BETA)
    kwargs = {k: getattr(cfg, _VARIANT_FIELDS[k]) for k in spec.variant_kwargs if k in _VARIANT_FIELDS}
    return float(beta), kwargs


# ------------------------------------------------------------------------------------- batching
def _completion(enc) -> list[int]:
    return list(enc.input_ids[enc.prompt_len:])


def _mismatched(prompt_enc, completion_enc, max_len: int) -> tuple[list[int], list[int]]:
    """``x_i`` of one example with ``y_j`` of another (KTO's mismatched pair), cut to ``max_len``."""
    p = list(prompt_enc.input_ids[:prompt_enc.prompt_len])
    c = _completion(completion_enc)[:max(1, max_len - len(p))]
    ids = p + c
    mask = [0] * len(p) + [1] * len(c)
    mask[0] = 0
    return ids, mask


@dataclass
class PreferenceBatcher:
    """Example indices -> one ``[2B, T]`` batch (``make_batch`` for :meth:`Trainer.fit`).

    Paired data (``EncodedPair``): rows ``0..B-1`` chosen, ``B..2B-1`` rejected (``collate_pairs``).
    Unpaired data (``EncodedLabeled``, KTO): rows ``0..B-1`` the labelled examples, rows ``B..2B-1`` the
    mismatched pairs ``(x_i, y_{(i+1) mod B})`` (shifted completions) and ``labels`` ``[B]``.
    ``ref`` (optional) holds cached reference log-probs per example: ``[N, 2]`` (chosen, rejected) for pairs,
    ``[N]`` for unpaired examples; the batch then carries ``ref_logps`` ``[2B]`` / ``[B]``.
    Every batch carries ``num_units`` = B (the loss is a mean over pairs / examples).
    """

    examples: Sequence[Any]
    pad_id: int
    paired: bool
    max_len: int
    ref: torch.Tensor | None = None
    share_prompt: bool | str = False
    mask_dtype: torch.dtype = torch.float32
    cost_shape: tuple[int, int, int] | None = None  # (params, layers, hidden) for share_prompt="auto"

    def _share(self, exs: Sequence[Any]) -> bool:
        """Whether this batch runs packed: always for ``share_prompt=true``; for ``auto`` when
        :func:`~posttrain.stages.common.packing_pays` (``[2B, max(P+C, P+R)]`` padded vs ``[B, max(P+C+R)]``)."""
        if not self.paired or self.share_prompt is False:
            return False
        if self.share_prompt is True:
            return True
        padded = max(max(len(e.chosen.input_ids), len(e.rejected.input_ids)) for e in exs)
        packed = max(len(e.chosen.input_ids) + len(e.rejected.input_ids) - e.rejected.prompt_len for e in exs)
        return common.packing_pays(self.cost_shape, (2 * len(exs), padded), (len(exs), packed))

    def __call__(self, indices: Sequence[int]) -> dict[str, Any]:
        from posttrain.data.collate import collate_lm, collate_pairs

        exs = [self.examples[i] for i in indices]
        B = len(exs)
        if self._share(exs):
            batch = shared_prompt_batch(exs, self.pad_id, self.mask_dtype)
            if self.ref is not None:
                r = self.ref[list(indices)]                                  # [B, 2]
                batch["ref_logps"] = torch.cat([r[:, 0], r[:, 1]])           # [2B]
            batch["num_units"] = float(B)
            batch["num_examples"] = B
            batch["indices"] = list(indices)
            return batch
        if self.paired:
            batch = collate_pairs([e.chosen for e in exs], [e.rejected for e in exs], self.pad_id)
            if self.ref is not None:
                r = self.ref[list(indices)]                                  # [B, 2]
                batch["ref_logps"] = torch.cat([r[:, 0], r[:, 1]])           # [2B]
        else:
            seqs = [{"input_ids": e.example.input_ids, "loss_mask": e.example.loss_mask} for e in exs]
            for k in range(B):
                ids, mask = _mismatched(exs[k].example, exs[(k + 1) % B].example, self.max_len)
                seqs.append({"input_ids": ids, "loss_mask": mask})
            batch = collate_lm(seqs, self.pad_id)
            batch["labels"] = torch.tensor([e.label for e in exs], dtype=torch.bool)  # [B]
            if self.ref is not None:
                batch["ref_logps"] = self.ref[list(indices)]                 # [B]
        first = batch["loss_mask"][:B]                                       # [B, T]
        batch["num_units"] = float(num_units(first, "seq-mean-token-sum"))
        batch["num_examples"] = B
        batch["indices"] = list(indices)
        return batch


def shared_prompt_batch(pairs: Sequence[Any], pad_id: int, mask_dtype: torch.dtype = torch.float32) -> dict:
    """Pairs as ONE ``[B, L]`` forward with the prompt computed once (prefix sharing, as in Wang et al. 2024,
    "Accelerating Direct Preference Optimization with Prefix Sharing"): row ``b`` is
    ``prompt_b + chosen_b + rejected_b``, right-padded, with

    * a 4-D additive causal mask ``[B, 1, L, L]`` in which rejected tokens see the prompt and the earlier
      rejected tokens but no chosen token (chosen tokens see the prompt and earlier chosen tokens; padding
      sees only itself) — the form :mod:`posttrain.data.packing` verified for HF Llama/Qwen2 (sdpa, eager);
    * ``position_ids`` that restart at the prompt length for the rejected tokens, so both completions sit at
      the positions they have in their own sequence;
    * ``pred_index`` ``[B, L]``: the position whose logits predict each token (``t − 1``, except the first
      rejected token, predicted from the last prompt token), and ``chosen_mask`` / ``rejected_mask``.

    Every log-prob equals the one of the ``[2B, T]`` layout (the same attention, positions and context) while
    the prompt tokens are processed once instead of twice."""
    rows, seg, pos, pred, cm, rm = [], [], [], [], [], []
    for e in pairs:
        P = e.chosen.prompt_len
        p, c = e.chosen.input_ids[:P], e.chosen.input_ids[P:]
        r = e.rejected.input_ids[e.rejected.prompt_len:]
        C, R = len(c), len(r)
        rows.append(list(p) + list(c) + list(r))
        seg.append([0] * P + [1] * C + [2] * R)
        pos.append(list(range(P + C)) + list(range(P, P + R)))
        pred.append([0] + list(range(P + C - 1)) + ([P - 1] + list(range(P + C, P + C + R - 1)) if R else []))
        cmask = [0] * P + list(e.chosen.loss_mask[P:]) + [0] * R
        rmask = [0] * (P + C) + list(e.rejected.loss_mask[e.rejected.prompt_len:])
        cm.append(cmask)
        rm.append(rmask)
    from posttrain.data.collate import pad_sequences

    input_ids = pad_sequences(rows, pad_id)                                  # [B, L]
    segments = pad_sequences(seg, -1)                                        # [B, L] (-1 = padding)
    mask = prefix_sharing_mask(segments, mask_dtype)                         # [B, 1, L, L]
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": pad_sequences(pos, 0),
            "pred_index": pad_sequences(pred, 0), "chosen_mask": pad_sequences(cm, 0),
            "rejected_mask": pad_sequences(rm, 0), "num_tokens": int((segments >= 0).sum())}


def _shared_prompt_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``[2B]`` sequence log-probs (chosen then rejected) and completion lengths of a shared-prompt batch."""
    from posttrain.models.logprobs import indexed_logprobs, model_logits

    cm, rm = batch["chosen_mask"], batch["rejected_mask"]                    # [B, L]
    B, L = batch["input_ids"].shape
    pred = batch["pred_index"]                                               # [B, L]
    used = pred[(cm + rm) > 0]                                               # predicting positions
    s = int(used.min()) if used.numel() else 0  # no logit before the earliest of them is used
    logits = model_logits(model, s, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          position_ids=batch["position_ids"])               # [B, L−s, V]
    rows = (pred - s).clamp(min=0) + (L - s) * torch.arange(B, device=logits.device)[:, None]  # [B, L] flat
    lp, _ = indexed_logprobs(logits.flatten(0, 1), rows, batch["input_ids"])  # [B, L]
    logps = torch.cat([masked_sum(lp, cm, dim=-1), masked_sum(lp, rm, dim=-1)])  # [2B]
    return logps, torch.cat([cm.sum(-1), rm.sum(-1)])                        # [2B], [2B]


def _rows(batch, rows: slice) -> dict[str, torch.Tensor]:
    """Rows ``rows`` of a right-padded batch, trimmed to their longest sequence."""
    sub = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "loss_mask")}
    T = int(sub["attention_mask"].sum(-1).max())
    return {k: v[:, :T] for k, v in sub.items()}


def _sequence_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of completion-token log-probs ``[R]`` and completion lengths ``[R]`` for a batch's rows."""
    from posttrain.models.logprobs import first_target, sequence_logprobs

    mask = batch["loss_mask"]                                                # [R, T]
    lp = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"],
                           from_position=first_target(mask))["logprobs"]    # [R, T]
    return masked_sum(lp, mask, dim=-1), mask.sum(-1)                        # [R], [R]


class PreferenceObjective:
    """``loss_fn(model, batch, normaliser)`` for the engine: one policy forward over the ``[2B, T]`` batch,
    reference log-probs from the batch (cached) or from ``ref_model`` (on the fly), then the registry loss.

    ``ref_model`` is required when the loss needs a reference and the batch carries no ``ref_logps`` (and,
    for KTO, always: the mismatched pairs change with the batch, so their reference log-probs are not
    cached)."""

    def __init__(self, spec: LossSpec, beta: float, variant_kwargs: dict[str, Any] | None = None,
                 ref_model: torch.nn.Module | None = None, nll_weight: float = 0.0):
        self.spec, self.beta = spec, float(beta)
        self.kwargs = dict(variant_kwargs or {})
        self.ref_model = ref_model
        self.nll_weight = float(nll_weight)
        if self.nll_weight and not spec.paired:
            raise ValueError("nll_weight (RPO) needs a paired loss")

    @torch.no_grad()
    def _reference(self, batch, rows: slice) -> torch.Tensor:
        if self.ref_model is None:
            raise RuntimeError("this loss needs reference log-probs but no reference model was given")
        if "pred_index" in batch:
            logps, _ = _shared_prompt_logps(self.ref_model, batch)
        else:
            logps, _ = _sequence_logps(self.ref_model, _rows(batch, rows))
        return logps.detach()

    def __call__(self, model, batch, normaliser=None):
        if not self.spec.paired:
            return self._unpaired(model, batch, normaliser)
        if "pred_index" in batch:
            logps, lengths = _shared_prompt_logps(model, batch)              # [2B], [2B]
        else:
            logps, lengths = _sequence_logps(model, batch)                   # [2B], [2B]
        B = logps.shape[0] // 2
        ref = None
        if self.spec.needs_reference:
            ref = batch.get("ref_logps")
            if ref is None:
                ref = self._reference(batch, slice(None))                    # [2B]
            ref = ref.to(device=logps.device, dtype=logps.dtype)
        lengths = lengths.to(logps.dtype)
        loss, metrics = self.spec.fn(
            logps[:B], logps[B:], None if ref is None else ref[:B], None if ref is None else ref[B:],
            chosen_lengths=lengths[:B], rejected_lengths=lengths[B:], beta=self.beta,
            normaliser=normaliser, **self.kwargs)
        metrics = dict(metrics)
        if self.nll_weight:
            nll = chosen_nll_term(logps[:B], lengths[:B], normaliser=normaliser)
            loss = loss + self.nll_weight * nll
            metrics["nll"] = nll.detach()
        with torch.no_grad():
            metrics["logps/chosen"] = logps[:B].detach().mean()
            metrics["logps/rejected"] = logps[B:].detach().mean()
            metrics["lengths/chosen"] = lengths[:B].mean()
            metrics["lengths/rejected"] = lengths[B:].mean()
            if ref is not None:
                lr = logps.detach() - ref                                # [2B]
                metrics["kl"] = lr.mean()
                metrics["kl/chosen"] = lr[:B].mean()
                metrics["kl/rejected"] = lr[B:].mean()
        return loss, metrics

    def _unpaired(self, model, batch, normaliser=None):
        """KTO: the B labelled rows with gradients; the B mismatched rows (the reference point ``z_0``, no
        gradient flows through it) in a separate no-grad forward, so the backward pass skips them."""
        B = batch["labels"].shape[0]
        logps, lengths = _sequence_logps(model, _rows(batch, slice(0, B)))   # [B], [B]
        with torch.no_grad():
            kl_logps, _ = _sequence_logps(model, _rows(batch, slice(B, None)))  # [B]
        ref = batch.get("ref_logps")
        ref = self._reference(batch, slice(0, B)) if ref is None else ref    # [B]
        ref = ref.to(device=logps.device, dtype=logps.dtype)
        ref_kl = self._reference(batch, slice(B, None)).to(logps.dtype)      # [B]
        labels = batch["labels"].to(logps.device)                            # [B]
        z0 = kto_reference_point_across_ranks(kl_logps, ref_kl)
        loss, metrics = self.spec.fn(logps, ref, labels, beta=self.beta, reference_point=z0,
                                     normaliser=normaliser, **self.kwargs)
        with torch.no_grad():
            metrics = dict(metrics)
            lp, lengths = logps.detach(), lengths.to(logps.dtype)
            lab = labels.to(lp.dtype)
            n_d, n_u = lab.sum().clamp_min(1), (1 - lab).sum().clamp_min(1)
            metrics["logps/chosen"] = (lp * lab).sum() / n_d
            metrics["logps/rejected"] = (lp * (1 - lab)).sum() / n_u
            metrics["lengths/chosen"] = (lengths * lab).sum() / n_d
            metrics["lengths/rejected"] = (lengths * (1 - lab)).sum() / n_u
        return loss, metrics


def kto_reference_point_across_ranks(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's ``z_0`` over the mismatched rows of every data-parallel rank's micro-batch, so all ranks use
    the same reference point (the estimate the paper takes over the whole batch). The per-rank sums and
    counts are all-reduced, then :func:`~posttrain.losses.preference.kto_reference_point` takes the mean;
    with one process this is that function on the local rows."""
    from posttrain.engine import distributed

    if not distributed.is_initialized():
        return kto_reference_point(policy_kl_logps, ref_kl_logps)
    with torch.no_grad():
        pol, ref = policy_kl_logps.detach(), ref_kl_logps.detach().to(policy_kl_logps.dtype)
        totals = torch.stack([pol.sum(), ref.sum(), pol.new_tensor(float(pol.numel()))])
        distributed.all_reduce_sum(totals)
        return kto_reference_point(totals[:1] / totals[2], totals[1:2] / totals[2])


# ---------------------------------------------------------------------------- reference log-probs
def _sequences(examples: Sequence[Any], paired: bool) -> list[Any]:
    """The sequences whose reference log-probs are cached: all chosen then all rejected (pairs), or the
    examples (unpaired)."""
    if paired:
        return [e.chosen for e in examples] + [e.rejected for e in examples]
    return [e.example for e in examples]


@torch.no_grad()
def reference_logps(ref_model, examples: Sequence[Any], *, paired: bool, pad_id: int, batch_size: int,
                    device: torch.device | None = None, autocast=None, progress: bool = False) -> torch.Tensor:
    """Reference log-probs of every example, ``[N, 2]`` (chosen, rejected) for pairs or ``[N]`` (unpaired),
    float32 on the CPU. Sequences are batched by length (less padding); the result is in dataset order."""
    from posttrain.data.collate import collate_lm

    seqs = _sequences(examples, paired)
    device = device or next(ref_model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].input_ids))
    out = torch.zeros(len(seqs), dtype=torch.float32)
    was = ref_model.training
    ref_model.eval()
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks), desc="reference log-probs", unit="batch", leave=False)
    try:
        for chunk in chunks:
            b = collate_lm([seqs[i] for i in chunk], pad_id)
            b = {k: v.to(device) for k, v in b.items()}
            with (autocast() if autocast is not None else contextlib.nullcontext()):
                logps, _ = _sequence_logps(ref_model, b)
            out[torch.tensor(chunk)] = logps.float().cpu()
            if bar is not None:
                bar.update(1)
    finally:
        ref_model.train(was)
        if bar is not None:
            bar.close()
    if paired:
        N = len(examples)
        return torch.stack([out[:N], out[N:]], dim=1)                        # [N, 2]
    return out                                                               # [N]


def model_fingerprint(model: torch.nn.Module, *, max_elements: int = 1 << 20) -> str:
    """sha256 over every parameter's name, shape, dtype and bytes (tensors with more than
    ``max_elements`` entries contribute an evenly strided sample of ``max_elements`` of them)."""
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    for name, p in model.named_parameters():
        t = p.detach().reshape(-1)
        if t.numel() > max_elements:
            stride = t.numel() // max_elements
            t = t[::stride][:max_elements]
        t = t.contiguous().cpu()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_fingerprint(examples: Sequence[Any], paired: bool) -> str:
    """sha256 over the token ids and loss masks of every cached sequence, in order."""
    h = hashlib.sha256()
    h.update(b"paired" if paired else b"unpaired")
    for s in _sequences(examples, paired):
        h.update(array("q", s.input_ids).tobytes())
        h.update(array("b", s.loss_mask).tobytes())
        h.update(b"|")
    return h.hexdigest()


@dataclass
class RefCache:
    """``RUN/ref_logps/<split>-<key>.pt``: cached reference log-probs of one dataset split."""

    split: str
    key: str

    def path(self, run_dir: str | Path) -> Path:
        return Path(run_dir) / "ref_logps" / f"{self.split}-{self.key[:20]}.pt"

    def load(self, run_dir: str | Path) -> torch.Tensor | None:
        p = self.path(run_dir)
        if not p.is_file():
            return None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache is recomputed
            return None
        if not isinstance(obj, dict) or obj.get("key") != self.key or obj.get("version") != _CACHE_VERSION:
            return None
        return obj["logps"]

    def save(self, run_dir: str | Path, logps: torch.Tensor) -> None:
        import io as _io

        from posttrain.io import atomic_write_bytes

        buf = _io.BytesIO()
        torch.save({"key": self.key, "version": _CACHE_VERSION, "split": self.split, "logps": logps}, buf)
        atomic_write_bytes(self.path(run_dir), buf.getvalue())


def cache_key(data_fp: str, ref_fp: str, *, dtype: str, device_type: str) -> str:
    return hashlib.sha256(f"v{_CACHE_VERSION}|{data_fp}|{ref_fp}|{dtype}|{device_type}".encode()).hexdigest()


# ------------------------------------------------------------------------------------------ run
STAGE = "dpo"


def ranking_to_pairs(rows: list[dict], mode: str) -> list[dict]:
    """K-wise rankings (``prompt``, ``completions``, ``ranking`` best first) as preference pairs: ``all`` —
    every one of the K(K−1)/2 ordered pairs (InstructGPT's comparisons); ``best_rest`` — the best against
    each of the other K−1; ``best_worst`` — one pair per ranking. Pairs of one ranking stay together, in
    ranking order."""
    out = []
    for r in rows:
        order = r["ranking"]
        if mode == "all":
            pairs = [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
        elif mode == "best_rest":
            pairs = [(order[0], j) for j in order[1:]]
        elif mode == "best_worst":
            pairs = [(order[0], order[-1])]
        else:
            raise ValueError(f"ranking_to_pairs: unknown mode {mode!r}")
        out += [{"prompt": r["prompt"], "chosen": r["completions"][i], "rejected": r["completions"][j]}
                for i, j in pairs]
    return out


def _load_preference_rows(spec: str | None, paired: bool, *, key: str, max_rows: int | None,
                          required: bool, ranking_pairs: str = "all"):
    """Validated rows: preference pairs (K-wise rankings expanded by :func:`ranking_to_pairs`), or for
    unpaired losses KTO rows (``prompt, completion, label``) or pairs split into one desirable and one
    undesirable example each."""
    from posttrain.data.load import Rows
    from posttrain.data.tokenize import split_prompt

    kinds = ["preference", "ranking"] if paired else ["unpaired", "preference", "ranking"]
    rows = common.load_data(spec, kinds=kinds, key=key, max_rows=max_rows, required=required)
    if rows is not None and rows.kind == "ranking":
        rows = Rows(ranking_to_pairs(rows.rows, ranking_pairs), "preference", rows.source)
    if rows is None or paired or rows.kind != "preference":
        return rows
    out = []
    for r in rows.rows:
        if r.get("prompt") is not None:
            p, c, rj = r["prompt"], r["chosen"], r["rejected"]
        else:
            p, c, rj = split_prompt(r["chosen"], r["rejected"])
        out += [{"prompt": p, "completion": c, "label": True}, {"prompt": p, "completion": rj, "label": False}]
    return Rows(out, "unpaired", rows.source)


def _load_reference(cfg: DPOConfig, policy, ctx):
    """The frozen reference: ``cfg.ref_model``, or a copy of the initial policy."""
    import copy

    ref = copy.deepcopy(policy) if cfg.ref_model is None else common.load_model(cfg, ctx, cfg.ref_model)[0]
    return ref.requires_grad_(False).eval()


def _reference_caches(cfg, ctx, ref_model, splits: dict, paired: bool) -> tuple[dict, dict]:
    """Cache descriptors per split, and the cached log-probs already in ``output_dir`` (read before the
    run directory is opened: a restart clears it, and the cache is then written back)."""
    ref_fp = model_fingerprint(ref_model)
    caches, found = {}, {}
    for split, enc in splits.items():
        key = cache_key(dataset_fingerprint(enc.examples, paired), ref_fp, dtype=str(ctx.dtype),
                        device_type=ctx.device.type)
        caches[split] = RefCache(split, key)
        hit = caches[split].load(cfg.output_dir)
        if hit is not None:
            found[split] = hit
    return caches, found


def run(cfg: DPOConfig) -> dict:
    """Train ``cfg.model`` with ``cfg.loss`` on ``cfg.data.train``; returns the run summary.

    Everything a user can get wrong (loss name, data, model paths) is checked before ``output_dir`` is
    created."""
    from posttrain.data.tokenize import encode_dataset
    from posttrain.engine import StepSampler, Trainer, eval_shards

    spec = resolve_loss(cfg.loss)
    beta, variant = loss_settings(cfg, spec)
    if not spec.paired and cfg.batch_size < 2:
        raise ConfigError(f"config: key 'batch_size': loss '{cfg.loss}' needs batch_size >= 2 (its reference "
                          f"point uses mismatched pairs within the batch) (got {cfg.batch_size})")
    if not spec.paired and cfg.nll_weight:
        raise ConfigError(f"config: key 'nll_weight': loss '{cfg.loss}' is unpaired; the RPO NLL term needs "
                          f"chosen completions (got {cfg.nll_weight})")
    ctx = common.setup(cfg)
    # ---- data and models: every user error surfaces here, before the run directory exists
    train_rows = _load_preference_rows(cfg.data.train, spec.paired, key="data.train",
                                       max_rows=cfg.data.max_train_rows, required=True,
                                       ranking_pairs=cfg.ranking_pairs)
    eval_rows = _load_preference_rows(cfg.data.eval, spec.paired, key="data.eval",
                                      max_rows=cfg.data.max_eval_rows, required=False,
                                      ranking_pairs=cfg.ranking_pairs)
    policy, tok = common.load_model(cfg, ctx)
    enc = lambda rows: encode_dataset(tok, rows, max_len=cfg.data.max_len,  # noqa: E731
                                      max_prompt_len=cfg.data.max_prompt_len,
                                      progress=False if not (cfg.progress and ctx.is_main) else None)
    train = enc(train_rows)
    common.require_examples(len(train), train_rows.source, "preference example")
    evals = enc(eval_rows) if eval_rows is not None else None
    if evals is not None and not len(evals):
        evals = None
    prompts = common.eval_prompts(eval_rows if eval_rows is not None else train_rows, cfg.sample_prompts)
    ref_model = _load_reference(cfg, policy, ctx) if spec.needs_reference else None
    splits = {"train": train, **({"eval": evals} if evals is not None else {})}
    caches, found = ({}, {})
    if ref_model is not None and cfg.precompute_ref:
        caches, found = _reference_caches(cfg, ctx, ref_model, splits, spec.paired)

    run_dir = common.open_run(cfg, STAGE)
    if run_dir.is_done():
        return common.already_done(run_dir, cfg)
    policy.train()
    trainer = Trainer(cfg, run_dir, policy, total_steps=cfg.max_steps)
    # ---- reference log-probs, once (or from the cache)
    ref_cached: dict[str, torch.Tensor] = {}
    ref_info: dict[str, Any] = {"precomputed": bool(caches), "cache_hits": [], "time_s": 0.0}
    t_ref = time.perf_counter()
    for split, cache in caches.items():
        logps = found.get(split)
        if logps is None:
            logps = cache.load(run_dir.path)
        if logps is not None:
            ref_info["cache_hits"].append(split)
        else:
            logps = reference_logps(ref_model, splits[split].examples, paired=spec.paired, pad_id=tok.pad_token_id,
                                    batch_size=cfg.ref_batch_size, device=ctx.device, autocast=trainer.autocast,
                                    progress=cfg.progress and ctx.is_main)
        if ctx.is_main and cache.load(run_dir.path) is None:
            cache.save(run_dir.path, logps)
        ref_cached[split] = logps
    ref_info["time_s"] = round(time.perf_counter() - t_ref, 3)
    if caches and spec.paired:
        ref_model = None  # every reference log-prob the loss needs is cached: free the reference

    objective = PreferenceObjective(spec, beta, variant, ref_model=ref_model, nll_weight=cfg.nll_weight)
    share = dict(share_prompt=cfg.share_prompt, mask_dtype=common.mask_dtype(trainer),
                 cost_shape=common.cost_shape(policy))
    batcher = PreferenceBatcher(train.examples, tok.pad_token_id, spec.paired, cfg.data.max_len,
                                ref_cached.get("train"), **share)
    sampler = StepSampler.from_config(cfg, len(train), rank=ctx.dist.rank, world=ctx.dist.world_size)
    evaluate = None
    if evals is not None:
        eval_batcher = PreferenceBatcher(evals.examples, tok.pad_token_id, spec.paired, cfg.data.max_len,
                                         ref_cached.get("eval"), **share)
        shards = eval_shards(len(evals), cfg.batch_size, ctx.dist.rank, ctx.dist.world_size, cfg.eval_batches)
        if not spec.paired:  # a mismatched pair needs two examples: fold a last batch of one into the previous
            if len(shards) > 1 and len(shards[-1]) < 2:
                shards = shards[:-2] + [shards[-2] + shards[-1]]

        def evaluate(model):
            return trainer.eval_loss((eval_batcher(ix) for ix in shards), objective)

    summary = trainer.fit(sampler, batcher, objective, evaluate=evaluate, desc=f"{STAGE} ({cfg.loss})")
    if ctx.is_main and prompts:
        run_dir.write_samples(common.generate_samples(policy, tok, prompts, cfg.generation, seed=cfg.seed,
                                                      step=trainer.step_count,
                                                      max_prompt_len=cfg.data.max_prompt_len))
    last = trainer.last_metrics
    summary.update({
        "loss": cfg.loss, "beta": beta, **variant, "nll_weight": cfg.nll_weight,
        "needs_reference": spec.needs_reference,
        "reference": ref_info, "train_examples": len(train), "train_kind": train.kind,
        "eval_examples": len(evals) if evals is not None else 0,
        "epochs": round(sampler.epoch(trainer.step_count), 4), "truncation": train.stats.as_dict(),
        "final": {k: last[k] for k in sorted(last)
                  if k.startswith(("rewards/", "margin", "accuracy", "kl", "logps/", "lengths/", "nll"))},
    })
    return common.finish(STAGE, trainer, policy, tok, summary)


# ------------------------------------------------------------------------------- preference data
def make_pairs(texts: Sequence[str], scores: Sequence[float], *, mode: str = "best_worst",
               min_gap: float = 0.0) -> tuple[list[tuple[int, int]], int]:
    """Pairs ``(chosen_index, rejected_index)`` among one prompt's K completions, and how many candidate
    pairs were dropped as ties (gap ≤ ``min_gap``, or identical texts).

    ``best_worst``: the highest against the lowest score (first occurrence on equal scores); one
    candidate. ``all_above_gap``: every ``(i, j)`` with ``s_i − s_j > min_gap``, i.e. each unordered pair
    once, oriented by score; ``K(K−1)/2`` candidates."""
    K = len(texts)
    if K != len(scores):
        raise ValueError("texts and scores differ in length")
    if K < 2:
        return [], 0
    if mode == "best_worst":
        best = max(range(K), key=lambda i: (scores[i], -i))
        worst = min(range(K), key=lambda i: (scores[i], i))
        if scores[best] - scores[worst] > min_gap and texts[best] != texts[worst]:
            return [(best, worst)], 0
        return [], 1
    if mode == "all_above_gap":
        pairs, ties = [], 0
        for i in range(K):
            for j in range(i + 1, K):
                hi, lo = (i, j) if scores[i] >= scores[j] else (j, i)
                if scores[hi] - scores[lo] > min_gap and texts[hi] != texts[lo]:
                    pairs.append((hi, lo))
                else:
                    ties += 1
        return pairs, ties
    raise ValueError(f"unknown pairing mode {mode!r}")


PROMPT_KINDS = ("prompt", "preference", "ranking", "unpaired", "prompt_completion", "verifiable", "conversational")


def _prompt_of(row: dict) -> Any:
    """The prompt of a validated row of any kind in :data:`PROMPT_KINDS` (implicit-prompt preference rows:
    the shared prefix; conversational rows: the messages before the last assistant turn)."""
    from posttrain.data.tokenize import split_prompt

    if row.get("prompt") is not None:
        return row["prompt"]
    if "chosen" in row:
        return split_prompt(row["chosen"], row["rejected"])[0]
    msgs = row["messages"]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    return msgs[:last]


def _unique_prompts(rows) -> tuple[list[Any], list[dict]]:
    """Distinct non-empty prompts in file order, with the extra columns (e.g. ``answer``) of their first row."""
    import json

    prompts, columns, seen = [], [], set()
    for r in rows.rows:
        p = _prompt_of(r)
        if not p:
            continue
        key = json.dumps(p, sort_keys=True, ensure_ascii=False)
        if key in seen:
            continue
        seen.add(key)
        prompts.append(p)
        columns.append({"answer": r["answer"]} if "answer" in r else {})
    return prompts, columns


def _stats(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def preference_data(cfg: PreferenceDataConfig) -> dict:
    """Sample ``cfg.num_samples`` completions per prompt, score them, write ``RUN/pairs.jsonl``; returns the
    summary (also ``RUN/summary.json``). ``RUN/scored.jsonl`` keeps every prompt's completions and scores."""
    from posttrain.data.tokenize import encode_prompt
    from posttrain.engine import distributed
    from posttrain.io import write_jsonl
    from posttrain.models.tokenizer import stop_token_ids
    from posttrain.rollout.rewards import build_reward, check_columns
    from posttrain.rollout.sampler import sample_n

    t0 = time.perf_counter()
    ctx = common.setup(cfg)
    rows = common.load_data(cfg.data.train, kinds=PROMPT_KINDS, max_rows=cfg.data.max_train_rows)
    prompts, columns = _unique_prompts(rows)
    if not prompts:
        raise DataError("no row has a non-empty prompt", file=rows.source)
    model, tok = common.load_model(cfg, ctx)
    reward = build_reward(cfg.reward, tokenizer=tok, device=ctx.device, dtype=cfg.dtype,
                          batch_size=cfg.reward_batch_size, max_len=cfg.data.max_len)
    check_columns(reward, columns, file=rows.source)
    run_dir = common.open_run(cfg, "preference-data")
    if run_dir.is_done():
        return common.already_done(run_dir, cfg)

    g, K = cfg.generation, cfg.num_samples
    mine = list(range(ctx.dist.rank, len(prompts), ctx.dist.world_size))
    gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed * 1_000_003 + ctx.dist.rank)
    stops = stop_token_ids(tok)
    results = []  # (prompt index, texts, scores, finished, lengths)
    bar = None
    if cfg.progress and ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="preference-data", unit="prompt", leave=False)
    model.eval()
    for c in range(0, len(mine), cfg.batch_size):
        chunk = mine[c:c + cfg.batch_size]
        ids = [encode_prompt(tok, prompts[i], max_prompt_len=cfg.data.max_prompt_len) for i in chunk]
        with torch.inference_mode():
            ro = sample_n(model, ids, K, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                          top_p=g.top_p, top_k=g.top_k, stop_token_ids=stops, pad_token_id=tok.pad_token_id,
                          stop_strings=tuple(g.stop_strings), tokenizer=tok, generator=gen, backend=g.backend)
        texts = ro.completion_texts if ro.completion_texts is not None else ro.decode(tok)
        rep = [prompts[i] for i in chunk for _ in range(K)]
        cols = {k: [columns[i][k] for i in chunk for _ in range(K)] for k in columns[chunk[0]]}
        scores = [float(x) for x in reward(rep, list(texts), **cols)]
        bad = next((x for x in scores if not math.isfinite(x)), None)
        if bad is not None:
            raise DataError(f"reward '{cfg.reward}' returned {bad} for a completion")
        fin, lens = ro.finished.tolist(), ro.completion_lengths.tolist()
        for j, i in enumerate(chunk):
            sl = slice(j * K, (j + 1) * K)
            results.append((i, list(texts[sl]), scores[sl], fin[sl], lens[sl]))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if ctx.dist.enabled:
        results = [r for part in distributed.all_gather_object(results) for r in part]
    results.sort(key=lambda r: r[0])

    pairs_out, scored, gaps, all_scores = [], [], [], []
    ties = no_pair = 0
    len_c, len_r, finished = [], [], []
    for i, texts, scores, fin, lens in results:
        prompt = prompts[i]
        pairs, dropped = make_pairs(texts, scores, mode=cfg.pairs, min_gap=cfg.min_gap)
        ties += dropped
        no_pair += not pairs
        all_scores += scores
        finished += fin
        scored.append({"prompt": prompt, "completions": texts, "scores": scores, "finished": fin})
        conv = isinstance(prompt, list)
        for a, b in pairs:
            wrap = (lambda t: [{"role": "assistant", "content": t}]) if conv else (lambda t: t)
            pairs_out.append({"prompt": prompt, "chosen": wrap(texts[a]), "rejected": wrap(texts[b]),
                              "score_chosen": scores[a], "score_rejected": scores[b], **columns[i]})
            gaps.append(scores[a] - scores[b])
            len_c.append(lens[a])
            len_r.append(lens[b])
    summary = {
        "stage": "preference-data", "model": cfg.model, "reward": cfg.reward, "num_samples": K,
        "pairs_mode": cfg.pairs, "min_gap": cfg.min_gap, "prompts": len(prompts), "completions": len(all_scores),
        "finished_fraction": (sum(finished) / len(finished)) if finished else 0.0,
        "pairs": len(pairs_out), "ties_dropped": ties, "prompts_without_pair": no_pair,
        "scores": _stats(all_scores), "gap": _stats(gaps),
        "chosen_score_mean": statistics.fmean([r["score_chosen"] for r in pairs_out]) if pairs_out else None,
        "rejected_score_mean": statistics.fmean([r["score_rejected"] for r in pairs_out]) if pairs_out else None,
        "chosen_tokens_mean": statistics.fmean(len_c) if len_c else None,
        "rejected_tokens_mean": statistics.fmean(len_r) if len_r else None,
        "pairs_file": str(run_dir.path / "pairs.jsonl"), "time_s": round(time.perf_counter() - t0, 3),
    }
    if ctx.is_main:
        write_jsonl(run_dir.path / "pairs.jsonl", pairs_out)
        write_jsonl(run_dir.path / "scored.jsonl", scored)
        run_dir.write_summary(summary)
    run_dir.mark_done()
    if cfg.progress and ctx.is_main:
        print(f"preference-data: {len(pairs_out)} pairs from {len(prompts)} prompts x {K} samples "
              f"({ties} ties dropped, mean gap {summary['gap'].get('mean', 0.0):.3f}); wrote "
              f"{summary['pairs_file']}")
    return summary
