"""Helpers every training stage uses, so each stage file reads as its algorithm.

A stage runs in this order (the order matters: user errors surface before anything is written)::

    ctx = setup(cfg)                                   # threads, device, torch.distributed, seeds
    model, tok = load_model(cfg, ctx)                  # one-line ModelError on a bad path
    rows = load_data(cfg.data.train, kinds=[...])      # one-line DataError on a bad file/row
    ... tokenise, validate ...
    run = open_run(cfg, "sft")                         # only now: the run directory
    if run.is_done(): return already_done(run, cfg)
    trainer = Trainer(cfg, run, model)                 # resumes from the latest checkpoint
    trainer.fit(...)
    finish(...)                                        # final model, summary.json, DONE, one printed summary
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from posttrain.engine import Run, distributed
from posttrain.engine.distributed import DistInfo
from posttrain.engine.trainer import seed_everything
from posttrain.errors import ConfigError, DataError

__all__ = ["StageContext", "setup", "train_dtype", "load_model", "apply_lora", "load_data", "open_run",
           "already_done", "token_logprobs_of", "mask_dtype", "print_summary", "finish", "eval_prompts",
           "generate_samples", "require_examples"]


@dataclass(frozen=True)
class StageContext:
    dist: DistInfo
    device: torch.device
    dtype: torch.dtype  # dtype of trainable weights

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def train_dtype(cfg, device: torch.device) -> torch.dtype:
    """Weights dtype for training: ``auto`` → fp32 (the trainer adds bf16 autocast on CUDA); else as asked."""
    from posttrain.models.load import resolve_dtype

    return torch.float32 if cfg.dtype == "auto" else resolve_dtype(cfg.dtype, device)


def setup(cfg) -> StageContext:
    """Set torch threads, resolve the device, join torch.distributed when launched by torchrun, seed."""
    from posttrain.models.load import resolve_device

    if getattr(cfg, "num_threads", None):
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    if distributed.env_world_size() > 1 and device.type == "cuda":
        import os

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    info = distributed.init(device)
    seed_everything(cfg.seed)
    return StageContext(dist=info, device=device, dtype=train_dtype(cfg, device))


def load_model(cfg, ctx: StageContext, spec: str | None = None, *, tokenizer: str | None = None):
    """``(model, tokenizer)`` from ``spec`` (default ``cfg.model``) on the stage's device and dtype."""
    from posttrain.models.load import load_causal_lm

    seed_everything(cfg.seed)  # presets are random-init: the same seed gives the same model on every rank
    model, tok = load_causal_lm(spec or cfg.model, device=ctx.device, dtype=ctx.dtype,
                                tokenizer=tokenizer if tokenizer is not None else cfg.tokenizer)
    if tok.pad_token_id is None:  # pragma: no cover - ensure_chat_template sets one
        raise ConfigError(f"model '{spec or cfg.model}': the tokenizer has no pad token")
    return model, tok


def apply_lora(model, lora) -> torch.nn.Module:
    """Wrap ``model`` with PEFT LoRA adapters (``lora``: :class:`posttrain.config.LoraConfig`)."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        raise ConfigError("lora.enabled=true needs the peft package (pip install peft)") from None
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise ConfigError(f"lora.target_modules: '{missing[0]}' is not a linear layer of this model "
                          f"(it has: {', '.join(sorted(names))})")
    pc = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, pc)


def load_data(spec: str | None, *, kinds: Sequence[str], key: str = "data.train", max_rows: int | None = None,
              required: bool = True):
    """Validated rows of one of ``kinds`` from ``spec`` (``key`` names the config key in messages)."""
    from posttrain.data.load import Rows, load_rows

    if spec is None:
        if required:
            raise ConfigError(f"config: key '{key}' is required (a .jsonl/.json/.parquet/.csv file or a "
                              f"dataset folder)")
        return None
    rows = load_rows(spec, kinds=list(kinds))
    if max_rows is not None and len(rows) > max_rows:
        rows = Rows(rows=rows.rows[:max_rows], kind=rows.kind, source=rows.source,
                    row_numbers=rows.row_numbers[:max_rows])
    return rows


def require_examples(n: int, source: str, what: str = "training example") -> None:
    if n == 0:
        raise DataError(f"no {what} has a token to train on after tokenisation and truncation "
                        f"(raise data.max_len?)", file=source)


def open_run(cfg, stage: str) -> Run:
    """Create or reuse the run directory (see :class:`posttrain.engine.run.Run`)."""
    return Run.open(cfg, stage)


def already_done(run: Run, cfg) -> dict:
    summary = run.read_summary()
    if cfg.progress and run.is_main:
        print(f"{run.stage}: {run.path} already holds this finished run; nothing to do "
              f"(choose another output_dir to train again)")
    return summary


def mask_dtype(trainer) -> torch.dtype:
    """dtype for additive attention masks: the autocast dtype when autocasting, else the weights'."""
    return trainer.autocast_dtype or next(trainer.module.parameters()).dtype


PACKED_MAX_LEN = 4096  # longest packed row prefix sharing builds (its 4-D mask is L² per row)


def cost_shape(model) -> tuple[int, int, int] | None:
    """``(matmul parameters, layers, hidden)`` of a transformer, for :func:`packing_pays` (an untied input
    embedding table costs no FLOPs per position, as in the engine's MFU); None when unknown."""
    from posttrain.engine.trainer import matmul_params

    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "num_hidden_layers") or not hasattr(cfg, "hidden_size"):
        return None
    return matmul_params(model), cfg.num_hidden_layers, cfg.hidden_size


