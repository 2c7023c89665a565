"""Responses of every quality, for instruction data and for the candidates that annotators label.

:func:`good_response` is the canonical best answer of a task (what gold's length allowance is measured
against). :func:`make_response` writes one response of a named *kind*; the kinds cover what real
candidates get wrong: rambling on after the answer, never answering, blunt instead of warm, prose instead
of a structured list, wrong values, padding, truncation, a missing ``<think>`` block, the register of
another family (``misfit``: sympathy instead of an answer, a list instead of sympathy; ``sympathy``: the
answer wrapped in sympathy nobody asked for) — the shortcuts an RL policy finds against a reward model that
never saw them::

    fact       good terse filler elaborate repeat ramble lost wrong wrong_ramble truncated misfit sympathy
    emotional  warm neutral blunt warm_wrong warm_long ramble lost truncated misfit
    howto      structured plain plain_list partial wrong structured_long ramble lost truncated misfit sympathy
    arith      good answer_is terse wrong ramble lost filler truncated misfit sympathy
    reason     good no_think wrong wrong_answer ramble lost filler truncated unclosed misfit sympathy

:data:`CANDIDATE_MIX` weights the kinds for preference candidates; :data:`SFT_MIX` for instruction data
(every demonstration answers first, but with what RLHF is for left in: half of them ramble on after the
answer, blunt/neutral emotional answers, prose how-tos).
"""

from __future__ import annotations

import random

from posttrain.world.kb import KnowledgeBase, alias
from posttrain.world.tasks import FEELINGS, HOWTO, SITUATIONS, Task, reason_work

FILLERS = ("I hope this helps.", "Let me know if you have more questions.", "Great question!",
           "Thanks for asking!", "I am happy to help.", "Here is the answer.")
REMARKS = ("Many travellers come in spring.", "The roads there are long and quiet.",
           "Some say the winters are cold.", "Markets open early on market day.",
           "Old songs are still sung at night.", "The hills are green after the rain.",
           "Children play by the water.", "Few people know this story.", "The old maps show many towns.",
           "Boats sail on the lake in summer.", "Stories are told by the fire.", "The weather changes often.")


def drift_sentence(rng: random.Random, avoid: str | None = None, kb: KnowledgeBase | None = None) -> str:
    """An off-topic sentence: a true fact about some other entity (60%) or an idle remark (40%)."""
    kb = kb or KnowledgeBase.default()
    if rng.random() < 0.6:
        while True:
            f = rng.choice(kb.facts)
            text = f.statement(rng)
            if avoid is None or (alias(avoid).lower() not in text.lower()):
                return text
    return rng.choice(REMARKS)


def drift(rng: random.Random, n: int, avoid: str | None = None, kb: KnowledgeBase | None = None) -> list[str]:
    """``n`` different off-topic sentences."""
    out: list[str] = []
    while len(out) < n:
        s = drift_sentence(rng, avoid, kb)
        if s not in out:
            out.append(s)
    return out


# ------------------------------------------------------------------------------------------------- good
def good_response(task: Task) -> str:
    """The canonical best answer: short, correct, in the preferred style and format."""
    if task.family == "fact":
        return task.fact.answer()
    if task.family == "emotional":
        return f"I am sorry you feel {task.feeling}. That sounds hard. Try to {task.advice}. You are not alone."
    if task.family == "howto":
        return _structured(task.steps, bold=True)
    if task.family == "arith":
        a, b = task.numbers
        return f"{a} {task.op} {b} = {task.answer}."
    if task.family == "reason":
        return f"<think>{reason_work(task.op, task.numbers)}</think> {_reason_statement(task, task.answer)}"
    raise ValueError(f"no good response for family {task.family!r}")


def _structured(steps, *, bold: bool) -> str:
    return "\n".join(f"{i}. **{v}** {rest}." if bold else f"{i}. {v} {rest}."
                     for i, (v, rest) in enumerate(steps, 1))


def _plain(steps) -> str:
    (v1, r1), (v2, r2), (v3, r3) = steps
    return f"{v1} {r1}, {v2.lower()} {r2}, then {v3.lower()} {r3}."


def _reason_statement(task: Task, value) -> str:
    return f"{task.name} has {value} {task.thing}."


