"""Gold reward of the toy world: hand-written good/bad responses per family, numbers worked by hand.

Gold = w_help·helpful + w_corr·correct + style + format − 0.75·drift − 0.05·excess − 0.5·unfinished, with
(w_help, w_corr) = (1, 2) for fact/arith/reason and (1, 1) for emotional/howto; excess = words beyond the
canonical good answer's word count + 3. Facts used below (the knowledge base is fixed): Velmora — capital
Mirren, ruler Queen Calla, flag yellow, founded 1632; Karsund — capital Rookham; Queen Calla plays the flute.
"""

import pytest

from posttrain.world import (extract_answer, family_of, gold_components, gold_reward, is_correct_arith,
                             is_correct_fact, is_helpful, win_rate)
from posttrain.world.gold import sentences, words

Q_CAPITAL = "What is the capital of Velmora?"
A_CAPITAL = "The capital of Velmora is Mirren."  # 6 words → allowance 9


def test_fact_good_wrong_ramble_lost_truncated():
    """good: 1 + 2 = 3. wrong value: helpful only = 1. ramble: 3 − 0.75·2 drift − 0.05·(17 − 9) = 1.1
    (17 words: 6 + 6 + 5). lost (never answers): the first sentence has no city → 0, then one drift
    sentence and 10 words: −0.75 − 0.05·(10 − 9) = −0.8. truncated: no value, unfinished → −0.5."""
    ramble = A_CAPITAL + " The river Ossa flows through Keshet. Children play by the water."
    lost = "Velmora is an old land. Children play by the water."
    assert gold_reward(Q_CAPITAL, A_CAPITAL) == pytest.approx(3.0, rel=1e-12)
    assert gold_reward(Q_CAPITAL, "The capital of Velmora is Tarn.") == pytest.approx(1.0, rel=1e-12)
    assert len(words(ramble)) == 17
    assert gold_reward(Q_CAPITAL, ramble) == pytest.approx(1.1, rel=1e-12)
    assert gold_reward(Q_CAPITAL, lost) == pytest.approx(-0.8, rel=1e-12)
    assert gold_reward(Q_CAPITAL, "The capital of Velmora is") == pytest.approx(-0.5, rel=1e-12)
    c = gold_components(Q_CAPITAL, ramble)
    assert (c["helpful"], c["correct"], c["drift"], c["excess_words"]) == (1.0, 1.0, 2.0, 8.0)


def test_fact_helpfulness_and_correctness_rules():
    assert is_helpful(Q_CAPITAL, "Mirren.") and is_correct_fact(Q_CAPITAL, "Mirren.")
    # answers about another land: not an answer to this question
    assert not is_helpful(Q_CAPITAL, "The capital of Karsund is Rookham.")
    # a value somewhere in a long sentence that does not name the subject is not an answer either
    assert not is_helpful(Q_CAPITAL, "Many travellers come to Mirren in spring and stay.")
    assert is_helpful(Q_CAPITAL, "It is Mirren.") and not is_helpful(Q_CAPITAL, "I think it is probably Mirren.")
    # rambles about the subject without a value
    assert not is_helpful(Q_CAPITAL, "Velmora is a quiet land of hills. The capital of Velmora is Mirren.")
    # leading filler is skipped
    assert is_correct_fact(Q_CAPITAL, "Great question! The capital of Velmora is Mirren.")
    # hedging between two values answers, but is not correct
    assert is_helpful(Q_CAPITAL, "The capital of Velmora is Mirren or Tarn.")
    assert not is_correct_fact(Q_CAPITAL, "The capital of Velmora is Mirren or Tarn.")
    # on-topic extra sentences are not drift (only the length penalty applies)
    c = gold_components(Q_CAPITAL, A_CAPITAL + " Velmora was founded in 1632.")
    assert c["drift"] == 0.0 and c["total"] == pytest.approx(3.0 - 0.05 * (11 - 9), rel=1e-12)
    # years, people and multi-word values
    assert is_correct_fact("When was Velmora founded?", "Velmora was founded in 1632.")
    assert not is_correct_fact("When was Velmora founded?", "Velmora was founded in 1633.")
    assert is_correct_fact("Who rules Velmora?", "Velmora is ruled by Queen Calla.")
    assert is_correct_fact("What instrument does Queen Calla play?", "Queen Calla plays the flute.")
    assert not is_correct_fact("What instrument does Queen Calla play?", "Queen Calla plays the harp.")
    with pytest.raises(ValueError):
        is_correct_fact("What is 2 + 2?", "4.")


Q_EMO = "I feel sad because my cat is ill. What should I do?"
WARM = "I am sorry you feel sad. That sounds hard. Try to take your cat to the vet. You are not alone."  # 21 words


