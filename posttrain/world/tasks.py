"""Prompt families of the toy world, and the parser that maps a prompt back to its task.

Families (each mirrors an example from the RLHF literature)::

    fact       "What is the capital of Velmora?"            one-sentence answer from the knowledge base
    emotional  "I feel sad because my friend moved away."   warm + relevant advice beats blunt advice
    howto      "How do I bake bread?"                        three steps; a list with **bold** headers wins
    arith      "What is 7 + 5?"                              checkable number (RLVR)
    reason     "Tom has 3 apples. He gets 4 more. ..."       <think>…</think> then the answer (R1-style)

A :class:`Task` is everything the gold reward needs to judge a response. :func:`parse_prompt` recovers it
from the prompt text alone (templates are matched exactly, case- and space-insensitively), so gold judging
needs no side channel: ``gold_reward(prompt, response)`` works on any generated or hand-written prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from posttrain.world.kb import Fact, KnowledgeBase

FAMILIES = ("fact", "emotional", "howto", "arith", "reason")

# ----------------------------------------------------------------------------------------------- emotional
FEELINGS = ("sad", "lonely", "worried", "nervous", "tired", "angry")
# (situation as said by the user, the advice that fits it)
SITUATIONS: tuple[tuple[str, str], ...] = (
    ("I failed my exam", "ask your teacher for help"),
    ("my friend moved away", "call your friend every week"),
    ("I lost my job", "make a plan for the next step"),
    ("my cat is ill", "take your cat to the vet"),
    ("I can not sleep", "go to bed at the same time each night"),
    ("I have a big test tomorrow", "rest well tonight"),
    ("I had a fight with my brother", "talk to your brother calmly"),
    ("I moved to a new town", "join a club to meet people"),
    ("my garden died", "start again with a few seeds"),
    ("nobody came to my party", "invite one friend for tea"),
)
EMOTIONAL_TEMPLATES = (
    "I feel {f} because {c}. What should I do?",
    "I am {f} because {c}. Any advice?",
    "{C} and I feel {f}. Can you help?",
)
WARM_MARKERS = ("i am sorry", "sounds hard", "you are not alone", "be kind to yourself", "i understand")
BLUNT_MARKERS = ("just", "stop worrying", "not a big deal", "get over it", "deal with it")

# --------------------------------------------------------------------------------------------------- howto
# task → three (verb, rest) steps, in order
HOWTO: dict[str, tuple[tuple[str, str], ...]] = {
    "bake bread": (("Mix", "the flour and water"), ("Knead", "the dough"), ("Bake", "the loaf")),
    "plant a tree": (("Dig", "a deep hole"), ("Place", "the tree in it"), ("Water", "the soil")),
    "make tea": (("Boil", "the water"), ("Add", "the tea leaves"), ("Wait", "three minutes")),
    "clean a room": (("Pick", "up the clothes"), ("Dust", "the shelves"), ("Sweep", "the floor")),
    "fix a flat tyre": (("Remove", "the wheel"), ("Patch", "the hole"), ("Pump", "up the tyre")),
    "write a letter": (("Greet", "your friend"), ("Tell", "your news"), ("Sign", "your name")),
    "paint a fence": (("Sand", "the wood"), ("Brush", "on the paint"), ("Let", "it dry")),
    "wash a car": (("Rinse", "the car"), ("Scrub", "it with soap"), ("Dry", "it with a cloth")),
    "build a fire": (("Gather", "dry sticks"), ("Light", "the kindling"), ("Feed", "it bigger logs")),
    "learn a song": (("Listen", "to the song"), ("Sing", "each line"), ("Practise", "every day")),
    "pack for a trip": (("List", "what you need"), ("Fold", "your clothes"), ("Close", "the bag")),
    "make soup": (("Chop", "the vegetables"), ("Simmer", "them in water"), ("Season", "with salt")),
}
HOWTO_TEMPLATES = ("How do I {t}?", "What are the steps to {t}?", "Tell me how to {t}.")

# --------------------------------------------------------------------------------------------------- arith
ARITH_OPS = {"+": ("plus", lambda a, b: a + b), "-": ("minus", lambda a, b: a - b),
             "*": ("times", lambda a, b: a * b)}
ARITH_MAX = 12
ARITH_TEMPLATES = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "How much is {a} {word} {b}?")

# -------------------------------------------------------------------------------------------------- reason
NAMES = (("Tom", "He"), ("Ana", "She"), ("Ben", "He"), ("Lia", "She"), ("Sam", "He"), ("Mia", "She"))
THINGS = ("apples", "pears", "coins", "books", "shells", "stones", "cards", "eggs")
REASON_TEMPLATES = {
    "add": "{n} has {a} {t}. {p} gets {b} more. How many {t} does {n} have now?",
    "sub": "{n} has {a} {t}. {p} gives {b} away. How many {t} does {n} have now?",
    "mul": "{n} has {a} bags with {b} {t} in each. How many {t} does {n} have?",
    "two": "{n} has {a} {t}. {p} gets {b} more and gives {c} away. How many {t} does {n} have now?",
}


@dataclass(frozen=True)
class Task:
    """A prompt and what a good answer to it is. Only the fields of its family are set."""

    family: str
    prompt: str
    fact: Fact | None = None          # fact
    feeling: str | None = None        # emotional
    situation: int | None = None      # emotional: index into SITUATIONS
    howto: str | None = None          # howto: key of HOWTO
    numbers: tuple[int, ...] = ()     # arith (a, b) / reason (a, b) or (a, b, c)
    op: str | None = None             # arith: + - * ; reason: add sub mul two
    name: str | None = None           # reason
    thing: str | None = None          # reason

    @property
    def answer(self) -> str | None:
        """The checkable answer: the fact's value, or the number (as a string) for arith/reason."""
        if self.family == "fact":
            return self.fact.value
        if self.family == "arith":
            a, b = self.numbers
            return str(ARITH_OPS[self.op][1](a, b))
        if self.family == "reason":
            return str(reason_result(self.op, self.numbers))
        return None

    @property
    def advice(self) -> str | None:
        return SITUATIONS[self.situation][1] if self.family == "emotional" else None

    @property
    def steps(self) -> tuple[tuple[str, str], ...]:
        return HOWTO[self.howto] if self.family == "howto" else ()

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]


