"""``posttrain rl``: KL-regularised RL with policy gradients — PPO, REINFORCE, RLOO, GRPO (and variants).

Objective (Ziegler et al. 2019; Ouyang et al. 2022, eq. 2): ``max_θ E_{x~D, y~π_θ}[r(x, y)] − β·KL(π_θ ‖ π_ref)``
— a bandit problem: one response, one scalar reward. One **step** (``max_steps`` of them):

1. ``prompts_per_step`` prompts from ``data.train`` at a deterministic, step-addressed position
   (:class:`posttrain.engine.StepSampler`, so a resumed run sees the same prompts);
2. ``G = group_size`` completions each with the shared rollout sampler (:func:`posttrain.rollout.sample_n`;
   row ``i`` belongs to prompt ``i // G``), at ``generation.temperature``;
3. scores from the reward source(s) (:func:`posttrain.rollout.rewards.build_reward`; per-source means are
   logged) plus ``missing_eos_penalty`` for completions that hit ``max_new_tokens`` without a stop token;
   with ``dynamic_sampling`` (DAPO), ``oversample × prompts_per_step`` prompts are drawn in step 1 and
   :func:`~posttrain.stages.rl_algos.select_groups` keeps ``prompts_per_step`` groups whose rewards differ;
4. without gradient, over the same micro-batches the first update will use: reference log-probs
   ``log π_ref`` (frozen copy of the initial policy, or ``ref_model``), values ``V(x_<t)`` (PPO), and old
   log-probs ``log π_θold`` — a full forward of the sampling policy at temperature ``T`` with the same code
   as the loss (so the first on-policy ratio is exactly 1) whenever the rollout feeds more than one update
   (``recompute_logprobs``). With a single on-policy update that forward is skipped: the loss uses
   ``π_old = sg(π_θ)`` (identical numbers, tested bit for bit) and KL terms of the reward use the sampler's
   own temperature-scaled log-probs (which agree with a forward to ~1e-6);
5. advantages (:data:`posttrain.stages.rl_algos.ADVANTAGE_ESTIMATORS`: GAE for PPO, group-normalised for
   GRPO, leave-one-out for RLOO, a baseline for REINFORCE);
6. ``ppo_epochs`` passes over the rollout in minibatches of ``minibatch_size`` completions (epoch 0 in
   rollout order, later epochs shuffled); each minibatch is ONE :meth:`posttrain.engine.Trainer.step`
   (micro-batches of ``batch_size``, global normaliser), with the loss of
   :class:`~posttrain.stages.rl_algos.RLObjective`;
7. the KL controller (fixed β, or adaptive towards ``kl_target``) is updated with the rollout's KL.

Prefix sharing (``share_prompt``, steps 4 and 6): a micro-batch of whole groups runs as one packed row per
prompt, ``[prompt, y_1, …, y_G]`` under a block mask (:func:`~posttrain.stages.rl_algos.pack_groups`), so the
prompt is computed once instead of ``G`` times; the outputs are gathered back to the padded layout, so every
log-prob is the padded layout's (float64-tested) and nothing downstream changes. ``auto`` packs when the
estimated forward cost is lower (positions × weights + dense attention pairs), ``G > 1`` and there is no
value model; micro-batches that are not whole groups (later PPO epochs shuffle rows) stay padded.

PPO trains two separate networks — the policy and a value model (``value_model``, default: the reward
model's backbone and head when ``reward`` has an ``rm:`` term, else the policy's backbone with a zero head)
— wrapped in one :class:`PolicyWithValue` module so that both are in the engine's optimizer (and DDP).

Metrics (one record per step in ``metrics.jsonl``; ``step`` = optimizer steps so far, ``rl_step`` = steps):
``reward_mean``/``reward_std`` (the scores used for training; with ``dynamic_sampling`` also
``reward_mean_drawn`` over every drawn completion, ``groups_with_signal_frac``, ``groups_without_signal_kept``),
``reward/<source>`` (every drawn completion), ``kl`` (mean per
completion of ``Σ_t log π_θold − log π_ref`` over the rollout, i.e. k1 KL to the reference),
``response_length``, ``frac_finished``, ``beta``, the update's ``loss``, ``approx_kl``, ``clip_frac``,
``ratio_mean``, ``ratio_max``, ``entropy``, ``explained_variance`` (PPO), ``grad_norm``, ``lr``, ``gold_mean``
(toy-world prompts, ``gold_metric``; never trained on unless ``reward=gold``), and where the time goes
(``time/generate_s``, ``time/score_s``, ``time/forward_s``, ``time/train_s``), and, when old log-probs are
recomputed, ``sampler_logprob_max_diff`` (max |sampler − trainer| log-prob over the completion tokens, the
sampler/trainer mismatch check). Sample completions every
``sample_every`` steps go to ``samples.jsonl``. Checkpoints every ``checkpoint_every`` steps (at step
boundaries) hold the weights, optimizer, the KL controller and the sampling generator, so ``resume=true``
reproduces an uninterrupted run exactly. The final policy is saved to ``RUN/model/`` (HF format).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from posttrain.config import RLConfig
from posttrain.errors import ConfigError, DataError
from posttrain.losses.kl import AdaptiveKLController, FixedKLController
from posttrain.losses.reduce import num_units
from posttrain.stages import common
from posttrain.stages.rl_algos import (ADVANTAGE_ESTIMATORS, RLObjective, Scored, forward_policy,
                                       pack_groups, policy_loss_spec, select_groups)

__all__ = ["run", "load", "Loaded", "PolicyWithValue", "PromptSet", "load_prompts", "RolloutBatch", "RLTrainer",
           "PROMPT_KINDS"]

# Dataset kinds whose rows carry a prompt (the other columns are passed to the reward as ``columns``).
PROMPT_KINDS = ("prompt", "verifiable", "prompt_completion", "preference", "ranking", "unpaired")


# ------------------------------------------------------------------------------------------ models
class PolicyWithValue(nn.Module):
    """The policy and a separate value network as ONE module (one optimizer, one DDP wrapper).

    ``forward`` returns ``logits`` ``[B, T, V]`` of the policy (``[B, logits_to_keep, V]``, the last positions,
    when given and the policy takes it) and ``token_values`` ``[B, T]`` = ``V(x_≤t)`` of the value model
    (:func:`posttrain.models.heads.token_values`)."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy, self.value = policy, value

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False, logits_to_keep=0, **_):
        from posttrain.models.heads import token_values
        from posttrain.models.logprobs import takes_logits_to_keep

        keep = {"logits_to_keep": logits_to_keep} if logits_to_keep and takes_logits_to_keep(self.policy) else {}
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, **keep)
        v = token_values(self.value, input_ids, attention_mask, position_ids=position_ids)  # [B, T]
        return SimpleNamespace(logits=out.logits, token_values=v)


