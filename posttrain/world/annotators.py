"""Simulated annotators: noisy Bradley–Terry labellers of the gold preference, with a mild length bias.

An annotator with noise temperature ``tau`` (τ) and length bias ``length_bias`` (λ) prefers ``y1`` to ``y2``
with probability (Bradley & Terry 1952; the RLHF preference model of Christiano et al. 2017, Eq. 1,
Ouyang et al. 2022, Eq. 1)::

    P(y1 ≻ y2) = σ( (g(y1) − g(y2)) / τ  +  λ · (len(y1) − len(y2)) / scale )

with ``g`` the gold reward and ``len`` the word count (gold's :func:`~posttrain.world.gold.words`). This is a
Bradley–Terry model on the utility ``u(y) = g(y)/τ + λ·len(y)/scale``. K-wise rankings are drawn from the
Plackett–Luce model on the same utilities (Plackett 1975; Luce 1959), whose K = 2 case is the pairwise
formula above: sort by ``u + Gumbel noise`` (the Gumbel-max trick, Yellott 1977). A thumbs-up (KTO) label
is a comparison with a virtual reference answer of gold ``ok_gold`` and the canonical good answer's length.

λ > 0 makes annotators favour longer answers beyond what gold wants: a reward model trained on their
labels learns a length bias that RL can exploit (Singhal et al. 2023, "A Long Way to Go").
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from posttrain.world.gold import gold_reward, words
from posttrain.world.responses import good_response
from posttrain.world.tasks import parse_prompt, prompt_text, response_text

DEFAULT_TAUS = (0.5, 1.0, 2.0)
DEFAULT_LENGTH_BIAS = 0.5
DEFAULT_LENGTH_SCALE = 10.0   # words


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class Annotator:
    """One labeller: noise temperature ``tau`` and length bias ``length_bias`` per ``length_scale`` words."""

    tau: float = 1.0
    length_bias: float = DEFAULT_LENGTH_BIAS
    length_scale: float = DEFAULT_LENGTH_SCALE
    ok_gold: float = 2.0   # gold of the virtual reference answer for thumbs up/down

    def __post_init__(self):
        if not self.tau > 0:
            raise ValueError(f"annotator tau must be > 0, got {self.tau}")
        if not self.length_scale > 0:
            raise ValueError(f"annotator length_scale must be > 0, got {self.length_scale}")

    def utility(self, prompt, response) -> float:
        """``u(y) = g(y)/τ + λ·len(y)/scale``."""
        g = gold_reward(prompt, response)
        return g / self.tau + self.length_bias * len(words(response_text(response))) / self.length_scale

    def p_prefer(self, prompt, y1, y2) -> float:
        """``P(y1 ≻ y2)``."""
        return sigmoid(self.utility(prompt, y1) - self.utility(prompt, y2))

    def p_thumbs_up(self, prompt, y) -> float:
        task = parse_prompt(prompt_text(prompt))
        ref_len = len(words(good_response(task))) if task else 20
        return sigmoid((gold_reward(prompt, y) - self.ok_gold) / self.tau
                       + self.length_bias * (len(words(response_text(y))) - ref_len) / self.length_scale)

    def prefer(self, prompt, y1, y2, rng: random.Random) -> bool:
        """Sample a label: ``True`` when ``y1`` is preferred."""
        return rng.random() < self.p_prefer(prompt, y1, y2)

    def rank(self, prompt, responses: list, rng: random.Random) -> list[int]:
        """Sample a Plackett–Luce ranking: indices of ``responses``, best first."""
        keys = [self.utility(prompt, y) - math.log(-math.log(_open01(rng))) for y in responses]
        return sorted(range(len(responses)), key=lambda i: -keys[i])

    def thumbs_up(self, prompt, y, rng: random.Random) -> bool:
        return rng.random() < self.p_thumbs_up(prompt, y)


def _open01(rng: random.Random) -> float:
    u = rng.random()
    while u <= 0.0:
        u = rng.random()
    return u


@dataclass
class AnnotatorPool:
    """Several annotators (one ``tau`` each, shared ``length_bias``); each label comes from one of them,
    drawn uniformly, with the pool's seeded RNG."""

    taus: tuple[float, ...] = DEFAULT_TAUS
    length_bias: float = DEFAULT_LENGTH_BIAS
    length_scale: float = DEFAULT_LENGTH_SCALE
    seed: int | str = 0
    annotators: tuple[Annotator, ...] = field(init=False)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        self.annotators = tuple(Annotator(t, self.length_bias, self.length_scale) for t in self.taus)
        self.rng = random.Random(self.seed)

    def reseeded(self, seed: int | str) -> "AnnotatorPool":
        """The same annotators with a fresh RNG seeded with ``seed``."""
        return replace(self, seed=seed)

    def pick(self) -> Annotator:
        return self.annotators[self.rng.randrange(len(self.annotators))]

    def prefer(self, prompt, y1, y2) -> bool:
        return self.pick().prefer(prompt, y1, y2, self.rng)

    def rank(self, prompt, responses: list) -> list[int]:
        return self.pick().rank(prompt, responses, self.rng)

    def thumbs_up(self, prompt, y) -> bool:
        return self.pick().thumbs_up(prompt, y, self.rng)

    def p_prefer(self, prompt, y1, y2) -> float:
        """The pool's probability of preferring ``y1``: the mean over its annotators."""
        return sum(a.p_prefer(prompt, y1, y2) for a in self.annotators) / len(self.annotators)


__all__ = ["Annotator", "AnnotatorPool", "sigmoid", "DEFAULT_TAUS", "DEFAULT_LENGTH_BIAS",
           "DEFAULT_LENGTH_SCALE"]
