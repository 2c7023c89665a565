"""The hidden gold preference of the toy world ("what a careful human wants").

``gold_reward(prompt, response)`` is a sum of interpretable parts (:func:`gold_components`)::

    total = w_help·helpful + w_corr·correct + style + format − 0.75·drift − 0.05·excess_words − 0.5·unfinished

    helpful   1 if the response answers the request before it drifts: fact/arith/reason — the first
              sentence that is not filler states an answer (fact: a value of the asked kind, in a sentence
              that names the asked subject, or a bare answer of ≤ 4 words); emotional — it gives advice; howto — it names at least 2 of the 3 steps
    correct   fact: that value is the right one (and the only one); arith/reason: the number is right;
              emotional: the advice fits the situation; howto: all three steps, in order
    style     emotional only: +0.5 per warm phrase, −0.5 per blunt phrase (each capped at two), in [−1, 1]
    format    howto: 1 for a numbered/bulleted list whose items start with a **bold** header, 0.5 for a
              list without bold, 0 for prose; reason: 1 for ``<think>…</think>`` then the answer
    drift     sentences after the answer that are off topic (fact: do not mention the subject; others:
              contain nothing of the task) — rambling on is penalised per sentence
    excess    words beyond the canonical good answer's count + 3 (what the answer needs)
    unfinished the response does not end with . ! or ? (cut off)

Weights: fact/arith/reason ``w_help = 1, w_corr = 2``; emotional/howto ``w_help = w_corr = 1``. The good
answer of every family scores 3 (fact, arith, emotional, howto) or 4 (reason).

Gold is for evaluation; training never uses it unless a config asks for it explicitly.
"""

from __future__ import annotations

import re
from functools import lru_cache

from posttrain.world.kb import Fact, KnowledgeBase, alias, entities_in, mentions, values_in
from posttrain.world.responses import FILLERS, good_response
from posttrain.world.tasks import (BLUNT_MARKERS, HOWTO, SITUATIONS, WARM_MARKERS, Task, parse_prompt,
                                   prompt_text, response_text)

DRIFT_PENALTY = 0.75
LENGTH_PENALTY = 0.05   # per word beyond the allowance
LENGTH_SLACK = 3        # words allowed beyond the canonical good answer
UNFINISHED_PENALTY = 0.5
UNKNOWN_ALLOWANCE = 20  # words allowed for a prompt that is not from the toy world
SHORT_ANSWER = 4        # a fact answer that does not name the subject must be this short ("The otter.")

_FILLER_KEYS = {" ".join(f.lower().split()) for f in FILLERS}
_WORD = re.compile(r"[A-Za-z]+|\d+")
_LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.*)$")
_BOLD_HEAD = re.compile(r"^\*\*[^*\n]+\*\*")


def words(text: str) -> list[str]:
    """Words as gold counts them: runs of letters or digits (markup such as ``**`` and ``1.`` counts 0–1)."""
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """Split into sentences: at line breaks, and after . ! ? followed by a space (a list marker such as
    ``1.`` or ``-`` that starts a line is dropped, not taken for a sentence)."""
    out = []
    for line in text.splitlines():
        m = _LIST_LINE.match(line)
        line = m.group(1) if m else line
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s.strip()]
    return out


def is_filler(sentence: str) -> bool:
    return " ".join(sentence.lower().split()) in _FILLER_KEYS


def _task_of(prompt) -> Task | None:
    return parse_prompt(prompt_text(prompt))


def _number_answer(sentence: str, *, statement: bool = False) -> int | None:
    """The number a sentence states as its result: the one after the last ``=``; else one after
    "is"/"equals"/"makes", or a bare number; with ``statement`` (word problems: "Tom has 7 apples."),
    else the sentence's last number."""
    if "=" in sentence:
        m = re.match(r"\s*(-?\d+)", sentence.rsplit("=", 1)[1])
        return int(m.group(1)) if m else None
    m = re.search(r"\b(?:is|equals|makes)\s+(-?\d+)(?!.*\d)", sentence) or \
        re.fullmatch(r"\s*(-?\d+)\s*[.!]?\s*", sentence)
    if m:
        return int(m.group(1))
    if statement:
        nums = re.findall(r"(?<![\w.])-?\d+", sentence)
        return int(nums[-1]) if nums else None
    return None


def _answer_index(sents: list[str]) -> int | None:
    return next((i for i, s in enumerate(sents) if not is_filler(s)), None)


