"""Reward and value models in standard Hugging Face forms.

A reward model is an ``AutoModelForSequenceClassification`` with ``num_labels=1`` and a value model an
``AutoModelForTokenClassification`` with ``num_labels=1``: both are a causal LM's backbone (its
``base_model``, e.g. ``LlamaModel``) plus a linear ``score`` head on the final hidden states. Saved
with :func:`posttrain.models.load.save_model`, they reload with plain ``from_pretrained`` in any
HF-based tool.

Initialisation (when built from a causal LM):

- the backbone weights are the causal LM's, unchanged (the LM head is dropped);
- reward head (``head_init="normal"``, default): weight ~ N(0, 1/(d+1)), i.e. std ``1/sqrt(d+1)``
  for hidden size ``d``, bias (if the architecture has one) 0 — the reward-head init used by OpenAI's
  lm-human-preferences code (Ziegler et al. 2019), as documented in Huang et al. 2023, "The N
  Implementation Details of RLHF with PPO". Initial rewards are small but not all equal, so the
  backbone receives gradient from the first step. ``head_init="zero"`` gives all-zero initial rewards;
- value head (``head_init="auto"``, default): copied from the source's score head when the source is a
  reward model (InstructGPT initialises the value function from the RM, Ouyang et al. 2022 §3.5),
  otherwise zero (initial values 0). ``"normal"`` and ``"zero"`` are also accepted;
- head dropout is 0 (``classifier_dropout=0.0``), so values are deterministic in train mode.

Pooling: :func:`score_sequences` reads the reward at the last token whose ``attention_mask`` is 1,
so it is correct for left- and right-padded batches even when pad == eos (HF's own forward picks
the last token that is not ``pad_token_id``, which is wrong when the sequence itself ends in a token
equal to the pad id).
"""

from __future__ import annotations

import copy
import math

import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, PreTrainedModel

from posttrain.errors import ModelError
from posttrain.models.load import (
    _load_config, load_causal_lm, load_pretrained, load_tokenizer, resolve_device, resolve_dtype,
    resolve_model_path,
)
from posttrain.models.logprobs import position_ids_from_mask
from posttrain.models.tokenizer import ensure_chat_template

__all__ = [
    "reward_model_from_causal", "value_model_from_causal", "load_reward_model", "load_value_model",
    "score_sequences", "token_values", "last_token_index",
]


def _is_seq_cls(model) -> bool:
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    return any(a.endswith("ForSequenceClassification") for a in archs) or type(model).__name__.endswith(
        "ForSequenceClassification")


def _load_source(spec_or_model, *, tokenizer, device, dtype, trust_remote_code):
    """(model, tokenizer, owned) for a spec (causal LM or, for value models, a reward model) or a model."""
    if isinstance(spec_or_model, torch.nn.Module):
        tok = tokenizer
        if isinstance(tok, str):
            tok = load_tokenizer(tok, trust_remote_code=trust_remote_code)
        model = spec_or_model
        if device is not None or dtype is not None:
            dev = resolve_device(device) if device is not None else None
            dt = resolve_dtype(dtype, dev) if dtype is not None else None
            model = copy.deepcopy(model).to(device=dev, dtype=dt)
            return model, tok, True
        return model, tok, False
    device = "auto" if device is None else device
    dtype = "auto" if dtype is None else dtype
    if isinstance(spec_or_model, str) and not spec_or_model.startswith("preset:"):
        where = resolve_model_path(spec_or_model)
        cfg = _load_config(spec_or_model, where, trust_remote_code)
        if any(a.endswith("ForSequenceClassification") for a in (getattr(cfg, "architectures", None) or [])):
            model, tok = load_pretrained(spec_or_model, AutoModelForSequenceClassification, device=device,
                                         dtype=dtype, tokenizer=tokenizer,
                                         trust_remote_code=trust_remote_code)
            return model, tok, True
    model, tok = load_causal_lm(spec_or_model, device=device, dtype=dtype, tokenizer=tokenizer,
                                trust_remote_code=trust_remote_code)
    return model, tok, True


