"""Rejection sampling / best-of-n: the unbiased best-of-n estimator against brute force, the analytic KL,
the selection rules on hand-made scores, and the configs (no model: runs in well under a second)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from posttrain.config import BestOfNConfig, RejectionSamplingConfig, SFTConfig, build_config
from posttrain.errors import ConfigError
from posttrain.stages.rejection_sampling import (best_of_n_expectation, best_of_n_kl, best_of_n_table,
                                                 best_of_n_weights, eligible_mask, format_table, select_samples,
                                                 sft_config)


def brute_force(proxy, values, n):
    """Average over all C(N, n) subsets of the value of the subset's proxy-argmax; a tie among the maxima
    counts each tied member equally (uniform random tie-breaking)."""
    total, count = 0.0, 0
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[j] for j in subset)
        tied = [j for j in subset if proxy[j] == top]
        total += sum(values[j] for j in tied) / len(tied)
        count += 1
    return total / count


# --------------------------------------------------------------------------------------- estimator
def test_weights_by_hand_and_sum_to_one():
    """N = 4, n = 2: w_i = C(i, 1)/C(4, 2) = i/6 for ascending ranks i = 0..3 → [0, 1/6, 2/6, 3/6].
    n = 1: uniform 1/N. n = N: all weight on the top sample."""
    assert best_of_n_weights(4, 2) == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6], rel=1e-15, abs=0)
    assert best_of_n_weights(5, 1) == [0.2] * 5
    assert best_of_n_weights(6, 6) == [0, 0, 0, 0, 0, 1.0]
    for N in (1, 2, 7, 64, 300):
        for n in {1, min(2, N), N // 2 or 1, N}:
            assert math.fsum(best_of_n_weights(N, n)) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError):
        best_of_n_weights(4, 5)


def test_estimator_hand_example():
    """proxy = [0.3, 0.1, 0.4, 0.2], gold = [1, 2, 3, 4]. Ascending by proxy: gold 2, 4, 1, 3.

    n = 2, weights [0, 1/6, 2/6, 3/6]: gold = (4·1 + 1·2 + 3·3)/6 = 15/6 = 2.5 — the six pairs pick
    {0,1}→1, {0,2}→3, {0,3}→1, {1,2}→3, {1,3}→4, {2,3}→3, sum 15. Proxy = (0.2 + 0.6 + 1.2)/6 = 1/3.
    n = 1: the means (0.25, 2.5); n = 4: the proxy-argmax (0.4, 3)."""
    proxy, gold = [0.3, 0.1, 0.4, 0.2], [1.0, 2.0, 3.0, 4.0]
    assert best_of_n_expectation(proxy, gold, 2) == pytest.approx(2.5, rel=1e-12)
    assert best_of_n_expectation(proxy, proxy, 2) == pytest.approx(1 / 3, rel=1e-12)
    assert brute_force(proxy, gold, 2) == pytest.approx(2.5, rel=1e-12)
    assert best_of_n_expectation(proxy, gold, 1) == pytest.approx(2.5, rel=1e-12)
    assert best_of_n_expectation(proxy, proxy, 1) == pytest.approx(0.25, rel=1e-12)
    assert best_of_n_expectation(proxy, gold, 4) == pytest.approx(3.0, rel=1e-12)
    assert best_of_n_expectation(proxy, proxy, 4) == pytest.approx(0.4, rel=1e-12)


def test_ties_are_broken_uniformly():
    """proxy = [1, 1, 0], values = [a, b, c] = [10, 20, 5], n = 2: the pairs {0,1}→(a+b)/2, {0,2}→a,
    {1,2}→b average to (a+b)/2 = 15. The tied group (ranks 1, 2: weights 1/3 + 2/3) shares its weight
    equally, so the estimator gives 15 too, whatever the input order."""
    assert brute_force([1, 1, 0], [10, 20, 5], 2) == pytest.approx(15.0, rel=1e-12)
    assert best_of_n_expectation([1, 1, 0], [10, 20, 5], 2) == pytest.approx(15.0, rel=1e-12)
    assert best_of_n_expectation([0, 1, 1], [5, 20, 10], 2) == pytest.approx(15.0, rel=1e-12)


def test_estimator_equals_brute_force_over_all_subsets():
    rng = random.Random(0)
    for trial in range(20):
        N = rng.randint(1, 8)
        proxy = [round(rng.gauss(0, 1), 1 if trial % 2 else 6) for _ in range(N)]  # odd trials: many ties
        values = [rng.gauss(0, 1) for _ in range(N)]
        for n in range(1, N + 1):
            assert best_of_n_expectation(proxy, values, n) == pytest.approx(brute_force(proxy, values, n),
                                                                             rel=1e-12, abs=1e-14)


def test_proxy_of_best_of_n_never_decreases_with_n():
    """A random (n+1)-subset contains a random n-subset, so E[max] is non-decreasing in n."""
    rng = random.Random(1)
    proxy = [rng.gauss(0, 1) for _ in range(32)]
    curve = [best_of_n_expectation(proxy, proxy, n) for n in range(1, 33)]
    assert all(b >= a - 1e-12 for a, b in zip(curve, curve[1:]))
    assert curve[0] == pytest.approx(sum(proxy) / 32, rel=1e-12) and curve[-1] == max(proxy)


# --------------------------------------------------------------------------------------------- KL
def test_best_of_n_kl():
    """KL = log n − (n−1)/n: n = 1 → 0; n = 2 → log 2 − 1/2 ≈ 0.193147; n = 4 → log 4 − 3/4 ≈ 0.636294."""
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5, rel=1e-15)
    assert best_of_n_kl(2) == pytest.approx(0.19314718055994531, rel=1e-12)
    assert best_of_n_kl(4) == pytest.approx(0.6362943611198906, rel=1e-12)
    ks = [best_of_n_kl(n) for n in range(1, 100)]
    assert all(b > a for a, b in zip(ks, ks[1:]))
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_table_rows():
    """Two prompts; gold = −proxy on prompt 0 (choosing by proxy hurts gold), gold = proxy on prompt 1."""
    proxy = [[0.0, 1.0, 2.0], [3.0, 1.0, 2.0]]
    gold = [[0.0, -1.0, -2.0], [3.0, 1.0, 2.0]]
    rows = best_of_n_table(proxy, gold, [1, 2, 3], lengths=[[1, 2, 3], [4, 5, 6]])
    assert [r["n"] for r in rows] == [1, 2, 3]
    # n = 2, weights [0, 1/3, 2/3]: prompt 0 proxy 5/3, gold −5/3; prompt 1 proxy 8/3, gold 8/3
    assert rows[1]["proxy"] == pytest.approx((5 / 3 + 8 / 3) / 2, rel=1e-12)
    assert rows[1]["gold"] == pytest.approx((-5 / 3 + 8 / 3) / 2, rel=1e-12)
    # standard error over 2 prompts: stdev |x − y|/√2, divided by √2 → |8/3 − (−5/3)|/2 = 13/6
    assert rows[1]["gold_se"] == pytest.approx(13 / 6, rel=1e-12)
    assert rows[2]["gold"] == pytest.approx((-2 + 3) / 2, rel=1e-12)
    assert rows[2]["gold_oracle"] == pytest.approx((0 + 3) / 2, rel=1e-12)
    assert rows[2]["length"] == pytest.approx((3 + 4) / 2, rel=1e-12)  # prompt 0 picks sample 2, prompt 1 sample 0
    assert rows[0]["kl"] == 0.0 and rows[1]["sqrt_kl"] == pytest.approx(math.sqrt(best_of_n_kl(2)), rel=1e-12)
    text = format_table(rows)
    assert len(text.splitlines()) == 4 and "sqrt(KL)" in text


# -------------------------------------------------------------------------------------- selection
SCORES = [[0.1, 0.9, 0.9], [0.5, 0.2, 0.7], [-1.0, -2.0, -3.0]]


def test_top1_per_prompt_with_ties_and_eligibility():
    assert select_samples(SCORES, "top1") == [(0, 1), (1, 2), (2, 0)]  # tie 0.9/0.9 → first sample
    ok = [[True, False, True], [True, True, False], [False, False, False]]
    assert select_samples(SCORES, "top1", eligible=ok) == [(0, 2), (1, 0)]  # prompt 2: nothing eligible


def test_topk_overall_best_first():
    assert select_samples(SCORES, "topk", top_k=3) == [(0, 1), (0, 2), (1, 2)]
    assert select_samples(SCORES, "topk", top_k=100) == sorted(
        [(i, j) for i in range(3) for j in range(3)], key=lambda ij: (-SCORES[ij[0]][ij[1]], ij))
    ok = [[True, False, True], [True, True, True], [True, True, True]]
    assert select_samples(SCORES, "topk", top_k=2, eligible=ok) == [(0, 2), (1, 2)]


def test_threshold_keeps_every_sample_at_or_above():
    assert select_samples(SCORES, "threshold", threshold=0.5) == [(0, 1), (0, 2), (1, 0), (1, 2)]
    assert select_samples(SCORES, "threshold", threshold=-1.0) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                                    (1, 2), (2, 0)]
    assert select_samples(SCORES, "threshold", threshold=5.0) == []
    with pytest.raises(ValueError):
        select_samples(SCORES, "threshold")
    with pytest.raises(ValueError):
        select_samples(SCORES, "best")


def test_eligible_mask_drops_unfinished_and_duplicates():
    texts = [["a", "b", "a", "c"], ["x", "x"]]
    finished = [[True, False, True, True], [False, True]]
    assert eligible_mask(texts, finished) == [[True, False, False, True], [False, True]]
    assert eligible_mask(texts, finished, dedupe=False) == [[True, False, True, True], [False, True]]
    assert eligible_mask(texts, finished, require_finished=False) == [[True, True, False, True], [True, False]]


# ---------------------------------------------------------------------------------------- configs
def test_rejection_sampling_config_rules():
    with pytest.raises(ConfigError, match="select=threshold needs a threshold"):
        build_config(RejectionSamplingConfig, {"select": "threshold"})
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        build_config(RejectionSamplingConfig, {"generation": {"temperature": 0.0}})
    assert build_config(RejectionSamplingConfig, {"num_samples": 1, "generation": {"temperature": 0.0}})
    with pytest.raises(ConfigError, match="unknown key 'sft.lr'"):  # training keys live at the top level
        build_config(RejectionSamplingConfig, {"sft": {"lr": 1e-3}})


def test_derived_sft_config(tmp_path):
    cfg = build_config(RejectionSamplingConfig, {
        "model": "runs/sft", "data": {"train": "prompts.jsonl", "eval": "heldout.jsonl", "max_len": 96,
                                      "max_prompt_len": 40, "max_train_rows": 7},
        "lr": 3e-4, "max_steps": 12, "batch_size": 4, "grad_accum": 2, "seed": 5,
        "sft": {"packing": True, "sample_prompts": 1}, "num_samples": 4, "output_dir": str(tmp_path)})
    s = sft_config(cfg, tmp_path / "selected.jsonl", tmp_path / "sft")
    assert isinstance(s, SFTConfig)
    assert (s.model, s.lr, s.max_steps, s.batch_size, s.grad_accum, s.seed) == ("runs/sft", 3e-4, 12, 4, 2, 5)
    assert s.data.train == str(tmp_path / "selected.jsonl") and s.data.eval == "heldout.jsonl"
    assert (s.data.max_len, s.data.max_prompt_len, s.data.max_train_rows) == (96, 40, None)
    assert s.output_dir == str(tmp_path / "sft") and s.packing and s.sample_prompts == 1
    assert s.completion_only_loss and s.generation.temperature == 0.0  # SFT defaults kept


def test_best_of_n_config():
    cfg = build_config(BestOfNConfig, {"model": "m", "reward": "gold", "max_n": 16})
    assert cfg.ns == [1, 2, 4, 8, 16] and cfg.samples_per_prompt == 16
    cfg = build_config(BestOfNConfig, {"model": "m", "reward": "gold", "max_n": 6, "num_samples": 24})
    assert cfg.ns == [1, 2, 4, 6] and cfg.samples_per_prompt == 24
    assert build_config(BestOfNConfig, {"model": "m", "reward": "gold", "max_n": 1}).ns == [1]
    with pytest.raises(ConfigError, match="num_samples \\(4\\) must be >= max_n \\(8\\)"):
        build_config(BestOfNConfig, {"model": "m", "reward": "gold", "max_n": 8, "num_samples": 4})
    with pytest.raises(ConfigError, match="key 'reward' is required"):
        build_config(BestOfNConfig, {"model": "m"})