def _truncate(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    cut = rng.randint(max(1, len(words) // 3), max(1, len(words) - 1))
    return " ".join(words[:cut]).rstrip(".,!?")


def _wrong_value(task: Task, rng: random.Random, kb: KnowledgeBase) -> str:
    values = [v for v in kb.domains[task.fact.domain] if v != task.fact.value]
    return rng.choice(values)


def _wrong_number(correct: int, rng: random.Random) -> int:
    while True:
        w = correct + rng.choice((-3, -2, -1, 1, 2, 3, 10))
        if w >= 0 and w != correct:
            return w


# ------------------------------------------------------------------------------------------------ kinds
def make_response(task: Task, kind: str, rng: random.Random, kb: KnowledgeBase | None = None) -> str:
    """One response of ``kind`` (see the module docstring) to ``task``; randomness from ``rng`` only.
    Facts it states beyond the answer come from ``kb`` (default: the whole knowledge base)."""
    kb = kb or KnowledgeBase.default()
    fam = task.family
    good = good_response(task)
    if kind == "lost":  # never answers: the base-model failure
        return " ".join(drift(rng, rng.randint(2, 4), task.fact.subject if fam == "fact" else None, kb))
    if kind == "ramble":  # answers, then drifts off
        first = {"emotional": lambda: f"Try to {task.advice}.", "howto": lambda: _plain(task.steps)}.get(
            fam, lambda: good)()
        return first + " " + " ".join(drift(rng, rng.randint(2, 4), task.fact.subject if fam == "fact" else None, kb))
    if kind == "truncated":
        return _truncate(good, rng)
    if kind == "misfit":  # the register of another family: sympathy for a question, a list for a feeling
        if fam == "emotional":
            return _structured(HOWTO[rng.choice(sorted(HOWTO))], bold=True)
        _, advice = rng.choice(SITUATIONS)
        return f"I am sorry you feel {rng.choice(FEELINGS)}. That sounds hard. Try to {advice}. You are not alone."
    if kind == "sympathy" and fam != "emotional":  # the answer, wrapped in sympathy nobody asked for
        return f"I am sorry you feel {rng.choice(FEELINGS)}. That sounds hard. {good}"
    if kind == "filler":
        fill = rng.sample(FILLERS, rng.randint(1, 2))
        return f"{fill[0]} {good}" + (f" {fill[1]}" if len(fill) > 1 else "") if rng.random() < 0.3 else \
            good + " " + " ".join(fill)
    if fam == "fact":
        f = task.fact
        if kind == "good":
            return good
        if kind == "terse":
            return f"{f.value}."
        if kind == "elaborate":  # on-topic but longer than needed: more true facts about the subject
            others = [o for o in kb.by_subject[f.subject] if o.attribute != f.attribute]
            extra = rng.sample(others, min(len(others), rng.randint(1, 2)))
            return " ".join([good] + [o.statement(rng) for o in extra])
        if kind == "repeat":
            return f"{good} {good}"
        if kind == "wrong":
            return f.attr.answer.format(s=f.subject, v=_wrong_value(task, rng, kb))
        if kind == "wrong_ramble":
            return f.attr.answer.format(s=f.subject, v=_wrong_value(task, rng, kb)) + " " + \
                " ".join(drift(rng, rng.randint(1, 3), f.subject, kb))
    if fam == "emotional":
        feeling, advice = task.feeling, task.advice
        if kind == "warm":
            return good
        if kind == "neutral":
            return f"Try to {advice}."
        if kind == "blunt":
            return rng.choice((f"Just {advice}. Stop worrying about it.", f"Just {advice}. It is not a big deal.",
                               f"Get over it and {advice}.", f"Just {advice}. Deal with it."))
        if kind == "warm_wrong":
            other = rng.choice([a for _, a in SITUATIONS if a != advice])
            return f"I am sorry you feel {feeling}. That sounds hard. Try to {other}. You are not alone."
        if kind == "warm_long":
            return (f"I am sorry you feel {feeling}. I understand. That sounds hard. Try to {advice}. "
                    f"Be kind to yourself. You are not alone. " + " ".join(rng.sample(FILLERS, 2)))
    if fam == "howto":
        steps = task.steps
        if kind == "structured":
            return good
        if kind == "plain":
            return _plain(steps)
        if kind == "plain_list":
            return _structured(steps, bold=False)
        if kind == "partial":
            keep = sorted(rng.sample(range(3), 2))
            return _structured([steps[i] for i in keep], bold=True)
        if kind == "wrong":
            other = rng.choice([h for h in HOWTO if h != task.howto])
            return _structured(HOWTO[other], bold=True)
        if kind == "structured_long":
            return f"{rng.choice(FILLERS)}\n{good}\n" + " ".join(rng.sample(FILLERS, 2))
    if fam == "arith":
        a, b = task.numbers
        c = int(task.answer)
        if kind == "good":
            return good
        if kind == "answer_is":
            return f"The answer is {c}."
        if kind == "terse":
            return f"{c}."
        if kind == "wrong":
            return f"{a} {task.op} {b} = {_wrong_number(c, rng)}."
    if fam == "reason":
        c = int(task.answer)
        work = reason_work(task.op, task.numbers)
        if kind == "good":
            return good
        if kind == "no_think":
            return _reason_statement(task, c)
        if kind == "wrong":
            w = _wrong_number(c, rng)
            bad_work = work.rsplit("=", 1)[0] + f"= {w}."
            return f"<think>{bad_work}</think> {_reason_statement(task, w)}"
        if kind == "wrong_answer":
            return f"<think>{work}</think> {_reason_statement(task, _wrong_number(c, rng))}"
        if kind == "unclosed":
            return f"<think>{work} {_reason_statement(task, c)}"
    raise ValueError(f"unknown response kind {kind!r} for family {fam!r}")


CANDIDATE_MIX: dict[str, dict[str, float]] = {
    "fact": {"good": 0.22, "terse": 0.04, "filler": 0.1, "elaborate": 0.1, "repeat": 0.04, "ramble": 0.14,
             "lost": 0.1, "wrong": 0.14, "wrong_ramble": 0.06, "truncated": 0.06, "misfit": 0.06, "sympathy": 0.06},
    "emotional": {"warm": 0.24, "neutral": 0.14, "blunt": 0.2, "warm_wrong": 0.1, "warm_long": 0.1,
                  "ramble": 0.1, "lost": 0.06, "truncated": 0.06, "misfit": 0.08},
    "howto": {"structured": 0.24, "plain": 0.2, "plain_list": 0.1, "partial": 0.06, "wrong": 0.08,
              "structured_long": 0.1, "ramble": 0.1, "lost": 0.06, "truncated": 0.06, "misfit": 0.06,
              "sympathy": 0.06},
    "arith": {"good": 0.26, "answer_is": 0.06, "terse": 0.04, "wrong": 0.26, "ramble": 0.12, "lost": 0.08,
              "filler": 0.12, "truncated": 0.06, "misfit": 0.06, "sympathy": 0.06},
    "reason": {"good": 0.24, "no_think": 0.14, "wrong": 0.14, "wrong_answer": 0.1, "ramble": 0.1, "lost": 0.06,
               "filler": 0.1, "truncated": 0.06, "unclosed": 0.06, "misfit": 0.06, "sympathy": 0.06},
}
# Instruction data as crowd-written demonstrations are: every one answers the request first (SFT teaches the
# answer format), but half of them then ramble on, most emotional answers are neutral or blunt and most
# how-tos are prose. Comparing is easier than demonstrating: annotators and a reward model see these flaws,
# which is the headroom RLHF has over SFT (Ouyang et al. 2022). Measured with the InstructGPT recipe: with
# demonstrations that were 80-100% good (ramble 0%), the SFT model left RLHF nothing the 2M reward model
# could see (PPO win rate vs SFT 0.46-0.49, best-of-n gold gain <= +0.22); with this mix PPO reaches 0.70.
SFT_MIX: dict[str, dict[str, float]] = {
    "fact": {"good": 0.5, "ramble": 0.5},
    "emotional": {"warm": 0.25, "neutral": 0.45, "blunt": 0.3},
    "howto": {"structured": 0.2, "plain": 0.6, "plain_list": 0.2},
    "arith": {"good": 0.35, "answer_is": 0.15, "ramble": 0.5},
    "reason": {"good": 0.5, "ramble": 0.5},
}


def sample_kind(family: str, rng: random.Random, mix: dict[str, dict[str, float]] = CANDIDATE_MIX) -> str:
    kinds = list(mix[family])
    return rng.choices(kinds, weights=[mix[family][k] for k in kinds])[0]


def sample_response(task: Task, rng: random.Random, mix: dict[str, dict[str, float]] = CANDIDATE_MIX,
                    kb: KnowledgeBase | None = None) -> tuple[str, str]:
    """``(kind, text)``: a response whose kind is drawn from ``mix[task.family]``; facts it states beyond
    the answer (drift, elaboration) come from ``kb`` (default: the whole knowledge base)."""
    kind = sample_kind(task.family, rng, mix)
    return kind, make_response(task, kind, rng, kb)


__all__ = ["FILLERS", "REMARKS", "drift_sentence", "good_response", "make_response", "sample_response",
           "sample_kind", "CANDIDATE_MIX", "SFT_MIX"]
