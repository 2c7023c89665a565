"""``posttrain reward-model`` (a scalar reward model from preferences) and ``posttrain score``.

``run(cfg: RewardModelConfig)``
    A reward model ``r_θ(x, y)``: a causal LM's backbone with a linear score head, read at the last real
    token (:func:`posttrain.models.heads.reward_model_from_causal`, :func:`~posttrain.models.heads.score_sequences`),
    initialised from ``cfg.model`` (the SFT model, any HF causal LM, or a reward model to train further),
    trained through the shared engine on

    * preference pairs (``prompt?``, ``chosen``, ``rejected``): Bradley–Terry, or its margin variant
      (Llama 2) when the data has a ``margin`` column (``loss=auto``) or ``loss=margin`` (a row without a
      margin has margin 0);
    * K-wise rankings (``prompt``, ``completions``, ``ranking``): InstructGPT's loss — all ``K(K−1)/2``
      comparisons of a prompt in ONE batch element, so each prompt counts once (``loss=kwise``, the default
      for ranking data). ``loss=bradley_terry`` on ranking data instead expands every ranking into its
      ``K(K−1)/2`` pairs, each an independent example (the set-up InstructGPT §3.5 found to overfit).
      ``loss=kwise`` on pairs is the K = 2 case, identical to Bradley–Terry. ``loss=plackett_luce`` scores the
      same groups with the likelihood of the whole ranking (best of all K, then best of the remaining K − 1,
      …; :func:`~posttrain.losses.reward.plackett_luce_loss`), also Bradley–Terry at K = 2.

    A training unit is one prompt's comparison group: a pair, or a ranking of K. A micro-batch of B units
    is scored in ONE forward over its ``Σ K_b`` completions — by default with prefix sharing
    (``share_prompt``): one packed row ``[prompt, y_1, …, y_K]`` per unit under a block attention mask, so the
    prompt is computed once (exactly the rewards of scoring each ``prompt + y_k`` alone; a pair of 32-token
    prompt and completions costs 96 tokens instead of 128); ``share_prompt=false`` uses one padded row per
    completion. The loss is the mean over units, normalised by the global unit count of the optimizer step
    (``batch["num_units"]``), so accumulation and data parallelism give the same update. Rankings of
    different K in one batch are grouped by K, each group through the same loss with the global
    normaliser. The loss math is :mod:`posttrain.losses.reward`; optional reward centring
    (``centering_coef`` η, Eisenstein et al. 2023) is part of it.

    The final model goes to ``RUN/model/`` as a standard ``AutoModelForSequenceClassification``
    (``num_labels=1``). At the end, the model is evaluated on ``data.eval`` (:mod:`posttrain.eval.rm`:
    accuracy, mean margin, calibration / ECE, reward–length correlation, and on the toy world the
    agreement with the gold preference next to the labels' own) into ``summary.json`` (``rm_eval``; the
    headline numbers also under ``eval``: ``accuracy``, ``ece``, ``length_correlation``, ``gold_agreement``,
    ``label_gold_agreement``, and in ``metrics.jsonl`` with an ``eval/`` prefix); the engine's eval loss /
    accuracy is logged every ``eval_every`` steps. ``samples.jsonl`` holds a few eval comparisons with their
    rewards.

``score(cfg: ScoreConfig)``
    Scores rows with a reward model and writes them, unchanged but for the added columns, to
    ``cfg.output`` (jsonl, atomically; nothing is written when any row or the model is bad):
    prompt–completion and unpaired rows get ``reward``; conversational rows (``messages``) get ``reward``
    for their last assistant turn given everything before it; preference rows get ``reward_chosen``,
    ``reward_rejected`` and ``reward_margin``; ranking rows get ``rewards`` (one per completion, in the
    order of ``completions``). Tokenisation is :meth:`posttrain.rollout.rewards.RewardModelReward.encode`
    (the data layer's ``encode_prompt``/``encode_completion``, as RL scores its rollouts), so a score here
    equals the reward RL would see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch

from posttrain.config import RewardModelConfig, ScoreConfig
from posttrain.data.collate import collate_lm
from posttrain.data.packing import prefix_sharing_mask
from posttrain.data.tokenize import EncodedPair, EncodedRanking, encode_dataset
from posttrain.engine import StepSampler, Trainer, eval_shards
from posttrain.errors import ConfigError, DataError
from posttrain.losses.reward import bradley_terry_loss, kwise_ranking_loss, plackett_luce_loss
from posttrain.models.heads import score_sequences
from posttrain.stages import common

__all__ = ["run", "score", "resolve_loss", "RewardUnit", "units_of", "RewardBatcher", "RewardObjective",
           "SequenceScorer", "score_packed",
           "load_reward_model_for_training", "score_rows", "STAGE", "KINDS", "SCORE_KINDS"]

STAGE = "reward_model"
KINDS = ("preference", "ranking")
SCORE_KINDS = ("preference", "ranking", "unpaired", "prompt_completion", "conversational")
N_SAMPLES = 8


# ------------------------------------------------------------------------------------------- loss choice
GROUP_LOSSES = {"kwise": kwise_ranking_loss, "plackett_luce": plackett_luce_loss}  # a ranking is one unit


def _has_margin(rows) -> bool:
    return any(r.get("margin") is not None for r in getattr(rows, "rows", rows))


def resolve_loss(loss: str, rows) -> str:
    """The loss for ``cfg.loss`` on validated ``rows``: ``auto`` → ``kwise`` for ranking data, ``margin``
    when a row has a ``margin``, else ``bradley_terry``. ``margin`` on data without margins is a ConfigError."""
    kind = rows.kind
    if loss == "auto":
        if kind == "ranking":
            return "kwise"
        return "margin" if _has_margin(rows) else "bradley_terry"
    if loss == "margin" and not (kind == "preference" and _has_margin(rows)):
        raise ConfigError(f"config: key 'loss': 'margin' needs preference rows with a 'margin' column, and "
                          f"{rows.source} has none (use loss=bradley_terry or add margins)")
    return loss


# ------------------------------------------------------------------------------------------ batching
@dataclass(frozen=True, slots=True)
class RewardUnit:
    """One training unit: the encoded completions of one prompt, best first (a pair is K = 2), and the
    pair's margin (None: no margin)."""

    seqs: tuple
    margin: float | None = None


