"""Fast batched sampling with a KV cache.

``generate(model, prompt_ids, ...)`` samples one completion per prompt; ``sample_n`` samples ``G`` per
prompt (rows repeated contiguously: row ``i`` belongs to prompt ``i // G``). Both return a
:class:`Rollout` whose per-token tensors follow the library's token-space convention:

* every per-token tensor is ``[B, P+T]`` and aligned with ``input_ids``; position ``t`` holds
  ``log p(x_t | x_<t)``; prompt positions (and position 0) hold 0 and are never in ``completion_mask``;
* prompts are LEFT-padded to ``P`` (the longest prompt), completions RIGHT-padded to ``T`` (the number of
  decoding steps actually run, ``<= max_new_tokens``; the loop exits early once every row has stopped);
* ``completion_mask`` is True on generated tokens up to and including the stop token (or the token that
  completed a stop string); tokens after a row stopped are ``pad_token_id`` with mask 0 and log-prob 0;
* ``position_ids`` = ``cumsum(attention_mask) - 1`` (0 on padding), i.e. what a later full forward pass over
  the left-padded batch must use to reproduce the sampling-time log-probs.

Two log-probs are recorded for each generated token ``y_t`` with logits ``z``:

* ``logprobs``: ``log softmax(z / temperature)[y_t]`` — the temperature-scaled policy, BEFORE top-k / top-p.
  This is what a training-time forward pass recomputes (``sequence_logprobs(..., temperature=...)``), so it
  is the one to use as ``log π_old`` in importance ratios. For greedy decoding (``temperature == 0``) it is
  ``log softmax(z)[y_t]`` (temperature 1).
* ``sampling_logprobs``: the log-prob under the distribution the token was actually drawn from, AFTER
  temperature, top-k and top-p (renormalised over the kept tokens). It equals ``logprobs`` when
  ``top_k == 0`` and ``top_p == 1``; for greedy decoding (a point mass) it is 0.

Filtering order follows Hugging Face: temperature → top-k → top-p (top-p on the top-k-renormalised
distribution; the most likely token is always kept).

Backends. ``backend="native"`` (chosen by ``"auto"`` for plain Llama / Qwen2 / Mistral causal LMs) runs the
decoder layers directly from the model's own weights with a preallocated static KV cache
``[L, B, H_kv, P+T, D]``, the model's own rotary tables, RMSNorm (float32 as in HF) and activation, and
PyTorch SDPA with an additive padding mask. It avoids the per-token overhead of the HF forward (mask building,
cache bookkeeping, output objects), which dominates on CPU for small models. ``backend="hf"`` calls
``model(...)`` with a ``DynamicCache`` and works for any HF causal LM (PEFT-wrapped models, sliding-window
attention, other architectures). Both compute the prompt once (prefill; ``sample_n`` prefills one row per
prompt and repeats its KV cache for the group's samples), then one token per step; rows that
stopped are fed padding and ignored, and once at least half of the rows being computed have stopped the batch
is compacted (the KV cache keeps only the live rows). ``backend="static"`` is the native decoder with
fixed-shape steps for accelerators: every step attends over the whole preallocated cache with the unfilled
slots masked, writes its K/V at a slot held in a tensor, and the batch is never compacted, so on CUDA the
step is captured once as a CUDA graph and replayed (one launch per token instead of a few hundred kernel
launches from Python); on the CPU it runs eagerly (same tokens as ``"native"``, more attention work).
Generation runs without dropout (``inference_mode``;
the HF backend switches the model to eval mode for the call and restores it).

Log-probs are float32 (float64 for a float64 model). Sampling draws one uniform per row from the
``generator`` (inverse CDF in float64). With a seeded ``torch.Generator`` the same call (same model,
prompts, settings and backend) gives the same samples. The returned tensors are ordinary (non-inference)
tensors, usable in a training step.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Rollout", "generate", "sample_n", "native_supported", "BACKENDS"]

BACKENDS = ("auto", "native", "static", "hf")


@dataclass
class Rollout:
    """A batch of sampled completions. ``B`` rows, prompt width ``P``, completion width ``T``."""

    input_ids: Tensor  # [B, P+T] long: prompt left-padded + completion right-padded
    attention_mask: Tensor  # [B, P+T] long: 1 on real prompt tokens and on masked completion tokens
    completion_mask: Tensor  # [B, P+T] bool: generated tokens up to and including the stop token
    position_ids: Tensor  # [B, P+T] long: cumsum(attention_mask) - 1, 0 on padding
    logprobs: Tensor  # [B, P+T] float32 (float64 for a float64 model): log softmax(z / temperature)[x_t]
    sampling_logprobs: Tensor  # [B, P+T] same dtype: log-prob under the sampling distribution; 0 off-mask
    prompt_len: int  # P
    prompt_lengths: Tensor  # [B] long: unpadded prompt lengths
    completion_ids: list[list[int]]  # per row, the masked completion tokens (stop token included)
    completion_lengths: Tensor  # [B] long
    finished: Tensor  # [B] bool: hit a stop token or a stop string (False: ran out of max_new_tokens)
    num_generated_tokens: int  # completion_mask.sum()
    group_size: int = 1  # G when built by sample_n (row i is prompt i // G)
    completion_texts: list[str] | None = None  # decoded completions (when a tokenizer was given)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def completion_len(self) -> int:
        """T, the number of decoding steps run."""
        return self.input_ids.shape[1] - self.prompt_len

    @property
    def prompt_index(self) -> Tensor:
        """[B] long: the prompt each row was sampled for (``i // group_size``)."""
        return torch.arange(self.batch_size, device=self.input_ids.device) // self.group_size

    def decode(self, tokenizer, *, skip_special_tokens: bool = True) -> list[str]:
        """Decode ``completion_ids`` (the stop token is dropped when it is a special token)."""
        return tokenizer.batch_decode(self.completion_ids, skip_special_tokens=skip_special_tokens)


# --------------------------------------------------------------------------------------------------
# sampling


def _filter_logits(scaled: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set logits outside top-k, then outside the top-p nucleus, to -inf. [b, V] -> [b, V]."""
    V = scaled.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]  # [b, 1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)  # [b, V]
        probs = sorted_logits.softmax(dim=-1)  # [b, V]
        mass_before = probs.cumsum(dim=-1) - probs  # [b, V] probability of strictly more likely tokens
        drop_sorted = mass_before >= top_p  # [b, V]; the first token has mass_before 0 and is kept
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # [b, V] back to vocabulary order
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def _draw(logp: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row from ``exp(logp)`` by inverse-CDF sampling. [b, V] -> [b, 1].

    ``u ~ U[0, 1)`` scaled by the row's total mass, then the first index whose cumulative mass exceeds it.
    The CDF is accumulated in float64; tokens with probability 0 (filtered by top-k / top-p) have a flat CDF
    step and are never drawn. One uniform per row (``torch.multinomial`` draws V exponentials per row, ~10-50x
    slower on CPU)."""
    cdf = logp.double().exp().cumsum(dim=-1)  # [b, V]
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=torch.float64, device=cdf.device)  # [b, 1]
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)  # [b, 1]