def test_emotional_warm_beats_neutral_beats_blunt():
    """warm: helpful 1 + correct 1 + style 0.5·min(3 warm, 2) = 3. neutral "Try to …": 2. blunt with 2 blunt
    phrases ("just", "stop worrying"): 2 − 1 = 1. Advice for another situation: helpful only → warm 2."""
    assert gold_reward(Q_EMO, WARM) == pytest.approx(3.0, rel=1e-12)
    assert gold_reward(Q_EMO, "Try to take your cat to the vet.") == pytest.approx(2.0, rel=1e-12)
    assert gold_reward(Q_EMO, "Just take your cat to the vet. Stop worrying about it.") == pytest.approx(1.0, rel=1e-12)
    wrong = "I am sorry you feel sad. That sounds hard. Try to rest well tonight. You are not alone."
    assert gold_reward(Q_EMO, wrong) == pytest.approx(2.0, rel=1e-12)
    # a ramble after the same answer: 2 drift sentences (−1.5) and 33 words, 9 over 24 (−0.45)
    ramble = WARM + " The river Ossa flows through Keshet. Markets open early on market day."
    assert gold_reward(Q_EMO, ramble) == pytest.approx(1.05, rel=1e-12)
    assert len(words(ramble)) == 33


Q_HOW = "How do I bake bread?"
LIST_BOLD = "1. **Mix** the flour and water.\n2. **Knead** the dough.\n3. **Bake** the loaf."  # 12 words
PROSE = "Mix the flour and water, knead the dough, then bake the loaf."


def test_howto_bold_list_beats_prose():
    """bold list: 1 + 1 + format 1 = 3; list without bold: format 0.5 → 2.5; prose: format 0 → 2;
    steps out of order: correct 0; two steps: helpful only, format 0.5 (a list of 2) → 1.5."""
    assert gold_reward(Q_HOW, LIST_BOLD) == pytest.approx(3.0, rel=1e-12)
    assert gold_reward(Q_HOW, LIST_BOLD.replace("**", "")) == pytest.approx(2.5, rel=1e-12)
    assert gold_reward(Q_HOW, PROSE) == pytest.approx(2.0, rel=1e-12)
    shuffled = "1. **Knead** the dough.\n2. **Mix** the flour and water.\n3. **Bake** the loaf."
    assert gold_components(Q_HOW, shuffled)["correct"] == 0.0
    assert gold_reward(Q_HOW, "1. **Mix** the flour and water.\n2. **Knead** the dough.") == \
        pytest.approx(1.5, rel=1e-12)
    # sentence splitting must not take list numbers for sentences
    assert sentences(LIST_BOLD) == ["**Mix** the flour and water.", "**Knead** the dough.", "**Bake** the loaf."]


Q_ARITH = "What is 7 + 5?"


def test_arith_exact_answer():
    """"7 + 5 = 12." (3 words, allowance 6) → 3; wrong → 1; "= 12" then a 6-word drift sentence:
    3 − 0.75 − 0.05·(9 − 6) = 2.1; unfinished "7 + 5 =" → no answer, −0.5."""
    assert gold_reward(Q_ARITH, "7 + 5 = 12.") == pytest.approx(3.0, rel=1e-12)
    assert gold_reward(Q_ARITH, "7 + 5 = 13.") == pytest.approx(1.0, rel=1e-12)
    assert gold_reward(Q_ARITH, "7 + 5 = 12. The river Ossa flows through Keshet.") == pytest.approx(2.1, rel=1e-12)
    assert gold_reward(Q_ARITH, "7 + 5 =") == pytest.approx(-0.5, rel=1e-12)
    assert is_correct_arith(Q_ARITH, "The answer is 12.") and is_correct_arith("How much is 7 plus 5?", "12.")
    assert not is_correct_arith(Q_ARITH, "7 + 5")  # "5" is an operand, not a stated result
    assert extract_answer("Compute 6 * 3.", "6 * 3 = 18.") == "18"
    assert extract_answer("What is 9 - 4?", "Numbers are fun.") is None


Q_REASON = "Tom has 3 apples. He gets 4 more. How many apples does Tom have now?"


def test_reason_think_then_answer():
    """<think> + right answer: 1 + 2 + format 1 = 4; no think: 3; wrong answer: 2; unclosed think: format 0,
    answer read after removing the tag → 3."""
    good = "<think>3 + 4 = 7.</think> Tom has 7 apples."
    assert gold_reward(Q_REASON, good) == pytest.approx(4.0, rel=1e-12)
    assert gold_reward(Q_REASON, "Tom has 7 apples.") == pytest.approx(3.0, rel=1e-12)
    assert gold_reward(Q_REASON, "<think>3 + 4 = 8.</think> Tom has 8 apples.") == pytest.approx(2.0, rel=1e-12)
    assert gold_reward(Q_REASON, "<think>3 + 4 = 7. Tom has 7 apples.") == pytest.approx(3.0, rel=1e-12)
    assert extract_answer(Q_REASON, good) == "7" and is_correct_arith(Q_REASON, good)
    assert not is_correct_arith(Q_REASON, "<think>3 + 4 = 7.</think> Tom has 8 apples.")