def reason_result(op: str, numbers: tuple[int, ...]) -> int:
    a, b = numbers[0], numbers[1]
    return {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
            "two": lambda: a + b - numbers[2]}[op]()


def reason_work(op: str, numbers: tuple[int, ...]) -> str:
    """The working written inside ``<think>``: ``"3 + 4 = 7."``."""
    a, b = numbers[0], numbers[1]
    if op == "two":
        c = numbers[2]
        return f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}."
    sym = {"add": "+", "sub": "-", "mul": "*"}[op]
    return f"{a} {sym} {b} = {reason_result(op, numbers)}."


# ------------------------------------------------------------------------------------------ constructors
def fact_task(fact: Fact, template: int = 0) -> Task:
    return Task("fact", fact.question(template), fact=fact)


def emotional_task(feeling: str, situation: int, template: int = 0) -> Task:
    c = SITUATIONS[situation][0]
    text = EMOTIONAL_TEMPLATES[template].format(f=feeling, c=c, C=c[0].upper() + c[1:])
    return Task("emotional", text, feeling=feeling, situation=situation)


def howto_task(howto: str, template: int = 0) -> Task:
    return Task("howto", HOWTO_TEMPLATES[template].format(t=howto), howto=howto)


def arith_task(a: int, op: str, b: int, template: int = 0) -> Task:
    text = ARITH_TEMPLATES[template].format(a=a, b=b, op=op, word=ARITH_OPS[op][0])
    return Task("arith", text, numbers=(a, b), op=op)


def reason_task(op: str, numbers: tuple[int, ...], name: int = 0, thing: int = 0) -> Task:
    n, p = NAMES[name]
    t = THINGS[thing]
    a, b = numbers[0], numbers[1]
    c = numbers[2] if len(numbers) > 2 else 0
    text = REASON_TEMPLATES[op].format(n=n, p=p, a=a, b=b, c=c, t=t)
    return Task("reason", text, numbers=tuple(numbers), op=op, name=n, thing=t)


