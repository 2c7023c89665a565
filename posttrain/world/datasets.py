"""Every dataset of the toy world, generated from one seed (same seed → identical rows, in order).

:func:`generate_datasets` returns ``{relative file name: rows}``; :mod:`posttrain.world.build` writes them
as JSON lines. All post-training data is conversational (``prompt`` = ``[{"role": "user", ...}]``,
completions = ``[{"role": "assistant", ...}]``)::

    pretrain/{train,eval}.jsonl       text                               the corpus (see corpus.py)
    sft/{train,eval}.jsonl            prompt, completion                 instruction data
    sft_messages/{train,eval}.jsonl   messages                           the same, as chats (some 2-turn)
    preference/{train,eval}.jsonl     prompt, chosen, rejected           annotator-labelled pairs
    ranking/{train,eval}.jsonl        prompt, completions, ranking       K=4, best first (Plackett–Luce)
    kto/{train,eval}.jsonl            prompt, completion, label          annotator thumbs up/down
    verifiable/{train,eval}.jsonl     prompt, answer                     arith + reason, checkable
    rl/train.jsonl                    prompt                             prompts for RL / best-of-n
    prompts/{family}.jsonl            prompt, family, answer, seen       eval prompts per family

Splits. Facts: per attribute, 60% are *seen* (used by every post-training file) and 40% *unseen*
(pretraining prose only; ``prompts/fact.jsonl`` asks both, marked by ``seen``). Each seen fact has two
question templates for training and a third held out for evaluation. Emotional (feeling, situation)
combinations, how-to (task, template) combinations, arithmetic triples and word-problem numbers are split
80/20 into train and eval, so eval prompts never occur in training data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from posttrain.world.annotators import AnnotatorPool
from posttrain.world.corpus import make_corpus
from posttrain.world.kb import ATTRIBUTES, KnowledgeBase
from posttrain.world.responses import SFT_MIX, sample_response
from posttrain.world.tasks import (ARITH_MAX, ARITH_OPS, FEELINGS, HOWTO, HOWTO_TEMPLATES, NAMES, SITUATIONS,
                                   THINGS, Task, arith_task, emotional_task, fact_task, howto_task,
                                   reason_task)

SEEN_FRACTION = 0.6
# how many rows of each file; a small world keeps SFT ≈ 1–2 min and RM/PPO fast on 2 CPU cores
SIZES = {"preference": (1600, 320), "ranking": (1600, 100), "kto": (1600, 320), "verifiable": (800, 200),
         "rl": 800, "prompts": {"fact": 80, "emotional": 36, "howto": 12, "arith": 64, "reason": 64}}
# family shares of the labelled files (preference, ranking, kto) and of RL prompts
LABEL_MIX = {"fact": 0.35, "emotional": 0.2, "howto": 0.15, "arith": 0.15, "reason": 0.15}
RL_MIX = {"fact": 0.3, "emotional": 0.2, "howto": 0.1, "arith": 0.2, "reason": 0.2}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


@dataclass
class Pools:
    """Train and eval task pools per family (the splits)."""

    seen: set[str]
    kb: KnowledgeBase                  # the seen facts only: what post-training data may state
    train: dict[str, list[Task]] = field(default_factory=dict)
    eval: dict[str, list[Task]] = field(default_factory=dict)
    fact_unseen: list[Task] = field(default_factory=list)


def _split(items: list, rng: random.Random, frac_train: float = 0.8) -> tuple[list, list]:
    items = list(items)
    rng.shuffle(items)
    k = round(len(items) * frac_train)
    return items[:k], items[k:]


def make_pools(kb: KnowledgeBase, rng: random.Random) -> Pools:
    # facts: per attribute, 60% seen
    seen: set[str] = set()
    eval_template: dict[str, int] = {}
    for attr in ATTRIBUTES:
        ids = [f.id for f in kb.facts if f.attribute == attr.name]
        rng.shuffle(ids)
        seen.update(ids[:round(len(ids) * SEEN_FRACTION)])
    for f in kb.facts:
        eval_template[f.id] = rng.randrange(len(f.attr.questions))
    pools = Pools(seen=seen, kb=kb.subset(seen))
    pools.train["fact"] = [fact_task(f, t) for f in kb.facts if f.id in seen
                           for t in range(len(f.attr.questions)) if t != eval_template[f.id]]
    pools.eval["fact"] = [fact_task(f, eval_template[f.id]) for f in kb.facts if f.id in seen]
    pools.fact_unseen = [fact_task(f, eval_template[f.id]) for f in kb.facts if f.id not in seen]

    combos = [(f, s) for f in FEELINGS for s in range(len(SITUATIONS))]
    tr, ev = _split(combos, rng)
    pools.train["emotional"] = [emotional_task(f, s, t) for f, s in sorted(tr) for t in range(3)]
    pools.eval["emotional"] = [emotional_task(f, s, t) for f, s in sorted(ev) for t in range(3)]

    held = {h: rng.randrange(len(HOWTO_TEMPLATES)) for h in HOWTO}
    pools.train["howto"] = [howto_task(h, t) for h in HOWTO for t in range(len(HOWTO_TEMPLATES)) if t != held[h]]
    pools.eval["howto"] = [howto_task(h, held[h]) for h in HOWTO]

    triples = [(a, op, b) for op in ARITH_OPS for a in range(ARITH_MAX + 1) for b in range(ARITH_MAX + 1)
               if not (op == "-" and b > a)]
    tr, ev = _split(triples, rng)
    pools.train["arith"] = [arith_task(a, op, b, t) for a, op, b in tr for t in range(3)]
    pools.eval["arith"] = [arith_task(a, op, b, t) for a, op, b in ev for t in range(3)]

    problems = ([("add", (a, b)) for a in range(1, 10) for b in range(1, 10)]
                + [("sub", (a, b)) for a in range(2, 13) for b in range(1, a)]
                + [("mul", (a, b)) for a in range(2, 6) for b in range(2, 6)]
                + [("two", (a, b, c)) for a in range(1, 8) for b in range(1, 6) for c in range(1, a + b)])
    tr, ev = _split(problems, rng)

    def word_problems(items):
        return [reason_task(op, nums, rng.randrange(len(NAMES)), rng.randrange(len(THINGS)))
                for op, nums in items for _ in range(2)]

    pools.train["reason"] = word_problems(tr)
    pools.eval["reason"] = word_problems(ev)
    return pools


# ------------------------------------------------------------------------------------------ instruction
def _sft_rows(tasks: list[Task], rng: random.Random, kb: KnowledgeBase, repeats: int = 1) -> list[dict]:
    rows = []
    for t in tasks:
        for _ in range(repeats):
            _, text = sample_response(t, rng, SFT_MIX, kb)
            rows.append({"prompt": _user(t.prompt), "completion": _assistant(text)})
    return rows


def _sft_split(pools: Pools, rng: random.Random, which: str) -> list[dict]:
    p, kb = (pools.train if which == "train" else pools.eval), pools.kb
    if which == "train":
        rows = (_sft_rows(p["fact"], rng, kb) + _sft_rows(p["emotional"], rng, kb)
                + _sft_rows(p["howto"], rng, kb, 3) + _sft_rows(rng.sample(p["arith"], 300), rng, kb)
                + _sft_rows(rng.sample(p["reason"], 150), rng, kb))
    else:
        rows = (_sft_rows(rng.sample(p["fact"], 40), rng, kb) + _sft_rows(rng.sample(p["emotional"], 24), rng, kb)
                + _sft_rows(p["howto"], rng, kb) + _sft_rows(rng.sample(p["arith"], 30), rng, kb)
                + _sft_rows(rng.sample(p["reason"], 30), rng, kb))
    rng.shuffle(rows)
    return rows


def _as_messages(rows: list[dict], rng: random.Random, p_two_turns: float = 0.2) -> list[dict]:
    """Prompt–completion rows as ``messages`` chats; some consecutive pairs become one 2-turn chat."""
    out, i = [], 0
    while i < len(rows):
        msgs = rows[i]["prompt"] + rows[i]["completion"]
        if i + 1 < len(rows) and rng.random() < p_two_turns:
            msgs = msgs + rows[i + 1]["prompt"] + rows[i + 1]["completion"]
            i += 1
        out.append({"messages": msgs})
        i += 1
    return out


# ------------------------------------------------------------------------------------------- labelled
def _mixed(pool: dict[str, list[Task]], mix: dict[str, float], n: int, rng: random.Random) -> list[Task]:
    fams = list(mix)
    return [rng.choice(pool[f]) for f in rng.choices(fams, weights=[mix[f] for f in fams], k=n)]


def _distinct(task: Task, k: int, rng: random.Random, kb: KnowledgeBase | None = None) -> list[str]:
    """``k`` different candidate responses to ``task``."""
    out: list[str] = []
    while len(out) < k:
        _, text = sample_response(task, rng, kb=kb)
        if text not in out:
            out.append(text)
    return out


def _preference_rows(tasks: list[Task], pool: AnnotatorPool, rng: random.Random, kb: KnowledgeBase) -> list[dict]:
    rows = []
    for t in tasks:
        y1, y2 = _distinct(t, 2, rng, kb)
        chosen, rejected = (y1, y2) if pool.prefer(t.prompt, y1, y2) else (y2, y1)
        rows.append({"prompt": _user(t.prompt), "chosen": _assistant(chosen), "rejected": _assistant(rejected)})
    return rows


def _ranking_rows(tasks: list[Task], pool: AnnotatorPool, rng: random.Random, kb: KnowledgeBase,
                  k: int = 4) -> list[dict]:
    rows = []
    for t in tasks:
        ys = _distinct(t, k, rng, kb)
        rows.append({"prompt": _user(t.prompt), "completions": [_assistant(y) for y in ys],
                     "ranking": pool.rank(t.prompt, ys)})
    return rows


def _kto_rows(tasks: list[Task], pool: AnnotatorPool, rng: random.Random, kb: KnowledgeBase) -> list[dict]:
    rows = []
    for t in tasks:
        _, y = sample_response(t, rng, kb=kb)
        rows.append({"prompt": _user(t.prompt), "completion": _assistant(y), "label": pool.thumbs_up(t.prompt, y)})
    return rows


def _verifiable_rows(tasks: list[Task]) -> list[dict]:
    return [{"prompt": _user(t.prompt), "answer": t.answer} for t in tasks]


def _eval_prompt_rows(tasks: list[Task], seen: set[str] | None = None) -> list[dict]:
    rows = []
    for t in tasks:
        row = {"prompt": _user(t.prompt), "family": t.family, "answer": t.answer}
        if t.family == "fact":
            row["seen"] = t.fact.id in seen
        rows.append(row)
    return rows


def generate_datasets(seed: int = 0, *, corpus_rounds: int = 30, corpus_scale: float = 1.0,
                      annotators: AnnotatorPool | None = None) -> dict[str, list[dict]]:
    """All datasets of the world built with ``seed``, as ``{relative path: rows}``.

    Each part draws from its own RNG stream (``seed`` and the part's name), so changing one part's size
    leaves the others' rows unchanged."""
    kb = KnowledgeBase.default()

    def stream(name: str) -> random.Random:
        return random.Random(f"{seed}/{name}")

    pools = make_pools(kb, stream("splits"))
    out: dict[str, list[dict]] = {}
    out["pretrain/train.jsonl"] = [{"text": d} for d in make_corpus(kb, pools.seen, stream("corpus"),
                                                                    rounds=corpus_rounds, scale=corpus_scale)]
    out["pretrain/eval.jsonl"] = [{"text": d} for d in make_corpus(kb, pools.seen, stream("corpus-eval"),
                                                                   rounds=1, scale=0.05)]
    sft_rng = stream("sft")
    out["sft/train.jsonl"] = _sft_split(pools, sft_rng, "train")
    out["sft/eval.jsonl"] = _sft_split(pools, sft_rng, "eval")
    out["sft_messages/train.jsonl"] = _as_messages(out["sft/train.jsonl"], stream("messages"))
    out["sft_messages/eval.jsonl"] = _as_messages(out["sft/eval.jsonl"], stream("messages-eval"))

    for name, make in (("preference", _preference_rows), ("ranking", _ranking_rows), ("kto", _kto_rows)):
        n_train, n_eval = SIZES[name]
        for split, n, p in (("train", n_train, pools.train), ("eval", n_eval, pools.eval)):
            rng = stream(f"{name}-{split}")
            pool = (annotators or AnnotatorPool()).reseeded(f"{seed}/{name}-{split}/annotators")
            out[f"{name}/{split}.jsonl"] = make(_mixed(p, LABEL_MIX, n, rng), pool, rng, pools.kb)

    n_train, n_eval = SIZES["verifiable"]
    rng = stream("verifiable")
    out["verifiable/train.jsonl"] = _verifiable_rows(
        _mixed(pools.train, {"arith": 0.6, "reason": 0.4}, n_train, rng))
    out["verifiable/eval.jsonl"] = _verifiable_rows(
        rng.sample(pools.eval["arith"], n_eval // 2) + rng.sample(pools.eval["reason"], n_eval - n_eval // 2))
    rng = stream("rl")
    out["rl/train.jsonl"] = [{"prompt": _user(t.prompt)} for t in _mixed(pools.train, RL_MIX, SIZES["rl"], rng)]

    rng = stream("eval-prompts")
    n = SIZES["prompts"]
    facts = rng.sample(pools.eval["fact"], n["fact"] // 2) + rng.sample(pools.fact_unseen, n["fact"] // 2)
    out["prompts/fact.jsonl"] = _eval_prompt_rows(facts, pools.seen)
    for fam in ("emotional", "howto", "arith", "reason"):
        tasks = pools.eval[fam]
        out[f"prompts/{fam}.jsonl"] = _eval_prompt_rows(rng.sample(tasks, min(n[fam], len(tasks))))
    return out


def seen_fact_ids(seed: int = 0) -> set[str]:
    """The ids of the facts the instruction data of world ``seed`` covers."""
    return make_pools(KnowledgeBase.default(), random.Random(f"{seed}/splits")).seen