# --------------------------------------------------------------------------------------------- families
def _fact(task: Task, text: str, kb: KnowledgeBase) -> dict:
    f: Fact = task.fact
    sents = sentences(text)
    i = _answer_index(sents)
    helpful = correct = 0.0
    n_drift = 0
    if i is not None:
        s = sents[i]
        vals = values_in(s, f.domain, kb)
        others = [e for e in entities_in(s, f.kind) if e != f.subject]
        if vals and (mentions(s, alias(f.subject)) or (not others and len(words(s)) <= SHORT_ANSWER)):
            helpful = 1.0
            correct = float(vals == [f.value])
        n_drift = sum(1 for t in sents[i + 1:] if not is_filler(t) and not mentions(t, alias(f.subject)))
    return {"helpful": helpful, "correct": correct, "drift": float(n_drift), "weights": (1.0, 2.0)}


def _emotional(task: Task, text: str) -> dict:
    low = text.lower()
    sents = sentences(text)
    advices = [a for _, a in SITUATIONS]

    def on_topic(s: str) -> bool:
        sl = s.lower()
        return is_filler(s) or any(a in sl for a in advices) or any(m in sl for m in WARM_MARKERS) or \
            any(mentions(s, m) for m in BLUNT_MARKERS) or mentions(s, task.feeling)

    first_drift = next((k for k, s in enumerate(sents) if not on_topic(s)), len(sents))
    before = " ".join(sents[:first_drift]).lower()
    helpful = float(any(a in before for a in advices))
    correct = float(task.advice in before)
    warm = sum(1 for m in WARM_MARKERS if m in low)
    blunt = sum(1 for m in BLUNT_MARKERS if mentions(low, m))
    style = 0.5 * min(warm, 2) - 0.5 * min(blunt, 2)
    n_drift = sum(1 for s in sents if not on_topic(s))
    return {"helpful": helpful, "correct": correct, "style": style, "drift": float(n_drift),
            "weights": (1.0, 1.0)}


def _howto_format(text: str) -> float:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not is_filler(ln.strip())]
    items = [m.group(1) for m in map(_LIST_LINE.match, lines) if m]
    if len(items) >= 3 and len(items) == len(lines) and all(_BOLD_HEAD.match(it) for it in items):
        return 1.0
    return 0.5 if len(items) >= 2 else 0.0


def _howto(task: Task, text: str) -> dict:
    verbs = [v for v, _ in HOWTO[task.howto]]
    sents = sentences(text)

    def on_topic(s: str) -> bool:
        return is_filler(s) or any(mentions(s, v) for v in verbs)

    first_drift = next((k for k, s in enumerate(sents) if not on_topic(s)), len(sents))
    before = " ".join(sents[:first_drift]).lower()
    pos = [m.start() if (m := re.search(r"(?<![a-z])" + v.lower() + r"(?![a-z])", before)) else -1
           for v in verbs]
    found = [p for p in pos if p >= 0]
    helpful = float(len(found) >= 2)
    correct = float(len(found) == 3 and pos == sorted(pos))
    n_drift = sum(1 for s in sents if not on_topic(s))
    return {"helpful": helpful, "correct": correct, "format": _howto_format(text), "drift": float(n_drift),
            "weights": (1.0, 1.0)}


def _arith(task: Task, text: str) -> dict:
    sents = sentences(text)
    i = _answer_index(sents)
    helpful = correct = 0.0
    n_drift = 0
    if i is not None:
        got = _number_answer(sents[i])
        if got is not None:
            helpful = 1.0
            correct = float(str(got) == task.answer)
        n_drift = sum(1 for s in sents[i + 1:] if not is_filler(s) and not re.search(r"\d", s))
    return {"helpful": helpful, "correct": correct, "drift": float(n_drift), "weights": (1.0, 2.0)}


_THINK = re.compile(r"^\s*<think>(.*?)</think>(.*)$", re.DOTALL)


def _reason(task: Task, text: str) -> dict:
    m = _THINK.match(text)
    if m:
        think, rest = m.group(1).strip(), m.group(2).strip()
        fmt = float(bool(think) and bool(rest))
    else:
        rest = text.replace("<think>", " ").replace("</think>", " ").strip()
        fmt = 0.0
    sents = sentences(rest)
    i = _answer_index(sents)
    helpful = correct = 0.0
    n_drift = 0
    if i is not None:
        got = _number_answer(sents[i], statement=True)
        if got is not None:
            helpful = 1.0
            correct = float(str(got) == task.answer)
        n_drift = sum(1 for s in sents[i + 1:] if not is_filler(s) and not re.search(r"\d", s)
                      and not mentions(s, task.name) and not mentions(s, task.thing))
    return {"helpful": helpful, "correct": correct, "format": fmt, "drift": float(n_drift),
            "weights": (1.0, 2.0)}


