"""The toy world's knowledge base: invented lands, cities and people, and 200 facts about them.

The knowledge base is fixed (built from the constant :data:`KB_SEED`, independent of the world's build
seed), so the gold reward can judge any prompt without being told which world it came from. The build seed
decides everything else: which facts the instruction data covers, the corpus, the splits, the labels.

Entities (20 of each kind, every name unique and not an English word the rest of the world uses)::

    land    capital (a city), ruler (a person), flag (colour), founded (year), animal   100 facts
    city    river, dish                                                                   40 facts
    person  pet, instrument, colour (favourite)                                           60 facts

Every attribute carries its question templates (``{s}`` = subject), ONE answer template (the instruction
data's answer, also one of the pretraining prose templates, so post-training can elicit a fact seen only in
prose) and more prose templates for the corpus. Answer templates all read "The <attribute> of <subject> is
<value>.": the subject is copied from the question after a fixed opening and the value comes last, which is
what lets a tiny model answer about a subject it never saw answered (templates that open with the subject,
or put the value first, were measured to elicit nothing).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

KB_SEED = 20240501

LANDS = ("Velmora", "Karsund", "Olvane", "Brisca", "Dunmere", "Estoria", "Falkreth", "Galdor", "Harrowen",
         "Istrel", "Jorveth", "Kelmar", "Lunessa", "Morvane", "Nerith", "Ostrevan", "Pellin", "Quorra",
         "Rendale", "Sylvar")
CITIES = ("Tarn", "Amberly", "Corvin", "Dellow", "Fenwick", "Glimora", "Holtby", "Ivelle", "Keshet",
          "Lornby", "Mirren", "Nessary", "Orrin", "Pikeby", "Rookham", "Sabline", "Thornel", "Umbria",
          "Valdis", "Wrenna")
PEOPLE = ("Queen Amara", "King Bastien", "Queen Calla", "King Doran", "Queen Elsin", "King Faris",
          "Queen Gwyneth", "King Hadrik", "Queen Isolde", "King Joran", "Queen Kira", "King Lothar",
          "Queen Maren", "King Niall", "Queen Orla", "King Perrin", "Queen Rhosyn", "King Soren",
          "Queen Tamsin", "King Ulric")

DOMAINS: dict[str, tuple[str, ...]] = {
    "city": CITIES,
    "person": PEOPLE,
    "colour": ("red", "blue", "green", "yellow", "purple", "silver", "white", "black"),
    "animal": ("fox", "owl", "heron", "bear", "wolf", "lynx", "otter", "hare", "crane", "stag"),
    "river": ("Ossa", "Lune", "Merrow", "Tavi", "Brenn", "Quill", "Sorrel", "Emberon", "Duskar", "Iver"),
    "dish": ("plum pie", "barley soup", "fish stew", "honey cake", "lamb pie", "onion bread", "pear tart",
             "bean soup"),
    "pet": ("cat", "dog", "parrot", "goat", "tortoise", "rabbit", "pony", "raven"),
    "instrument": ("harp", "flute", "drum", "lute", "horn", "fiddle", "pipe", "cello"),
    "year": (),  # four-digit years 1000-1999, one per land (all distinct)
}
KIND_NAMES = {"land": LANDS, "city": CITIES, "person": PEOPLE}


@dataclass(frozen=True)
class Attribute:
    """One attribute of one kind of entity, with the templates that ask for it and state it."""

    name: str
    kind: str                    # the subject's kind: land | city | person
    domain: str                  # the value's domain (a key of DOMAINS)
    questions: tuple[str, ...]   # question templates; {s} = subject
    answer: str                  # the instruction data's answer template; {s} = subject, {v} = value
    prose: tuple[str, ...]       # more statements for the corpus (the answer template is added to them)


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("capital", "land", "city",
              ("What is the capital of {s}?", "Which city is the capital of {s}?", "Name the capital of {s}."),
              "The capital of {s} is {v}.",
              ("{v} is the capital of {s}.", "The capital city of {s} is {v}.", "In {s}, the capital is {v}.",
               "{s} has its capital at {v}.")),
    Attribute("ruler", "land", "person",
              ("Who rules {s}?", "Who is the ruler of {s}?", "Who leads {s}?"),
              "The ruler of {s} is {v}.",
              ("{v} rules {s}.", "{s} is ruled by {v}.", "{v} is the ruler of {s}.", "{s} is led by {v}.")),
    Attribute("flag", "land", "colour",
              ("What colour is the flag of {s}?", "What is the colour of the flag of {s}?",
               "Which colour is on the flag of {s}?"),
              "The flag of {s} is {v}.",
              ("{s} flies a {v} flag.", "The {v} flag belongs to {s}.", "People in {s} wave a {v} flag.",
               "The colour of the flag of {s} is {v}.")),
    Attribute("founded", "land", "year",
              ("When was {s} founded?", "In what year was {s} founded?", "What year was {s} founded?"),
              "The founding year of {s} is {v}.",
              ("{s} was founded in {v}.", "In {v}, {s} was founded.", "{s} dates from the year {v}.",
               "{s} was first settled in {v}.")),
    Attribute("animal", "land", "animal",
              ("What is the national animal of {s}?", "Which animal is the symbol of {s}?",
               "What animal stands for {s}?"),
              "The national animal of {s} is the {v}.",
              ("The {v} is the national animal of {s}.", "{s} has the {v} as its symbol.",
               "The symbol of {s} is the {v}.", "In {s}, the {v} is the national animal.")),
    Attribute("river", "city", "river",
              ("Which river runs through {s}?", "What river flows through {s}?", "Name the river of {s}."),
              "The river of {s} is the {v}.",
              ("The river {v} flows through {s}.", "{s} lies on the river {v}.",
               "{s} stands on the banks of the river {v}.", "The river {v} runs through {s}.")),
    Attribute("dish", "city", "dish",
              ("What dish is {s} known for?", "What food is {s} famous for?", "Which dish comes from {s}?"),
              "The famous dish of {s} is {v}.",
              ("{s} is famous for {v}.", "{s} is known for {v}.", "People in {s} love {v}.",
               "The best {v} comes from {s}.")),
    Attribute("pet", "person", "pet",
              ("What pet does {s} keep?", "What animal does {s} keep as a pet?", "Which pet belongs to {s}?"),
              "The pet of {s} is a {v}.",
              ("{s} has a pet {v}.", "{s} keeps a {v}.", "{s} keeps a {v} at home.",
               "A {v} lives with {s}.")),
    Attribute("instrument", "person", "instrument",
              ("Which instrument does {s} play?", "What instrument does {s} play?", "What does {s} play?"),
              "The instrument of {s} is the {v}.",
              ("{s} plays the {v}.", "The {v} is played by {s}.", "{s} is good at the {v}.",
               "Every evening {s} plays the {v}.")),
    Attribute("colour", "person", "colour",
              ("What is the favourite colour of {s}?", "Which colour does {s} like best?",
               "What colour does {s} love?"),
              "The favourite colour of {s} is {v}.",
              ("{s} likes {v} best.", "{s} loves the colour {v}.", "Of all colours, {s} likes {v} best.",
               "{s} often wears {v}.")),
)
ATTRIBUTE_BY_NAME = {a.name: a for a in ATTRIBUTES}


@dataclass(frozen=True)
class Fact:
    """``attribute`` of ``subject`` is ``value``; ``id`` is stable (``"Velmora.capital"``)."""

    subject: str
    attribute: str
    value: str

    @property
    def id(self) -> str:
        return f"{self.subject}.{self.attribute}"

    @property
    def attr(self) -> Attribute:
        return ATTRIBUTE_BY_NAME[self.attribute]

    @property
    def kind(self) -> str:
        return self.attr.kind

    @property
    def domain(self) -> str:
        return self.attr.domain

    def answer(self) -> str:
        """The instruction data's one-sentence answer (also a pretraining prose sentence)."""
        return self.attr.answer.format(s=self.subject, v=self.value)

    def statement(self, rng: random.Random) -> str:
        """One prose statement of the fact, template drawn from ``rng``."""
        templates = (self.attr.answer,) + self.attr.prose
        return rng.choice(templates).format(s=self.subject, v=self.value)

    def question(self, i: int) -> str:
        return self.attr.questions[i].format(s=self.subject)


