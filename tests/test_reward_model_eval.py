"""`posttrain.eval.rm`: accuracy, margin, calibration (ECE), length correlation, gold agreement — by hand."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.eval.rm import (Comparison, comparisons_of, evaluate_comparisons, evaluate_reward_model,
                               expected_calibration_error, gold_metrics, pair_accuracy, pairwise_metrics, pearson,
                               score_comparisons)


def test_ece_worked_example():
    """Δr = [ln 3, −ln 3, ln 9, 0], 2 bins of [0.5, 1]:
    confidences σ(|Δr|) = [0.75, 0.75, 0.9, 0.5]; correct = [1, 0, 1, ½].
    bin [0.5, 0.75): {0.5} → conf 0.5, acc 0.5;  bin [0.75, 1]: {0.75, 0.75, 0.9} → conf 0.8, acc 2/3.
    ECE = ¼·|0.5 − 0.5| + ¾·|2/3 − 0.8| = ¾ · 2/15 = 0.1."""
    diffs = [math.log(3), -math.log(3), math.log(9), 0.0]
    ece, bins = expected_calibration_error(diffs, n_bins=2)
    assert ece == pytest.approx(0.1, rel=1e-12)
    assert [b["count"] for b in bins] == [1, 3]
    assert bins[1]["confidence"] == pytest.approx(0.8, rel=1e-12)
    assert bins[1]["accuracy"] == pytest.approx(2 / 3, rel=1e-12)
    assert (bins[0]["lo"], bins[0]["hi"], bins[1]["hi"]) == (0.5, 0.75, 1.0)


def test_ece_is_zero_for_a_calibrated_model_and_positive_for_overconfidence():
    """Pairs with Δr = ln 4 (σ = 0.8) of which exactly 80% are right are perfectly calibrated; the same
    outcomes with Δr ×5 (σ ≈ 0.999) are overconfident by ≈ 0.2."""
    d = math.log(4)
    diffs = [d] * 8 + [-d] * 2
    assert expected_calibration_error(diffs, n_bins=10)[0] == pytest.approx(0.0, abs=1e-12)
    over = expected_calibration_error([5 * x for x in diffs], n_bins=10)[0]
    assert over == pytest.approx(1 / (1 + 4 ** -5) - 0.8, rel=1e-12)


def test_pair_accuracy_pearson_and_pairwise_metrics():
    assert pair_accuracy([1.0, -2.0, 0.0, 3.0]) == pytest.approx(2.5 / 4)
    # y = 2x + 1 → r = 1; y = −x → r = −1; x = [1,2,3], y = [1,3,2] → r = 0.5 (cov 1, var 2 each: 1/2)
    assert pearson([1, 2, 3], [3, 5, 7]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [-1, -2, -3]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    m = pairwise_metrics([1.0, 0.5, 2.0], [0.0, 1.5, 2.0], n_bins=5)
    assert m["pairs"] == 3
    assert m["accuracy"] == pytest.approx(1.5 / 3)
    assert m["mean_margin"] == pytest.approx((1.0 - 1.0 + 0.0) / 3)


def _world_comp(prompt, better, worse):
    return Comparison(prompt, better, worse, ([1], [2]), ([1], [3]))


def test_gold_metrics_with_a_hand_made_gold():
    """gold = number of words with 'good' counted double. Pairs (better, worse):
    A: 'good' (g=2, 1 word) vs 'fine fine fine' (g=3, 3 words) → gold prefers worse (the longer);
    B: 'good good' (g=4, 2 words) vs 'meh' (g=1, 1 word)      → gold agrees with the label;
    C: 'x y' vs 'z w' (g=2 each)                                → a gold tie: left out;
    D: 'a' (g=1, 1 word) vs 'b c d e' (g=4, 4 words)           → gold prefers the longer worse one.
    RM margins: A +1, B −1, C +5, D −2 → RM agrees with gold on A? no (gold prefers worse, RM better);
    B: no; D: yes → rm_agreement 1/3; labels agree with gold only on B → 1/3.
    In A, B and D gold prefers the LONGER response → pairs_gold_prefers_shorter = 0."""
    def gold(prompt, y):
        return float(sum(2 if w == "good" else 1 for w in y.split()))

    comps = [_world_comp("p", "good", "fine fine fine"), _world_comp("p", "good good", "meh"),
             _world_comp("p", "x y", "z w"), _world_comp("p", "a", "b c d e")]
    rb, rw = [1.0, 0.0, 5.0, 0.0], [0.0, 1.0, 0.0, 2.0]
    g = gold_metrics(comps, rb, rw, gold=gold)
    assert g["gold/pairs"] == 3
    assert g["gold/rm_agreement"] == pytest.approx(1 / 3)
    assert g["gold/label_agreement"] == pytest.approx(1 / 3)
    assert g["gold/pairs_gold_prefers_shorter"] == 0
    # gold vs word count over the 8 distinct completions: gold = 2,3,4,1,2,2,1,4 ; words = 1,3,2,1,2,2,1,4
    gs, ws = [2, 3, 4, 1, 2, 2, 1, 4], [1, 3, 2, 1, 2, 2, 1, 4]
    assert g["gold/length_corr"] == pytest.approx(pearson(gs, ws), rel=1e-12)


def test_gold_metrics_length_bias_counts():
    """better='a b c' (3 words, g=1) vs worse='d' (1 word, g=2): gold prefers the shorter; the label picked
    the longer; an RM with margin +1 picks the longer too → both rates 1; with margin −1 the RM rate is 0."""
    def gold(prompt, y):
        return {"a b c": 1.0, "d": 2.0}[y]

    comps = [_world_comp("p", "a b c", "d")]
    g = gold_metrics(comps, [1.0], [0.0], gold=gold)
    assert g["gold/pairs_gold_prefers_shorter"] == 1
    assert g["gold/labels_prefer_longer_when_gold_prefers_shorter"] == 1.0
    assert g["gold/rm_prefers_longer_when_gold_prefers_shorter"] == 1.0
    assert gold_metrics(comps, [0.0], [1.0], gold=gold)["gold/rm_prefers_longer_when_gold_prefers_shorter"] == 0.0


def test_evaluate_reward_model_on_rankings_and_world_pairs():
    """A ranking of K=3 evaluates as its 3 pairs; scores equal unbatched scoring; a toy-world prompt turns on
    the gold metrics (auto), a non-world one leaves them off."""
    from posttrain.data.tokenize import encode_completion, encode_dataset, encode_prompt
    from posttrain.models.heads import reward_model_from_causal, score_sequences
    from posttrain.models.presets import build_preset
    from posttrain.world.gold import gold_reward

    torch.manual_seed(0)
    lm, tok = build_preset("tiny")
    rm, tok = reward_model_from_causal(lm, tokenizer=tok, seed=2)
    rm.eval()
    rows = [{"prompt": "Hello!", "completions": ["Hi.", "Hello there, friend.", "Bye."], "ranking": [1, 0, 2]}]
    enc = encode_dataset(tok, rows, "ranking", max_len=64, max_prompt_len=32, drop_empty=False)
    comps = comparisons_of(rows, enc.examples)
    assert [(c.better, c.worse) for c in comps] == [("Hello there, friend.", "Hi."), ("Hello there, friend.", "Bye."),
                                                    ("Hi.", "Bye.")]
    rb, rw = score_comparisons(rm, tok, comps, batch_size=2)

    def one(p, c):
        ids = encode_prompt(tok, p) + encode_completion(tok, c)
        with torch.no_grad():
            return float(score_sequences(rm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)))

    assert rb == pytest.approx([one("Hello!", c.better) for c in comps], abs=1e-5)
    assert rw == pytest.approx([one("Hello!", c.worse) for c in comps], abs=1e-5)
    res = evaluate_reward_model(rm, tok, rows, max_len=64, max_prompt_len=32)
    assert res["pairs"] == 3 and res["completions"] == 3 and "gold/pairs" not in res

    from posttrain.world.kb import KnowledgeBase
    from posttrain.world.tasks import fact_task

    fact = KnowledgeBase.default().facts[0]
    task = fact_task(fact, 0)
    prompt = [{"role": "user", "content": task.prompt}]
    good = [{"role": "assistant", "content": f"{task.answer}."}]
    ramble = [{"role": "assistant", "content": "I am not sure, the weather is nice today and the river runs."}]
    wrows = [{"prompt": prompt, "chosen": ramble, "rejected": good}]
    res = evaluate_reward_model(rm, tok, wrows, max_len=128, max_prompt_len=64)
    assert gold_reward(prompt, good) > gold_reward(prompt, ramble)
    assert res["gold/pairs"] == 1 and res["gold/label_agreement"] == 0.0
    d = res["mean_margin"]
    assert res["gold/rm_agreement"] == (1.0 if d < 0 else 0.0)
    forced = evaluate_comparisons(rm, tok, comps, gold=False)
    assert "gold/pairs" not in forced


def test_rm_check_relabelling_keeps_pairs_and_follows_gold_without_length_bias():
    """The λ = 0 control of `python -m posttrain.eval.rm_check`: same pairs (order may flip), deterministic, and
    with a huge gold gap the (noisy) annotators pick the gold-better response regardless of its length."""
    from posttrain.eval.rm_check import relabel_without_length_bias
    from posttrain.world.gold import gold_reward
    from posttrain.world.kb import KnowledgeBase
    from posttrain.world.tasks import fact_task

    task = fact_task(KnowledgeBase.default().facts[0], 0)
    prompt = [{"role": "user", "content": task.prompt}]
    good = [{"role": "assistant", "content": f"{task.answer}."}]
    bad = [{"role": "assistant", "content": "Some say the winters are cold. Old songs are still sung at night. "
                                            "Stories are told by the fire and the river runs to the sea."}]
    assert gold_reward(prompt, good) - gold_reward(prompt, bad) > 2
    rows = [{"prompt": prompt, "chosen": bad, "rejected": good}] * 40
    out = relabel_without_length_bias(rows, seed=3)
    assert out == relabel_without_length_bias(rows, seed=3)
    assert all({id(r["chosen"]), id(r["rejected"])} == {id(good), id(bad)} for r in out)
    assert sum(r["chosen"] is good for r in out) >= 30
