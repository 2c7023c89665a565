"""The pretraining corpus: it plants the knowledge base and teaches a base model to ramble.

Documents (``text`` rows; the tokenizer's eos separates them when packed)::

    entity     an entity's facts in varied prose            plants every fact, ``rounds`` times per entity
    table      "Velmora: capital Mirren, ruler Queen Calla."  the same facts in another layout
    facts      a few facts from all over the world
    drifting   starts on one topic, wanders through others
    qa         "Q: ...? A: ..." snippets: a seen fact's answer follows 60% of the time (sometimes drifting on
               after it); an unseen fact's never does, the text moves on
    chat       ChatML logs whose assistant rambles (``<|im_start|>user ... <|im_start|>assistant ...``)
    howto      how-to steps told as plain prose (never as a **bold** list: that is post-training's job)
    advice     plain advice for a situation (never warm: also post-training's job)
    sums       lines of small-number arithmetic, and word problems worked in prose (no <think>)

Held-out facts (``unseen``, not in any post-training data) appear ONLY as prose statements; a question
about them is never followed by its answer, so answering them after SFT is elicitation, not recall of
a Q/A pair.
"""

from __future__ import annotations

import random

from posttrain.world.kb import KIND_NAMES, Fact, KnowledgeBase
from posttrain.world.responses import REMARKS, drift, drift_sentence, make_response
from posttrain.world.tasks import (ARITH_MAX, ARITH_OPS, FEELINGS, HOWTO, NAMES, SITUATIONS, THINGS,
                                   arith_task, emotional_task, fact_task, howto_task, reason_task)

INTROS = {
    "land": ("{s} is an old land.", "{s} is a land in the north.", "{s} is a quiet land of hills.",
             "Here is what is known about {s}.", "{s} is a land by the sea."),
    "city": ("{s} is a busy town.", "{s} is a city of bridges.", "{s} is an old city.",
             "Here is what is known about {s}.", "{s} is a small town."),
    "person": ("{s} is well known.", "Everyone has heard of {s}.", "Here is what is known about {s}.",
               "{s} is loved by many.", "Stories are told about {s}."),
}

_SECOND_PERSON = {"I": "you", "my": "your", "am": "are"}


def _you(situation: str) -> str:
    return " ".join(_SECOND_PERSON.get(w, w) for w in situation.split())


# ChatML turn markers (= posttrain.data.chat.IM_START / IM_END; not imported from there because the
# posttrain.data package imports torch, and generating the world's data needs no torch)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def _chat(turns: list[tuple[str, str]]) -> str:
    return "".join(f"{IM_START}user\n{u}{IM_END}\n{IM_START}assistant\n{a}{IM_END}\n" for u, a in turns)


