"""Rejection sampling (best-of-N fine-tuning) and the best-of-n over-optimisation curve.

``posttrain rejection-sampling`` (:func:`run`): draw ``N = num_samples`` completions per prompt of
``data.train`` from ``model`` with the shared sampler (:func:`posttrain.rollout.sampler.sample_n`), score them
with a reward source (:func:`posttrain.rollout.rewards.build_reward`: ``rm:PATH``, ``gold``,
``verifier:math``, ``callable:mod:fn``, weighted sums), keep some (:func:`select_samples`) and fine-tune
``model`` on them with the SFT stage — the recipe of Llama 2's rejection-sampling rounds (Touvron et al.
2023, §3.2.3), RAFT (Dong et al. 2023) and DeepSeek-R1's rejection-sampling SFT (2025, §2.3.3)::

    for each prompt x:  y_1..y_N ~ π(·|x),  s_j = r(x, y_j)
    D = select({(x, y_j, s_j)})             # top1: argmax_j s_j per prompt; topk: the k best (x, y) overall;
                                            # threshold: every s_j >= threshold
    π' = SFT(π, D)

Selection rules (``select``): ``top1`` (per prompt, ties: the first sample), ``topk`` (the ``top_k`` best
samples over all prompts, ties: file order), ``threshold`` (``score >= threshold``). Samples that ran out of
``generation.max_new_tokens`` without a stop token are not eligible (``require_finished``), and a prompt's
identical completions count once (``dedupe``). Run directory::

    RUN/scored.jsonl     every prompt: completions, scores, finished flags, lengths (tokens)
    RUN/selected.jsonl   the selection: prompt, completion (an assistant message list for conversational
                         prompts, else a string), score, sample (index among the prompt's N), answer (if any)
    RUN/sft/             the SFT run on the selection (train=true); RUN/model/ holds its final model, so
                         ``model=RUN`` feeds the next stage
    RUN/summary.json     score distribution of all samples vs the selection, selection size, the SFT summary

A resumed run (same config, unfinished) reuses ``scored.jsonl`` and continues the SFT from its checkpoint.

``posttrain best-of-n`` (:func:`best_of_n`): for n = 1, 2, 4, ..., max_n, the proxy and gold reward of the
completion that best-of-n sampling picks by the proxy, against the analytic KL of best-of-n sampling
``KL(π_bon ‖ π) = log n − (n − 1)/n`` (Stiennon et al. 2020, App. G.3; Gao et al. 2023 plot gold vs √KL).
Estimated from ``N >= max_n`` samples per prompt with the unbiased estimator of Nakano et al. (2021, App. I):
the expectation over ALL n-subsets of the N samples rather than one random subset (:func:`best_of_n_weights`).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from posttrain.config import BestOfNConfig, RejectionSamplingConfig, SFTConfig, StageConfig, build_config
from posttrain.data.formats import KINDS
from posttrain.errors import DataError, UserError
from posttrain.stages import common

__all__ = ["run", "best_of_n", "select_samples", "eligible_mask", "best_of_n_weights", "best_of_n_expectation",
           "best_of_n_kl", "best_of_n_table", "format_table", "sample_and_score", "PromptSamples", "sft_config",
           "unique_prompts", "PROMPT_KINDS"]

STAGE = "rejection-sampling"
BON_STAGE = "best-of-n"
# Kinds whose rows carry a prompt (conversational rows: the messages before the last assistant turn).
PROMPT_KINDS = tuple(k for k in ("prompt", "preference", "ranking", "unpaired", "prompt_completion",
                                 "verifiable", "conversational") if k in KINDS)


# ------------------------------------------------------------------------------------------------ prompts
def _prompt_of(row: dict) -> Any:
    from posttrain.data.tokenize import split_prompt

    if row.get("prompt") is not None:
        return row["prompt"]
    if "chosen" in row:  # implicit-prompt preference rows: the shared prefix
        return split_prompt(row["chosen"], row["rejected"])[0]
    msgs = row["messages"]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    return msgs[:last]


def unique_prompts(rows) -> tuple[list[Any], list[dict], list[int]]:
    """(prompts, columns, row numbers): the distinct non-empty prompts of validated ``rows`` in file order,
    the ``answer`` column of their first row (passed to the reward; empty dict when absent) and that row's
    number in the file (for messages)."""
    prompts, columns, numbers, seen = [], [], [], set()
    for i, r in enumerate(rows.rows):
        p = _prompt_of(r)
        if not p:
            continue
        key = json.dumps(p, sort_keys=True, ensure_ascii=False)
        if key in seen:
            continue
        seen.add(key)
        prompts.append(p)
        columns.append({"answer": r["answer"]} if "answer" in r else {})
        numbers.append(rows.row_number(i))
    return prompts, columns, numbers


# ----------------------------------------------------------------------------------- sampling + scoring
@dataclass
class PromptSamples:
    """The ``N`` scored completions of one prompt."""

    index: int                      # position of the prompt in the prompt list
    texts: list[str]                # decoded completions (stop token removed)
    scores: dict[str, list[float]]  # reward name -> one score per completion
    finished: list[bool]            # stopped before max_new_tokens
    lengths: list[int]              # completion tokens (the stop token counts)


def sample_and_score(model, tokenizer, prompts: Sequence, columns: Sequence[Mapping[str, Any]],
                     rewards: Mapping[str, Any], *, n: int, generation, max_prompt_len: int, batch_size: int,
                     seed: int, source: str = "data", row_numbers: Sequence[int] | None = None,
                     progress: bool = False, desc: str = "sampling") -> list[PromptSamples]:
    """``n`` completions per prompt from ``model`` (:func:`posttrain.rollout.sampler.sample_n`, ``batch_size``
    prompts per call, one generator seeded from ``seed`` and the rank), each scored by every reward source
    of ``rewards`` (name -> :class:`~posttrain.rollout.rewards.RewardSource`). Under torch.distributed every
    rank samples a strided share of the prompts and all ranks get every prompt's result, in prompt order.

    ``generation``: a :class:`posttrain.config.GenerationConfig`."""
    from posttrain.data.tokenize import encode_prompt
    from posttrain.engine import distributed
    from posttrain.models.load import unwrap_model
    from posttrain.models.tokenizer import stop_token_ids
    from posttrain.rollout.sampler import sample_n

    rank, world = distributed.rank(), distributed.world_size()
    m = unwrap_model(model)
    device = next(m.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank)
    stops, g = stop_token_ids(tokenizer), generation
    mine = list(range(rank, len(prompts), world))
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=desc, unit="prompt", leave=False)
    out: list[PromptSamples] = []
    was_training = m.training
    m.eval()
    try:
        for c in range(0, len(mine), batch_size):
            chunk = mine[c:c + batch_size]
            ids = [encode_prompt(tokenizer, prompts[i], max_prompt_len=max_prompt_len) for i in chunk]
            with torch.inference_mode():
                ro = sample_n(m, ids, n, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                              top_p=g.top_p, top_k=g.top_k, stop_token_ids=stops,
                              pad_token_id=tokenizer.pad_token_id, stop_strings=tuple(g.stop_strings),
                              tokenizer=tokenizer, generator=gen, backend=g.backend)
            texts = list(ro.completion_texts if ro.completion_texts is not None else ro.decode(tokenizer))
            rep = [prompts[i] for i in chunk for _ in range(n)]  # row r belongs to prompt chunk[r // n]
            keys = sorted({k for i in chunk for k in columns[i]})
            cols = {k: [columns[i].get(k) for i in chunk for _ in range(n)] for k in keys}
            scored = {}
            for name, source_fn in rewards.items():
                values = [float(v) for v in source_fn(rep, texts, **cols)]
                bad = next((r for r, v in enumerate(values) if not math.isfinite(v)), None)
                if bad is not None:
                    i = chunk[bad // n]
                    raise DataError(f"reward '{name}' returned {values[bad]} for a completion of this prompt",
                                    file=source, row=row_numbers[i] if row_numbers else i + 1, field="prompt")
                scored[name] = values
            fin, lens = ro.finished.tolist(), ro.completion_lengths.tolist()
            for j, i in enumerate(chunk):
                sl = slice(j * n, (j + 1) * n)
                out.append(PromptSamples(i, texts[sl], {k: v[sl] for k, v in scored.items()},
                                         [bool(x) for x in fin[sl]], [int(x) for x in lens[sl]]))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        m.train(was_training)
        if bar is not None:
            bar.close()
    if world > 1:
        out = [r for part in distributed.all_gather_object(out) for r in part]
    out.sort(key=lambda r: r.index)
    return out


# -------------------------------------------------------------------------------------------- selection
def eligible_mask(texts: Sequence[Sequence[str]], finished: Sequence[Sequence[bool]] | None = None, *,
                  require_finished: bool = True, dedupe: bool = True) -> list[list[bool]]:
    """Per prompt, per sample: may it be selected? Not when it did not finish (``require_finished``) or
    when an earlier sample of the same prompt has the same text (``dedupe``)."""
    out = []
    for i, row in enumerate(texts):
        seen, ok = set(), []
        for j, t in enumerate(row):
            good = not (require_finished and finished is not None and not finished[i][j])
            if good and dedupe:
                good = t not in seen
                seen.add(t)
            ok.append(good)
        out.append(ok)
    return out


def select_samples(scores: Sequence[Sequence[float]], rule: str, *, top_k: int | None = None,
                   threshold: float | None = None,
                   eligible: Sequence[Sequence[bool]] | None = None) -> list[tuple[int, int]]:
    """``(prompt i, sample j)`` of the selected samples; ``scores[i][j]`` is sample j of prompt i.

    * ``top1``: per prompt, the eligible sample with the highest score (ties: the lowest j); prompts with
      no eligible sample are skipped; in prompt order.
    * ``topk``: the ``top_k`` eligible samples with the highest scores over all prompts (ties: lowest i, then
      lowest j); best first.
    * ``threshold``: every eligible sample with ``score >= threshold``; in prompt, then sample order.
    """
    ok = (lambda i, j: True) if eligible is None else (lambda i, j: bool(eligible[i][j]))  # noqa: E731
    cands = [(i, j) for i, row in enumerate(scores) for j in range(len(row)) if ok(i, j)]
    if rule == "top1":
        best: dict[int, int] = {}
        for i, j in cands:
            if i not in best or scores[i][j] > scores[i][best[i]]:
                best[i] = j
        return sorted(best.items())
    if rule == "topk":
        if top_k is None or top_k < 1:
            raise ValueError("select_samples: rule 'topk' needs top_k >= 1")
        return sorted(cands, key=lambda ij: (-scores[ij[0]][ij[1]], ij[0], ij[1]))[:top_k]
    if rule == "threshold":
        if threshold is None:
            raise ValueError("select_samples: rule 'threshold' needs a threshold")
        return [(i, j) for i, j in cands if scores[i][j] >= threshold]
    raise ValueError(f"select_samples: unknown rule {rule!r} (top1, topk, threshold)")


# ------------------------------------------------------------------------------------------ best of n
def best_of_n_weights(N: int, n: int) -> list[float]:
    """``w[i] = C(i, n−1) / C(N, n)`` for i = 0..N−1: the probability that the sample of ascending rank i
    (0 = lowest proxy score) is the maximum of a uniformly random n-subset of the N samples (the subset's
    other n − 1 members are drawn from the i samples below it). ``sum(w) = 1`` (hockey-stick identity)."""
    if not 1 <= n <= N:
        raise ValueError(f"best_of_n_weights: need 1 <= n <= N, got n={n}, N={N}")
    total = math.comb(N, n)
    return [math.comb(i, n - 1) / total for i in range(N)]  # exact integers, one correctly rounded division


def best_of_n_expectation(proxy: Sequence[float], values: Sequence[float], n: int) -> float:
    """``E[values[j*]]`` with ``j* = argmax_{j∈S} proxy[j]`` over a uniformly random n-subset S of the N
    samples (the unbiased best-of-n estimator: the average over all C(N, n) subsets, in O(N log N)).

    Samples sorted by proxy get :func:`best_of_n_weights`; proxy ties are broken uniformly at random, which
    spreads a tied group's total weight equally over its members (exact, by exchangeability)."""
    N = len(proxy)
    if len(values) != N:
        raise ValueError(f"best_of_n_expectation: {N} proxy scores for {len(values)} values")
    w = best_of_n_weights(N, n)
    order = sorted(range(N), key=lambda j: proxy[j])  # ascending proxy
    total, start = 0.0, 0
    while start < N:
        end = start
        while end + 1 < N and proxy[order[end + 1]] == proxy[order[start]]:
            end += 1
        group = order[start:end + 1]
        mass = math.fsum(w[start:end + 1])
        total += mass * math.fsum(values[j] for j in group) / len(group)
        start = end + 1
    return total