# ---------------------------------------------------------------------------------------------- parsing
def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _template_re(template: str, groups: dict[str, str]) -> re.Pattern:
    """Compile a template into a regex over normalised text; ``{x}`` becomes the group ``groups[x]``
    (a second ``{x}`` must repeat the first)."""
    out, pos, seen = "", 0, set()
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos:m.start()].lower())
        key = m.group(1)
        out += f"(?P={key})" if key in seen else f"(?P<{key}>{groups[key]})"
        seen.add(key)
        pos = m.end()
    out += re.escape(template[pos:].lower())
    return re.compile("^" + out + "$")


@lru_cache(maxsize=1)
def _fact_index() -> dict[str, Fact]:
    kb = KnowledgeBase.default()
    index: dict[str, Fact] = {}
    for f in kb.facts:
        for q in f.attr.questions:
            index[_norm(q.format(s=f.subject))] = f
    return index


@lru_cache(maxsize=1)
def _emotional_index() -> dict[str, tuple[str, int]]:
    index = {}
    for f in FEELINGS:
        for si in range(len(SITUATIONS)):
            for t in range(len(EMOTIONAL_TEMPLATES)):
                index[_norm(emotional_task(f, si, t).prompt)] = (f, si)
    return index


@lru_cache(maxsize=1)
def _howto_index() -> dict[str, str]:
    return {_norm(howto_task(h, t).prompt): h for h in HOWTO for t in range(len(HOWTO_TEMPLATES))}


_NUM = r"\d{1,3}"
_ARITH_RES = [(_template_re(t, {"a": _NUM, "b": _NUM, "op": r"[+*-]", "word": r"plus|minus|times"}), t)
              for t in ARITH_TEMPLATES]
_NAME_GROUP = "|".join(n.lower() for n, _ in NAMES)
_REASON_RES = {op: _template_re(t, {"n": _NAME_GROUP, "p": "he|she", "a": _NUM, "b": _NUM, "c": _NUM,
                                    "t": "|".join(THINGS)})
               for op, t in REASON_TEMPLATES.items()}


@lru_cache(maxsize=65536)
def parse_prompt(text: str) -> Task | None:
    """The :class:`Task` a prompt's text asks, or ``None`` when it is not a toy-world prompt."""
    key = _norm(text)
    if key in _fact_index():
        return Task("fact", text, fact=_fact_index()[key])
    if key in _emotional_index():
        f, si = _emotional_index()[key]
        return Task("emotional", text, feeling=f, situation=si)
    if key in _howto_index():
        return Task("howto", text, howto=_howto_index()[key])
    for rx, _ in _ARITH_RES:
        m = rx.match(key)
        if m:
            op = m.groupdict().get("op")
            if op is None:
                op = {w: o for o, (w, _) in ARITH_OPS.items()}[m.group("word")]
            return Task("arith", text, numbers=(int(m.group("a")), int(m.group("b"))), op=op)
    for op, rx in _REASON_RES.items():
        m = rx.match(key)
        if m:
            nums = (int(m.group("a")), int(m.group("b"))) + ((int(m.group("c")),) if op == "two" else ())
            name = next(n for n, _ in NAMES if n.lower() == m.group("n"))
            return Task("reason", text, numbers=nums, op=op, name=name, thing=m.group("t"))
    return None


def prompt_text(prompt) -> str:
    """The user's text of a prompt: a string, or the last user message of a message list."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        prompt = [prompt]
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def response_text(response) -> str:
    """The assistant's text of a response: a string, or the assistant messages of a message list.

    A trailing ``<|im_end|>`` / ``<|endoftext|>`` (what generation stops at) is dropped."""
    if isinstance(response, dict):
        response = [response]
    if not isinstance(response, str):
        response = "\n".join(m.get("content", "") for m in response if m.get("role", "assistant") == "assistant")
    for stop in ("<|im_end|>", "<|endoftext|>"):  # IM_END and EOS_TOKEN (not imported: they pull in torch)
        i = response.find(stop)
        if i >= 0:
            response = response[:i]
    return response.strip()


def family_of(prompt) -> str:
    """The prompt's family (``fact``, ``emotional``, ``howto``, ``arith``, ``reason``) or ``"unknown"``."""
    task = parse_prompt(prompt_text(prompt))
    return task.family if task else "unknown"


__all__ = ["FAMILIES", "Task", "parse_prompt", "family_of", "prompt_text", "response_text", "fact_task",
           "emotional_task", "howto_task", "arith_task", "reason_task"]