def units_of(examples: Sequence[Any], loss: str) -> list[RewardUnit]:
    """Training units of encoded preference pairs / rankings for ``loss`` (see the module docstring)."""
    out: list[RewardUnit] = []
    for e in examples:
        if isinstance(e, EncodedPair):
            out.append(RewardUnit((e.chosen, e.rejected), e.margin))
        elif isinstance(e, EncodedRanking):
            if loss in GROUP_LOSSES:
                out.append(RewardUnit(tuple(e.ranked)))
            else:  # every pair of the ranking as its own example
                K = len(e.ranked)
                out.extend(RewardUnit((e.ranked[i], e.ranked[j])) for i in range(K) for j in range(i + 1, K))
        else:
            raise TypeError(f"reward-model data must be pairs or rankings, got {type(e).__name__}")
    return out


@dataclass
class RewardBatcher:
    """Unit indices → one batch (``make_batch`` for :meth:`Trainer.fit`): every completion of the B units is
    scored in ONE forward. Always: ``group_sizes`` (list of ``K_b``), ``margin`` ``[B]`` when any unit has one
    (missing → 0), ``num_units`` = ``num_examples`` = B, ``num_tokens`` (tokens actually processed).

    ``share_prompt=True`` (prefix sharing): one row per unit, ``[prompt, y_1, ..., y_K]``, so the prompt is
    computed once for its K completions; a 4-D additive block mask (``attention_mask`` ``[B, 1, L, L]``, in
    ``mask_dtype``) lets the prompt attend causally to itself and each ``y_k`` to the prompt and causally to
    itself only, and ``position_ids`` restart at ``len(prompt)`` for every completion, so each completion sees
    exactly what it would see alone after the prompt. ``pool_index`` ``[R, 2]`` (row, column) is the last token
    of each completion, units in order and best first. Pads attend only to themselves.

    ``share_prompt=False``: ``input_ids``/``attention_mask`` ``[R, T]`` (right-padded), one row per completion
    (``R = Σ_b K_b``; unit b's rows contiguous, best first)."""

    units: Sequence[RewardUnit]
    pad_id: int
    share_prompt: bool = True
    mask_dtype: torch.dtype = torch.float32

    def __call__(self, indices: Sequence[int]) -> dict[str, Any]:
        us = [self.units[i] for i in indices]
        batch = self._packed(us) if self.share_prompt else self._padded(us)
        batch["group_sizes"] = [len(u.seqs) for u in us]
        if any(u.margin is not None for u in us):
            batch["margin"] = torch.tensor([0.0 if u.margin is None else u.margin for u in us])  # [B]
        batch["num_units"] = float(len(us))
        batch["num_examples"] = len(us)
        return batch

    def _padded(self, us: list[RewardUnit]) -> dict[str, Any]:
        b = collate_lm([s for u in us for s in u.seqs], self.pad_id)
        am = b["attention_mask"]                                              # [R, T]
        return {"input_ids": b["input_ids"], "attention_mask": am, "num_tokens": int(am.sum())}

    def _packed(self, us: list[RewardUnit]) -> dict[str, Any]:
        rows: list[tuple[list[int], list[int], list[int]]] = []  # (ids, segment, position)
        ends: list[tuple[int, int]] = []
        for b, u in enumerate(us):
            P = u.seqs[0].prompt_len
            prompt = list(u.seqs[0].input_ids[:P])
            ids, seg, pos = list(prompt), [0] * P, list(range(P))
            for k, s in enumerate(u.seqs, start=1):
                if list(s.input_ids[:s.prompt_len]) != prompt:
                    raise ValueError("share_prompt: the completions of a unit do not share their prompt tokens")
                c = list(s.input_ids[s.prompt_len:])
                ids += c
                seg += [k] * len(c)
                pos += list(range(P, P + len(c)))
                ends.append((b, len(ids) - 1))
            rows.append((ids, seg, pos))
        B, L = len(rows), max(len(r[0]) for r in rows)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)         # [B, L]
        position_ids = torch.zeros(B, L, dtype=torch.long)                    # [B, L]
        segment = -torch.arange(1, L + 1, dtype=torch.long).repeat(B, 1)      # [B, L] pads: own segment
        for b, (ids, seg, pos) in enumerate(rows):
            n = len(ids)
            input_ids[b, :n] = torch.tensor(ids, dtype=torch.long)
            segment[b, :n] = torch.tensor(seg, dtype=torch.long)
            position_ids[b, :n] = torch.tensor(pos, dtype=torch.long)
        mask = prefix_sharing_mask(segment, self.mask_dtype)                  # [B, 1, L, L]
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids,
                "pool_index": torch.tensor(ends, dtype=torch.long),           # [R, 2]
                "num_tokens": sum(len(r[0]) for r in rows)}


