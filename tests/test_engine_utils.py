"""Shared helpers for the engine tests (a tiny float64 Llama, ragged synthetic SFT data, a loss_fn),
plus tests of the small engine utilities (optimizer groups, MFU parameter count, batch token counts)."""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from posttrain.config import StageConfig
from posttrain.engine.optim import build_optimizer
from posttrain.engine.trainer import batch_tokens, matmul_params
from posttrain.losses.reduce import num_units
from posttrain.losses.sft import sft_loss
from posttrain.models.logprobs import sequence_logprobs

VOCAB = 37


def tiny_llama(seed: int = 0, *, dropout: float = 0.0, dtype=torch.float64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      attention_dropout=dropout, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"  # eager attention runs its softmax in float32
    return LlamaForCausalLM(cfg).to(dtype)


def ragged_examples(n: int = 24, seed: int = 0) -> list[dict]:
    """``n`` prompt+completion sequences with prompt lengths 2..6 and completion lengths 1..12 (so
    per-micro-batch token means differ from the global token mean)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = int(torch.randint(2, 7, (1,), generator=g))
        c = 1 + (i * 5) % 12
        ids = torch.randint(3, VOCAB, (p + c,), generator=g).tolist()
        out.append({"input_ids": ids, "loss_mask": [0] * p + [1] * c})
    return out


def collate(examples: list[dict], idx: list[int]) -> dict:
    rows = [examples[i] for i in idx]
    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    am = torch.zeros(len(rows), T, dtype=torch.long)
    lm = torch.zeros(len(rows), T, dtype=torch.float64)
    for b, r in enumerate(rows):
        L = len(r["input_ids"])
        ids[b, :L] = torch.tensor(r["input_ids"])
        am[b, :L] = 1
        lm[b, :L] = torch.tensor(r["loss_mask"], dtype=torch.float64)
    return {"input_ids": ids, "attention_mask": am, "loss_mask": lm,
            "num_units": num_units(lm, "token-mean")}


def lm_loss(model, batch, normaliser):
    lp = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"])["logprobs"]  # [B, T]
    return sft_loss(lp, batch["loss_mask"], normaliser=normaliser)


def stage_cfg(tmp_path, **kw) -> StageConfig:
    base = dict(output_dir=str(tmp_path), lr=1e-2, lr_schedule="cosine", warmup_steps=1, max_steps=3,
                batch_size=8, grad_accum=1, progress=False, peak_flops=1e11, max_grad_norm=1.0,
                weight_decay=0.01)
    base.update(kw)
    return StageConfig(**base)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def clone(model):
    return copy.deepcopy(model)


# ------------------------------------------------------------------------------------------- tests
def test_no_weight_decay_on_biases_and_norms():
    m = tiny_llama()
    m.model.layers[0].self_attn.q_proj.bias = torch.nn.Parameter(torch.zeros(16, dtype=torch.float64))
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.1)
    by_id = {id(p): n for n, p in m.named_parameters()}
    decay = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "model.layers.0.self_attn.q_proj.bias" in no_decay
    assert "model.norm.weight" in no_decay and "model.layers.1.input_layernorm.weight" in no_decay
    assert "model.layers.0.self_attn.q_proj.weight" in decay and "lm_head.weight" in decay
    assert "model.embed_tokens.weight" in decay
    assert not decay & no_decay
    assert len(decay) + len(no_decay) == sum(1 for _ in m.parameters())
    assert opt.defaults["fused"] is True  # CPU: fused AdamW (same numbers as foreach, faster)


def test_matmul_params_excludes_untied_input_embedding():
    m = tiny_llama()
    total = sum(p.numel() for p in m.parameters())
    assert matmul_params(m) == total - VOCAB * 16
    m.lm_head.weight = m.model.embed_tokens.weight  # tied: the table is also the output matmul
    assert matmul_params(m) == sum(p.numel() for p in m.parameters())


def test_batch_tokens_counts_real_tokens():
    ex = ragged_examples(4)
    b = collate(ex, [0, 1, 2, 3])
    assert batch_tokens(b) == (sum(len(e["input_ids"]) for e in ex), 4)
    assert batch_tokens({**b, "num_tokens": 7, "num_examples": 2}) == (7, 2)
