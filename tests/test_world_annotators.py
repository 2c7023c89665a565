"""Simulated annotators: Bradley–Terry probabilities by hand, Plackett–Luce sampling, measured length bias.

P(y1 ≻ y2) = σ((g1 − g2)/τ + λ·(len1 − len2)/scale). Facts: Velmora's capital is Mirren (gold 3 for the
canonical 6-word answer), "…is Tarn." is wrong (gold 1).
"""

import math
import random

import pytest

from posttrain.world.annotators import Annotator, AnnotatorPool, sigmoid
from posttrain.world.check import annotator_stats, candidate_pairs

Q = "What is the capital of Velmora?"
GOOD = "The capital of Velmora is Mirren."                       # gold 3, 6 words
WRONG = "The capital of Velmora is Tarn."                        # gold 1, 6 words
LONG = GOOD + " Velmora was founded in 1632."                    # gold 3 − 0.05·(11 − 9) = 2.9, 11 words


def test_bradley_terry_probability_by_hand():
    """Equal lengths: σ((3 − 1)/1) = σ(2) = 0.8807970779778823; with τ = 2: σ(1) = 0.7310585786300049.
    LONG vs GOOD with λ = 0.5 per 10 words: σ(−0.1 + 0.5·5/10) = σ(0.15) = 0.5374298453437496 — the
    annotator prefers the longer answer that gold ranks lower; with λ = 0, σ(−0.1) = 0.47502081252106."""
    a = Annotator(tau=1.0, length_bias=0.5, length_scale=10.0)
    assert a.p_prefer(Q, GOOD, WRONG) == pytest.approx(0.8807970779778823, rel=1e-12)
    assert Annotator(tau=2.0).p_prefer(Q, GOOD, WRONG) == pytest.approx(0.7310585786300049, rel=1e-12)
    assert a.p_prefer(Q, LONG, GOOD) == pytest.approx(0.5374298453437496, rel=1e-12)
    assert Annotator(tau=1.0, length_bias=0.0).p_prefer(Q, LONG, GOOD) == pytest.approx(0.47502081252106, rel=1e-12)
    assert a.p_prefer(Q, GOOD, WRONG) + a.p_prefer(Q, WRONG, GOOD) == pytest.approx(1.0, rel=1e-12)
    # thumbs up: compare with a virtual answer of gold 2.0 and the canonical length (6 words): σ(1) for GOOD
    assert a.p_thumbs_up(Q, GOOD) == pytest.approx(0.7310585786300049, rel=1e-12)
    assert sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0
    with pytest.raises(ValueError):
        Annotator(tau=0.0)


def _clt_ok(freq: float, p: float, n: int, z: float = 4.5) -> bool:
    return abs(freq - p) <= z * math.sqrt(p * (1 - p) / n)


def test_pairwise_labels_follow_the_probability():
    a = Annotator(tau=1.0)
    rng = random.Random(0)
    n = 4000
    freq = sum(a.prefer(Q, GOOD, WRONG, rng) for _ in range(n)) / n
    assert _clt_ok(freq, a.p_prefer(Q, GOOD, WRONG), n)


def test_plackett_luce_k2_is_bradley_terry_and_top1_is_softmax():
    """K = 2 rankings put y1 first with P = σ(u1 − u2); for K = 3 the first place follows softmax(u)."""
    a = Annotator(tau=1.0)
    rng = random.Random(1)
    n = 4000
    first = sum(a.rank(Q, [GOOD, WRONG], rng)[0] == 0 for _ in range(n)) / n
    assert _clt_ok(first, a.p_prefer(Q, GOOD, WRONG), n)
    ys = [GOOD, WRONG, LONG]
    u = [a.utility(Q, y) for y in ys]
    z = sum(math.exp(x) for x in u)
    counts = [0, 0, 0]
    for _ in range(n):
        r = a.rank(Q, ys, rng)
        assert sorted(r) == [0, 1, 2]
        counts[r[0]] += 1
    for i in range(3):
        assert _clt_ok(counts[i] / n, math.exp(u[i]) / z, n)


def test_pool_is_seeded_and_mixes_annotators():
    pool = AnnotatorPool(taus=(0.5, 2.0), seed=3)
    labels = [pool.prefer(Q, GOOD, WRONG) for _ in range(200)]
    again = AnnotatorPool(taus=(0.5, 2.0), seed=3)
    assert labels == [again.prefer(Q, GOOD, WRONG) for _ in range(200)]
    assert pool.reseeded(3).rng.random() == random.Random(3).random()
    # the pool's preference probability is the mean of its annotators': (σ(4) + σ(1)) / 2
    assert pool.p_prefer(Q, GOOD, WRONG) == pytest.approx((sigmoid(4.0) + sigmoid(1.0)) / 2, rel=1e-12)
    n = 4000
    rng_pool = AnnotatorPool(taus=(0.5, 2.0), seed=4)
    freq = sum(rng_pool.prefer(Q, GOOD, WRONG) for _ in range(n)) / n
    assert _clt_ok(freq, pool.p_prefer(Q, GOOD, WRONG), n)


@pytest.fixture(scope="module")
def pairs():
    return candidate_pairs(0, 3000)


def test_agreement_with_gold_is_in_the_target_band(pairs):
    """The default pool (τ = 0.5, 1, 2; λ = 0.5) agrees with gold on 70–85% of the non-tied candidate pairs,
    and the sampled labels agree at the rate the probabilities imply."""
    s = annotator_stats(pairs, AnnotatorPool(seed="t"))
    assert 0.70 <= s["expected_agreement"] <= 0.85
    assert _clt_ok(s["sampled_agreement"], s["expected_agreement"], int(s["pairs"]), z=5)


def test_length_bias_is_measurable_against_lambda_zero(pairs):
    """On pairs where gold prefers the shorter response, the biased pool picks the longer one more often
    than the unbiased pool (same pairs, same RNG draws): by more than 5 standard errors."""
    biased = annotator_stats(pairs, AnnotatorPool(seed="t"))
    fair = annotator_stats(pairs, AnnotatorPool(length_bias=0.0, seed="t"))
    n = biased["pairs_gold_prefers_shorter"]
    assert n >= 300
    diff = biased["sampled_pick_longer"] - fair["sampled_pick_longer"]
    se = math.sqrt(2 * 0.25 / n)
    assert diff > 5 * se / 2  # paired draws: the noise of the difference is far below 2 independent SEs
    assert biased["expected_pick_longer"] - fair["expected_pick_longer"] > 0.04
    # λ only shifts labels toward length: agreement drops a little, never rises
    assert biased["expected_agreement"] < fair["expected_agreement"]