class CorpusWriter:
    """Writes the documents; ``seen`` are the facts the instruction data covers."""

    def __init__(self, kb: KnowledgeBase, seen: set[str], rng: random.Random):
        self.kb, self.seen, self.rng = kb, seen, rng
        self.seen_facts = [f for f in kb.facts if f.id in seen]

    # ---- knowledge
    def entity(self, subject: str) -> str:
        rng = self.rng
        facts = list(self.kb.by_subject[subject])
        rng.shuffle(facts)
        kind = facts[0].kind
        sents = [rng.choice(INTROS[kind]).format(s=subject)] if rng.random() < 0.6 else []
        sents += [f.statement(rng) for f in facts]
        if rng.random() < 0.3:
            sents.append(rng.choice(REMARKS))
        return " ".join(sents)

    def table(self) -> str:
        rng = self.rng
        kind = rng.choice(("land", "city", "person"))
        names = rng.sample(KIND_NAMES[kind], rng.randint(3, 6))
        lines = []
        for n in names:
            facts = self.kb.by_subject[n]
            lines.append(f"{n}: " + ", ".join(f"{f.attribute} {f.value}" for f in facts) + ".")
        return "\n".join(lines)

    def facts(self) -> str:
        rng = self.rng
        return " ".join(f.statement(rng) for f in rng.sample(self.kb.facts, rng.randint(3, 6)))

    def drifting(self) -> str:
        rng = self.rng
        f = rng.choice(self.kb.facts)
        return " ".join([f.statement(rng)] + drift(rng, rng.randint(3, 6)))

    # ---- base-model behaviour
    def _answer_or_drift(self, f: Fact, p_answer: float) -> str:
        rng = self.rng
        if f.id in self.seen and rng.random() < p_answer:
            ans = f.answer()
            return ans + (" " + " ".join(drift(rng, rng.randint(1, 2), f.subject)) if rng.random() < 0.5 else "")
        return " ".join(drift(rng, rng.randint(1, 3), f.subject))

    def qa(self) -> str:
        rng = self.rng
        out = []
        for _ in range(rng.randint(2, 4)):
            f = rng.choice(self.kb.facts)
            q = f.question(rng.randrange(len(f.attr.questions)))
            out.append(f"Q: {q}\nA: {self._answer_or_drift(f, 0.6)}")
        return "\n".join(out)

    def _base_reply(self, task) -> str:
        """What a rambling base model says: mostly drifts, sometimes buries the answer in the ramble."""
        rng = self.rng
        if task.family == "fact":
            f = task.fact
            r = rng.random()
            if f.id in self.seen and r < 0.12:
                return make_response(task, "ramble", rng)
            if f.id in self.seen and r < 0.3:
                return " ".join(drift(rng, 1, f.subject) + [f.answer()] + drift(rng, rng.randint(1, 2), f.subject))
            return " ".join(drift(rng, rng.randint(2, 4), f.subject))
        if rng.random() < 0.15:
            return make_response(task, "ramble", rng)
        return " ".join(drift(rng, rng.randint(2, 4)))

    def chat(self, task_pool: list) -> str:
        rng = self.rng
        turns = []
        for _ in range(rng.choice((1, 1, 1, 2))):
            task = rng.choice(task_pool)
            turns.append((task.prompt, self._base_reply(task)))
        return _chat(turns)

    # ---- skills told plainly
    def howto(self) -> str:
        rng = self.rng
        h = rng.choice(list(HOWTO))
        (v1, r1), (v2, r2), (v3, r3) = HOWTO[h]
        text = rng.choice((f"To {h}, {v1.lower()} {r1}, {v2.lower()} {r2}, then {v3.lower()} {r3}.",
                           f"If you want to {h}, first {v1.lower()} {r1}. Next {v2.lower()} {r2}. "
                           f"Last, {v3.lower()} {r3}."))
        return text + (" " + drift_sentence(rng) if rng.random() < 0.5 else "")

    def advice(self) -> str:
        rng = self.rng
        c, a = rng.choice(SITUATIONS)
        text = rng.choice((f"If {_you(c)}, {a}.", f"When {_you(c)}, it helps to {a}.",
                           f"People who feel {rng.choice(FEELINGS)} because {_you(c)} should {a}."))
        return text + (" " + drift_sentence(rng) if rng.random() < 0.5 else "")

    def sums(self) -> str:
        rng = self.rng
        if rng.random() < 0.6:
            eqs = []
            for _ in range(rng.randint(4, 8)):
                op = rng.choice(list(ARITH_OPS))
                a, b = rng.randint(0, ARITH_MAX), rng.randint(0, ARITH_MAX)
                if op == "-" and b > a:
                    a, b = b, a
                eqs.append(f"{a} {op} {b} = {ARITH_OPS[op][1](a, b)}.")
            return " ".join(eqs)
        n, p = rng.choice(NAMES)
        t = rng.choice(THINGS)
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if rng.random() < 0.5:
            return f"{n} has {a} {t}. {p} gets {b} more. Now {n} has {a + b} {t}."
        a, b = max(a, b), min(a, b)
        return f"{n} has {a} {t}. {p} gives {b} away. Now {n} has {a - b} {t}."


def task_pool_all(kb: KnowledgeBase, rng: random.Random) -> list:
    """One prompt per fact and a spread of the other families' prompts, for the corpus's chat logs."""
    pool = [fact_task(f, rng.randrange(3)) for f in kb.facts]
    pool += [emotional_task(f, s, rng.randrange(3)) for f in FEELINGS for s in range(len(SITUATIONS))]
    pool += [howto_task(h, t) for h in HOWTO for t in range(3)]
    pool += [arith_task(rng.randint(0, 9), "+", rng.randint(0, 9), rng.randrange(3)) for _ in range(40)]
    pool += [reason_task("add", (rng.randint(1, 9), rng.randint(1, 9)), rng.randrange(len(NAMES)),
                         rng.randrange(len(THINGS))) for _ in range(20)]
    return pool


# documents per kind (entity: per entity per round)
CORPUS_MIX = {"table": 150, "facts": 600, "drifting": 500, "qa": 500, "chat": 900, "howto": 150,
              "advice": 150, "sums": 500}


def make_corpus(kb: KnowledgeBase, seen: set[str], rng: random.Random, *, rounds: int = 30,
                scale: float = 1.0) -> list[str]:
    """The pretraining documents, shuffled: ``rounds`` entity paragraphs per entity plus
    ``scale`` × :data:`CORPUS_MIX` documents of the other kinds."""
    w = CorpusWriter(kb, seen, rng)
    pool = task_pool_all(kb, rng)
    docs = [w.entity(s) for _ in range(rounds) for s in kb.by_subject]
    for kind, n in CORPUS_MIX.items():
        make = (lambda: w.chat(pool)) if kind == "chat" else getattr(w, kind)
        docs += [make() for _ in range(max(1, round(n * scale)))]
    rng.shuffle(docs)
    return docs
