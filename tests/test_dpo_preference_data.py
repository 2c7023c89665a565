"""`posttrain preference-data`: K samples per prompt, scored, turned into best-vs-worst or gap pairs."""

from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.config import PreferenceDataConfig
from posttrain.data.load import load_rows
from posttrain.io import read_jsonl
from posttrain.stages.dpo import make_pairs, preference_data

REWARD_PY = '''
def count_e(prompts, completions, **columns):
    """Reward = number of letters 'e' in the completion (deterministic, easy to recompute)."""
    return [float(c.count("e")) for c in completions]
'''


def test_make_pairs_by_hand():
    """scores [0.5, 2.0, -1.0, 2.0]: best is index 1 (first of the two 2.0s), worst index 2.
    all_above_gap (gap > 0) keeps 5 of the C(4,2) = 6 pairs (1 vs 3 is a tie); gap > 2 keeps (1,2), (3,2)."""
    texts = ["a", "b", "c", "d"]
    scores = [0.5, 2.0, -1.0, 2.0]
    assert make_pairs(texts, scores) == ([(1, 2)], 0)
    pairs, ties = make_pairs(texts, scores, mode="all_above_gap")
    assert sorted(pairs) == [(0, 2), (1, 0), (1, 2), (3, 0), (3, 2)] and ties == 1
    assert make_pairs(texts, scores, mode="all_above_gap", min_gap=2.0) == ([(1, 2), (3, 2)], 4)
    assert make_pairs(texts, scores, min_gap=3.0) == ([], 1)       # gap 3.0 is not > 3.0
    assert make_pairs(["x", "x"], [1.0, 0.0]) == ([], 1)            # identical texts are no preference
    assert make_pairs(["x", "y", "z"], [1.0, 1.0, 1.0]) == ([], 1)  # all tied


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from posttrain.models.load import save_model
    from posttrain.models.presets import build_preset

    d = tmp_path_factory.mktemp("prefdata")
    model, tok = build_preset("tiny")
    save_model(model, tok, d / "tiny")
    (d / "rew.py").write_text(REWARD_PY)
    prompts = [{"prompt": [{"role": "user", "content": f"Tell me about the number {i}."}],
                "completion": [{"role": "assistant", "content": "It is a number."}]} for i in range(6)]
    prompts.append(dict(prompts[0]))  # a duplicate prompt is sampled once
    f = d / "prompts.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in prompts))
    return {"dir": d, "model": str(d / "tiny"), "prompts": str(f), "reward": f"callable:{d / 'rew.py'}:count_e"}


def _cfg(setup, out, **kw):
    base = dict(model=setup["model"], data={"train": setup["prompts"], "max_len": 64, "max_prompt_len": 32},
                reward=setup["reward"], num_samples=4, output_dir=str(out), progress=False, batch_size=4,
                generation={"max_new_tokens": 10, "temperature": 1.0})
    base.update(kw)
    return PreferenceDataConfig(**base)


def _count_e(text):
    return float(text.count("e"))


def test_best_worst_pairs_are_valid_preference_data(setup, tmp_path):
    out = tmp_path / "pd"
    s = preference_data(_cfg(setup, out))
    scored = read_jsonl(out / "scored.jsonl")
    pairs = read_jsonl(out / "pairs.jsonl")
    assert s["prompts"] == len(scored) == 6 and s["completions"] == 24
    assert s["pairs"] == len(pairs) and s["pairs"] + s["prompts_without_pair"] == 6
    assert s["ties_dropped"] == s["prompts_without_pair"]
    by_prompt = {json.dumps(r["prompt"]): r for r in scored}
    for p in pairs:
        c, r = p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"  # conversational, like the world
        assert p["score_chosen"] == _count_e(c) and p["score_rejected"] == _count_e(r)
        row = by_prompt[json.dumps(p["prompt"])]
        assert row["scores"] == [_count_e(t) for t in row["completions"]]
        assert p["score_chosen"] == max(row["scores"]) and p["score_rejected"] == min(row["scores"])
        assert p["score_chosen"] > p["score_rejected"]
    gaps = [p["score_chosen"] - p["score_rejected"] for p in pairs]
    assert s["gap"]["n"] == len(pairs) and s["gap"]["mean"] == pytest.approx(sum(gaps) / len(gaps))
    rows = load_rows(str(out / "pairs.jsonl"), kinds=["preference"])  # passes the data layer's validation
    assert rows.kind == "preference" and len(rows) == len(pairs)
    # the pairs feed `posttrain dpo` directly
    from posttrain.config import DPOConfig
    from posttrain.stages.dpo import run

    d = run(DPOConfig(model=setup["model"], data={"train": str(out / "pairs.jsonl"), "max_len": 64,
                                                  "max_prompt_len": 32},
                      output_dir=str(tmp_path / "dpo"), max_steps=1, batch_size=2, progress=False, sample_prompts=0))
    assert d["steps"] == 1 and d["train_examples"] == len(pairs)


def test_all_pairs_above_gap(setup, tmp_path):
    out = tmp_path / "gap"
    s = preference_data(_cfg(setup, out, pairs="all_above_gap", min_gap=1.0, seed=1))
    scored = read_jsonl(out / "scored.jsonl")
    expected = sum(len(make_pairs(r["completions"], r["scores"], mode="all_above_gap", min_gap=1.0)[0])
                   for r in scored)
    pairs = read_jsonl(out / "pairs.jsonl")
    assert s["pairs"] == len(pairs) == expected
    assert s["pairs"] + s["ties_dropped"] == 6 * 6  # C(4,2) candidates per prompt
    assert all(p["score_chosen"] - p["score_rejected"] > 1.0 for p in pairs)


def test_same_seed_same_pairs(setup, tmp_path):
    preference_data(_cfg(setup, tmp_path / "a", seed=3))
    preference_data(_cfg(setup, tmp_path / "b", seed=3))
    assert (tmp_path / "a" / "pairs.jsonl").read_bytes() == (tmp_path / "b" / "pairs.jsonl").read_bytes()


def test_bad_reward_spec_exits_2_and_writes_nothing(setup, tmp_path, capsys):
    out = tmp_path / "x"
    rc = main(["preference-data", f"model={setup['model']}", f"data.train={setup['prompts']}",
               "reward=callable:no_such_module_xyz:fn", f"output_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no_such_module_xyz" in err
    assert not out.exists()