def _with_head(auto_cls, source: PreTrainedModel, owned: bool, tok, *, head_init: str, seed: int):
    """``auto_cls`` (num_labels=1) whose backbone is ``source``'s backbone and whose head is fresh."""
    prefix = source.base_model_prefix
    backbone = getattr(source, prefix, None)
    if not isinstance(backbone, torch.nn.Module):
        raise ModelError(f"model '{source.config.name_or_path}': {type(source).__name__} has no "
                         f"'{prefix}' backbone to put a head on")
    if not owned:
        backbone = copy.deepcopy(backbone)
    config = copy.deepcopy(source.config)
    config.num_labels = 1
    config.architectures = None
    config.classifier_dropout = 0.0
    if config.pad_token_id is None:
        pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else None
        if pad is None:
            eos = config.eos_token_id
            pad = eos[0] if isinstance(eos, (list, tuple)) else eos
        config.pad_token_id = pad
    param = next(backbone.parameters())
    try:
        with torch.device("meta"):
            shell = auto_cls.from_config(config, dtype=param.dtype)
    except ValueError as err:
        msg = " ".join(str(err).split())[:160]
        raise ModelError(f"model '{config.name_or_path}': no {auto_cls.__name__} for this architecture "
                         f"({msg})") from None
    if shell.base_model_prefix != prefix or type(getattr(shell, prefix)) is not type(backbone):
        raise ModelError(f"model '{config.name_or_path}': backbone {type(backbone).__name__} does not fit "
                         f"{type(shell).__name__}")
    setattr(shell, prefix, backbone)
    # Materialise the head (everything still on the meta device) next to the backbone.
    for module in shell.modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in own):
            module.to_empty(device=param.device, recurse=False)
    leftover = [n for n, t in list(shell.named_parameters()) + list(shell.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"uninitialised tensors after building {type(shell).__name__}: {leftover}")
    head = _score_head(shell)
    _init_head(head, head_init, seed, source_head=_score_head(source) if _is_seq_cls(source) else None)
    shell.train(source.training)
    return shell


def _score_head(model) -> torch.nn.Linear | None:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    return None


@torch.no_grad()
def _init_head(head: torch.nn.Linear | None, how: str, seed: int, source_head=None) -> None:
    if head is None:
        raise ModelError("model: its classification head is not a single linear layer; cannot initialise it")
    if how == "auto":
        how = "copy" if source_head is not None else "zero"
    if how == "copy":
        if source_head is None or source_head.weight.shape != head.weight.shape:
            raise ModelError("model: head_init='copy' needs a reward model source with a matching score head")
        head.weight.copy_(source_head.weight)
        if head.bias is not None:
            if source_head.bias is not None:
                head.bias.copy_(source_head.bias)
            else:
                head.bias.zero_()
        return
    if how == "normal":
        d = head.weight.shape[1]
        gen = torch.Generator(device="cpu").manual_seed(seed)
        w = torch.randn(head.weight.shape, generator=gen, dtype=torch.float32) / math.sqrt(d + 1)
        head.weight.copy_(w.to(head.weight))
    elif how == "zero":
        head.weight.zero_()
    else:
        raise ModelError(f"head_init '{how}': unknown (use normal, zero, auto or copy)")
    if head.bias is not None:
        head.bias.zero_()


def reward_model_from_causal(spec_or_model, *, tokenizer=None, device=None, dtype=None,
                             head_init: str = "normal", seed: int = 0, trust_remote_code: bool = False):
    """A reward model (``AutoModelForSequenceClassification``, num_labels=1) from a causal LM.

    ``spec_or_model``: anything :func:`load_causal_lm` accepts (then ``device``/``dtype`` default to
    ``"auto"``), or a loaded causal LM (its backbone is copied, never shared; ``device``/``dtype`` of
    ``None`` keep the model's). Returns ``(reward_model, tokenizer)``; ``config.pad_token_id`` is set.
    """
    source, tok, owned = _load_source(spec_or_model, tokenizer=tokenizer, device=device, dtype=dtype,
                                      trust_remote_code=trust_remote_code)
    if tok is not None:
        ensure_chat_template(tok)
    rm = _with_head(AutoModelForSequenceClassification, source, owned, tok, head_init=head_init, seed=seed)
    return rm, tok


def value_model_from_causal(spec_or_model, *, tokenizer=None, device=None, dtype=None,
                            head_init: str = "auto", seed: int = 0, trust_remote_code: bool = False):
    """A value model (``AutoModelForTokenClassification``, num_labels=1; per-token values [B, T]).

    The source may be a causal LM or a reward model (folder, run dir, or loaded model); from a reward
    model the backbone and (``head_init="auto"``) the score head are copied. Returns
    ``(value_model, tokenizer)``.
    """
    source, tok, owned = _load_source(spec_or_model, tokenizer=tokenizer, device=device, dtype=dtype,
                                      trust_remote_code=trust_remote_code)
    if tok is not None:
        ensure_chat_template(tok)
    vm = _with_head(AutoModelForTokenClassification, source, owned, tok, head_init=head_init, seed=seed)
    return vm, tok


def load_reward_model(spec: str, *, device="auto", dtype="auto", tokenizer: str | None = None,
                      trust_remote_code: bool = False):
    """Load any HF sequence-classification reward model (folder, run dir, or hub id); ``(rm, tokenizer)``.

    ``preset:NAME`` builds a random reward model on a preset backbone. A folder that holds a causal
    LM, or a classifier with ``num_labels != 1``, raises :class:`ModelError`."""
    if spec.startswith("preset:"):
        return reward_model_from_causal(spec, tokenizer=tokenizer, device=device, dtype=dtype)
    rm, tok = load_pretrained(spec, AutoModelForSequenceClassification, device=device, dtype=dtype,
                              tokenizer=tokenizer, trust_remote_code=trust_remote_code,
                              expect="sequence-classification")
    if rm.config.num_labels != 1:
        raise ModelError(f"model '{spec}': reward model must have num_labels=1, has {rm.config.num_labels}")
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = tok.pad_token_id
    return rm, tok


def load_value_model(spec: str, *, device="auto", dtype="auto", tokenizer: str | None = None,
                     trust_remote_code: bool = False):
    """Load a saved value model (``AutoModelForTokenClassification``, num_labels=1); ``(vm, tokenizer)``."""
    vm, tok = load_pretrained(spec, AutoModelForTokenClassification, device=device, dtype=dtype,
                              tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    if vm.config.num_labels != 1:
        raise ModelError(f"model '{spec}': value model must have num_labels=1, has {vm.config.num_labels}")
    dropout = getattr(vm, "dropout", None)
    if isinstance(dropout, torch.nn.Dropout) and dropout.p != 0.0:
        dropout.p = 0.0  # deterministic values in train mode (PPO regresses them onto returns)
        vm.config.classifier_dropout = 0.0
    return vm, tok


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (works for left and right padding). [B, T] → [B]."""
    T = attention_mask.shape[-1]
    positions = torch.arange(T, device=attention_mask.device)  # [T]
    idx = (positions * attention_mask.long()).argmax(-1)  # [B]
    if bool((attention_mask.long().sum(-1) == 0).any()):
        raise ValueError("score_sequences: a row has no real token (attention_mask all 0)")
    return idx


def _backbone_hidden(model, input_ids, attention_mask, position_ids):
    backbone = getattr(model, model.base_model_prefix)
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)  # [B, T]
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False)
    return out.last_hidden_state  # [B, T, H]


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def score_sequences(rm, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Reward of each sequence, read at its last real token. [B, T] → [B] (float32 or float64).

    Correct for left- and right-padded batches (positions follow ``cumsum(mask) − 1`` unless given).
    The head is applied to the B pooled hidden states only. Models whose head is not a linear
    ``score``/``classifier`` fall back to the model's own forward (HF pooling by pad id)."""
    head = _score_head(rm)
    if head is None:
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        return _float(rm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False).logits[:, 0])  # [B]
    hidden = _backbone_hidden(rm, input_ids, attention_mask, position_ids)  # [B, T, H]
    idx = last_token_index(attention_mask)  # [B]
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # [B, H]
    return _float(head(pooled)[:, 0])  # [B]


def token_values(vm, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token values ``V(x_≤t)`` of a value model, aligned with ``input_ids``; pads hold 0.

    [B, T] → [B, T]."""
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    out = vm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    values = _float(out.logits[..., 0])  # [B, T]
    return values.masked_fill(~attention_mask.bool(), 0.0)  # [B, T]
