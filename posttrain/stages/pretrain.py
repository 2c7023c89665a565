"""Language-model training on ``text`` data (loss on every token), e.g. the toy world's base model.

Each document is ``[bos] + text + eos`` (:func:`posttrain.data.tokenize.encode_text`). With ``packing`` (the
default) documents are packed into rows of ``data.max_len`` tokens (best-fit decreasing; a document longer
than a row is split into row-sized chunks) with a block-diagonal causal mask and restarted positions, so no
document attends to another; otherwise each document is one row, truncated to ``data.max_len``.

Usable programmatically and silent with ``progress=False``::

    from posttrain.config import DataConfig, PretrainConfig
    from posttrain.stages.pretrain import run
    summary = run(PretrainConfig(model="world/base-init", data=DataConfig(train="corpus.jsonl"),
                                 output_dir="world/pretrain", max_steps=600, lr=3e-3, progress=False))
    summary["model_dir"]   # the trained model (HF format)
"""

from __future__ import annotations

from posttrain.config import PretrainConfig
from posttrain.data.tokenize import TruncationStats, encode_text
from posttrain.engine import StepSampler, Trainer
from posttrain.stages import common
from posttrain.stages.sft import make_batches, nll_evaluator, sft_loss_fn

STAGE = "pretrain"


def encode_corpus(tok, rows, *, max_len: int, packing: bool):
    """Encoded documents (whole when packing, else truncated to ``max_len``) and truncation counts."""
    stats = TruncationStats()
    docs = [encode_text(tok, r["text"], max_len=None if packing else max_len, stats=stats) for r in rows]
    return [d for d in docs if len(d) > 1], stats


def run(cfg: PretrainConfig) -> dict:
    ctx = common.setup(cfg)
    model, tok = common.load_model(cfg, ctx)
    train_rows = common.load_data(cfg.data.train, kinds=("text",), max_rows=cfg.data.max_train_rows)
    eval_rows = common.load_data(cfg.data.eval, kinds=("text",), key="data.eval",
                                 max_rows=cfg.data.max_eval_rows, required=False)
    train, stats = encode_corpus(tok, train_rows, max_len=cfg.data.max_len, packing=cfg.packing)
    common.require_examples(len(train), train_rows.source, "document")
    evald = (encode_corpus(tok, eval_rows, max_len=cfg.data.max_len, packing=cfg.packing)[0]
             if eval_rows is not None else [])

    run = common.open_run(cfg, STAGE)
    if run.is_done():
        return common.already_done(run, cfg)
    trainer = Trainer(cfg, run, model, total_steps=cfg.max_steps)
    batching = dict(packing=cfg.packing, max_len=cfg.data.max_len, pad_id=tok.pad_token_id,
                    mask_dtype=common.mask_dtype(trainer))
    n_train, make_train = make_batches(train, **batching)
    sampler = StepSampler.from_config(cfg, n_train, rank=ctx.dist.rank, world=ctx.dist.world_size)
    evaluate = None
    if evald:
        n_eval, make_eval = make_batches(evald, **batching)
        evaluate = nll_evaluator(trainer, n_eval, make_eval, cfg)

    summary = trainer.fit(sampler, make_train, sft_loss_fn, evaluate=evaluate, desc=STAGE)
    summary.update({"documents": len(train), "train_units": n_train, "packing": cfg.packing,
                    "epochs": round(sampler.epoch(trainer.step_count), 4), "truncation": stats.as_dict()})
    return common.finish(STAGE, trainer, model, tok, summary)
