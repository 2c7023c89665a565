"""``python -m posttrain.world.check``: build (or reuse) the world and print its measured properties.

Prints: build and pretraining times; dataset sizes and token lengths; mean gold per response kind and
family; annotator agreement with gold and the length bias (λ vs λ = 0, expected and sampled); the base
model's held-out perplexity against the uniform one, how often it answers factual prompts (gold
helpfulness, sampled), and what it knows (sentence-likelihood probe over every fact, seen vs unseen).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from posttrain.io import read_jsonl
from posttrain.world.annotators import AnnotatorPool
from posttrain.world.gold import gold_components, gold_reward, words
from posttrain.world.kb import KnowledgeBase
from posttrain.world.responses import CANDIDATE_MIX, good_response, make_response
from posttrain.world.tasks import parse_prompt, prompt_text, response_text


# ------------------------------------------------------------------------------------------ annotators
def candidate_pairs(seed: int, n: int) -> list[tuple[str, str, str]]:
    """``n`` (prompt, y1, y2) candidate pairs drawn like the preference data's (train prompts)."""
    from posttrain.world.datasets import LABEL_MIX, _distinct, _mixed, make_pools

    rng = random.Random(f"{seed}/check-pairs")
    pools = make_pools(KnowledgeBase.default(), random.Random(f"{seed}/splits"))
    return [(t.prompt, *_distinct(t, 2, rng, pools.kb)) for t in _mixed(pools.train, LABEL_MIX, n, rng)]


def annotator_stats(pairs: list[tuple[str, str, str]], pool: AnnotatorPool) -> dict[str, float]:
    """Agreement with gold (pairs gold does not tie) and, on pairs where gold prefers the shorter response,
    how often the longer one is picked; ``expected_*`` from the probabilities, ``sampled_*`` from labels
    drawn with the pool's RNG."""
    agree_p, agree_s, longer_p, longer_s = [], [], [], []
    for p, a, b in pairs:
        ga, gb = gold_reward(p, a), gold_reward(p, b)
        la, lb = len(words(a)), len(words(b))
        pa = pool.p_prefer(p, a, b)
        picked_a = pool.prefer(p, a, b)
        if ga != gb:
            agree_p.append(pa if ga > gb else 1 - pa)
            agree_s.append(float(picked_a == (ga > gb)))
            if la != lb and (ga > gb) == (la < lb):
                longer_p.append(pa if la > lb else 1 - pa)
                longer_s.append(float(picked_a == (la > lb)))
    mean = statistics.fmean
    return {"expected_agreement": mean(agree_p), "sampled_agreement": mean(agree_s),
            "expected_pick_longer": mean(longer_p), "sampled_pick_longer": mean(longer_s),
            "pairs": float(len(agree_p)), "pairs_gold_prefers_shorter": float(len(longer_p))}


def label_agreement(rows: list[dict]) -> float:
    """Fraction of preference rows whose ``chosen`` gold prefers (gold ties left out)."""
    votes = []
    for r in rows:
        gc, gr = gold_reward(r["prompt"], r["chosen"]), gold_reward(r["prompt"], r["rejected"])
        if gc != gr:
            votes.append(float(gc > gr))
    return statistics.fmean(votes)


