"""The toy world's datasets: deterministic, well-formed, split as documented."""

import json
import os
import re
import subprocess
import sys

import pytest

from posttrain.io import write_jsonl
from posttrain.world.datasets import generate_datasets, seen_fact_ids
from posttrain.world.gold import gold_components, gold_reward, is_correct_arith, is_helpful
from posttrain.world.kb import KnowledgeBase
from posttrain.world.tasks import parse_prompt, prompt_text, response_text

POST_TRAINING = ("sft/train.jsonl", "sft/eval.jsonl", "sft_messages/train.jsonl", "sft_messages/eval.jsonl",
                 "preference/train.jsonl", "preference/eval.jsonl", "ranking/train.jsonl", "ranking/eval.jsonl",
                 "kto/train.jsonl", "kto/eval.jsonl", "verifiable/train.jsonl", "verifiable/eval.jsonl",
                 "rl/train.jsonl")
TRAIN = ("sft/train.jsonl", "sft_messages/train.jsonl", "preference/train.jsonl", "ranking/train.jsonl",
         "kto/train.jsonl", "verifiable/train.jsonl", "rl/train.jsonl")


@pytest.fixture(scope="module")
def world():
    return generate_datasets(0)


def _write(tmp_path, data):
    for rel, rows in data.items():
        write_jsonl(tmp_path / rel, rows)
    return {rel: (tmp_path / rel).read_bytes() for rel in data}


def test_same_seed_gives_byte_identical_files(world, tmp_path):
    """Seed 0 written here and, in a fresh interpreter with another string-hash seed, written again:
    the same bytes, file by file."""
    a = _write(tmp_path / "a", world)
    code = ("import sys; from pathlib import Path; from posttrain.io import write_jsonl; "
            "from posttrain.world.datasets import generate_datasets; "
            "[write_jsonl(Path(sys.argv[1]) / k, v) for k, v in generate_datasets(0).items()]")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "12345"})
    b = {rel: (tmp_path / "b" / rel).read_bytes() for rel in a}
    assert all(a[k] == b[k] for k in a)
    other = generate_datasets(1)
    assert other["sft/train.jsonl"] != world["sft/train.jsonl"]
    assert other["pretrain/train.jsonl"] != world["pretrain/train.jsonl"]
    assert seen_fact_ids(1) != seen_fact_ids(0)


def _messages(row: dict) -> list[list[dict]]:
    out = []
    for key in ("prompt", "completion", "chosen", "rejected", "messages"):
        if key in row:
            out.append(row[key])
    out += row.get("completions", [])
    return out


def test_columns_and_conversational_format(world):
    expected = {"pretrain": {"text"}, "sft": {"prompt", "completion"}, "sft_messages": {"messages"},
                "preference": {"prompt", "chosen", "rejected"}, "ranking": {"prompt", "completions", "ranking"},
                "kto": {"prompt", "completion", "label"}, "verifiable": {"prompt", "answer"}, "rl": {"prompt"},
                "prompts": {"prompt", "family", "answer", "seen"}}
    for rel, rows in world.items():
        assert rows, rel
        kind = rel.split("/")[0]
        for row in rows:
            assert set(row) <= expected[kind] and (set(row) == expected[kind] or kind == "prompts"), (rel, row)
            for msgs in _messages(row):
                assert isinstance(msgs, list) and all(set(m) == {"role", "content"} for m in msgs)
            if "prompt" in row:
                assert [m["role"] for m in row["prompt"]] == ["user"]
            for key in ("completion", "chosen", "rejected"):
                if key in row:
                    assert [m["role"] for m in row[key]] == ["assistant"]
        if kind == "ranking":
            for row in rows:
                assert len(row["completions"]) == 4 and sorted(row["ranking"]) == [0, 1, 2, 3]
                assert len({response_text(c) for c in row["completions"]}) == 4
        if kind == "kto":
            labels = [row["label"] for row in rows]
            assert all(isinstance(x, bool) for x in labels) and 0.3 < sum(labels) / len(labels) < 0.7
        if kind == "sft_messages":
            roles = [[m["role"] for m in row["messages"]] for row in rows]
            assert all(r in (["user", "assistant"], ["user", "assistant"] * 2) for r in roles)
            assert any(len(r) == 4 for r in roles)
        if kind == "preference":
            assert all(response_text(r["chosen"]) != response_text(r["rejected"]) for r in rows)


def test_every_post_training_prompt_is_a_world_prompt_and_checkable_answers_check(world):
    for rel in POST_TRAINING + tuple(k for k in world if k.startswith("prompts/")):
        for row in world[rel]:
            prompts = [row["prompt"]] if "prompt" in row else \
                [[m] for m in row["messages"] if m["role"] == "user"]
            for p in prompts:
                assert parse_prompt(prompt_text(p)) is not None, (rel, p)
    for row in world["verifiable/train.jsonl"] + world["verifiable/eval.jsonl"]:
        task = parse_prompt(prompt_text(row["prompt"]))
        assert task.family in ("arith", "reason") and row["answer"] == task.answer
        assert re.fullmatch(r"-?\d+", row["answer"])
        assert is_correct_arith(row["prompt"], row["answer"] + ".")