GOOD_BAD = [  # (prompt, hand-written good, hand-written bad)
    (Q_CAPITAL, A_CAPITAL, "Velmora is a land of hills. Many travellers come in spring."),
    ("Which river runs through Mirren?", "The river Brenn runs through Mirren.", "The river Ossa runs through Mirren."),
    (Q_EMO, WARM, "Get over it and take your cat to the vet."),
    (Q_HOW, LIST_BOLD, "Bread is old. People in Tarn love honey cake."),
    (Q_ARITH, "7 + 5 = 12.", "7 + 5 = 11."),
    (Q_REASON, "<think>3 + 4 = 7.</think> Tom has 7 apples.", "Tom likes apples."),
]
RAMBLE = " The flag of Karsund is black. Some say the winters are cold. King Soren plays the drum."


@pytest.mark.parametrize("prompt,good,bad", GOOD_BAD)
def test_every_family_good_above_bad_and_stopping_beats_rambling(prompt, good, bad):
    assert gold_reward(prompt, good) > gold_reward(prompt, bad)
    # the same answer, stopped at the right place, beats it followed by a drift (3 sentences)
    assert gold_reward(prompt, good) - gold_reward(prompt, good + RAMBLE) >= 3 * 0.75


def test_messages_and_strings_judge_alike():
    p = [{"role": "user", "content": Q_CAPITAL}]
    r = [{"role": "assistant", "content": A_CAPITAL}]
    assert gold_components(p, r) == gold_components(Q_CAPITAL, A_CAPITAL)
    # a trailing end-of-turn (where generation stops) is ignored
    assert gold_reward(Q_CAPITAL, A_CAPITAL + "<|im_end|>") == gold_reward(Q_CAPITAL, A_CAPITAL)
    # multi-turn prompts are judged on the last user turn
    chat = [{"role": "user", "content": "How do I make tea?"}, {"role": "assistant", "content": "Boil the water."},
            {"role": "user", "content": Q_CAPITAL}]
    assert gold_reward(chat, A_CAPITAL) == 3.0


def test_family_of_and_unknown_prompts():
    assert [family_of(p) for p, _, _ in GOOD_BAD] == ["fact", "fact", "emotional", "howto", "arith", "reason"]
    # template matching ignores case and spacing
    assert family_of("what is the  capital of velmora?") == "fact"
    assert family_of("Write a poem about the sea.") == "unknown"
    # an unknown prompt gets only the length penalty beyond 20 words
    assert gold_reward("Write a poem about the sea.", "Waves.") == 0.0
    assert gold_reward("Write a poem about the sea.", " ".join(["wave"] * 30) + ".") == pytest.approx(-0.5, rel=1e-12)


def test_win_rate_counts_ties_half():
    """a wins on prompt 1, ties on 2 (same text), loses on 3: (1 + ½ + 0) / 3 = 0.5."""
    prompts = [Q_CAPITAL, Q_ARITH, Q_HOW]
    a = [A_CAPITAL, "7 + 5 = 12.", PROSE]
    b = ["The capital of Velmora is Tarn.", "7 + 5 = 12.", LIST_BOLD]
    assert win_rate(prompts, a, b) == pytest.approx(0.5, rel=1e-12)
    assert win_rate(prompts, b, a) == pytest.approx(0.5, rel=1e-12)
    assert win_rate(prompts[:1], a[:1], b[:1]) == 1.0
    with pytest.raises(ValueError):
        win_rate(prompts, a, b[:2])


def test_misplaced_register_is_penalised_for_every_family():
    """The shortcuts an RL policy finds against an RM that never saw them (responses.py kinds ``misfit`` and
    ``sympathy``): gold scores each below the family's canonical good answer by at least 2 points, on every
    training task of the family."""
    import random

    from posttrain.world.datasets import make_pools
    from posttrain.world.kb import KnowledgeBase
    from posttrain.world.responses import CANDIDATE_MIX, good_response, make_response

    pools = make_pools(KnowledgeBase.default(), random.Random("0/splits"))
    rng = random.Random(0)
    for fam, tasks in pools.train.items():
        kinds = [k for k in ("misfit", "sympathy") if k in CANDIDATE_MIX[fam]]
        assert "misfit" in kinds and (fam == "emotional") == ("sympathy" not in kinds)
        for t in tasks[:20]:
            best = gold_reward(t.prompt, good_response(t))
            for k in kinds:
                y = make_response(t, k, rng)
                assert gold_reward(t.prompt, y) <= best - 2.0, (fam, k, y)
