"""Supervised fine-tuning (instruction tuning): maximum likelihood of the completions.

Data: ``prompt_completion`` rows (strings or message lists) or ``conversational`` rows (``messages``).
Loss: token-mean NLL (:func:`posttrain.losses.sft.sft_loss`) on the completion / assistant tokens only
(``completion_only_loss=false``: on all tokens), normalised by the global number of loss tokens of the
optimizer step (engine), so batch 8 and batch 2 × accumulation 4 give the same update.

Options: ``packing`` (several examples per ``data.max_len`` row with a block-diagonal causal mask, so no
example attends to another; the loss is the same as unpacked), LoRA adapters (``lora.enabled``; saved merged
or adapter-only), sample generations on the first ``sample_prompts`` eval prompts (train prompts when there
is no eval set) at the end and every ``sample_every`` steps (``samples.jsonl``), eval loss / perplexity on
``data.eval`` every ``eval_every`` steps and at the end. Truncation counts go to ``summary.json``.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from posttrain.config import SFTConfig
from posttrain.data.collate import collate_lm
from posttrain.data.packing import collate_packed, pack
from posttrain.data.tokenize import encode_dataset
from posttrain.engine import StepSampler, Trainer, eval_shards
from posttrain.losses.reduce import num_units
from posttrain.losses.sft import sft_loss
from posttrain.stages import common

STAGE = "sft"
KINDS = ("prompt_completion", "conversational")


def sft_loss_fn(model, batch, normaliser):
    """``loss_fn`` for the engine: per-token log-probs → token-mean NLL over ``loss_mask``."""
    logprobs = common.token_logprobs_of(model, batch)  # [B, T]
    return sft_loss(logprobs, batch["loss_mask"], normaliser=normaliser)


def make_batches(items, *, packing: bool, max_len: int, pad_id: int, mask_dtype=torch.float32):
    """(number of training units, ``make_batch(indices)``) for encoded examples.

    Unpacked, a unit is one example (right-padded batch). Packed, a unit is one packed row of at most
    ``max_len`` tokens (``data.packing.pack``, best-fit decreasing) with a block-diagonal causal mask."""
    if packing:
        rows = pack(items, max_len)

        def make(idx):
            b = collate_packed([rows[i] for i in idx], pad_id=pad_id, dtype=mask_dtype)
            b["num_units"] = num_units(b["loss_mask"], "token-mean")
            b["num_tokens"] = sum(len(rows[i]) for i in idx)
            b["num_examples"] = sum(len(rows[i].seq_lens) for i in idx)
            return b

        return len(rows), make

    def make(idx):
        b = collate_lm([items[i] for i in idx], pad_id)
        b["num_units"] = num_units(b["loss_mask"], "token-mean")
        return b

    return len(items), make


def nll_evaluator(trainer, n_units, make, cfg):
    """``evaluate(model)`` for the engine: global token-mean NLL and perplexity over the eval units."""
    shards = eval_shards(n_units, cfg.batch_size, trainer.dist.rank, trainer.world_size, cfg.eval_batches)

    def evaluate(model):
        res = trainer.eval_loss((make(ix) for ix in shards), sft_loss_fn)
        if res.get("num_tokens"):
            res["ppl"] = math.exp(min(res["nll_sum"] / res["num_tokens"], 50.0))
        return {k: v for k, v in res.items() if k not in ("nll_sum",)}

    return evaluate


def run(cfg: SFTConfig) -> dict:
    ctx = common.setup(cfg)
    # ---- load and validate everything before the run directory exists
    model, tok = common.load_model(cfg, ctx)
    train_rows = common.load_data(cfg.data.train, kinds=KINDS, max_rows=cfg.data.max_train_rows)
    eval_rows = common.load_data(cfg.data.eval, kinds=KINDS, key="data.eval", max_rows=cfg.data.max_eval_rows,
                                 required=False)
    enc = partial(encode_dataset, tok, max_len=cfg.data.max_len, max_prompt_len=cfg.data.max_prompt_len,
                  completion_only_loss=cfg.completion_only_loss, assistant_only_loss=cfg.completion_only_loss,
                  progress=False if not (cfg.progress and ctx.is_main) else None)
    train = enc(train_rows)
    common.require_examples(len(train), train_rows.source)
    evald = enc(eval_rows) if eval_rows is not None else None
    prompts = common.eval_prompts(eval_rows if eval_rows is not None else train_rows, cfg.sample_prompts)

    if cfg.lora.enabled:  # one-line ConfigError for a target module the model lacks, before the run exists
        model = common.apply_lora(model, cfg.lora)

    run = common.open_run(cfg, STAGE)
    if run.is_done():
        return common.already_done(run, cfg)
    trainer = Trainer(cfg, run, model, total_steps=cfg.max_steps)
    batching = dict(packing=cfg.packing, max_len=cfg.data.max_len, pad_id=tok.pad_token_id,
                    mask_dtype=common.mask_dtype(trainer))
    n_train, make_train = make_batches(train.examples, **batching)
    sampler = StepSampler.from_config(cfg, n_train, rank=ctx.dist.rank, world=ctx.dist.world_size)
    evaluate = None
    if evald is not None and len(evald):
        n_eval, make_eval = make_batches(evald.examples, **batching)
        evaluate = nll_evaluator(trainer, n_eval, make_eval, cfg)

    def sample(step):
        if ctx.is_main and prompts:
            run.append_samples(common.generate_samples(model, tok, prompts, cfg.generation, seed=cfg.seed,
                                                       step=step, max_prompt_len=cfg.data.max_prompt_len))

    def on_step(step, metrics):
        if cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.max_steps:
            sample(step)

    summary = trainer.fit(sampler, make_train, sft_loss_fn, evaluate=evaluate, on_step=on_step, desc=STAGE)
    sample(trainer.step_count)
    summary.update({"train_examples": len(train), "train_units": n_train, "packing": cfg.packing,
                    "epochs": round(sampler.epoch(trainer.step_count), 4),
                    "truncation": train.stats.as_dict(),
                    "eval_truncation": evald.stats.as_dict() if evald is not None else None})
    return common.finish(STAGE, trainer, model, tok, summary)