def packing_pays(shape: tuple[int, int, int] | None, padded: tuple[int, int], packed: tuple[int, int]) -> bool:
    """Whether prefix sharing's packed rows (``packed`` = ``(rows, width)``) cost fewer forward FLOPs than the
    padded layout (``padded``): ``2·N`` per token position (the weights) plus ``4·layers·hidden`` per attended
    (query, key) pair — both layouts run dense attention over their padded width, so packing trades fewer
    positions for longer rows. It must win by 5%, and packed rows are capped at :data:`PACKED_MAX_LEN`.
    ``shape`` from :func:`cost_shape`; None (an unknown architecture) never packs automatically."""
    if shape is None or packed[1] > PACKED_MAX_LEN:
        return False
    n_params, layers, hidden = shape

    def cost(rows: int, width: int) -> int:
        return 2 * n_params * rows * width + 4 * layers * hidden * rows * width * width

    return cost(*packed) < 0.95 * cost(*padded)


def token_logprobs_of(model, batch: Mapping[str, Any]) -> torch.Tensor:
    """Per-token log-probs ``[B, T]`` (token-space convention) for a padded batch (2-D ``attention_mask``)
    or a packed one (4-D block-diagonal ``attention_mask`` and restarted ``position_ids``). A padded batch's
    positions before the first ``loss_mask`` token hold 0 (their logits are not computed)."""
    from posttrain.models.logprobs import first_target, sequence_logprobs, token_logprobs

    am = batch.get("attention_mask")
    if am is not None and am.dim() == 2:
        start = first_target(batch["loss_mask"]) if "loss_mask" in batch else 1
        return sequence_logprobs(model, batch["input_ids"], am, position_ids=batch.get("position_ids"),
                                 from_position=start)["logprobs"]
    ids = batch["input_ids"]  # [B, L]
    out = model(input_ids=ids, attention_mask=am, position_ids=batch.get("position_ids"), use_cache=False)
    lp = token_logprobs(out.logits[:, :-1], ids[:, 1:])  # [B, L-1]
    return torch.cat([lp.new_zeros(lp.shape[0], 1), lp], dim=1)  # [B, L]; loss_mask zeroes example starts


def eval_prompts(rows, n: int) -> list:
    """The first ``n`` prompts of prompt-completion or conversational rows (for sample generations)."""
    out = []
    for r in list(getattr(rows, "rows", rows or []))[:n]:
        if "prompt" in r:
            out.append(r["prompt"])
        elif "messages" in r:
            msgs = r["messages"]
            last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
            out.append(msgs[:last])
    return out


def generate_samples(model, tok, prompts: list, gen_cfg, *, max_prompt_len: int, seed: int, step: int,
                     batch_size: int = 16) -> list[dict]:
    """Sample one completion per prompt (``gen_cfg``: :class:`posttrain.config.GenerationConfig`)."""
    from posttrain.data.tokenize import encode_prompt, render_prompt
    from posttrain.models.load import unwrap_model
    from posttrain.models.tokenizer import stop_token_ids
    from posttrain.rollout.sampler import generate

    if not prompts:
        return []
    m = unwrap_model(model)
    was = m.training
    m.eval()
    dev = next(m.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + step)
    rows = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            ids = [encode_prompt(tok, p, max_prompt_len=max_prompt_len) for p in chunk]
            with torch.no_grad():
                ro = generate(m, ids, max_new_tokens=gen_cfg.max_new_tokens, temperature=gen_cfg.temperature,
                              top_p=gen_cfg.top_p, top_k=gen_cfg.top_k, stop_token_ids=stop_token_ids(tok),
                              pad_token_id=tok.pad_token_id, stop_strings=tuple(gen_cfg.stop_strings),
                              tokenizer=tok, generator=gen, backend=gen_cfg.backend)
            texts = ro.completion_texts or [tok.decode(c, skip_special_tokens=True) for c in ro.completion_ids]
            for p, text, fin in zip(chunk, texts, ro.finished.tolist()):
                rows.append({"step": step, "prompt": render_prompt(tok, p), "completion": text,
                             "finished": bool(fin)})
    finally:
        m.train(was)
    return rows


def print_summary(stage: str, summary: Mapping[str, Any], run: Run, cfg) -> None:
    """The standard two-line final summary (rank 0, only when ``cfg.progress``)."""
    if not (cfg.progress and run.is_main):
        return
    parts = [f"{summary.get('steps', 0)} steps in {summary.get('train_time_s', 0.0):.1f} s",
             f"{summary.get('tokens_per_s', 0.0):,.0f} tok/s", f"MFU {100 * summary.get('mfu', 0.0):.2f}%"]
    tail = []
    if summary.get("final_loss") is not None:
        tail.append(f"final loss {summary['final_loss']:.4f}")
    ev = summary.get("eval") or {}
    if "loss" in ev:
        tail.append(f"eval loss {ev['loss']:.4f}" + (f" (ppl {ev['ppl']:.2f})" if "ppl" in ev else ""))
    print(f"{stage} finished: " + ", ".join(parts) + ("; " + ", ".join(tail) if tail else ""))
    print(f"run directory: {run.path}  (model: {run.model_dir})")


def finish(stage: str, trainer, model, tokenizer, summary: dict) -> dict:
    """Save the final model, write summary.json and DONE, print the summary; returns the summary."""
    run = trainer.run
    summary = {"stage": stage, **summary, "model_dir": str(trainer.save_final(model, tokenizer)),
               "run_dir": str(run.path)}
    run.write_summary(summary)
    trainer.close()
    run.mark_done()
    print_summary(stage, summary, run, trainer.cfg)
    return summary