# -------------------------------------------------------------------------------------------- data
@dataclass
class PromptSet:
    """Prompts of ``data.train``: raw (for the reward), tokenised (for the sampler), other columns."""

    prompts: list                   # str or message list, as in the file
    ids: list[list[int]]            # encode_prompt, left-truncated to data.max_prompt_len
    columns: list[dict]             # the row's other columns (passed to the reward)
    source: str
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.prompts)


def load_prompts(spec: str, tokenizer, *, max_prompt_len: int, max_rows: int | None = None) -> PromptSet:
    """Rows with a ``prompt`` column (any prompt-bearing kind), tokenised; one-line DataErrors."""
    from posttrain.data.formats import KINDS
    from posttrain.data.load import load_rows
    from posttrain.data.tokenize import encode_prompt

    rows = load_rows(spec, kinds=[k for k in PROMPT_KINDS if k in KINDS])
    items = rows.rows[:max_rows] if max_rows else rows.rows
    prompts, ids, columns, truncated = [], [], [], 0
    for i, r in enumerate(items):
        if "prompt" not in r or r["prompt"] in (None, "", []):
            raise DataError("column 'prompt' is missing (rl needs a prompt per row)", file=rows.source,
                            row=rows.row_number(i), field="prompt")
        full = encode_prompt(tokenizer, r["prompt"])
        p = full[-max_prompt_len:]
        truncated += len(full) > len(p)
        prompts.append(r["prompt"])
        ids.append(p)
        columns.append({k: v for k, v in r.items() if k != "prompt"})
    return PromptSet(prompts, ids, columns, rows.source, truncated)