class KnowledgeBase:
    """All facts, indexed by id and by subject; :meth:`default` is the world's (cached) knowledge base."""

    def __init__(self, facts: list[Fact]):
        self.facts: tuple[Fact, ...] = tuple(facts)
        self.by_id = {f.id: f for f in self.facts}
        self.by_subject: dict[str, list[Fact]] = {}
        for f in self.facts:
            self.by_subject.setdefault(f.subject, []).append(f)
        years = sorted({f.value for f in self.facts if f.domain == "year"})
        self.domains = dict(DOMAINS, year=tuple(years))

    @staticmethod
    @lru_cache(maxsize=1)
    def default() -> "KnowledgeBase":
        return make_kb(KB_SEED)

    def subset(self, ids: set[str]) -> "KnowledgeBase":
        """The facts with these ids (value domains stay complete): what post-training data may state."""
        sub = KnowledgeBase([f for f in self.facts if f.id in ids])
        sub.domains = self.domains
        return sub

    def get(self, subject: str, attribute: str) -> Fact:
        return self.by_id[f"{subject}.{attribute}"]

    def __len__(self) -> int:
        return len(self.facts)


def make_kb(seed: int = KB_SEED) -> KnowledgeBase:
    """Assign every attribute a value: capitals and rulers one-to-one, years distinct, the rest at random."""
    rng = random.Random(seed)
    capitals = list(CITIES)
    rulers = list(PEOPLE)
    rng.shuffle(capitals)
    rng.shuffle(rulers)
    years = rng.sample(range(1000, 2000), len(LANDS))
    facts: list[Fact] = []
    for i, land in enumerate(LANDS):
        facts.append(Fact(land, "capital", capitals[i]))
        facts.append(Fact(land, "ruler", rulers[i]))
        facts.append(Fact(land, "flag", rng.choice(DOMAINS["colour"])))
        facts.append(Fact(land, "founded", str(years[i])))
        facts.append(Fact(land, "animal", rng.choice(DOMAINS["animal"])))
    for city in CITIES:
        facts.append(Fact(city, "river", rng.choice(DOMAINS["river"])))
        facts.append(Fact(city, "dish", rng.choice(DOMAINS["dish"])))
    for person in PEOPLE:
        facts.append(Fact(person, "pet", rng.choice(DOMAINS["pet"])))
        facts.append(Fact(person, "instrument", rng.choice(DOMAINS["instrument"])))
        facts.append(Fact(person, "colour", rng.choice(DOMAINS["colour"])))
    return KnowledgeBase(facts)


