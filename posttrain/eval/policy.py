"""Evaluate a policy: sample completions with the shared sampler, then measure them.

``evaluate_policy(model, tokenizer, prompts, ...)`` generates ``num_samples`` completions per prompt with
:func:`posttrain.rollout.sampler.sample_n` (one seeded generator, so the same call gives the same samples)
and returns an :class:`EvalResult` with the completions, per-sample scores and these metrics:

==========================  =====================================================================================
key                         meaning
==========================  =====================================================================================
``gold``                    mean toy-world gold reward (``posttrain.world.gold``); only when every prompt is a
                            toy-world prompt (``gold="auto"``) or ``gold=True``
``helpful`` ``correct``     gold's helpfulness / correctness rates; ``words`` mean words, ``drift`` mean drift
``FAMILY/...``              the same per prompt family (fact, emotional, howto, arith, reason), plus the
                            family's own measure: ``fact/helpful`` (answers the question), ``emotional/warmth``
                            (mean gold style part, in [−1, 1]), ``howto/structured`` (a list with **bold**
                            headers; ``howto/list``: any list), ``arith/exact_match`` and ``reason/exact_match``
                            (``is_correct_arith``), ``reason/format`` (``<think>…</think>`` then an answer,
                            :func:`posttrain.verifiers.format.think_format_reward`)
``reward/NAME``             mean of each reward source in ``rewards`` (e.g. ``{"proxy": RewardModelReward}``)
``win_rate``                vs ``baseline``: fraction of samples whose gold reward beats the baseline's
                            completion of the same prompt (ties count ½); ``win_rate/NAME`` the same judged by
                            reward source NAME
``kl``                      vs ``reference``: Monte-Carlo sequence KL(π ‖ π_ref) on the policy's own samples —
                            ``k1 = Σ_t log π(y_t|·) − log π_ref(y_t|·)`` summed over completion tokens, mean over
                            samples; ``kl_k3`` the same with ``k3 = (r − 1) − log r`` per token (≥ 0, lower
                            variance); ``kl_std`` the standard deviation of the per-sample k1 sums
``length``                  mean completion length in tokens (the stop token counts);
                            ``finished`` fraction that stopped before ``max_new_tokens``
``n``                       number of samples
==========================  =====================================================================================

KL is an estimate of KL(π_T ‖ π_ref,T) between the temperature-``T`` distributions the samples come from
(both models' log-probs are recomputed at the sampling temperature); it is the true sequence KL only for
``temperature == 1`` without top-k / top-p. With greedy decoding (``temperature == 0``) the log-probs are at
temperature 1 and ``kl`` is just the mean log-ratio of the greedy completions.

The baseline, when it is a model, samples with the same settings and the SAME seed (common random numbers:
a model compared with itself ties on every prompt, win rate exactly ½). The baseline model must use the
policy's tokenizer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

__all__ = ["EvalResult", "evaluate_policy", "score_completions", "world_eval_rows", "generation_settings", "FAMILY_METRICS"]

FAMILY_METRICS = {
    "fact": "fact/helpful",
    "emotional": "emotional/warmth",
    "howto": "howto/structured",
    "arith": "arith/exact_match",
    "reason": "reason/format",
}
"""The headline measure of each toy-world prompt family (see the module docstring)."""


@dataclass
class EvalResult:
    """What :func:`evaluate_policy` measured. Per-sample lists have one entry per sample (``N`` =
    prompts × ``num_samples``; sample ``i`` answers prompt ``i // num_samples``)."""

    prompts: list  # [N] the prompt of each sample
    completions: list[str]  # [N] decoded completions (stop token removed)
    lengths: list[int]  # [N] completion tokens (stop token included)
    finished: list[bool]  # [N] stopped at a stop token / string
    families: list[str]  # [N] toy-world family or "unknown"
    scores: dict[str, list[float]] = field(default_factory=dict)  # per-sample: gold, reward/NAME, kl, win, ...
    metrics: dict[str, float] = field(default_factory=dict)
    baseline_completions: list[str] | None = None  # [N] when a baseline was given
    num_samples: int = 1

    def rows(self, limit: int | None = None) -> list[dict]:
        """Samples as JSON rows (prompt, completion, family, length, finished, per-sample scores,
        baseline completion) — what stages write to ``samples.jsonl``."""
        out = []
        n = len(self.completions) if limit is None else min(limit, len(self.completions))
        for i in range(n):
            row = {"prompt": self.prompts[i], "completion": self.completions[i], "family": self.families[i],
                   "length": self.lengths[i], "finished": self.finished[i]}
            for k, v in self.scores.items():
                row[k] = v[i]
            if self.baseline_completions is not None:
                row["baseline"] = self.baseline_completions[i]
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {"metrics": dict(self.metrics), "samples": self.rows(), "num_samples": self.num_samples}


# --------------------------------------------------------------------------------------------- helpers
def generation_settings(generation: Any = None) -> dict:
    """Sampler keyword arguments from a :class:`posttrain.config.GenerationConfig`, a mapping of its keys, or
    None (its defaults: temperature 1, 48 new tokens)."""
    from posttrain.config import GenerationConfig, build_config

    if generation is None:
        generation = GenerationConfig()
    elif isinstance(generation, Mapping):
        generation = build_config(GenerationConfig, dict(generation), "generation")
    return {"max_new_tokens": int(generation.max_new_tokens), "temperature": float(generation.temperature),
            "top_p": float(generation.top_p), "top_k": int(generation.top_k),
            "stop_strings": tuple(generation.stop_strings), "backend": generation.backend}


def _split_rows(prompts: Sequence) -> tuple[list, dict[str, list]]:
    """Prompts (strings / message lists) or rows with a ``prompt`` key → (prompts, columns present in
    every row)."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("evaluate_policy: no prompts")
    if not all(isinstance(p, Mapping) and "prompt" in p for p in prompts):
        if any(isinstance(p, Mapping) and "prompt" in p for p in prompts):
            raise ValueError("evaluate_policy: mix of rows and bare prompts")
        return prompts, {}
    keys = [k for k in prompts[0] if k != "prompt" and all(k in r for r in prompts)]
    return [r["prompt"] for r in prompts], {k: [r[k] for r in prompts] for k in keys}


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _sample(model, tokenizer, prompt_ids: list[list[int]], n: int, settings: dict, batch_size: int, seed: int):
    """(completions, lengths, finished, rollouts) for every prompt × n, in prompt order."""
    from posttrain.models.tokenizer import stop_token_ids
    from posttrain.rollout.sampler import sample_n

    device = _device(model)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts, lengths, finished, rollouts = [], [], [], []
    for start in range(0, len(prompt_ids), batch_size):
        ro = sample_n(model, prompt_ids[start:start + batch_size], n, stop_token_ids=stop_token_ids(tokenizer),
                      pad_token_id=int(pad), tokenizer=tokenizer, generator=gen, **settings)
        texts += ro.completion_texts
        lengths += ro.completion_lengths.tolist()
        finished += ro.finished.tolist()
        rollouts.append(ro)
    return texts, lengths, finished, rollouts


@torch.inference_mode()
def _sequence_kl(model, reference, rollouts, temperature: float) -> tuple[list[float], list[float]]:
    """Per-sample Σ_t k1 and Σ_t k3 over completion tokens, both log-probs recomputed by a full forward."""
    from posttrain.losses.kl import kl_k1, kl_k3
    from posttrain.losses.reduce import masked_sum
    from posttrain.models.logprobs import sequence_logprobs

    temp = temperature if temperature > 0 else 1.0
    k1_all, k3_all = [], []
    modes = (model.training, reference.training)
    model.eval()
    reference.eval()
    try:
        for ro in rollouts:
            lp = {}
            for name, m in (("pi", model), ("ref", reference)):
                dev = _device(m)
                lp[name] = sequence_logprobs(m, ro.input_ids.to(dev), ro.attention_mask.to(dev),
                                             position_ids=ro.position_ids.to(dev),
                                             temperature=temp)["logprobs"].double().cpu()  # [B, P+T]
            mask = ro.completion_mask.cpu()  # [B, P+T]
            k1_all += masked_sum(kl_k1(lp["pi"], lp["ref"]), mask, dim=-1).tolist()  # [B]
            k3_all += masked_sum(kl_k3(lp["pi"], lp["ref"]), mask, dim=-1).tolist()  # [B]
    finally:
        model.train(modes[0])
        reference.train(modes[1])
    return k1_all, k3_all


def _build_rewards(rewards: Mapping[str, Any] | None, tokenizer, device) -> dict[str, Any]:
    """``{name: RewardSource | spec string}`` → ``{name: RewardSource}`` (specs via ``build_reward``)."""
    from posttrain.rollout.rewards import build_reward

    return {name: build_reward(src, tokenizer=tokenizer, device=device) if isinstance(src, str) else src
            for name, src in (rewards or {}).items()}


def _is_world(prompts: list) -> bool:
    from posttrain.world.tasks import family_of

    return all(family_of(p) != "unknown" for p in prompts)


def _world_scores(prompts: list, completions: list[str]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-sample gold parts and family measures; aggregated metrics (gold_summary + family measures)."""
    from posttrain.verifiers.format import think_format_reward
    from posttrain.world.evaluate import gold_summary
    from posttrain.world.gold import gold_components, is_correct_arith

    per: dict[str, list[float]] = {"gold": []}
    fam_values: dict[str, list[float]] = {}
    families = []
    for p, c in zip(prompts, completions):
        comp = gold_components(p, c)
        fam = str(comp["family"])
        families.append(fam)
        per["gold"].append(float(comp["total"]))
        extra: dict[str, float] = {}
        if fam == "fact":
            extra["fact/helpful"] = float(comp["helpful"] > 0)
        elif fam == "emotional":
            extra["emotional/warmth"] = float(comp["style"])
        elif fam == "howto":
            extra["howto/structured"] = float(comp["format"] >= 1.0)
            extra["howto/list"] = float(comp["format"] >= 0.5)
        elif fam in ("arith", "reason"):
            extra[f"{fam}/exact_match"] = float(is_correct_arith(p, c))
            if fam == "reason":
                extra["reason/format"] = think_format_reward(c)
        for k, v in extra.items():
            fam_values.setdefault(k, []).append(v)
    metrics = {k: float(v) for k, v in gold_summary(prompts, completions).items()}
    for k, vs in fam_values.items():
        metrics[k] = sum(vs) / len(vs)
    return per, metrics


def _wins(a: list[float], b: list[float]) -> list[float]:
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# ----------------------------------------------------------------------------------------------- public
def score_completions(prompts: Sequence, completions: Sequence[str], *, baseline: Sequence[str] | None = None,
                      rewards: Mapping[str, Any] | None = None, columns: Mapping[str, Sequence] | None = None,
                      gold: bool | str = "auto") -> tuple[dict[str, list[float]], dict[str, float]]:
    """Score given completions (no model): per-sample scores and the metrics of the module docstring that
    need no model (gold and family measures, ``reward/NAME``, ``win_rate`` vs ``baseline`` completions).

    ``prompts[i]`` is the prompt of ``completions[i]``; ``columns`` are extra per-sample columns for the
    reward sources; ``baseline[i]`` the baseline's completion of the same prompt."""
    prompts, completions = list(prompts), [str(c) for c in completions]
    if len(prompts) != len(completions):
        raise ValueError(f"score_completions: {len(prompts)} prompts for {len(completions)} completions")
    if not prompts:
        raise ValueError("score_completions: no completions")
    columns = dict(columns or {})
    use_gold = _is_world(prompts) if gold == "auto" else bool(gold)
    scores: dict[str, list[float]] = {}
    metrics: dict[str, float] = {"n": float(len(prompts))}
    if use_gold:
        per, world_metrics = _world_scores(prompts, completions)
        scores.update(per)
        metrics.update(world_metrics)
    for name, source in (rewards or {}).items():
        values = [float(v) for v in source(prompts, completions, **columns)]
        scores[f"reward/{name}"] = values
        metrics[f"reward/{name}"] = _mean(values)
    if baseline is not None:
        baseline = [str(b) for b in baseline]
        if len(baseline) != len(prompts):
            raise ValueError(f"score_completions: {len(baseline)} baseline completions for {len(prompts)} "
                             f"samples")
        if use_gold:
            from posttrain.world.gold import gold_reward

            base_gold = [gold_reward(p, b) for p, b in zip(prompts, baseline)]
            scores["win"] = _wins(scores["gold"], base_gold)
            metrics["win_rate"] = _mean(scores["win"])
            metrics["baseline/gold"] = _mean(base_gold)
        for name, source in (rewards or {}).items():
            base_values = [float(v) for v in source(prompts, baseline, **columns)]
            scores[f"win/{name}"] = _wins(scores[f"reward/{name}"], base_values)
            metrics[f"win_rate/{name}"] = _mean(scores[f"win/{name}"])
            metrics[f"baseline/reward/{name}"] = _mean(base_values)
    return scores, metrics


def evaluate_policy(model, tokenizer, prompts: Sequence, *, reference=None, baseline=None,
                    rewards: Mapping[str, Any] | None = None, generation: Any = None, batch_size: int = 32,
                    seed: int = 0, num_samples: int = 1, max_prompt_len: int | None = None,
                    gold: bool | str = "auto") -> EvalResult:
    """Sample completions of ``prompts`` from ``model`` and measure them (metrics: module docstring).

    ``prompts``: prompts (message lists or strings), or rows with a ``prompt`` key whose other columns
    (present in every row, e.g. ``answer``) are passed to the reward sources. ``reference``: a causal LM
    for the KL (same tokenizer). ``baseline``: a causal LM (sampled with the same settings and seed), an
    :class:`EvalResult` of the same prompts, or a list of completions (one per sample, or one per prompt).
    ``rewards``: ``{name: RewardSource or spec}`` (``posttrain.rollout.rewards``; a spec string such as
    ``"rm:runs/rm"`` is built with ``build_reward``), each reported as
    ``reward/NAME`` (and ``win_rate/NAME`` with a baseline). ``generation``: a
    :class:`posttrain.config.GenerationConfig` or a mapping of its keys (default: temperature 1, 48 new
    tokens). ``batch_size``: prompts per generation call. ``gold``: ``"auto"`` (on when every prompt is a
    toy-world prompt), True or False.
    """
    from posttrain.data.tokenize import encode_prompt
    from posttrain.world.tasks import family_of

    if batch_size < 1 or num_samples < 1:
        raise ValueError("evaluate_policy: batch_size and num_samples must be >= 1")
    t0 = time.time()
    prompt_list, columns = _split_rows(prompts)
    settings = generation_settings(generation)
    rewards = _build_rewards(rewards, tokenizer, _device(model))
    prompt_ids = [encode_prompt(tokenizer, p, max_prompt_len=max_prompt_len) for p in prompt_list]
    texts, lengths, finished, rollouts = _sample(model, tokenizer, prompt_ids, num_samples, settings,
                                                 batch_size, seed)
    G = num_samples
    sample_prompts = [p for p in prompt_list for _ in range(G)]
    sample_columns = {k: [v for v in vs for _ in range(G)] for k, vs in columns.items()}
    N = len(texts)

    # ---- baseline completions
    base_texts = None
    if baseline is not None:
        if isinstance(baseline, EvalResult):
            base_texts = list(baseline.completions)
        elif isinstance(baseline, torch.nn.Module):
            base_texts = _sample(baseline, tokenizer, prompt_ids, G, settings, batch_size, seed)[0]
        else:
            base_texts = [str(b) for b in baseline]
        if len(base_texts) == len(prompt_list) and G > 1:
            base_texts = [b for b in base_texts for _ in range(G)]
        if len(base_texts) != N:
            raise ValueError(f"evaluate_policy: baseline has {len(base_texts)} completions for {N} samples "
                             f"({len(prompt_list)} prompts × {G})")

    scores, metrics = score_completions(sample_prompts, texts, baseline=base_texts, rewards=rewards,
                                        columns=sample_columns, gold=gold)
    result = EvalResult(prompts=sample_prompts, completions=texts, lengths=[int(x) for x in lengths],
                        finished=[bool(x) for x in finished], families=[family_of(p) for p in sample_prompts],
                        scores=scores, baseline_completions=base_texts, num_samples=G)
    metrics["length"] = _mean(result.lengths)
    metrics["finished"] = _mean([float(f) for f in result.finished])

    # ---- KL to the reference
    if reference is not None:
        k1, k3 = _sequence_kl(model, reference, rollouts, settings["temperature"])
        result.scores["kl"] = k1
        result.scores["kl_k3"] = k3
        metrics["kl"] = _mean(k1)
        metrics["kl_k3"] = _mean(k3)
        metrics["kl_std"] = _std(k1)
    metrics["eval_seconds"] = time.time() - t0
    result.metrics = metrics
    return result


def world_eval_rows(world_dir, families: Sequence[str] = ("fact", "emotional", "howto", "arith", "reason"),
                    *, per_family: int | None = None) -> list[dict]:
    """The toy world's held-out eval prompt rows (``prompt``, ``family``, ``answer``), the first
    ``per_family`` of each family (all when None), in family order."""
    from posttrain.world.evaluate import eval_rows

    rows = []
    for fam in families:
        fam_rows = eval_rows(world_dir, fam)
        rows += fam_rows[:per_family] if per_family is not None else fam_rows
    return rows