def score_packed(rm, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 pool_index: torch.Tensor) -> torch.Tensor:
    """Rewards read at ``pool_index`` ``[R, 2]`` (row, column) of a packed batch (``RewardBatcher`` with
    ``share_prompt``): backbone over ``input_ids`` ``[B, L]`` with the 4-D ``attention_mask`` and
    ``position_ids``, then the score head at those positions. → ``[R]`` (float32 or float64)."""
    from posttrain.models.heads import _score_head

    backbone = getattr(rm, rm.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state                      # [B, L, H]
    pooled = hidden[pool_index[:, 0], pool_index[:, 1]]                       # [R, H]
    r = _score_head(rm)(pooled)[:, 0]                                         # [R]
    return r if r.dtype in (torch.float32, torch.float64) else r.float()


class SequenceScorer(torch.nn.Module):
    """``forward(input_ids, attention_mask[, position_ids, pool_index]) -> rewards [R]``: a reward model read at
    each row's last real token (:func:`~posttrain.models.heads.score_sequences`), or, for a packed batch, at
    ``pool_index`` (:func:`score_packed`). The engine trains this wrapper, so that under DDP the forward that
    DDP wraps (and synchronises gradients for) is the correctly pooled one — HF's own
    sequence-classification forward pools at the last token that is not the pad id, which is wrong when
    pad == eos, and knows nothing of packed rows. Parameters are the reward model's (names prefixed ``rm.``)."""

    def __init__(self, rm: torch.nn.Module):
        super().__init__()
        self.rm = rm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                pool_index: torch.Tensor | None = None) -> torch.Tensor:
        if pool_index is not None:
            return score_packed(self.rm, input_ids, attention_mask, position_ids, pool_index)  # [R]
        return score_sequences(self.rm, input_ids, attention_mask)  # [R]

    def get_input_embeddings(self):
        return self.rm.get_input_embeddings()

    def get_output_embeddings(self):
        return None