def best_of_n_kl(n: int) -> float:
    """Analytic ``KL(π_bon(n) ‖ π) = log n − (n − 1)/n`` (Stiennon et al. 2020, App. G.3; an upper bound
    when samples can repeat, exact for a continuous proxy); 0 at n = 1."""
    if n < 1:
        raise ValueError(f"best_of_n_kl: n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def _mean_se(xs: Sequence[float]) -> tuple[float, float]:
    m = math.fsum(xs) / len(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return m, se


def best_of_n_table(proxy: Sequence[Sequence[float]], gold: Sequence[Sequence[float]], ns: Sequence[int],
                    lengths: Sequence[Sequence[float]] | None = None) -> list[dict[str, float]]:
    """One row per n: ``kl``, ``sqrt_kl``, the mean over prompts of the best-of-n proxy and gold reward
    (chosen by proxy) with standard errors over prompts (``*_se``), ``gold_oracle`` (best-of-n chosen by
    gold itself: the ceiling) and ``length`` (mean tokens of the chosen completion) when given."""
    rows = []
    for n in ns:
        per_p = [best_of_n_expectation(p, p, n) for p in proxy]
        per_g = [best_of_n_expectation(p, g, n) for p, g in zip(proxy, gold)]
        per_o = [best_of_n_expectation(g, g, n) for g in gold]
        kl = best_of_n_kl(n)
        (pm, pse), (gm, gse) = _mean_se(per_p), _mean_se(per_g)
        row = {"n": n, "kl": kl, "sqrt_kl": math.sqrt(kl), "proxy": pm, "proxy_se": pse, "gold": gm,
               "gold_se": gse, "gold_oracle": math.fsum(per_o) / len(per_o)}
        if lengths is not None:
            per_l = [best_of_n_expectation(p, ln, n) for p, ln in zip(proxy, lengths)]
            row["length"] = math.fsum(per_l) / len(per_l)
        rows.append(row)
    return rows


def format_table(rows: Sequence[Mapping[str, float]]) -> str:
    """The best-of-n table as aligned text."""
    head = f"{'n':>5}  {'KL':>7}  {'sqrt(KL)':>8}  {'proxy':>16}  {'gold':>16}  {'gold oracle':>11}"
    has_len = bool(rows) and "length" in rows[0]
    head += f"  {'length':>7}" if has_len else ""
    lines = [head]
    for r in rows:
        line = (f"{r['n']:>5}  {r['kl']:>7.4f}  {r['sqrt_kl']:>8.4f}  {r['proxy']:>8.4f} ± {r['proxy_se']:<5.3f}  "
                f"{r['gold']:>8.4f} ± {r['gold_se']:<5.3f}  {r['gold_oracle']:>11.4f}")
        line += f"  {r['length']:>7.2f}" if has_len else ""
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- helpers
def _stats(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def _use_gold(mode: str, prompts: Sequence) -> bool:
    if mode != "auto":
        return mode == "on"
    from posttrain.world.tasks import family_of

    return all(family_of(p) != "unknown" for p in prompts)


def _scored_rows(prompts: Sequence, columns: Sequence[Mapping], results: Sequence[PromptSamples]) -> list[dict]:
    return [{"prompt": prompts[r.index], **columns[r.index], "completions": r.texts, "scores": r.scores,
             "finished": r.finished, "lengths": r.lengths} for r in results]


def _read_scored(path: Path) -> list[PromptSamples]:
    from posttrain.io import read_jsonl

    return [PromptSamples(i, r["completions"], r["scores"], r["finished"], r["lengths"])
            for i, r in enumerate(read_jsonl(path))]


def sft_config(cfg: RejectionSamplingConfig, train_file: str | Path, output_dir: str | Path) -> SFTConfig:
    """The SFT config for the selection: this config's common keys (model, training engine, data lengths,
    data.eval), the ``sft`` block's SFT-only keys, ``data.train = train_file``, ``output_dir``."""
    values = {k: v for k, v in cfg.model_dump(mode="json").items() if k in StageConfig.model_fields}
    values.update(cfg.sft.model_dump(mode="json"))
    values["data"] = {**values["data"], "train": str(train_file), "max_train_rows": None}
    values["output_dir"] = str(output_dir)
    return build_config(SFTConfig, values, source="rejection-sampling sft config")


def _link_model(src: Path, dst: Path) -> None:
    """``dst`` = a copy of the model folder ``src`` made of hard links (no extra disk; a plain copy of the
    files a hard link cannot be made for), written atomically."""
    from posttrain.io import atomic_dir

    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)


def _link_or_copy(src: str, dst: str) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --------------------------------------------------------------------------------- rejection sampling
def run(cfg: RejectionSamplingConfig) -> dict:
    """Sample, score, select (``RUN/selected.jsonl``), then SFT on the selection into ``RUN/sft``."""
    from posttrain.engine import distributed
    from posttrain.io import write_jsonl
    from posttrain.rollout.rewards import build_reward, check_columns
    from posttrain.stages import sft

    t0 = time.perf_counter()
    ctx = common.setup(cfg)
    # ---- load and validate everything before the run directory exists
    rows = common.load_data(cfg.data.train, kinds=PROMPT_KINDS, max_rows=cfg.data.max_train_rows)
    prompts, columns, numbers = unique_prompts(rows)
    if not prompts:
        raise DataError("no row has a non-empty prompt", file=rows.source)
    if cfg.train:  # the SFT's eval set, checked now rather than after the sampling
        common.load_data(cfg.data.eval, kinds=sft.KINDS, key="data.eval", max_rows=cfg.data.max_eval_rows,
                         required=False)
    model, tok = common.load_model(cfg, ctx)
    reward = build_reward(cfg.reward, tokenizer=tok, device=ctx.device, dtype=cfg.dtype,
                          batch_size=cfg.reward_batch_size, max_len=cfg.data.max_len)
    check_columns(reward, columns, file=rows.source)
    run_dir = common.open_run(cfg, STAGE)
    if run_dir.is_done():
        return common.already_done(run_dir, cfg)

    # ---- N samples per prompt, scored (reused when continuing an unfinished run with the same config)
    scored_path, selected_path = run_dir.path / "scored.jsonl", run_dir.path / "selected.jsonl"
    reused = scored_path.is_file()
    t_sample = time.perf_counter()
    if reused:
        results = _read_scored(scored_path)
    else:
        results = sample_and_score(model, tok, prompts, columns, {"reward": reward}, n=cfg.num_samples,
                                   generation=cfg.generation, max_prompt_len=cfg.data.max_prompt_len,
                                   batch_size=cfg.sample_batch_size, seed=cfg.seed, source=rows.source,
                                   row_numbers=numbers, progress=cfg.progress, desc=STAGE)
        if ctx.is_main:
            write_jsonl(scored_path, _scored_rows(prompts, columns, results))
    del model, reward  # the SFT loads its own copy of the policy
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    sample_time = time.perf_counter() - t_sample

    # ---- selection
    scores = [r.scores["reward"] for r in results]
    ok = eligible_mask([r.texts for r in results], [r.finished for r in results],
                       require_finished=cfg.require_finished, dedupe=cfg.dedupe)
    picked = select_samples(scores, cfg.select, top_k=cfg.top_k, threshold=cfg.threshold, eligible=ok)
    selected = []
    for i, j in picked:
        prompt, text = prompts[results[i].index], results[i].texts[j]
        completion = [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
        selected.append({"prompt": prompt, "completion": completion, "score": scores[i][j], "sample": j,
                         **columns[results[i].index]})
    if ctx.is_main:
        write_jsonl(selected_path, selected)
    distributed.barrier()

    all_scores = [s for row in scores for s in row]
    sel_scores = [scores[i][j] for i, j in picked]
    finished = [f for r in results for f in r.finished]
    summary: dict[str, Any] = {
        "stage": STAGE, "model": cfg.model, "reward": cfg.reward, "num_samples": cfg.num_samples,
        "select": cfg.select, "top_k": cfg.top_k if cfg.select == "topk" else None,
        "threshold": cfg.threshold if cfg.select == "threshold" else None,
        "prompts": len(prompts), "samples": len(all_scores), "selected": len(selected),
        "selected_fraction": len(selected) / len(all_scores),
        "prompts_selected": len({i for i, _ in picked}),
        "eligible": sum(map(sum, ok)), "finished_fraction": sum(finished) / len(finished),
        "scores": _stats(all_scores), "selected_scores": _stats(sel_scores),
        # E[max_j s_j] per prompt vs E[s]: what selection gains over sampling, in reward units
        "best_of_n_mean": statistics.fmean(max(row) for row in scores),
        "selected_tokens_mean": (statistics.fmean(results[i].lengths[j] for i, j in picked) if picked else None),
        "tokens_mean": statistics.fmean(ln for r in results for ln in r.lengths),
        "selected_file": str(selected_path), "scored_file": str(scored_path), "reused_samples": reused,
        "sample_time_s": round(sample_time, 3),
    }
    if _use_gold(cfg.gold_metric, prompts):  # what the selection is worth in the toy world's true reward
        from posttrain.world.gold import gold_reward

        gold = [[gold_reward(prompts[r.index], t) for t in r.texts] for r in results]
        summary.update({"gold": _stats([g for row in gold for g in row]),
                        "selected_gold": _stats([gold[i][j] for i, j in picked])})

    # ---- SFT on the selection
    if cfg.train:
        if not selected:
            raise DataError(f"no sample was selected (select={cfg.select}; {summary['eligible']} of "
                            f"{len(all_scores)} samples eligible); lower threshold, or set "
                            f"require_finished=false / raise generation.max_new_tokens", file=str(selected_path))
        sft_summary = sft.run(sft_config(cfg, selected_path, run_dir.path / "sft"))
        if ctx.is_main:
            _link_model(Path(sft_summary["model_dir"]), run_dir.model_dir)
        distributed.barrier()
        summary.update({"sft": sft_summary, "model_dir": str(run_dir.model_dir),
                        "sft_run_dir": str(run_dir.path / "sft")})
    summary.update({"run_dir": str(run_dir.path), "time_s": round(time.perf_counter() - t0, 3)})
    run_dir.write_summary(summary)
    run_dir.mark_done()
    if cfg.progress and ctx.is_main:
        s, z = summary["scores"], summary["selected_scores"]
        print(f"{STAGE}: selected {len(selected)} of {len(all_scores)} samples ({len(prompts)} prompts x "
              f"{cfg.num_samples}, select={cfg.select}); reward mean {s['mean']:.4f} -> selected "
              f"{z.get('mean', float('nan')):.4f}"
              + (f"; gold {summary['gold']['mean']:.4f} -> selected "
                 f"{summary['selected_gold'].get('mean', float('nan')):.4f}" if "gold" in summary else "")
              + f"; wrote {selected_path}"
              + (f"; model: {run_dir.model_dir}" if cfg.train else ""))
    return summary


# ------------------------------------------------------------------------------------------ best of n
def best_of_n(cfg: BestOfNConfig) -> dict:
    """Proxy and gold reward of best-of-n vs the analytic KL; writes ``RUN/table.json`` and prints it."""
    from posttrain.io import atomic_write_json, write_jsonl
    from posttrain.rollout.rewards import build_reward, check_columns

    t0 = time.perf_counter()
    ctx = common.setup(cfg)
    key, spec = ("data.eval", cfg.data.eval) if cfg.data.eval else ("data.train", cfg.data.train)
    max_rows = cfg.data.max_eval_rows if cfg.data.eval else cfg.data.max_train_rows
    if spec is None:
        raise UserError("config: key 'data.eval' (or 'data.train') is required: the prompts to sample for")
    rows = common.load_data(spec, kinds=PROMPT_KINDS, key=key, max_rows=max_rows)
    prompts, columns, numbers = unique_prompts(rows)
    if not prompts:
        raise DataError("no row has a non-empty prompt", file=rows.source)
    model, tok = common.load_model(cfg, ctx)
    kw = dict(tokenizer=tok, device=ctx.device, dtype=cfg.dtype, batch_size=cfg.reward_batch_size,
              max_len=cfg.data.max_len)
    rewards = {"proxy": build_reward(cfg.reward, **kw), "gold": build_reward(cfg.gold, **kw)}
    for r in rewards.values():
        check_columns(r, columns, file=rows.source)
    run_dir = common.open_run(cfg, BON_STAGE)
    if run_dir.is_done():
        return common.already_done(run_dir, cfg)

    N = cfg.samples_per_prompt
    t_sample = time.perf_counter()
    results = sample_and_score(model, tok, prompts, columns, rewards, n=N, generation=cfg.generation,
                               max_prompt_len=cfg.data.max_prompt_len, batch_size=cfg.batch_size,
                               seed=cfg.seed, source=rows.source, row_numbers=numbers, progress=cfg.progress,
                               desc=BON_STAGE)
    t_scored = time.perf_counter()
    proxy = [r.scores["proxy"] for r in results]
    gold = [r.scores["gold"] for r in results]
    table = best_of_n_table(proxy, gold, cfg.ns, lengths=[r.lengths for r in results])
    golds = [r["gold"] for r in table]
    peak = max(range(len(table)), key=lambda k: golds[k])
    summary = {
        "stage": BON_STAGE, "model": cfg.model, "reward": cfg.reward, "gold": cfg.gold, "num_samples": N,
        "prompts": len(prompts), "ns": list(cfg.ns), "table": table,
        "proxy_gold_correlation": _correlation([s for p in proxy for s in p], [s for g in gold for s in g]),
        "gold_peak_n": table[peak]["n"], "gold_peak": golds[peak],
        "proxy_gain": table[-1]["proxy"] - table[0]["proxy"], "gold_gain": golds[-1] - golds[0],
        "finished_fraction": statistics.fmean(f for r in results for f in r.finished),
        "table_file": str(run_dir.path / "table.json"), "run_dir": str(run_dir.path),
        "sample_time_s": round(t_scored - t_sample, 3), "time_s": round(time.perf_counter() - t0, 3),
    }
    if ctx.is_main:
        atomic_write_json(run_dir.path / "table.json", {k: summary[k] for k in (
            "model", "reward", "gold", "num_samples", "prompts", "ns", "table")})
        write_jsonl(run_dir.path / "scored.jsonl", _scored_rows(prompts, columns, results))
    run_dir.write_summary(summary)
    run_dir.mark_done()
    if cfg.progress and ctx.is_main:
        print(f"{BON_STAGE}: {len(prompts)} prompts x {N} samples; proxy '{cfg.reward}', gold '{cfg.gold}'")
        print(format_table(table))
        print(f"wrote {summary['table_file']}")
    return summary


def _correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson correlation (None when either side is constant)."""
    if len(a) < 2:
        return None
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    sa = math.sqrt(math.fsum((x - ma) ** 2 for x in a))
    sb = math.sqrt(math.fsum((y - mb) ** 2 for y in b))
    if sa == 0 or sb == 0:
        return None
    return math.fsum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb)