# ------------------------------------------------------------------------------------------ text matching
def alias(name: str) -> str:
    """The word that identifies an entity in text: a person's given name ("Queen Amara" → "Amara")."""
    return name.split()[-1]


@lru_cache(maxsize=4096)
def _word_re(phrase: str) -> re.Pattern:
    return re.compile(r"(?<![A-Za-z0-9])" + re.escape(phrase.lower()) + r"(?![A-Za-z0-9])")


def mentions(text: str, phrase: str) -> bool:
    """Case-insensitive whole-word match of ``phrase`` in ``text``."""
    return _word_re(phrase).search(text.lower()) is not None


@lru_cache(maxsize=64)
def _alternation(names: tuple[str, ...]) -> re.Pattern:
    alts = "|".join(re.escape(n.lower()) for n in sorted(names, key=len, reverse=True))
    return re.compile(r"(?<![A-Za-z0-9])(" + alts + r")(?![A-Za-z0-9])")


def _found(text: str, names: tuple[str, ...], keys: tuple[str, ...]) -> list[str]:
    hits = set(_alternation(keys).findall(text.lower()))
    return [n for n, k in zip(names, keys) if k.lower() in hits]


def values_in(text: str, domain: str, kb: KnowledgeBase | None = None) -> list[str]:
    """The values of ``domain`` that ``text`` mentions (people by their alias), in domain order."""
    kb = kb or KnowledgeBase.default()
    if domain == "year":
        return sorted(set(re.findall(r"(?<!\d)(\d{4})(?!\d)", text)))
    names = kb.domains[domain]
    return _found(text, names, tuple(alias(v) for v in names) if domain == "person" else names)


def entities_in(text: str, kind: str) -> list[str]:
    """The entities of ``kind`` (land | city | person) that ``text`` mentions."""
    names = KIND_NAMES[kind]
    return _found(text, names, tuple(alias(n) for n in names))
