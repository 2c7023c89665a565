"""posttrain.eval.policy: scoring by hand-written completions, and sampling invariances on a tiny model."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from posttrain.eval import EvalResult, evaluate_policy, world_eval_rows
from posttrain.eval.policy import score_completions
from posttrain.models import build_preset
from posttrain.world.gold import gold_reward
from posttrain.world.kb import KnowledgeBase
from posttrain.world.tasks import arith_task, emotional_task, fact_task, howto_task, reason_task


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


HOWTO = _user(howto_task("make tea").prompt)            # "How do I make tea?"
ARITH = _user(arith_task(7, "+", 5).prompt)             # "What is 7 + 5?"
REASON = _user(reason_task("add", (3, 4)).prompt)       # "Tom has 3 apples. He gets 4 more. ..."
EMO = _user(emotional_task("sad", 1).prompt)            # "I feel sad because my friend moved away. ..."

GOOD_TEA = "1. **Boil** the water.\n2. **Add** the tea leaves.\n3. **Wait** three minutes."
PLAIN_TEA = "Boil the water, add the tea leaves and wait three minutes."
LIST_TEA = "1. Boil the water.\n2. Add the tea leaves.\n3. Wait three minutes."


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_preset("tiny", seed=0)
    return model, tok


@pytest.fixture(scope="module")
def tiny_ref(tiny):
    return build_preset("tiny", seed=1, tokenizer=tiny[1])[0]


def test_family_measures_hand_numbers():
    """Hand-written completions, measures worked by hand:

    howto: bold list (structured, list), plain sentence (neither), list without bold (list only)
      → howto/structured = 1/3, howto/list = 2/3;
    arith: "7 + 5 = 12." right, "7 + 5 = 13." wrong → arith/exact_match = 1/2;
    reason: "<think>3 + 4 = 7.</think> Tom has 7 apples." (format, right), "Tom has 7 apples." (no format,
      right), "<think>3 + 4 = 7</think> Tom has 8 apples now." (format, wrong)
      → reason/format = 2/3, reason/exact_match = 2/3;
    emotional: warm good answer (style +1: "i am sorry", "sounds hard" — capped at 2 warm phrases) and a
      blunt one ("just": −0.5) → emotional/warmth = (1 − 0.5)/2 = 0.25.
    """
    prompts = [HOWTO] * 3 + [ARITH] * 2 + [REASON] * 3 + [EMO] * 2
    completions = [GOOD_TEA, PLAIN_TEA, LIST_TEA, "7 + 5 = 12.", "7 + 5 = 13.",
                   "<think>3 + 4 = 7.</think> Tom has 7 apples.", "Tom has 7 apples.",
                   "<think>3 + 4 = 7</think> Tom has 8 apples now.",
                   "I am sorry you feel sad. That sounds hard. Try to call your friend every week. You are not alone.",
                   "Just call your friend every week."]
    scores, m = score_completions(prompts, completions)
    assert m["n"] == 10
    assert m["howto/structured"] == pytest.approx(1 / 3, rel=1e-12)
    assert m["howto/list"] == pytest.approx(2 / 3, rel=1e-12)
    assert m["arith/exact_match"] == 0.5
    assert m["reason/format"] == pytest.approx(2 / 3, rel=1e-12)
    assert m["reason/exact_match"] == pytest.approx(2 / 3, rel=1e-12)
    assert m["emotional/warmth"] == 0.25
    # gold: per sample equals the world's gold reward; the mean is their mean; howto: 3, 2, 2.5 by hand
    assert scores["gold"][:3] == [3.0, 2.0, 2.5]
    assert scores["gold"] == [gold_reward(p, c) for p, c in zip(prompts, completions)]
    assert m["gold"] == pytest.approx(sum(scores["gold"]) / 10, rel=1e-12)
    assert m["howto/gold"] == pytest.approx(2.5, rel=1e-12)
    assert m["howto/n"] == 3


def test_fact_helpfulness_and_non_world_prompts():
    fact = KnowledgeBase.default().facts[0]
    task = fact_task(fact)
    scores, m = score_completions([_user(task.prompt)] * 2, [f"The {fact.attribute} of {fact.subject} is "
                                                              f"{fact.value}.", "I like the sea."])
    assert m["fact/helpful"] == 0.5 and m["fact/correct"] == 0.5
    # prompts that are not from the toy world: no gold keys unless forced
    _, m2 = score_completions(["Write a haiku."], ["Leaves fall."])
    assert "gold" not in m2 and m2["n"] == 1
    _, m3 = score_completions(["Write a haiku."], ["Leaves fall."], gold=True)
    assert "gold" in m3


def test_win_rate_ties_count_half_and_reward_sources():
    """Samples vs baseline: good > plain (win), same text (tie), plain < good (loss), bold list > list
    without bold (win) → gold win rate (1 + ½ + 0 + 1)/4 = 0.625. The length reward (characters) judged on
    the same pairs: len(GOOD_TEA)=76 > len(PLAIN_TEA)=58 (1), tie (½), 58 < 76 (0), 76 > 64 (1) → 0.625."""
    prompts = [HOWTO] * 4
    comps = [GOOD_TEA, PLAIN_TEA, PLAIN_TEA, GOOD_TEA]
    base = [PLAIN_TEA, PLAIN_TEA, GOOD_TEA, LIST_TEA]
    assert (len(GOOD_TEA), len(PLAIN_TEA), len(LIST_TEA)) == (76, 58, 64)

    class Chars:
        name = "chars"

        def __call__(self, prompts, completions, **columns):
            return [float(len(c)) for c in completions]

    scores, m = score_completions(prompts, comps, baseline=base, rewards={"chars": Chars()})
    assert scores["win"] == [1.0, 0.5, 0.0, 1.0]
    assert m["win_rate"] == 0.625
    assert m["win_rate/chars"] == 0.625
    assert m["reward/chars"] == (76 + 58 + 58 + 76) / 4
    assert m["baseline/reward/chars"] == (58 + 58 + 76 + 64) / 4
    assert m["baseline/gold"] == pytest.approx((2 + 2 + 3 + 2.5) / 4, rel=1e-12)


def test_self_baseline_and_self_reference(tiny):
    """A model against itself: the same seed gives the same completions (common random numbers), so every
    prompt ties (win rate exactly ½) and the KL to itself is exactly 0 (k1 and k3)."""
    model, tok = tiny
    prompts = [HOWTO, ARITH, REASON]
    r = evaluate_policy(model, tok, prompts, baseline=model, reference=model,
                        generation={"max_new_tokens": 6}, num_samples=2, seed=3)
    assert isinstance(r, EvalResult)
    assert r.metrics["n"] == 6 and len(r.completions) == 6
    assert r.baseline_completions == r.completions
    assert r.metrics["win_rate"] == 0.5
    assert r.metrics["kl"] == 0.0 and r.metrics["kl_k3"] == 0.0
    assert all(x == 0.0 for x in r.scores["kl"])
    assert r.prompts == [HOWTO, HOWTO, ARITH, ARITH, REASON, REASON]
    assert r.families == ["howto", "howto", "arith", "arith", "reason", "reason"]
    assert all(1 <= n <= 6 for n in r.lengths)
    assert r.metrics["length"] == sum(r.lengths) / 6
    rows = r.rows()
    assert len(rows) == 6 and json.loads(json.dumps(rows))[0]["completion"] == r.completions[0]


def test_same_seed_same_samples_other_seed_differs(tiny):
    model, tok = tiny
    kw = dict(generation={"max_new_tokens": 8}, num_samples=3)
    a = evaluate_policy(model, tok, [ARITH, HOWTO], seed=0, **kw)
    b = evaluate_policy(model, tok, [ARITH, HOWTO], seed=0, **kw)
    c = evaluate_policy(model, tok, [ARITH, HOWTO], seed=1, **kw)
    assert a.completions == b.completions
    assert a.completions != c.completions
    # batching prompts differently does not change what is measured per sample count
    d = evaluate_policy(model, tok, [ARITH, HOWTO], seed=0, batch_size=1, **kw)
    assert len(d.completions) == 6


def test_generation_backend_reaches_the_sampler(tiny, monkeypatch):
    """``generation.backend`` is passed through: "static" samples what "native" samples (same seed), and
    the static decoder is the one that ran."""
    from posttrain.rollout import sampler

    model, tok = tiny
    seen = []
    original = sampler._NativeDecoder.__init__
    def init(self, *a, static=False, **k):
        seen.append(static)
        original(self, *a, static=static, **k)

    monkeypatch.setattr(sampler._NativeDecoder, "__init__", init)
    a = evaluate_policy(model, tok, [ARITH, HOWTO], seed=0, generation={"max_new_tokens": 8}, num_samples=2)
    b = evaluate_policy(model, tok, [ARITH, HOWTO], seed=0, generation={"max_new_tokens": 8, "backend": "static"},
                        num_samples=2)
    assert seen == [False, True]
    assert a.completions == b.completions


def test_sequence_kl_matches_unpadded_forward(tiny, tiny_ref):
    """Per-sample k1 = Σ over completion tokens of log π(y_t) − log π_ref(y_t), recomputed here by running
    each (prompt + completion) ALONE (no padding) through both float64 models; k3 likewise."""
    model = build_preset("tiny", seed=0, tokenizer=tiny[1], dtype=torch.float64)[0]
    ref = build_preset("tiny", seed=1, tokenizer=tiny[1], dtype=torch.float64)[0]
    tok = tiny[1]
    prompts = [HOWTO, "Hi", ARITH]  # different prompt lengths → left padding in the batch
    r = evaluate_policy(model, tok, prompts, reference=ref, generation={"max_new_tokens": 5}, seed=0)
    from posttrain.data.tokenize import encode_prompt

    for i, (p, c_ids) in enumerate(zip(prompts, _completion_ids(model, tok, prompts))):
        ids = torch.tensor([encode_prompt(tok, p) + c_ids])  # [1, L]
        P = ids.shape[1] - len(c_ids)
        with torch.no_grad():
            lp = model(ids).logits.log_softmax(-1)[0, P - 1:-1].gather(-1, ids[0, P:, None])[:, 0]
            lq = ref(ids).logits.log_softmax(-1)[0, P - 1:-1].gather(-1, ids[0, P:, None])[:, 0]
        k1 = float((lp - lq).sum())
        k3 = float((torch.expm1(lq - lp) - (lq - lp)).sum())
        assert r.scores["kl"][i] == pytest.approx(k1, rel=1e-6, abs=1e-9)
        assert r.scores["kl_k3"][i] == pytest.approx(k3, rel=1e-6, abs=1e-9)


def _completion_ids(model, tok, prompts):
    """The token ids evaluate_policy sampled (same seed, same sampler call)."""
    from posttrain.data.tokenize import encode_prompt
    from posttrain.models.tokenizer import stop_token_ids
    from posttrain.rollout.sampler import sample_n

    g = torch.Generator().manual_seed(0)
    ro = sample_n(model, [encode_prompt(tok, p) for p in prompts], 1, max_new_tokens=5, temperature=1.0,
                  stop_token_ids=stop_token_ids(tok), pad_token_id=tok.pad_token_id, tokenizer=tok, generator=g)
    return ro.completion_ids


def test_monte_carlo_kl_converges_to_exact_kl(tiny, tiny_ref):
    """One new token from a one-token-long context: the exact KL is Σ_v p(v) (log p(v) − log q(v)) of the two
    next-token distributions. The Monte-Carlo means of k1 and of k3 over 3000 samples are within 4 standard
    errors of it (both estimators are unbiased)."""
    model, tok = tiny
    ref = copy.deepcopy(tiny_ref)
    with torch.no_grad():
        ref.lm_head.weight.mul_(8.0)  # a sharper reference: KL well away from 0
    prompt = "The"
    r = evaluate_policy(model, tok, [prompt], reference=ref, generation={"max_new_tokens": 1},
                        num_samples=3000, seed=0)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        lp = model(ids).logits[0, -1].double().log_softmax(-1)
        lq = ref(ids).logits[0, -1].double().log_softmax(-1)
    exact = float((lp.exp() * (lp - lq)).sum())
    assert exact > 0.2
    n = len(r.scores["kl"])
    for key in ("kl", "kl_k3"):
        xs = r.scores[key]
        mean = sum(xs) / n
        se = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)
        assert abs(mean - exact) < 4 * se, (key, mean, exact, se)
    assert r.metrics["kl"] == pytest.approx(sum(r.scores["kl"]) / n, rel=1e-12)


def test_rows_pass_columns_to_rewards_and_baseline_lists(tiny):
    model, tok = tiny
    seen = {}

    class Spy:
        name = "spy"

        def __call__(self, prompts, completions, **columns):
            seen.update(columns)
            return [1.0 if a == "12" else 0.0 for a in columns["answer"]]

    rows = [{"prompt": ARITH, "answer": "12", "family": "arith"},
            {"prompt": HOWTO, "answer": "x", "family": "howto", "seen": True}]
    r = evaluate_policy(model, tok, rows, rewards={"spy": Spy()}, baseline=["7 + 5 = 12.", GOOD_TEA],
                        generation={"max_new_tokens": 4}, num_samples=2)
    assert seen["answer"] == ["12", "12", "x", "x"]  # repeated per sample; 'seen' is not in every row
    assert "seen" not in seen
    assert r.metrics["reward/spy"] == 0.5
    assert r.baseline_completions == ["7 + 5 = 12.", "7 + 5 = 12.", GOOD_TEA, GOOD_TEA]
    # a random model never beats the good answers
    assert r.metrics["win_rate"] == 0.0
    with pytest.raises(ValueError):
        evaluate_policy(model, tok, rows, baseline=["only one"], generation={"max_new_tokens": 2})


def test_world_eval_rows_reads_prompt_files(tmp_path):
    (tmp_path / "prompts").mkdir()
    for fam, prompt in (("fact", "Q1"), ("arith", ARITH)):
        rows = [{"prompt": prompt if isinstance(prompt, list) else _user(prompt), "family": fam, "answer": str(k)}
                for k in range(3)]
        if fam == "fact":
            for r in rows:
                r["seen"] = True
        (tmp_path / "prompts" / f"{fam}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = world_eval_rows(tmp_path, ("fact", "arith"), per_family=2)
    assert [r["family"] for r in rows] == ["fact", "fact", "arith", "arith"]
    assert [r["answer"] for r in rows] == ["0", "1", "0", "1"]
