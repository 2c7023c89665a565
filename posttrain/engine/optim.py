"""AdamW over the trainable parameters, with no weight decay on biases and normalisation weights.

Decay applies to matrices (``ndim >= 2``: linear and embedding weights); biases, norm gains and any other
vector or scalar parameter get ``weight_decay = 0`` (the usual practice since BERT / GPT-2).

Implementation: the fused kernel on CUDA *and on CPU* (``fused=True``; on 1-2 CPU cores it is ~4x faster
than ``foreach`` for a 5M-parameter model, with bit-identical results), the multi-tensor ``foreach``
implementation on other devices.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def _no_decay(name: str, p: torch.Tensor) -> bool:
    lname = name.lower()
    return p.ndim < 2 or "norm" in lname or lname.endswith(".bias")


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) for every parameter that requires grad, shared parameters listed once."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named:
        (no_decay if _no_decay(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
                    eps: float = 1e-8, device: torch.device | None = None) -> torch.optim.AdamW:
    named = trainable_named_parameters(model)
    if not named:
        raise ValueError("the model has no trainable parameters")
    dev = device if device is not None else named[0][1].device
    kw: dict = {"fused": True} if dev.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(param_groups(named, weight_decay), lr=lr, betas=tuple(betas), eps=eps, **kw)


def optimizer_from_config(model: nn.Module, cfg, device: torch.device | None = None) -> torch.optim.AdamW:
    return build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, device=device)