def test_instruction_data_is_on_format(world):
    """Every SFT completion answers first (gold helpful) and is correct; what RLHF is for is left in on
    purpose: about half of the fact/arith/reason demonstrations ramble on after the answer (drift), and
    emotional/how-to style is mixed, so warm and bold-list answers are present but not the rule."""
    rows = world["sft/train.jsonl"]
    comps = [gold_components(r["prompt"], r["completion"]) for r in rows]
    assert all(c["helpful"] == 1.0 and c["correct"] == 1.0 for c in comps)
    for fam in ("fact", "arith", "reason"):
        fc = [c for c in comps if c["family"] == fam]
        assert 0.35 < sum(c["drift"] > 0 for c in fc) / len(fc) < 0.65, fam
    assert all(c["drift"] == 0.0 for c in comps if c["family"] in ("emotional", "howto"))
    emo = [c for c in comps if c["family"] == "emotional"]
    how = [c for c in comps if c["family"] == "howto"]
    assert 0.1 < sum(c["style"] > 0 for c in emo) / len(emo) < 0.45
    assert 0.1 < sum(c["format"] == 1.0 for c in how) / len(how) < 0.35
    fams = {c["family"] for c in comps}
    assert fams == {"fact", "emotional", "howto", "arith", "reason"}


def test_post_training_data_covers_only_the_seen_facts(world):
    """60% of the facts (12 of 20 per attribute) are seen; no post-training file asks about, or states, an
    unseen fact in any template (they live in pretraining prose only)."""
    kb = KnowledgeBase.default()
    seen = seen_fact_ids(0)
    assert len(seen) == 120 and len(kb) == 200
    for attr in {f.attribute for f in kb.facts}:
        assert sum(1 for f in kb.facts if f.attribute == attr and f.id in seen) == 12
    unseen = [f for f in kb.facts if f.id not in seen]
    blob = "\n".join(json.dumps(r, ensure_ascii=False) for rel in POST_TRAINING for r in world[rel])
    for f in unseen:
        for q in f.attr.questions:
            assert json.dumps(q.format(s=f.subject))[1:-1] not in blob
        for t in (f.attr.answer,) + f.attr.prose:
            assert t.format(s=f.subject, v=f.value) not in blob, f
    corpus = "\n".join(r["text"] for r in world["pretrain/train.jsonl"])
    for f in unseen:  # ... but the corpus states each of them many times
        n = sum(corpus.count(t.format(s=f.subject, v=f.value)) for t in (f.attr.answer,) + f.attr.prose)
        assert n >= 20, f
    fact_eval = world["prompts/fact.jsonl"]
    assert sum(r["seen"] for r in fact_eval) == sum(not r["seen"] for r in fact_eval) == 40
    for r in fact_eval:
        assert (parse_prompt(prompt_text(r["prompt"])).fact.id in seen) == r["seen"]


def test_eval_prompts_never_occur_in_training_data(world):
    train_prompts = set()
    for rel in TRAIN:
        for row in world[rel]:
            if "prompt" in row:
                train_prompts.add(prompt_text(row["prompt"]))
            else:
                train_prompts.update(m["content"] for m in row["messages"] if m["role"] == "user")
    for rel in [k for k in world if k.startswith("prompts/")] + ["sft/eval.jsonl", "verifiable/eval.jsonl",
                                                                 "preference/eval.jsonl"]:
        for row in world[rel]:
            assert prompt_text(row["prompt"]) not in train_prompts, (rel, row["prompt"])


def test_preference_labels_agree_with_gold_at_the_noise_rate(world):
    rows = world["preference/train.jsonl"]
    votes = [gold_reward(r["prompt"], r["chosen"]) > gold_reward(r["prompt"], r["rejected"]) for r in rows
             if gold_reward(r["prompt"], r["chosen"]) != gold_reward(r["prompt"], r["rejected"])]
    assert 0.70 <= sum(votes) / len(votes) <= 0.85
    ranks = world["ranking/train.jsonl"]
    top_beats_bottom = [gold_reward(r["prompt"], r["completions"][r["ranking"][0]])
                        > gold_reward(r["prompt"], r["completions"][r["ranking"][-1]]) for r in ranks]
    assert sum(top_beats_bottom) / len(ranks) > 0.75
    kto = world["kto/train.jsonl"]
    good = [r["label"] for r in kto if is_helpful(r["prompt"], r["completion"])
            and gold_reward(r["prompt"], r["completion"]) >= 2.5]
    bad = [r["label"] for r in kto if gold_reward(r["prompt"], r["completion"]) <= 0]
    assert sum(good) / len(good) > 0.6 and sum(bad) / len(bad) < 0.25


def test_gold_judging_imports_no_torch():
    code = ("import sys; from posttrain.world import gold_reward; from posttrain.world.datasets import "
            "generate_datasets; assert gold_reward('What is 2 + 2?', '2 + 2 = 4.') == 3.0; "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