def _scores(model, batch) -> torch.Tensor:
    from posttrain.models.load import unwrap_model

    packed = "pool_index" in batch
    if isinstance(unwrap_model(model), SequenceScorer):
        kw = {"position_ids": batch["position_ids"], "pool_index": batch["pool_index"]} if packed else {}
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw)  # [R]
    if packed:
        return score_packed(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                            batch["pool_index"])  # [R]
    return score_sequences(model, batch["input_ids"], batch["attention_mask"])  # [R]


class RewardObjective:
    """``loss_fn(model, batch, normaliser)``: one forward scoring every row of the batch, then
    :func:`~posttrain.losses.reward.bradley_terry_loss` (pairs) or
    :func:`~posttrain.losses.reward.kwise_ranking_loss` / :func:`~posttrain.losses.reward.plackett_luce_loss`
    (groups of K, best first). ``model`` is a reward model or a :class:`SequenceScorer` (possibly
    DDP-wrapped)."""

    def __init__(self, loss: str, centering_coef: float = 0.0):
        if loss not in ("bradley_terry", "margin", *GROUP_LOSSES):
            raise ValueError(f"unknown reward-model loss {loss!r}")
        self.loss, self.centering_coef = loss, float(centering_coef)
        self.group_loss = GROUP_LOSSES.get(loss)

    def __call__(self, model, batch, normaliser=None):
        rewards = _scores(model, batch)                                       # [R]
        sizes = list(batch["group_sizes"])
        B = len(sizes)
        norm = float(B) if normaliser is None else normaliser
        if self.group_loss is None:
            if any(k != 2 for k in sizes):
                raise ValueError("pairwise losses need units of exactly 2 completions")
            r = rewards.view(B, 2)                                            # [B, 2]
            margin = batch.get("margin") if self.loss == "margin" else None
            if margin is not None:
                margin = margin.to(device=r.device, dtype=r.dtype)            # [B]
            return bradley_terry_loss(r[:, 0], r[:, 1], margin=margin, centering_coef=self.centering_coef,
                                      normaliser=norm)
        if len(set(sizes)) == 1:
            K = sizes[0]
            r = rewards.view(B, K)                                            # [B, K]
            ranking = torch.arange(K, device=r.device).expand(B, K)           # [B, K] rows are best first
            return self.group_loss(r, ranking, centering_coef=self.centering_coef, normaliser=norm)
        # rankings of different K: one loss call per K, all with the same (global) normaliser
        starts = [0]
        for k in sizes[:-1]:
            starts.append(starts[-1] + k)
        by_k: dict[int, list[int]] = {}
        for b, k in enumerate(sizes):
            by_k.setdefault(k, []).append(b)
        total = rewards.new_zeros(())
        metrics: dict[str, torch.Tensor] = {}
        for K, units in sorted(by_k.items()):
            rows = torch.tensor([starts[b] + j for b in units for j in range(K)], device=rewards.device)
            r = rewards[rows].view(len(units), K)                             # [B_K, K]
            ranking = torch.arange(K, device=r.device).expand(len(units), K)  # [B_K, K]
            loss_k, m_k = self.group_loss(r, ranking, centering_coef=self.centering_coef, normaliser=norm)
            total = total + loss_k
            for name, v in m_k.items():
                metrics[name] = metrics.get(name, 0.0) + v * (len(units) / B)
        return total, metrics