# ------------------------------------------------------------------------------------------ rollout
@dataclass
class RolloutBatch:
    """One scored rollout and everything the updates need; per-token tensors ``[N, L]``."""

    tensors: dict[str, torch.Tensor]  # input_ids, attention_mask, position_ids, completion_mask,
    #                                   old_logprobs, ref_logprobs, [old_values], advantages, [returns]
    scores: torch.Tensor              # [N]
    texts: list[str]
    prompt_index: list[int]           # dataset index of each row's prompt
    finished: torch.Tensor            # [N] bool
    lengths: torch.Tensor             # [N]
    metrics: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


_TOKEN_KEYS = ("input_ids", "attention_mask", "position_ids", "completion_mask", "old_logprobs", "ref_logprobs",
               "old_values", "returns", "advantages")


def _microbatch(t: dict[str, torch.Tensor], rows: torch.Tensor, agg: str) -> dict[str, Any]:
    """Rows ``rows`` of the rollout, columns trimmed to the span any of them uses (left padding common to
    all rows, right padding after every row stopped). Carries ``num_units`` for the global normaliser."""
    am = t["attention_mask"].index_select(0, rows)                               # [b, L]
    used = am.any(dim=0).nonzero().squeeze(-1)                                   # [L']
    lo, hi = int(used[0]), int(used[-1]) + 1
    mb: dict[str, Any] = {}
    for k, v in t.items():
        v = v.index_select(0, rows)
        mb[k] = v[:, lo:hi] if (v.dim() == 2 and k in _TOKEN_KEYS) else v
    mb["span"] = (lo, hi)
    mb["num_units"] = float(num_units(mb["completion_mask"], agg))
    mb["num_examples"] = int(rows.numel())
    return mb