def _sample(logits: Tensor, temperature: float, top_k: int, top_p: float,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Draw one token per row. Returns (tokens [b], logprob [b], sampling_logprob [b])."""
    logits = logits if logits.dtype == torch.float64 else logits.float()  # [b, V]
    if temperature == 0.0:
        tok = logits.argmax(dim=-1)  # [b]
        lp = logits.log_softmax(dim=-1).gather(-1, tok[:, None]).squeeze(-1)  # [b]
        return tok, lp, torch.zeros_like(lp)
    scaled = logits / temperature if temperature != 1.0 else logits  # [b, V]
    logp = scaled.log_softmax(dim=-1)  # [b, V]
    if top_k > 0 or top_p < 1.0:
        sampling_logp = _filter_logits(scaled, top_k, top_p).log_softmax(dim=-1)  # [b, V]
    else:
        sampling_logp = logp
    tok = _draw(sampling_logp, generator)  # [b, 1]
    lp = logp.gather(-1, tok).squeeze(-1)  # [b]
    slp = sampling_logp.gather(-1, tok).squeeze(-1)  # [b]
    return tok.squeeze(-1), lp, slp


# --------------------------------------------------------------------------------------------------
# decoders: prefill(prompt) -> last logits; step(tokens, positions) -> logits; select(rows) compacts


_NATIVE_TYPES = {"llama", "qwen2", "mistral"}


def native_supported(model, total_len: int | None = None) -> bool:
    """True when the native decoder reproduces ``model``'s forward exactly (plain Llama/Qwen2/Mistral
    causal LM with ``nn.Linear`` projections, static RoPE, no sliding window shorter than ``total_len``)."""
    cfg = getattr(model, "config", None)
    base = getattr(model, "model", None)
    if cfg is None or base is None or getattr(cfg, "model_type", None) not in _NATIVE_TYPES:
        return False
    if not type(model).__name__.endswith("ForCausalLM"):
        return False
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(base, name):
            return False
    if type(getattr(model, "lm_head", None)) is not torch.nn.Linear:
        return False
    rope_type = getattr(base.rotary_emb, "rope_type", "default")
    if not isinstance(rope_type, str) or "dynamic" in rope_type or "longrope" in rope_type:
        return False
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None) or []
    uses_window = any(t != "full_attention" for t in layer_types) or (
        cfg.model_type == "mistral" and window is not None)
    if cfg.model_type == "qwen2" and getattr(cfg, "use_sliding_window", False):
        uses_window = True
    if uses_window and (window is None or total_len is None or window < total_len):
        return False
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
        return False
    for layer in base.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            return False
        mods = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        mods += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(m) is not torch.nn.Linear for m in mods):
            return False
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            return False
        for n in ("input_layernorm", "post_attention_layernorm"):
            if not hasattr(getattr(layer, n, None), "variance_epsilon"):
                return False
    return hasattr(base.norm, "variance_epsilon")


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm exactly as HF Llama computes it (statistics in float32)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _fuse(mods: list[torch.nn.Linear], fuse: bool) -> tuple:
    """(weight, bias) of the row-concatenation of ``mods`` (one GEMM), or the parts when not fused."""
    if not fuse:
        return None, None, [(m.weight, m.bias) for m in mods]
    weight = torch.cat([m.weight for m in mods])
    if all(m.bias is None for m in mods):
        return weight, None, None
    bias = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in mods])
    return weight, bias, None


# Fusing q/k/v and gate/up copies those weights once per generate call; above this many elements the copy
# is not worth its memory and the projections run separately.
_FUSE_MAX_NUMEL = 32_000_000


class _NativeDecoder:
    """Llama-family decoder run from the model's weights with a preallocated KV cache."""

    def __init__(self, model, batch_size: int, max_len: int, static: bool = False):
        cfg, base = model.config, model.model
        self.static = static  # fixed-shape decode steps (whole cache, slot as a tensor): CUDA-graph safe
        self.embed = base.embed_tokens.weight
        self.norm = self._norm(base.norm)
        self.lm_w, self.lm_b = model.lm_head.weight, model.lm_head.bias
        attn0 = base.layers[0].self_attn
        self.H = cfg.num_attention_heads
        self.Hk = getattr(cfg, "num_key_value_heads", None) or self.H
        self.D = getattr(attn0, "head_dim", None) or cfg.hidden_size // self.H
        self.scale = getattr(attn0, "scaling", self.D ** -0.5)
        layers = base.layers[: cfg.num_hidden_layers]
        fused_numel = sum(l.self_attn.q_proj.weight.numel() + l.self_attn.k_proj.weight.numel()
                          + l.self_attn.v_proj.weight.numel() + l.mlp.gate_proj.weight.numel()
                          + l.mlp.up_proj.weight.numel() for l in layers)
        fuse = fused_numel <= _FUSE_MAX_NUMEL
        self.layers = []
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                self._norm(layer.input_layernorm),
                _fuse([a.q_proj, a.k_proj, a.v_proj], fuse), (a.o_proj.weight, a.o_proj.bias),
                self._norm(layer.post_attention_layernorm),
                _fuse([m.gate_proj, m.up_proj], fuse), (m.down_proj.weight, m.down_proj.bias), m.act_fn,
            ))
        dtype, device = self.embed.dtype, self.embed.device
        L = len(self.layers)
        self.k_cache = torch.zeros(L, batch_size, self.Hk, max_len, self.D, dtype=dtype, device=device)
        self.v_cache = torch.zeros_like(self.k_cache)  # [L, B, H_kv, S, D]
        # The model's own rotary module gives cos/sin per position; positions are independent, so a table
        # for 0..S-1 looked up by position id is identical to calling it on the batch's positions.
        positions = torch.arange(max_len, device=device)[None]  # [1, S]
        cos, sin = base.rotary_emb(self.embed[:1], positions)  # [1, S, D]
        self.cos, self.sin = cos[0], sin[0]  # [S, D]
        self.key_bias = torch.zeros(batch_size, 1, 1, max_len, dtype=dtype, device=device)  # [B,1,1,S]
        self.neg = torch.finfo(dtype).min
        self.gqa = self.H != self.Hk
        self.length = 0  # filled cache slots
        if static:
            self.slots = torch.arange(max_len, device=device)  # [S]
            self.buf_tok = torch.zeros(batch_size, dtype=torch.long, device=device)  # [B] graph inputs
            self.buf_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # [B]
            self.buf_slot = torch.zeros(1, dtype=torch.long, device=device)  # [1] slot the step writes
            self.graph, self.graph_out = None, None
            self.use_graph = device.type == "cuda"

    @staticmethod
    def _norm(module) -> tuple:
        return module.weight, module.variance_epsilon

    @staticmethod
    def _rms(x: Tensor, norm: tuple) -> Tensor:
        weight, eps = norm
        if x.dtype == torch.float32:  # same math as HF in one kernel (HF normalises in float32)
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        return _rms_norm(x, weight, eps)

    @staticmethod
    def _proj(h: Tensor, fused: tuple) -> Tensor:
        weight, bias, parts = fused
        if parts is None:
            return F.linear(h, weight, bias)
        return torch.cat([F.linear(h, w, b) for w, b in parts], dim=-1)

    def _forward(self, ids: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """ids, pos [b, n]; mask [b, 1, n, start+n] additive. Writes K/V at slots start..start+n-1."""
        b, n = ids.shape
        H, Hk, D = self.H, self.Hk, self.D
        start, end = self.length, self.length + n
        x = F.embedding(ids, self.embed)  # [b, n, h]
        cos = self.cos[pos].unsqueeze(1)  # [b, 1, n, D]
        sin = self.sin[pos].unsqueeze(1)  # [b, 1, n, D]
        for i, (norm1, qkv_w, (wo, bo), norm2, gu_w, (wd, bd), act) in enumerate(self.layers):
            qkv = self._proj(self._rms(x, norm1), qkv_w).view(b, n, H + 2 * Hk, D)  # [b, n, H+2H_kv, D]
            qk = qkv[:, :, : H + Hk].transpose(1, 2)  # [b, H+H_kv, n, D]
            qk = qk * cos + _rotate_half(qk) * sin  # RoPE on queries and keys at once
            self.k_cache[i, :, :, start:end] = qk[:, H:]
            self.v_cache[i, :, :, start:end] = qkv[:, :, H + Hk:].transpose(1, 2)
            o = F.scaled_dot_product_attention(
                qk[:, :H], self.k_cache[i, :, :, :end], self.v_cache[i, :, :, :end], attn_mask=mask,
                scale=self.scale, enable_gqa=self.gqa)  # [b, H, n, D]
            x = x + F.linear(o.transpose(1, 2).reshape(b, n, H * D), wo, bo)  # [b, n, h]
            gate, up = self._proj(self._rms(x, norm2), gu_w).chunk(2, dim=-1)  # [b, n, ff] each
            x = x + F.linear(act(gate) * up, wd, bd)  # [b, n, h]
        self.length = end
        x = self._rms(x[:, -1], self.norm)  # [b, h]
        return F.linear(x, self.lm_w, self.lm_b)  # [b, V]

    def prefill(self, ids: Tensor, attention_mask: Tensor, pos: Tensor) -> Tensor:
        P = ids.shape[1]
        self.key_bias[:, 0, 0, :P].masked_fill_(attention_mask == 0, self.neg)
        causal = torch.full((P, P), self.neg, dtype=self.key_bias.dtype, device=ids.device).triu(1)
        mask = (self.key_bias[:, :, :, :P] + causal).clamp_(min=self.neg)  # [B, 1, P, P] (no -inf overflow)
        return self._forward(ids, pos, mask)

    def step(self, tok: Tensor, pos: Tensor) -> Tensor:
        if self.static:
            return self._static_step(tok, pos)
        return self._forward(tok[:, None], pos[:, None], self.key_bias[:, :, :, : self.length + 1])

    def _step_fixed(self) -> Tensor:
        """One decode step with shapes that never change: reads ``buf_tok``/``buf_pos``, writes K/V at slot
        ``buf_slot`` and attends over the WHOLE cache ``[.., S, D]``, the slots after ``buf_slot`` masked out
        (their softmax weights are exactly 0, so the result is the dynamic step's up to summation order).
        No host synchronisation and no allocation whose size depends on the step: capturable in a CUDA graph."""
        H, Hk, D = self.H, self.Hk, self.D
        b = self.buf_tok.shape[0]
        x = F.embedding(self.buf_tok[:, None], self.embed)  # [b, 1, h]
        cos = self.cos[self.buf_pos].view(b, 1, 1, D)  # [b, 1, 1, D]
        sin = self.sin[self.buf_pos].view(b, 1, 1, D)
        mask = self.key_bias.masked_fill((self.slots > self.buf_slot).view(1, 1, 1, -1), self.neg)  # [b,1,1,S]
        for i, (norm1, qkv_w, (wo, bo), norm2, gu_w, (wd, bd), act) in enumerate(self.layers):
            qkv = self._proj(self._rms(x, norm1), qkv_w).view(b, 1, H + 2 * Hk, D)  # [b, 1, H+2H_kv, D]
            qk = qkv[:, :, : H + Hk].transpose(1, 2)  # [b, H+H_kv, 1, D]
            qk = qk * cos + _rotate_half(qk) * sin
            self.k_cache[i].index_copy_(2, self.buf_slot, qk[:, H:])
            self.v_cache[i].index_copy_(2, self.buf_slot, qkv[:, :, H + Hk:].transpose(1, 2))
            o = F.scaled_dot_product_attention(qk[:, :H], self.k_cache[i], self.v_cache[i], attn_mask=mask,
                                               scale=self.scale, enable_gqa=self.gqa)  # [b, H, 1, D]
            x = x + F.linear(o.transpose(1, 2).reshape(b, 1, H * D), wo, bo)  # [b, 1, h]
            gate, up = self._proj(self._rms(x, norm2), gu_w).chunk(2, dim=-1)
            x = x + F.linear(act(gate) * up, wd, bd)
        x = self._rms(x[:, -1], self.norm)  # [b, h]
        return F.linear(x, self.lm_w, self.lm_b)  # [b, V]

    def _static_step(self, tok: Tensor, pos: Tensor) -> Tensor:
        self.buf_tok.copy_(tok)
        self.buf_pos.copy_(pos)
        self.buf_slot.fill_(self.length)
        self.length += 1
        if not self.use_graph:
            return self._step_fixed()
        if self.graph is None:
            # Warm up on a side stream (cuBLAS/SDPA workspaces), then capture. Each warm-up call is this
            # step itself — same inputs, same slot — so it is idempotent and its logits are the answer.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    logits = self._step_fixed()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.graph_out = self._step_fixed()
            return logits
        self.graph.replay()
        return self.graph_out

    def expand(self, n: int) -> None:
        """Repeat every row ``n`` times (``[b] -> [b·n]``, copies contiguous): a group's prompt is prefilled
        once and its cache shared by the ``n`` samples. Called after ``prefill``, before the first step."""
        self.k_cache = self.k_cache.repeat_interleave(n, dim=1)
        self.v_cache = self.v_cache.repeat_interleave(n, dim=1)
        self.key_bias = self.key_bias.repeat_interleave(n, dim=0)
        if self.static:
            self.buf_tok = self.buf_tok.repeat_interleave(n)
            self.buf_pos = self.buf_pos.repeat_interleave(n)

    def select(self, rows: Tensor) -> None:
        if self.static:
            raise RuntimeError("a static decoder keeps its batch (no compaction)")
        self.k_cache = self.k_cache.index_select(1, rows)
        self.v_cache = self.v_cache.index_select(1, rows)
        self.key_bias = self.key_bias.index_select(0, rows)


class _HFDecoder:
    """Any HF causal LM through its forward with a ``DynamicCache``."""

    def __init__(self, model, batch_size: int, max_len: int):
        from transformers import DynamicCache

        self.model = model
        try:
            self.cache = DynamicCache(config=model.config)
        except TypeError:  # older transformers
            self.cache = DynamicCache()
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wrappers
        params = inspect.signature(inner.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        device = next(model.parameters()).device
        self.mask = torch.ones(batch_size, max_len, dtype=torch.long, device=device)  # [B, S]
        self.length = 0

    def _call(self, ids: Tensor, pos: Tensor, extra: dict) -> Tensor:
        end = self.length + ids.shape[1]
        out = self.model(input_ids=ids, attention_mask=self.mask[:, :end], position_ids=pos,
                         use_cache=True, **{self.cache_kw: self.cache}, **extra)
        new_cache = getattr(out, self.cache_kw, None)
        if new_cache is not None:
            self.cache = new_cache
        self.length = end
        return out.logits[:, -1]  # [b, V]

    def prefill(self, ids: Tensor, attention_mask: Tensor, pos: Tensor) -> Tensor:
        self.mask[:, : ids.shape[1]] = attention_mask
        return self._call(ids, pos, self.extra)

    def step(self, tok: Tensor, pos: Tensor) -> Tensor:
        return self._call(tok[:, None], pos[:, None], {})

    def expand(self, n: int) -> None:
        self.cache.batch_repeat_interleave(n)
        self.mask = self.mask.repeat_interleave(n, dim=0)

    def select(self, rows: Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask.index_select(0, rows)


# --------------------------------------------------------------------------------------------------


def _stop_string_hit(tokenizer, tokens: list[int], stop_strings: Sequence[str], window: int) -> bool:
    text = tokenizer.decode(tokens[-window:], skip_special_tokens=False)
    return any(s in text for s in stop_strings)


_TENSOR_FIELDS = ("input_ids", "attention_mask", "completion_mask", "position_ids", "logprobs",
                  "sampling_logprobs", "prompt_lengths", "completion_lengths", "finished")


def generate(model, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, stop_token_ids: Sequence[int], pad_token_id: int,
             stop_strings: Sequence[str] = (), tokenizer=None,
             generator: torch.Generator | None = None, backend: str = "auto", _group_size: int = 1) -> Rollout:
    """Sample one completion per prompt with a KV cache (see the module docstring for the layout).

    ``temperature == 0`` is greedy decoding. ``top_k == 0`` and ``top_p == 1`` disable those filters.
    Generation of a row stops at any token in ``stop_token_ids`` or once its decoded completion contains one
    of ``stop_strings`` (needs ``tokenizer``). When ``tokenizer`` is given, ``completion_texts`` holds the
    decoded completions (special tokens skipped). ``backend``: one of :data:`BACKENDS` (module docstring).
    ``generator`` must live on the model's device.

    Sampling runs under ``torch.inference_mode``; the returned tensors are ordinary tensors (cloned out of
    inference mode, unless the caller is itself in inference mode), so a training step may use them in
    autograd (inference tensors cannot be saved for backward).
    """
    rollout = _generate(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, top_k=top_k, stop_token_ids=stop_token_ids, pad_token_id=pad_token_id,
                        stop_strings=stop_strings, tokenizer=tokenizer, generator=generator, backend=backend,
                        group_size=_group_size)
    if not torch.is_inference_mode_enabled():
        for name in _TENSOR_FIELDS:
            setattr(rollout, name, getattr(rollout, name).clone())
    return rollout


@torch.inference_mode()
def _generate(model, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
              top_k: int, stop_token_ids: Sequence[int], pad_token_id: int, stop_strings: Sequence[str],
              tokenizer, generator: torch.Generator | None, backend: str, group_size: int = 1) -> Rollout:
    if not prompt_ids:
        raise ValueError("generate: prompt_ids is empty")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("generate: every prompt needs at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"generate: top_k must be >= 0, got {top_k}")
    stop_strings = tuple(s for s in stop_strings if s)
    if stop_strings and tokenizer is None:
        raise ValueError("generate: stop_strings need a tokenizer")
    if backend not in BACKENDS:
        raise ValueError(f"generate: backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")

    device = next(model.parameters()).device
    B, T_max = len(prompt_ids), max_new_tokens
    P = max(len(p) for p in prompt_ids)
    S = P + T_max

    # ---- preallocated outputs ----
    input_ids = torch.full((B, S), pad_token_id, dtype=torch.long)  # [B, P+T]
    prompt_mask = torch.zeros(B, P, dtype=torch.long)  # [B, P]
    for i, p in enumerate(prompt_ids):
        input_ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        prompt_mask[i, P - len(p):] = 1
    input_ids, prompt_mask = input_ids.to(device), prompt_mask.to(device)
    prompt_lengths = prompt_mask.sum(-1)  # [B]
    completion_mask = torch.zeros(B, S, dtype=torch.bool, device=device)  # [B, P+T]
    lp_dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    logprobs = torch.zeros(B, S, dtype=lp_dtype, device=device)  # [B, P+T]
    sampling_logprobs = torch.zeros(B, S, dtype=lp_dtype, device=device)  # [B, P+T]
    done = torch.zeros(B, dtype=torch.bool, device=device)  # [B]

    V = model.get_output_embeddings().weight.shape[0] if hasattr(model, "get_output_embeddings") \
        and model.get_output_embeddings() is not None else None
    stop_ids = sorted({int(s) for s in stop_token_ids})
    table_size = max([V or 0, pad_token_id + 1] + [s + 1 for s in stop_ids])
    is_stop = torch.zeros(table_size, dtype=torch.bool, device=device)  # [V]
    if stop_ids:
        is_stop[torch.tensor(stop_ids, device=device)] = True

    steps = 0
    if T_max > 0:
        use_native = backend in ("native", "static") or (backend == "auto" and native_supported(model, S))
        if backend in ("native", "static") and not native_supported(model, S):
            raise ValueError(f"generate: backend={backend!r} does not support {type(model).__name__}")
        static = backend == "static"
        was_training = model.training
        if not use_native and was_training:
            model.eval()
        try:
            pos_prompt = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]
            n = group_size if group_size > 1 and B % group_size == 0 else 1
            u = B // n  # rows prefilled: one per group of n identical prompts (sample_n), then shared
            dec = _NativeDecoder(model, u, S, static=static) if use_native else _HFDecoder(model, u, S)
            logits = dec.prefill(input_ids[::n, :P], prompt_mask[::n], pos_prompt[::n])  # [u, V]
            if n > 1:
                dec.expand(n)
                logits = logits.repeat_interleave(n, dim=0)  # [B, V]
            rows = torch.arange(B, device=device)  # [b] original row of each computed row
            full = True  # rows == arange(B): plain column writes
            row_lengths = prompt_lengths  # [b]
            gen_tokens: list[list[int]] = [[] for _ in range(B)]
            window = max((len(s.encode("utf-8")) for s in stop_strings), default=0) + 1
            for t in range(T_max):
                col = P + t
                tok, lp, slp = _sample(logits, temperature, top_k, top_p, generator)  # [b] each
                live = ~done if full else ~done[rows]  # [b]
                tok = torch.where(live, tok, pad_token_id)  # [b]
                lp, slp = lp.masked_fill(~live, 0.0), slp.masked_fill(~live, 0.0)  # [b]
                if full:
                    input_ids[:, col] = tok
                    completion_mask[:, col] = live
                    logprobs[:, col] = lp
                    sampling_logprobs[:, col] = slp
                    done |= is_stop[tok]
                else:
                    input_ids[rows, col] = tok
                    completion_mask[rows, col] = live
                    logprobs[rows, col] = lp
                    sampling_logprobs[rows, col] = slp
                    done[rows] |= is_stop[tok] & live
                if stop_strings:
                    done_now, hits = done.tolist(), []
                    for r, token, alive in zip(rows.tolist(), tok.tolist(), live.tolist()):
                        if alive:
                            gen_tokens[r].append(token)
                            if not done_now[r] and _stop_string_hit(tokenizer, gen_tokens[r], stop_strings,
                                                                    window):
                                hits.append(r)
                    if hits:
                        done[torch.tensor(hits, device=device)] = True
                steps = t + 1
                n_done = int(done.sum()) if full else int(done[rows].sum())
                if n_done == rows.numel() or steps == T_max:
                    break
                if not static and rows.numel() >= 4 and 2 * n_done >= rows.numel():
                    keep = (~done[rows]).nonzero().squeeze(-1)  # [b'] positions in the computed batch
                    dec.select(keep)
                    rows, tok, row_lengths = rows[keep], tok[keep], row_lengths[keep]
                    full = False
                logits = dec.step(tok, row_lengths + t)  # [b, V]; token t sits at position len + t
        finally:
            if not use_native and was_training:
                model.train()

    # ---- trim to the steps run and assemble ----
    W = P + steps
    input_ids = input_ids[:, :W]
    completion_mask = completion_mask[:, :W]
    logprobs, sampling_logprobs = logprobs[:, :W], sampling_logprobs[:, :W]
    attention_mask = torch.cat([prompt_mask, completion_mask[:, P:].long()], dim=1)  # [B, P+T]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0) * attention_mask  # [B, P+T]
    completion_lengths = completion_mask.sum(-1)  # [B]
    comp = input_ids[:, P:].tolist()
    completion_ids = [row[:n] for row, n in zip(comp, completion_lengths.tolist())]
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True) if tokenizer is not None else None
    return Rollout(
        input_ids=input_ids, attention_mask=attention_mask, completion_mask=completion_mask,
        position_ids=position_ids, logprobs=logprobs, sampling_logprobs=sampling_logprobs, prompt_len=P,
        prompt_lengths=prompt_lengths, completion_ids=completion_ids, completion_lengths=completion_lengths,
        finished=done.clone(), num_generated_tokens=int(completion_lengths.sum()), completion_texts=texts,
    )


def sample_n(model, prompt_ids: list[list[int]], n: int, **kwargs) -> Rollout:
    """``n`` samples per prompt in one batch: prompts repeated contiguously (row ``i`` is prompt ``i // n``).
    Each prompt is prefilled once and its KV cache repeated for its ``n`` samples.

    Keyword arguments are those of :func:`generate`; the result has ``group_size == n``."""
    if n < 1:
        raise ValueError(f"sample_n: n must be >= 1, got {n}")
    rollout = generate(model, [p for p in prompt_ids for _ in range(n)], _group_size=n, **kwargs)
    rollout.group_size = n
    return rollout