# ---------------------------------------------------------------------------------------------- models
def sample(model, tokenizer, prompts: list, n: int = 1, *, max_new_tokens: int = 48, temperature: float = 1.0,
           seed: int = 0, batch_size: int = 64) -> list[str]:
    """``n`` sampled completions per prompt (prompt-major order), cut at ``<|im_end|>`` / eos."""
    import torch

    from posttrain.models.tokenizer import stop_token_ids

    torch.manual_seed(seed)
    texts = [tokenizer.apply_chat_template(p if not isinstance(p, str) else [{"role": "user", "content": p}],
                                           add_generation_prompt=True, tokenize=False)
             for p in prompts for _ in range(n)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for k in range(0, len(texts), batch_size):
            enc = tokenizer(texts[k:k + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**enc, do_sample=temperature > 0, temperature=temperature or None,
                                     top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                     eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                out.append(response_text(tokenizer.decode(row, skip_special_tokens=False)
                                         .replace(tokenizer.pad_token, "")))
    finally:
        tokenizer.padding_side = side
    return out


def knowledge_probe(model, tokenizer, facts) -> list[bool]:
    """For each fact: does the model give its answer sentence a higher likelihood with the true value
    than with every other value of the domain? (Chance: 1 / domain size.)"""
    import torch

    kb = KnowledgeBase.default()
    hits = []
    for f in facts:
        values = list(kb.domains[f.domain])
        sents = [f.attr.answer.format(s=f.subject, v=v) for v in values]
        enc = tokenizer([tokenizer.eos_token + s for s in sents], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        with torch.no_grad():
            logits = model(**enc).logits[:, :-1].double()  # [V, T-1, vocab]
        logp = torch.log_softmax(logits, -1).gather(-1, enc["input_ids"][:, 1:, None])[..., 0]  # [V, T-1]
        score = (logp * enc["attention_mask"][:, 1:]).sum(-1)  # [V]
        hits.append(values[int(score.argmax())] == f.value)
    return hits


# ----------------------------------------------------------------------------------------------- report
def _kind_table(seed: int) -> list[str]:
    from posttrain.world.datasets import make_pools

    rng = random.Random(f"{seed}/check-kinds")
    pools = make_pools(KnowledgeBase.default(), random.Random(f"{seed}/splits"))
    lines = []
    for fam, mix in CANDIDATE_MIX.items():
        tasks = rng.sample(pools.train[fam], min(40, len(pools.train[fam])))
        cells = []
        for kind in mix:
            g = statistics.fmean(gold_reward(t.prompt, make_response(t, kind, rng)) for t in tasks)
            cells.append(f"{kind} {g:+.2f}")
        lines.append(f"  {fam:9s} " + ", ".join(cells))
    return lines


def report(world_dir=None, *, seed: int = 0, samples: int = 4, force: bool = False, build: bool = True,
           out=print) -> dict:
    """Build (or reuse; with ``build=False`` only load) the world, print the measurements, return them."""
    from posttrain.world.build import build_world, load_world

    t0 = time.time()
    paths = build_world(world_dir, seed=seed, force=force, log=out) if build else load_world(world_dir)
    build_s = time.time() - t0
    m = paths.read_manifest()
    seed = m["seed"]
    parts = m["parts"]
    res: dict = {"build_call_seconds": build_s}
    out(f"\n# toy world {paths.root} (seed {seed}, content hash {m['content_hash'][:12]})")
    pre = parts["base_model"]["pretrain"]
    built_s = sum(p["seconds"] for p in parts.values())
    out(f"build time (when built): data {parts['data']['seconds']:.1f}s, "
        f"tokenizer {parts['tokenizer']['seconds']:.1f}s, base model {parts['base_model']['seconds']:.1f}s (of which pretraining {pre['seconds']:.1f}s); "
        f"total {built_s:.1f}s; this call {build_s:.1f}s")
    if "cpu_seconds" in pre:
        cpu = sum(p.get("cpu_seconds", 0.0) for p in parts.values())
        out(f"CPU time of the build: {cpu:.1f}s (pretraining {pre['cpu_seconds']:.1f}s; ÷ threads "
            f"≈ wall time on an idle machine)")
    res.update(build_seconds=built_s, pretrain_seconds=pre["seconds"])

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(paths.base_model)
    out("\n## datasets (rows)")
    for rel, n in parts["data"]["rows"].items():
        out(f"  {rel:30s} {n:6d}")
    sft = read_jsonl(paths.sft_train)
    plen = [len(tok(prompt_text(r["prompt"]))["input_ids"]) for r in sft]
    clen = [len(tok(response_text(r["completion"]) + "<|im_end|>")["input_ids"]) for r in sft]
    corpus_tokens = sum(len(x) + 1 for x in tok([r["text"] for r in read_jsonl(paths.pretrain_train)])["input_ids"])
    out(f"  tokens: corpus {corpus_tokens}, vocab {len(tok)}; SFT prompt (user text) max {max(plen)} "
        f"mean {statistics.fmean(plen):.1f}; SFT completion (+<|im_end|>) max {max(clen)} "
        f"mean {statistics.fmean(clen):.1f}")
    res.update(corpus_tokens=corpus_tokens, sft_prompt_max=max(plen), sft_completion_max=max(clen))

    out("\n## gold by response kind (mean over 40 train prompts)")
    for line in _kind_table(seed):
        out(line)

    out("\n## annotators")
    pairs = candidate_pairs(seed, 3000)
    biased = annotator_stats(pairs, AnnotatorPool(seed="check"))
    fair = annotator_stats(pairs, AnnotatorPool(length_bias=0.0, seed="check"))
    pool = AnnotatorPool()
    out(f"  pool taus {pool.taus}, length bias λ={pool.length_bias} per {pool.length_scale:.0f} words")
    out(f"  agreement with gold: expected {biased['expected_agreement']:.3f}, "
        f"sampled {biased['sampled_agreement']:.3f} ({biased['pairs']:.0f} pairs); with λ=0: {fair['expected_agreement']:.3f}")
    out(f"  gold prefers the shorter ({biased['pairs_gold_prefers_shorter']:.0f} pairs): longer picked "
        f"{biased['sampled_pick_longer']:.3f} (expected {biased['expected_pick_longer']:.3f}) vs λ=0 "
        f"{fair['sampled_pick_longer']:.3f} (expected {fair['expected_pick_longer']:.3f})")
    la = label_agreement(read_jsonl(paths.preference_train))
    out(f"  preference/train.jsonl: chosen is gold-preferred in {la:.3f} of rows")
    res.update(agreement=biased["expected_agreement"], pick_longer=biased["sampled_pick_longer"],
               pick_longer_no_bias=fair["sampled_pick_longer"], label_agreement=la)

    out("\n## base model")
    model = AutoModelForCausalLM.from_pretrained(paths.base_model).eval()
    out(f"  {pre['params'] / 1e6:.2f}M params; held-out perplexity {pre['eval_ppl']:.2f} vs uniform "
        f"{pre['uniform_ppl']:.0f} (eval loss {pre['eval_loss']:.3f}, final train loss {pre['train_loss']:.3f})")
    rows = read_jsonl(paths.prompts["fact"])
    prompts = [r["prompt"] for r in rows]
    t1 = time.time()
    gens = sample(model, tok, prompts, samples, seed=seed)
    rep = [p for p in prompts for _ in range(samples)]
    helpful = statistics.fmean(gold_components(p, g)["helpful"] > 0 for p, g in zip(rep, gens))
    correct = statistics.fmean(gold_components(p, g)["correct"] > 0 for p, g in zip(rep, gens))
    out(f"  factual eval prompts, {samples} samples each (T=1): answers (gold helpful) {helpful:.3f}, "
        f"correct {correct:.3f}, mean gold {statistics.fmean(gold_reward(p, g) for p, g in zip(rep, gens)):+.2f} "
        f"({time.time() - t1:.0f}s to sample)")
    for p, g in list(zip(rep, gens))[:3 * samples:samples]:
        out(f"    Q: {prompt_text(p)}\n    A: {g[:200]!r}")
    kb = KnowledgeBase.default()
    from posttrain.world.datasets import make_pools

    seen = make_pools(kb, random.Random(f"{seed}/splits")).seen
    hits = knowledge_probe(model, tok, kb.facts)
    seen_acc = statistics.fmean(h for h, f in zip(hits, kb.facts) if f.id in seen)
    unseen_acc = statistics.fmean(h for h, f in zip(hits, kb.facts) if f.id not in seen)
    chance = statistics.fmean(1 / len(kb.domains[f.domain]) for f in kb.facts)
    out(f"  knowledge probe (answer sentence likelihood, argmax over the domain): seen facts {seen_acc:.3f}, "
        f"unseen facts {unseen_acc:.3f}, chance {chance:.3f}")
    res.update(base_helpful=helpful, base_correct=correct, probe_seen=seen_acc, probe_unseen=unseen_acc,
               probe_chance=chance, eval_ppl=pre["eval_ppl"], uniform_ppl=pre["uniform_ppl"])

    # upper bound for SFT: gold of the canonical answers (sanity)
    good = statistics.fmean(gold_reward(p, good_response(parse_prompt(prompt_text(p)))) for p in prompts)
    out(f"  (canonical good answers score {good:+.2f} on the same prompts)")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posttrain.world.check", description=__doc__.split("\n")[0])
    ap.add_argument("--world", default=None, help="world folder (default $POSTTRAIN_WORLD or .posttrain/world)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=4, help="samples per factual prompt for the base model")
    ap.add_argument("--force", action="store_true", help="rebuild the world first")
    ap.add_argument("--no-build", action="store_true", help="measure the world as it is (do not (re)build it)")
    args = ap.parse_args(argv)
    report(args.world, seed=args.seed, samples=args.samples, force=args.force, build=not args.no_build)
    return 0


if __name__ == "__main__":
    sys.exit(main())
