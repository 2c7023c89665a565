"""Reward-model evaluation on held-out preference pairs (or rankings, taken as all their pairs).

For every held-out comparison "``y_c`` preferred to ``y_r``" the reward model gives ``Δr = r(x, y_c) − r(x, y_r)``.

=========================  ==========================================================================
metric                     definition
=========================  ==========================================================================
``accuracy``               fraction of pairs with ``Δr > 0`` (a tie counts ½) — agreement with the labels
``mean_margin``            mean ``Δr``
``ece``                    expected calibration error of the Bradley–Terry probability ``σ(Δr)``: with
                           confidence ``c = max(σ(Δr), 1 − σ(Δr)) = σ(|Δr|)`` and "correct" = the model's
                           favourite is the labelled winner, ``ECE = Σ_bins (n_b / N)·|acc_b − conf_b|``
                           over ``n_bins`` equal-width bins of ``[0.5, 1]`` (Guo et al. 2017, eq. 5; this
                           is the symmetric form of binning ``σ(Δr)`` against the observed win rate)
``calibration``            per bin: ``lo``, ``hi``, ``count``, ``confidence`` (mean c), ``accuracy``
``length_corr``            Pearson correlation of reward with response length (completion tokens) over
                           every evaluated completion (chosen and rejected); ``length_corr_words`` uses
                           word counts
``gold/...``               toy world only: the world's gold preference ``g(x, y_c) > g(x, y_r)`` on the
                           same pairs (pairs where gold ties are left out): ``gold/rm_agreement`` (the RM
                           orders the pair like gold), ``gold/label_agreement`` (the annotator label does —
                           the ceiling a perfect fit of the labels reaches), ``gold/length_corr`` (gold
                           reward vs word count, the reference for ``length_corr_words``), ``gold/pairs``,
                           and, on pairs where gold prefers the shorter response, how often the RM
                           (``gold/rm_prefers_longer_when_gold_prefers_shorter``) and the labels
                           (``gold/labels_prefer_longer_when_gold_prefers_shorter``) pick the longer one
=========================  ==========================================================================

Scoring goes through :class:`posttrain.rollout.rewards.RewardModelReward` (its length-sorted batching and
:func:`posttrain.models.heads.score_sequences`), on the token ids the data layer builds for training
(:func:`posttrain.data.tokenize.encode_dataset`: prompt and completion tokenised separately and
concatenated, the same truncation), so evaluation sees exactly what training saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from posttrain.rollout.rewards import RewardModelReward

__all__ = ["Comparison", "comparisons_of", "TokenIdsScorer", "score_comparisons", "pair_accuracy",
           "expected_calibration_error", "pearson", "pairwise_metrics", "gold_metrics", "is_world_data",
           "evaluate_comparisons", "evaluate_reward_model"]


# ----------------------------------------------------------------------------------- comparisons
@dataclass(frozen=True)
class Comparison:
    """One labelled comparison: ``better`` ≻ ``worse`` for ``prompt``.

    ``better_ids``/``worse_ids`` are ``(prompt_ids, completion_ids)`` token lists; ``prompt`` and the
    completions are the raw row values (strings or message lists), for gold judging."""

    prompt: Any
    better: Any
    worse: Any
    better_ids: tuple[list[int], list[int]]
    worse_ids: tuple[list[int], list[int]]


def _split_ids(enc) -> tuple[list[int], list[int]]:
    return list(enc.input_ids[:enc.prompt_len]), list(enc.input_ids[enc.prompt_len:])


def comparisons_of(rows, encoded) -> list[Comparison]:
    """Comparisons of validated ``rows`` (preference or ranking) and their encodings (``encode_dataset``
    with ``drop_empty=False``, so ``encoded[i]`` belongs to ``rows[i]``). A ranking of K gives its
    ``K(K−1)/2`` pairs."""
    from posttrain.data.tokenize import EncodedPair, EncodedRanking, split_prompt

    data = list(getattr(rows, "rows", rows))
    if len(data) != len(encoded):
        raise ValueError(f"{len(data)} rows but {len(encoded)} encoded examples (encode with drop_empty=False)")
    out: list[Comparison] = []
    for r, e in zip(data, encoded):
        if isinstance(e, EncodedPair):
            if r.get("prompt") is not None:
                p, c, rj = r["prompt"], r["chosen"], r["rejected"]
            else:
                p, c, rj = split_prompt(r["chosen"], r["rejected"])
            out.append(Comparison(p, c, rj, _split_ids(e.chosen), _split_ids(e.rejected)))
        elif isinstance(e, EncodedRanking):
            ranked = [r["completions"][j] for j in r["ranking"]]
            for i in range(len(ranked)):
                for j in range(i + 1, len(ranked)):
                    out.append(Comparison(r["prompt"], ranked[i], ranked[j], _split_ids(e.ranked[i]),
                                          _split_ids(e.ranked[j])))
        else:
            raise ValueError(f"cannot evaluate a reward model on {type(e).__name__} examples")
    return out


class TokenIdsScorer(RewardModelReward):
    """:class:`RewardModelReward` on pre-tokenised input: ``prompts[i]`` and ``completions[i]`` are token id
    lists (as the data layer built them), concatenated as is."""

    def encode(self, prompt, completion) -> list[int]:
        return list(prompt) + list(completion)


def score_comparisons(rm, tokenizer, comps: Sequence[Comparison], *, batch_size: int = 16
                      ) -> tuple[list[float], list[float]]:
    """``(r_better, r_worse)`` for each comparison (each distinct sequence is scored once)."""
    scorer = TokenIdsScorer(rm, tokenizer, batch_size)
    seqs: dict[tuple[int, ...], int] = {}
    items: list[tuple[list[int], list[int]]] = []
    for c in comps:
        for pc in (c.better_ids, c.worse_ids):
            key = tuple(pc[0]) + (-1,) + tuple(pc[1])
            if key not in seqs:
                seqs[key] = len(items)
                items.append(pc)
    scores = scorer([p for p, _ in items], [c for _, c in items]) if items else []
    rb, rw = [], []
    for c in comps:
        for pc, dst in ((c.better_ids, rb), (c.worse_ids, rw)):
            dst.append(scores[seqs[tuple(pc[0]) + (-1,) + tuple(pc[1])]])
    return rb, rw


# --------------------------------------------------------------------------------------- metrics
def pair_accuracy(diffs: Sequence[float]) -> float:
    """Fraction of ``Δr > 0``; ties count ½. Empty → nan."""
    if not diffs:
        return math.nan
    return sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs) / len(diffs)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def expected_calibration_error(diffs: Sequence[float], *, n_bins: int = 10) -> tuple[float, list[dict]]:
    """``(ECE, bins)`` of the Bradley–Terry probability ``σ(Δr)`` on pairs whose labelled winner has reward
    margin ``Δr`` (see the module docstring). Confidence ``σ(|Δr|)`` lies in ``[0.5, 1]``, cut into
    ``n_bins`` equal bins (the last one closed); a tie is "correct" with weight ½. Empty bins are listed with
    count 0 and contribute nothing.

    Example (worked in ``tests/test_reward_model_eval.py``): ``Δr = [ln 3, −ln 3, ln 9, 0]`` with 2 bins →
    confidences ``[0.75, 0.75, 0.9, 0.5]``, correct ``[1, 0, 1, ½]``; bin [0.5, 0.75): {0.5 → ½}, bin
    [0.75, 1]: {0.75, 0.75, 0.9 → acc 2/3, conf 0.8}; ECE = ¼·|½ − ½| + ¾·|2/3 − 0.8| = 0.1."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    counts = [0] * n_bins
    conf_sum = [0.0] * n_bins
    acc_sum = [0.0] * n_bins
    for d in diffs:
        conf = _sigmoid(abs(d))
        b = min(int((conf - 0.5) * 2 * n_bins), n_bins - 1)
        counts[b] += 1
        conf_sum[b] += conf
        acc_sum[b] += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
    n = len(diffs)
    ece = 0.0
    bins = []
    for b in range(n_bins):
        lo, hi = 0.5 + b / (2 * n_bins), 0.5 + (b + 1) / (2 * n_bins)
        if counts[b]:
            conf_b, acc_b = conf_sum[b] / counts[b], acc_sum[b] / counts[b]
            ece += counts[b] / n * abs(acc_b - conf_b)
        else:
            conf_b = acc_b = math.nan
        bins.append({"lo": lo, "hi": hi, "count": counts[b], "confidence": conf_b, "accuracy": acc_b})
    return (ece if n else math.nan), bins


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; nan when fewer than 2 points or either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} x values but {len(y)} y values")
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def pairwise_metrics(r_better: Sequence[float], r_worse: Sequence[float], *, n_bins: int = 10) -> dict:
    """``accuracy``, ``mean_margin``, ``ece``, ``calibration`` (bins) and ``pairs`` for labelled pairs."""
    if len(r_better) != len(r_worse):
        raise ValueError("r_better and r_worse differ in length")
    diffs = [a - b for a, b in zip(r_better, r_worse)]
    ece, bins = expected_calibration_error(diffs, n_bins=n_bins)
    return {"pairs": len(diffs), "accuracy": pair_accuracy(diffs),
            "mean_margin": sum(diffs) / len(diffs) if diffs else math.nan, "ece": ece, "calibration": bins}