# ------------------------------------------------------------------------------------------- model
def _is_reward_model(spec: str) -> bool:
    """Whether ``spec`` names a saved sequence-classification model (a reward model to train further)."""
    from posttrain.models.load import _load_config, resolve_model_path

    if spec.startswith("preset:"):
        return False
    where = resolve_model_path(spec)
    archs = getattr(_load_config(spec, where, False), "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def load_reward_model_for_training(cfg: RewardModelConfig, ctx) -> tuple[torch.nn.Module, Any]:
    """``(reward_model, tokenizer)`` from ``cfg.model`` on the stage's device and dtype (training mode)."""
    from posttrain.engine.trainer import seed_everything
    from posttrain.models.heads import reward_model_from_causal

    seed_everything(cfg.seed)
    head_init = cfg.head_init
    if head_init == "auto":
        head_init = "auto" if _is_reward_model(cfg.model) else "normal"
    rm, tok = reward_model_from_causal(cfg.model, tokenizer=cfg.tokenizer, device=ctx.device, dtype=ctx.dtype,
                                       head_init=head_init, seed=cfg.seed)
    if tok.pad_token_id is None:  # pragma: no cover - ensure_chat_template sets one
        raise ConfigError(f"model '{cfg.model}': the tokenizer has no pad token")
    rm.config.pad_token_id = tok.pad_token_id
    return rm.train(), tok


# --------------------------------------------------------------------------------------------- run
def _clean(obj):
    """nan/inf → None so summary.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _text(value) -> str:
    if isinstance(value, str):
        return value
    return "\n".join(m.get("content", "") for m in value)


def run(cfg: RewardModelConfig) -> dict:
    """Train a reward model on ``cfg.data.train``; returns the run summary (also ``RUN/summary.json``)."""
    from posttrain.eval.rm import comparisons_of, evaluate_comparisons, score_comparisons

    ctx = common.setup(cfg)
    # ---- load and validate everything before the run directory exists
    train_rows = common.load_data(cfg.data.train, kinds=KINDS, max_rows=cfg.data.max_train_rows)
    eval_rows = common.load_data(cfg.data.eval, kinds=KINDS, key="data.eval", max_rows=cfg.data.max_eval_rows,
                                 required=False)
    loss = resolve_loss(cfg.loss, train_rows)
    model, tok = load_reward_model_for_training(cfg, ctx)
    enc = partial(encode_dataset, tok, max_len=cfg.data.max_len, max_prompt_len=cfg.data.max_prompt_len,
                  progress=False if not (cfg.progress and ctx.is_main) else None)
    train = enc(train_rows)
    common.require_examples(len(train), train_rows.source)
    units = units_of(train.examples, loss)
    evald = enc(eval_rows, drop_empty=False) if eval_rows is not None else None
    eval_units = units_of(evald.examples, loss) if evald is not None else []

    run_dir = common.open_run(cfg, STAGE)
    if run_dir.is_done():
        return common.already_done(run_dir, cfg)
    trainer = Trainer(cfg, run_dir, SequenceScorer(model), total_steps=cfg.max_steps)
    objective = RewardObjective(loss, cfg.centering_coef)
    sampler = StepSampler.from_config(cfg, len(units), rank=ctx.dist.rank, world=ctx.dist.world_size)
    batching = dict(pad_id=tok.pad_token_id, share_prompt=cfg.share_prompt, mask_dtype=common.mask_dtype(trainer))
    evaluate = None
    if eval_units:
        eval_batcher = RewardBatcher(eval_units, **batching)
        shards = eval_shards(len(eval_units), cfg.batch_size, ctx.dist.rank, ctx.dist.world_size,
                             cfg.eval_batches)

        def evaluate(m):
            return trainer.eval_loss((eval_batcher(ix) for ix in shards), objective)

    fit = trainer.fit(sampler, RewardBatcher(units, **batching), objective, evaluate=evaluate, desc=STAGE)

    rm_eval = None
    if evald is not None and ctx.is_main:
        comps = comparisons_of(eval_rows, evald.examples)
        scores = score_comparisons(model, tok, comps, batch_size=max(cfg.batch_size, 16))
        rm_eval = evaluate_comparisons(model, tok, comps, n_bins=cfg.calibration_bins, gold=cfg.gold_eval,
                                       scores=scores)
        run_dir.write_samples([{"step": trainer.step_count, "prompt": _text(c.prompt), "chosen": _text(c.better),
                                "rejected": _text(c.worse), "reward_chosen": a, "reward_rejected": b}
                               for c, a, b in list(zip(comps, *scores))[:N_SAMPLES]])
    if rm_eval is not None:  # headline numbers next to the engine's eval loss / accuracy
        head = {k: rm_eval[src] for k, src in (
            ("ece", "ece"), ("length_correlation", "length_corr"), ("gold_agreement", "gold/rm_agreement"),
            ("label_gold_agreement", "gold/label_agreement")) if src in rm_eval}
        fit.setdefault("eval", {}).update(head)
        trainer.log({f"eval/{k}": v for k, v in head.items() if isinstance(v, float) and math.isfinite(v)})
    n_comparisons = sum(len(u.seqs) * (len(u.seqs) - 1) // 2 for u in units)
    fit.update({"loss_type": loss, "centering_coef": cfg.centering_coef,
                "train": {"source": train_rows.source, "kind": train.kind, "rows": len(train_rows),
                          "units": len(units), "comparisons": n_comparisons,
                          "sequences": sum(len(u.seqs) for u in units),
                          "epochs": round(sampler.epoch(trainer.step_count), 4)},
                "truncation": train.stats.as_dict(),
                "eval_data": ({"source": eval_rows.source, "rows": len(eval_rows)} if eval_rows is not None
                              else None),
                "rm_eval": rm_eval})
    summary = common.finish(STAGE, trainer, model, tok, _clean(fit))
    if cfg.progress and ctx.is_main and rm_eval is not None:
        line = (f"held-out: accuracy {rm_eval['accuracy']:.3f} on {rm_eval['pairs']} pairs, mean margin "
                f"{rm_eval['mean_margin']:.3f}, ECE {rm_eval['ece']:.3f}, reward-length corr "
                f"{rm_eval['length_corr']:.3f}")
        if "gold/rm_agreement" in rm_eval:
            line += (f"; gold agreement {rm_eval['gold/rm_agreement']:.3f} (labels' own "
                     f"{rm_eval['gold/label_agreement']:.3f})")
        print(line)
    return summary


# ------------------------------------------------------------------------------------------- score
def _score_items(rows, kind: str) -> list[tuple[int, str, Any, Any]]:
    """``(row index, slot, prompt, completion)`` for every sequence to score (slot names the column)."""
    from posttrain.data.tokenize import split_prompt

    items = []
    for i, r in enumerate(rows.rows):
        if kind == "preference":
            if r.get("prompt") is not None:
                p, c, rj = r["prompt"], r["chosen"], r["rejected"]
            else:
                p, c, rj = split_prompt(r["chosen"], r["rejected"])
            items += [(i, "chosen", p, c), (i, "rejected", p, rj)]
        elif kind == "ranking":
            items += [(i, f"{k}", r["prompt"], y) for k, y in enumerate(r["completions"])]
        elif kind == "conversational":
            msgs = r["messages"]
            last = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            if last is None or last == 0:
                what = ("has no assistant message to score" if last is None else
                        "has its only assistant message first: no prompt to score it against")
                raise DataError(f"column 'messages' {what} (the last assistant turn is scored)",
                                file=rows.source, row=rows.row_number(i), field="messages")
            items.append((i, "reward", msgs[:last], [msgs[last]]))
        else:  # prompt_completion, unpaired
            items.append((i, "reward", r["prompt"], r["completion"]))
    return items


def score_rows(scorer, rows) -> list[dict]:
    """Validated ``rows`` (:class:`posttrain.data.load.Rows`) with their reward columns added (see the module
    docstring), scored by a :class:`~posttrain.rollout.rewards.RewardModelReward`."""
    from posttrain.eval.rm import TokenIdsScorer

    items = _score_items(rows, rows.kind)
    prompt_ids, completion_ids = [], []
    for i, _, p, c in items:
        try:
            ids = scorer.encode(p, c)
        except DataError as e:
            if e.file is None:
                raise DataError(str(e), file=rows.source, row=rows.row_number(i), field=e.field) from None
            raise
        prompt_ids.append(ids)
        completion_ids.append([])
    by_ids = TokenIdsScorer(scorer.model, scorer.tokenizer, scorer.batch_size)
    values = by_ids(prompt_ids, completion_ids) if items else []
    out = [dict(r) for r in rows.rows]
    for (i, slot, _, _), v in zip(items, values):
        row = out[i]
        if rows.kind == "preference":
            row[f"reward_{slot}"] = v
        elif rows.kind == "ranking":
            row.setdefault("rewards", [None] * len(rows.rows[i]["completions"]))[int(slot)] = v
        else:
            row["reward"] = v
    if rows.kind == "preference":
        for row in out:
            row["reward_margin"] = row["reward_chosen"] - row["reward_rejected"]
    return out


def score(cfg: ScoreConfig) -> dict:
    """Score ``cfg.data.train`` with the reward model ``cfg.model`` into ``cfg.output``; returns a summary."""
    from posttrain.io import write_jsonl
    from posttrain.models.heads import load_reward_model
    from posttrain.models.load import resolve_device
    from posttrain.rollout.rewards import RewardModelReward

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.data.train is None:
        raise ConfigError("config: key 'data.train' is required (the rows to score)")
    out = Path(cfg.output)
    if out.is_dir():
        raise ConfigError(f"config: key 'output': '{cfg.output}' is a directory (give a .jsonl file name)")
    if out.exists() and Path(cfg.data.train).exists() and out.resolve() == Path(cfg.data.train).resolve():
        raise ConfigError(f"config: key 'output': '{cfg.output}' is the input data.train (scoring would "
                          "overwrite the data; give another file name)")
    rows = common.load_data(cfg.data.train, kinds=SCORE_KINDS, max_rows=cfg.data.max_train_rows)
    device = resolve_device(cfg.device)
    rm, tok = load_reward_model(cfg.model, device=device, dtype=cfg.dtype, tokenizer=cfg.tokenizer)
    scorer = RewardModelReward(rm, tok, cfg.batch_size, max_len=cfg.data.max_len)
    scored = score_rows(scorer, rows)
    write_jsonl(out, scored)
    vals = [v for r in scored for v in ([r["reward"]] if "reward" in r else r.get("rewards")
                                       or [r["reward_chosen"], r["reward_rejected"]])]
    mean = sum(vals) / len(vals)
    summary = {"output": str(out), "rows": len(scored), "kind": rows.kind, "sequences": len(vals),
               "reward_mean": mean, "reward_std": math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))}
    if rows.kind == "preference":
        summary["accuracy"] = sum(1.0 if r["reward_margin"] > 0 else 0.5 if r["reward_margin"] == 0 else 0.0
                                  for r in scored) / len(scored)
    if cfg.progress:
        extra = f", accuracy {summary['accuracy']:.3f}" if "accuracy" in summary else ""
        print(f"score: {len(scored)} {rows.kind} rows ({len(vals)} sequences), reward mean {mean:.4f} "
              f"std {summary['reward_std']:.4f}{extra}; wrote {out}")
    return summary