class RLTrainer:
    """The RL loop around one :class:`posttrain.engine.Trainer` (see the module docstring)."""

    def __init__(self, cfg: RLConfig, run, policy, tokenizer, prompts: PromptSet, reward, *, ref_model,
                 value_model=None):
        from posttrain.engine import StepSampler, Trainer, distributed
        from posttrain.models.tokenizer import stop_token_ids

        self.cfg, self.run, self.tok, self.prompts, self.reward = cfg, run, tokenizer, prompts, reward
        self.policy, self.ref = policy, ref_model
        self.device = next(policy.parameters()).device
        self.module = PolicyWithValue(policy, value_model) if value_model is not None else policy
        self.dist = distributed.current()
        self.kl_ctl = (AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
                       else FixedKLController(cfg.beta))
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed * 1_000_003 + 7 + self.dist.rank)
        self.K = cfg.updates_per_step
        self.trainer = Trainer(cfg, run, self.module, total_steps=cfg.max_steps * self.K,
                               extra_state={"kl_controller": self.kl_ctl, "rollout_generator": self.generator})
        if self.trainer.step_count % self.K:
            raise ConfigError(f"checkpoint at optimizer step {self.trainer.step_count} is not at an rl step "
                              f"boundary ({self.K} updates per step); set resume=false")
        self.sampler = StepSampler(len(prompts), cfg.prompts_drawn * self.dist.world_size, cfg.seed,
                                   self.dist.rank, self.dist.world_size, shuffle=True)
        self.stop_ids = stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.objective = RLObjective(cfg, self.kl_ctl, constant_normaliser=(
            float(cfg.generation.max_new_tokens) if cfg.resolved_loss_agg == "seq-mean-token-sum-norm" else None))
        self.estimate = ADVANTAGE_ESTIMATORS[cfg.algo]
        self.prompt_len = 0  # P of the current rollout (the packed layout's prompt width is P − span start)
        self.pack_mode = cfg.share_prompt if (cfg.group_size > 1 and value_model is None) else False
        self.cost_shape = common.cost_shape(policy)
        self.gold = _gold_fn(cfg, prompts)
        self.history: list[dict] = []

    # ---------------------------------------------------------------------------------- rollout
    @torch.no_grad()
    def rollout(self, step: int) -> RolloutBatch:
        """Sample, score and prepare step ``step``'s batch (no gradient)."""
        from posttrain.rollout.sampler import sample_n

        cfg, gen, G = self.cfg, self.cfg.generation, self.cfg.group_size
        t0 = time.perf_counter()
        idx = self.sampler.rank_indices(step)
        ro = sample_n(self.policy, [self.prompts.ids[i] for i in idx], G, max_new_tokens=gen.max_new_tokens,
                      temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                      stop_token_ids=self.stop_ids, pad_token_id=self.pad_id, stop_strings=gen.stop_strings,
                      tokenizer=self.tok, generator=self.generator, backend=gen.backend)
        self.prompt_len = ro.prompt_len
        t1 = time.perf_counter()
        rows = [i for i in idx for _ in range(G)]                                # row r ↔ prompt r // G
        texts = ro.completion_texts
        prompts = [self.prompts.prompts[i] for i in rows]
        keys = sorted({k for i in idx for k in self.prompts.columns[i]})
        columns = {k: [self.prompts.columns[i].get(k) for i in rows] for k in keys}
        scores = torch.tensor(self.reward(prompts, texts, **columns), dtype=torch.float32)  # [N]
        metrics = {k: float(v) for k, v in getattr(self.reward, "last_metrics", {}).items()}
        finished = ro.finished.cpu()                                             # [N]
        if cfg.missing_eos_penalty is not None:
            scores = scores + cfg.missing_eos_penalty * (~finished).float()      # [N]
        if self.gold is not None:
            metrics["gold_mean"] = statistics.fmean(self.gold(p, y) for p, y in zip(prompts, texts))
        t = {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask, "position_ids": ro.position_ids,
             "completion_mask": ro.completion_mask.float(), "sampler_logprobs": ro.logprobs,
             "finished": finished, "lengths": ro.completion_lengths.cpu().float()}
        if cfg.dynamic_sampling:  # keep prompts_per_step groups with reward signal (DAPO)
            keep, m = select_groups(scores, G, cfg.prompts_per_step)             # [prompts_per_step·G]
            metrics.update(m, reward_mean_drawn=float(scores.mean()))
            t = {k: v.index_select(0, keep.to(v.device)) for k, v in t.items()}
            scores, finished = scores[keep], t["finished"]
            rows, texts = [rows[i] for i in keep.tolist()], [texts[i] for i in keep.tolist()]
        sampler_lp, lengths = t.pop("sampler_logprobs"), t.pop("lengths")        # [N, L], [N]
        del t["finished"]
        t2 = time.perf_counter()

        t.update(self._forward_rollout(t))
        mask = t["completion_mask"]                                              # [N, L]
        # log π_θold for the KL terms of the reward: the recomputed forward, or the sampler's own
        # temperature-scaled log-probs (same distribution, agree to ~1e-6) when no forward was needed
        old_lp = t["old_logprobs"] if "old_logprobs" in t else sampler_lp.to(mask)     # [N, L]
        scored = Scored(scores=scores.to(self.device), logprobs=old_lp, ref_logprobs=t["ref_logprobs"],
                        mask=mask, group_size=G, values=t.get("old_values"))
        beta = self.kl_ctl.value
        adv = self.estimate(scored, cfg, beta)
        t["advantages"] = adv.advantages
        if adv.returns is not None:
            t["returns"] = adv.returns
        t3 = time.perf_counter()
        if "old_logprobs" in t:  # sampler vs trainer log-prob mismatch (should be ~1e-6)
            metrics["sampler_logprob_max_diff"] = float(((sampler_lp.to(mask) - old_lp).abs() * mask).max())

        kl_seq = ((old_lp - t["ref_logprobs"]) * mask).sum(-1)                  # [N] k1 KL per completion
        metrics.update(adv.metrics)
        metrics.update({
            "reward_mean": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
            "kl": float(kl_seq.mean()), "beta": beta, "response_length": float(lengths.mean()),
            "frac_finished": float(finished.float().mean()),
            "time/generate_s": t1 - t0, "time/score_s": t2 - t1, "time/forward_s": t3 - t2,
            "generated_tokens": float(ro.num_generated_tokens),
        })
        return RolloutBatch(t, scores, texts, rows, finished, lengths, metrics)

    def _forward_rollout(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reference log-probs, old values (PPO) and — when ``recompute_logprobs`` — the sampling policy's
        log-probs, over the micro-batches of the first update (same rows, same column trimming ⇒ the same
        numbers as the loss's forward, so the first ratio is exactly 1)."""
        from posttrain.models.heads import token_values
        from posttrain.stages.rl_algos import shift_values

        cfg = self.cfg
        N, L = t["input_ids"].shape
        recompute = cfg.resolved_recompute_logprobs
        has_value = isinstance(self.module, PolicyWithValue)
        out = {"ref_logprobs": torch.zeros(N, L, device=self.device)}
        if recompute:
            out["old_logprobs"] = torch.zeros(N, L, device=self.device)
        if has_value:
            out["old_values"] = torch.zeros(N, L, device=self.device)
        self.module.train()  # the mode the loss runs in (no dropout in these models; kept identical anyway)
        temp = cfg.generation.temperature
        for rows in self._update_rows(step=None, epoch=0):
            for mrows in rows.split(cfg.micro_batch_size):
                mb = self._microbatch(t, mrows)
                lo, hi = mb["span"]
                with self.trainer.autocast():
                    if recompute:
                        res = forward_policy(self.trainer.model, mb, temperature=temp)
                        out["old_logprobs"][mrows, lo:hi] = res["logprobs"].float()
                        if has_value:
                            out["old_values"][mrows, lo:hi] = res["values"].float()
                    elif has_value:
                        v = token_values(self.module.value, mb["input_ids"], mb["attention_mask"],
                                         position_ids=mb["position_ids"])
                        out["old_values"][mrows, lo:hi] = shift_values(v).float()
                    ref = forward_policy(self.ref, mb, temperature=temp)
                out["ref_logprobs"][mrows, lo:hi] = ref["logprobs"].float()
        return out

    def _microbatch(self, t: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, Any]:
        """:func:`_microbatch`, packed with :func:`~posttrain.stages.rl_algos.pack_groups` when
        ``share_prompt`` is on (or ``auto`` and cheaper) and the rows are whole groups."""
        mb = _microbatch(t, rows, self.cfg.resolved_loss_agg)
        if self.pack_mode is False:
            return mb
        width = self.prompt_len - mb["span"][0]
        if self.pack_mode == "auto" and not self._packing_pays(mb["input_ids"].shape, width):
            return mb
        packed = pack_groups(mb, self.cfg.group_size, width, common.mask_dtype(self.trainer))
        if packed is not None:
            mb["packed"] = packed
            mb["num_tokens"] = packed["num_tokens"]
        return mb

    def _packing_pays(self, shape: tuple[int, int], prompt_width: int) -> bool:
        """:func:`~posttrain.stages.common.packing_pays` for ``b`` padded rows of width ``T`` against ``b/G``
        packed rows of ``P + G·C``: ``(G−1)·P`` fewer positions for one ``(P + G·C)²`` attention instead of
        ``G`` of ``(P + C)²``."""
        b, T = shape
        G = self.cfg.group_size
        return common.packing_pays(self.cost_shape, (b, T), (b // G, prompt_width + G * (T - prompt_width)))

    def _update_rows(self, step: int | None, epoch: int) -> list[torch.Tensor]:
        """Row indices of each minibatch of ``epoch``: rollout order in epoch 0, a permutation (seeded by
        seed, step, epoch) afterwards."""
        N, mb = self.cfg.rollout_size, self.cfg.resolved_minibatch_size
        if epoch == 0:
            order = torch.arange(N, device=self.device)
        else:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step * 7_919 + epoch)
            order = torch.randperm(N, generator=g).to(self.device)
        return list(order.split(mb))

    # ----------------------------------------------------------------------------------- update
    def update(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        cfg = self.cfg
        results = []
        for epoch in range(cfg.ppo_epochs):
            for rows in self._update_rows(step, epoch):
                mbs = [self._microbatch(batch.tensors, r) for r in rows.split(cfg.micro_batch_size)]
                results.append(self.trainer.step(mbs, self.objective))
        out: dict[str, float] = {}
        for k in results[0]:
            vals = [r[k] for r in results if k in r]
            out[k] = max(vals) if k.endswith("_max") else (sum(vals) if k == "step_time_s" else statistics.fmean(vals))
        out["first_ratio_max"] = results[0].get("ratio_max", float("nan"))
        out["first_clip_frac"] = results[0].get("clip_frac", float("nan"))
        return out

    # -------------------------------------------------------------------------------------- loop
    def fit(self) -> dict:
        from posttrain.engine import distributed

        cfg, tr = self.cfg, self.trainer
        start = tr.step_count // self.K
        pbar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            pbar = tqdm(total=cfg.max_steps, initial=start, desc=f"rl/{cfg.algo}", unit="step",
                        dynamic_ncols=True)
        t_start = time.perf_counter()
        try:
            for step in range(start, cfg.max_steps):
                t0 = time.perf_counter()
                batch = self.rollout(step)
                upd = self.update(batch, step)
                kl = torch.tensor([batch.metrics["kl"]], dtype=torch.float64)
                kl_global = float(distributed.all_reduce_sum(kl)) / self.dist.world_size
                self.kl_ctl.update(kl_global, len(batch) * self.dist.world_size)
                rec = {"rl_step": step + 1, **batch.metrics,
                       **{k: v for k, v in upd.items() if k not in ("step_time_s", "tokens", "examples")},
                       "time/train_s": upd["step_time_s"], "time/step_s": time.perf_counter() - t0,
                       "elapsed_s": time.perf_counter() - t_start}
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
                    tr.log(rec)
                self.history.append({"step": tr.step_count, **rec})
                if cfg.sample_every and ((step + 1) % cfg.sample_every == 0 or step == start):
                    self._log_samples(batch, step)
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                    tr.save_checkpoint()
                if pbar is not None:
                    pbar.set_postfix(reward=f"{rec['reward_mean']:.3f}", kl=f"{rec['kl']:.3f}",
                                     len=f"{rec['response_length']:.1f}", refresh=False)
                    pbar.update(1)
        finally:
            if pbar is not None:
                pbar.close()
        return tr.summary()

    def _log_samples(self, batch: RolloutBatch, step: int, n: int = 4) -> None:
        from posttrain.data.tokenize import render_prompt

        G = self.cfg.group_size
        rows = []
        for r in range(0, min(len(batch), n * G), G):
            rows.append({"step": self.trainer.step_count, "rl_step": step + 1,
                         "prompt": render_prompt(self.tok, self.prompts.prompts[batch.prompt_index[r]]),
                         "completion": batch.texts[r], "reward": float(batch.scores[r]),
                         "finished": bool(batch.finished[r]), "length": int(batch.lengths[r])})
        self.run.append_samples(rows)


def _gold_fn(cfg: RLConfig, prompts: PromptSet) -> Callable | None:
    """The toy world's gold reward when ``gold_metric`` asks for it (auto: the prompts are the world's)."""
    if cfg.gold_metric is False:
        return None
    try:
        from posttrain.world.gold import gold_components, gold_reward
    except ImportError:
        if cfg.gold_metric:
            raise ConfigError("gold_metric=true needs the toy world (posttrain.world)") from None
        return None
    if cfg.gold_metric is None:
        probe = prompts.prompts[: min(8, len(prompts))]
        if not probe or any(gold_components(p, "")["family"] == "unknown" for p in probe):
            return None
    return gold_reward


# ---------------------------------------------------------------------------------------------- run
def _as_reward_source(reward):
    """A CombinedReward (per-source metrics) around whatever ``build_reward`` returned."""
    from posttrain.rollout.rewards import CombinedReward

    return reward if isinstance(reward, CombinedReward) else CombinedReward([(reward, 1.0)])


def _reward_models(reward) -> list:
    from posttrain.rollout.rewards import CombinedReward, RewardModelReward

    comps = reward.components if isinstance(reward, CombinedReward) else [(reward, 1.0)]
    return [src.model for src, _ in comps if isinstance(src, RewardModelReward)]


@dataclass
class Loaded:
    """Everything ``run`` loads and validates before the run directory is opened."""

    policy: nn.Module
    tokenizer: Any
    prompts: PromptSet
    reward: Any
    ref: nn.Module
    value: nn.Module | None


def load(cfg: RLConfig, *, reward=None) -> Loaded:
    """Load the policy, prompts, reward source(s), reference and (PPO) value model, with one-line
    UserErrors; nothing is written."""
    from posttrain.models.heads import value_model_from_causal
    from posttrain.rollout.rewards import build_reward, check_columns
    from posttrain.stages.common import load_model, setup

    if cfg.data.train is None:
        raise ConfigError("config: key 'data.train' is required (prompts for rl)")
    policy_loss_spec(cfg)  # one-line ConfigError for clip settings that do not apply
    ctx = setup(cfg)
    policy, tok = load_model(cfg, ctx)
    prompts = load_prompts(cfg.data.train, tok, max_prompt_len=cfg.data.max_prompt_len,
                           max_rows=cfg.data.max_train_rows)
    src = build_reward(reward if reward is not None else cfg.reward, tokenizer=tok, device=ctx.device,
                       dtype=cfg.dtype, batch_size=max(cfg.batch_size, 16))
    src = _as_reward_source(src)
    check_columns(src, prompts.columns, file=prompts.source)
    if cfg.ref_model:
        ref, ref_tok = load_model(cfg, ctx, cfg.ref_model)
        if len(ref_tok) != len(tok):
            raise ConfigError(f"config: key 'ref_model': its tokenizer has {len(ref_tok)} tokens, the policy's "
                              f"{len(tok)}")
    else:
        ref = copy.deepcopy(policy)
    ref.eval().requires_grad_(False)
    value = None
    if cfg.algo == "ppo":
        rms = _reward_models(src)
        init = cfg.value_model or (rms[0] if rms else policy)
        on_disk = isinstance(init, str)
        value, _ = value_model_from_causal(init, tokenizer=tok, device=ctx.device if on_disk else None,
                                           dtype=ctx.dtype if on_disk else None)
        value.train()
    policy.train()
    return Loaded(policy, tok, prompts, src, ref, value)


def run(cfg: RLConfig, *, reward=None) -> dict:
    """Run the ``rl`` stage; returns its summary. ``reward`` (a RewardSource, a function
    ``f(prompts, completions, **columns)`` or a spec) overrides ``cfg.reward`` — for programmatic use."""
    from posttrain.stages.common import already_done, finish, open_run

    ld = load(cfg, reward=reward)
    run_dir = open_run(cfg, "rl")
    if run_dir.is_done():
        return already_done(run_dir, cfg)
    loop = RLTrainer(cfg, run_dir, ld.policy, ld.tokenizer, ld.prompts, ld.reward, ref_model=ld.ref,
                     value_model=ld.value)
    t0 = time.perf_counter()
    summary = loop.fit()
    hist = loop.history
    summary.update({
        "algo": cfg.algo, "rl_steps": cfg.max_steps, "updates_per_step": loop.K, "prompts": len(ld.prompts),
        "truncated_prompts": ld.prompts.truncated, "wall_time_s": round(time.perf_counter() - t0, 3),
    })
    if hist:
        for key in ("reward_mean", "kl", "response_length", "frac_finished", "gold_mean"):
            if key in hist[-1]:
                summary[f"first_{key}"] = hist[0][key]
                summary[f"final_{key}"] = hist[-1][key]
        for key in ("time/generate_s", "time/score_s", "time/forward_s", "time/train_s"):
            summary[key.replace("time/", "total_")] = round(sum(h.get(key, 0.0) for h in hist), 3)
    summary = finish("rl", loop.trainer, ld.policy, ld.tokenizer, summary)
    if cfg.progress and run_dir.is_main and hist:
        print(f"rl/{cfg.algo}: reward {summary['first_reward_mean']:.3f} → {summary['final_reward_mean']:.3f}, "
              f"KL to reference {summary['final_kl']:.3f}, response length {summary['final_response_length']:.1f}")
    return summary