def is_world_data(prompts: Sequence[Any]) -> bool:
    """Whether every prompt is a toy-world prompt (``posttrain.world.tasks.family_of`` knows it)."""
    try:
        from posttrain.world.tasks import family_of
    except ImportError:  # pragma: no cover - the world ships with posttrain
        return False
    return bool(prompts) and all(family_of(p) != "unknown" for p in prompts)


def gold_metrics(comps: Sequence[Comparison], r_better: Sequence[float], r_worse: Sequence[float],
                 gold: Callable[[Any, Any], float] | None = None) -> dict:
    """Agreement of the reward model and of the labels with the gold preference (module docstring)."""
    from posttrain.world.gold import gold_reward, words
    from posttrain.world.tasks import response_text

    gold = gold or gold_reward
    rm_agree = label_agree = 0.0
    n = 0
    longer_total = longer_rm = longer_label = 0
    g_all, len_all = [], []
    seen: set[str] = set()
    for c, rb, rw in zip(comps, r_better, r_worse):
        gb, gw = gold(c.prompt, c.better), gold(c.prompt, c.worse)
        for y, g in ((c.better, gb), (c.worse, gw)):
            key = repr((c.prompt, y))  # each distinct (prompt, response) once
            if key not in seen:
                seen.add(key)
                g_all.append(g)
                len_all.append(len(words(response_text(y))))
        if gb == gw:
            continue
        n += 1
        gold_sign = 1.0 if gb > gw else -1.0
        d = rb - rw
        rm_agree += 1.0 if d * gold_sign > 0 else 0.5 if d == 0 else 0.0
        label_agree += 1.0 if gold_sign > 0 else 0.0
        lb, lw = len(words(response_text(c.better))), len(words(response_text(c.worse)))
        if lb != lw:
            gold_short = (gb > gw) == (lb < lw)          # gold prefers the shorter response
            if gold_short:
                longer_total += 1
                rm_longer = (d > 0) == (lb > lw)          # the RM prefers the longer one
                longer_rm += 1 if (rm_longer and d != 0) else 0
                longer_label += 1 if lb > lw else 0       # the label prefers the longer one
    return {
        "gold/pairs": n,
        "gold/rm_agreement": rm_agree / n if n else math.nan,
        "gold/label_agreement": label_agree / n if n else math.nan,
        "gold/length_corr": pearson(g_all, [float(x) for x in len_all]),
        "gold/rm_prefers_longer_when_gold_prefers_shorter": longer_rm / longer_total if longer_total else math.nan,
        "gold/labels_prefer_longer_when_gold_prefers_shorter": (longer_label / longer_total if longer_total
                                                                else math.nan),
        "gold/pairs_gold_prefers_shorter": longer_total,
    }