# ----------------------------------------------------------------------------------------------- public
def gold_components(prompt, response, *, kb: KnowledgeBase | None = None) -> dict[str, float | str]:
    """The parts of the gold reward (see the module docstring); ``total`` is :func:`gold_reward`.

    ``prompt``: a string or a message list (the last user turn is judged); ``response``: a string or a
    message list of assistant turns (a trailing ``<|im_end|>`` is ignored). Keys: ``family``, ``helpful``,
    ``correct``, ``style``, ``format``, ``drift``, ``words``, ``excess_words``, ``length_penalty``,
    ``unfinished``, ``total``.
    """
    if kb is None or kb is KnowledgeBase.default():
        return dict(_gold_cached(prompt_text(prompt), response_text(response)))
    return _gold(prompt_text(prompt), response_text(response), kb)


@lru_cache(maxsize=1 << 16)
def _gold_cached(prompt: str, text: str) -> dict:
    return _gold(prompt, text, KnowledgeBase.default())


def _gold(prompt: str, text: str, kb: KnowledgeBase) -> dict:
    task = parse_prompt(prompt)
    n_words = len(words(text))
    parts = {"helpful": 0.0, "correct": 0.0, "style": 0.0, "format": 0.0, "drift": 0.0, "weights": (0.0, 0.0)}
    if task is None:
        family, allowance = "unknown", UNKNOWN_ALLOWANCE
    else:
        family = task.family
        allowance = len(words(good_response(task))) + LENGTH_SLACK
        judge = {"fact": lambda: _fact(task, text, kb), "emotional": lambda: _emotional(task, text),
                 "howto": lambda: _howto(task, text), "arith": lambda: _arith(task, text),
                 "reason": lambda: _reason(task, text)}[family]
        parts.update(judge())
    w_help, w_corr = parts.pop("weights")
    excess = max(0, n_words - allowance)
    unfinished = 0.0 if re.search(r"[.!?]\**\s*$", text) else 1.0
    total = (w_help * parts["helpful"] + w_corr * parts["correct"] + parts["style"] + parts["format"]
             - DRIFT_PENALTY * parts["drift"] - LENGTH_PENALTY * excess - UNFINISHED_PENALTY * unfinished)
    return {"family": family, **parts, "words": float(n_words), "excess_words": float(excess),
            "length_penalty": LENGTH_PENALTY * excess, "unfinished": unfinished, "total": float(total)}


def gold_reward(prompt, response, *, kb: KnowledgeBase | None = None) -> float:
    """The gold ("true human") reward of ``response`` to ``prompt``; higher is better."""
    return float(gold_components(prompt, response, kb=kb)["total"])


def is_helpful(prompt, response) -> bool:
    """Does the response answer the request (before rambling)? Right or wrong: see :func:`is_correct`."""
    return gold_components(prompt, response)["helpful"] > 0


def is_correct(prompt, response) -> bool:
    """Is the answer right (fact value, number, fitting advice, all steps in order)?"""
    return gold_components(prompt, response)["correct"] > 0


def is_correct_fact(prompt, response) -> bool:
    """For a ``fact`` prompt: the response's answer states the right value (and only that one)."""
    task = _task_of(prompt)
    if task is None or task.family != "fact":
        raise ValueError(f"not a toy-world fact prompt: {prompt_text(prompt)!r}")
    return _fact(task, response_text(response), KnowledgeBase.default())["correct"] > 0


def extract_answer(prompt, response) -> str | None:
    """The number an ``arith``/``reason`` response gives as its answer (after ``</think>``), or None."""
    task = _task_of(prompt)
    if task is None or task.family not in ("arith", "reason"):
        raise ValueError(f"not a toy-world arith/reason prompt: {prompt_text(prompt)!r}")
    text = response_text(response)
    if task.family == "reason":
        m = _THINK.match(text)
        text = m.group(2) if m else text.replace("<think>", " ").replace("</think>", " ")
    sents = sentences(text)
    i = _answer_index(sents)
    got = _number_answer(sents[i], statement=task.family == "reason") if i is not None else None
    return None if got is None else str(got)


def is_correct_arith(prompt, response) -> bool:
    """Exact answer check for ``arith`` and ``reason`` prompts."""
    task = _task_of(prompt)
    return extract_answer(prompt, response) == task.answer


__all__ = ["gold_reward", "gold_components", "is_helpful", "is_correct", "is_correct_fact",
           "is_correct_arith", "extract_answer", "words", "sentences"]