@dataclass
class _Completion:
    ids: tuple
    value: Any
    reward: float
    tokens: int


def evaluate_comparisons(rm, tokenizer, comps: Sequence[Comparison], *, batch_size: int = 16,
                         n_bins: int = 10, gold: str | bool = "auto",
                         scores: tuple[Sequence[float], Sequence[float]] | None = None) -> dict:
    """Every metric of the module docstring for ``comps``. ``gold``: ``"auto"`` (when the prompts are the
    toy world's), ``True``/``"on"``, ``False``/``"off"``. ``scores`` skips scoring with given rewards."""
    rb, rw = scores if scores is not None else score_comparisons(rm, tokenizer, comps, batch_size=batch_size)
    out = pairwise_metrics(rb, rw, n_bins=n_bins)
    # length correlation over distinct completions
    uniq: dict[tuple, _Completion] = {}
    for c, a, b in zip(comps, rb, rw):
        for (p, y), val, r in ((c.better_ids, c.better, a), (c.worse_ids, c.worse, b)):
            key = tuple(p) + (-1,) + tuple(y)
            if key not in uniq:
                uniq[key] = _Completion(key, val, r, len(y))
    rewards = [u.reward for u in uniq.values()]
    out["length_corr"] = pearson(rewards, [float(u.tokens) for u in uniq.values()])
    out["completions"] = len(uniq)
    out["reward_mean"] = sum(rewards) / len(rewards) if rewards else math.nan
    out["reward_std"] = (math.sqrt(sum((r - out["reward_mean"]) ** 2 for r in rewards) / len(rewards))
                         if rewards else math.nan)
    use_gold = gold in (True, "on") or (gold == "auto" and is_world_data([c.prompt for c in comps]))
    if use_gold:
        from posttrain.world.gold import words
        from posttrain.world.tasks import response_text

        out["length_corr_words"] = pearson(rewards, [float(len(words(response_text(u.value))))
                                                     for u in uniq.values()])
        out.update(gold_metrics(comps, rb, rw))
    return out


def evaluate_reward_model(rm, tokenizer, rows, *, max_len: int = 256, max_prompt_len: int | None = 128,
                          batch_size: int = 16, n_bins: int = 10, gold: str | bool = "auto") -> dict:
    """Evaluate ``rm`` on validated preference or ranking ``rows`` (a :class:`posttrain.data.load.Rows`,
    or a list of dicts with a ``kind``), tokenised like reward-model training data."""
    from posttrain.data.tokenize import encode_dataset

    kind = getattr(rows, "kind", None)
    if kind is None:
        from posttrain.data.validate import validate_rows

        kind = validate_rows(list(rows), source="rows", kinds=["preference", "ranking"])
    enc = encode_dataset(tokenizer, rows, kind, max_len=max_len, max_prompt_len=max_prompt_len,
                         drop_empty=False, progress=False)
    comps = comparisons_of(rows, enc.examples)
    return evaluate_comparisons(rm, tokenizer, comps, batch_size=batch_size, n_bins=n_bins, gold=gold)
