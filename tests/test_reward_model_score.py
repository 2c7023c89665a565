"""`posttrain score`: a reward per row equal to direct scoring; bad input → exit 2, one line, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.cli import main
from posttrain.data.tokenize import encode_completion, encode_prompt
from posttrain.models.heads import reward_model_from_causal, score_sequences
from posttrain.models.load import save_model
from posttrain.models.presets import build_preset


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A random reward model (tiny preset) saved in the standard HF form."""
    torch.manual_seed(0)
    lm, tok = build_preset("tiny")
    rm, tok = reward_model_from_causal(lm, tokenizer=tok, seed=1)
    path = tmp_path_factory.mktemp("rm") / "rm"
    save_model(rm, tok, path)
    return path, rm.eval(), tok


def direct(rm, tok, prompt, completion):
    """One sequence scored alone (no padding): prompt and completion tokenised separately, concatenated."""
    ids = encode_prompt(tok, prompt) + encode_completion(tok, completion, prompt=prompt)
    with torch.no_grad():
        return float(score_sequences(rm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)))


PC_ROWS = [
    {"prompt": "What is two plus two?", "completion": "Two plus two is four.", "id": 1},
    {"prompt": "Hello!", "completion": "How are you today?", "id": 2},
    {"prompt": [{"role": "user", "content": "Hello!"}],
     "completion": [{"role": "assistant", "content": "I am fine, thank you."}], "id": 3},
    {"prompt": "The cat", "completion": " sat on the mat. The dog sat on the log.", "id": 4},
    {"prompt": "x", "completion": "Hello! How are you today?", "id": 5},
]


def test_score_prompt_completion_rows_equal_direct_scoring(rm_dir, tmp_path, capsys):
    path, rm, tok = rm_dir
    data = write_jsonl(tmp_path / "rows.jsonl", PC_ROWS)
    out = tmp_path / "scored.jsonl"
    assert main(["score", f"model={path}", f"data.train={data}", f"output={out}", "batch_size=2",
                 "device=cpu"]) == 0
    got = read_jsonl(out)
    assert [{k: v for k, v in r.items() if k != "reward"} for r in got] == PC_ROWS  # rows kept as they were
    want = [direct(rm, tok, r["prompt"], r["completion"]) for r in PC_ROWS]
    assert [r["reward"] for r in got] == pytest.approx(want, abs=1e-5)
    assert len(set(round(w, 4) for w in want)) == len(want)  # the rows really score differently
    assert "score: 5 prompt_completion rows" in capsys.readouterr().out


def test_score_preference_ranking_and_conversational_rows(rm_dir, tmp_path):
    path, rm, tok = rm_dir
    user = [{"role": "user", "content": "Hello!"}]
    a, b = [{"role": "assistant", "content": "Hi, how are you?"}], [{"role": "assistant", "content": "Go away."}]
    cases = {
        "pref": [{"prompt": user, "chosen": a, "rejected": b}, {"chosen": "The cat sat on the mat.",
                                                                 "rejected": "The cat sat on the log."}],
        "rank": [{"prompt": "Hello!", "completions": ["Hi.", "Hello there, friend.", "Bye."], "ranking": [1, 0, 2]}],
        "chat": [{"messages": user + a + [{"role": "user", "content": "Thanks."}] + b}],
    }
    out = {}
    for name, rows in cases.items():
        o = tmp_path / f"{name}.out.jsonl"
        assert main(["score", f"model={path}", f"data.train={write_jsonl(tmp_path / f'{name}.jsonl', rows)}",
                     f"output={o}", "progress=false"]) == 0
        out[name] = read_jsonl(o)
    p0, p1 = out["pref"]
    assert p0["reward_chosen"] == pytest.approx(direct(rm, tok, user, a), abs=1e-5)
    assert p0["reward_rejected"] == pytest.approx(direct(rm, tok, user, b), abs=1e-5)
    assert p0["reward_margin"] == pytest.approx(p0["reward_chosen"] - p0["reward_rejected"], abs=1e-12)
    # implicit prompt: the shared prefix "The cat sat on the" is the prompt
    assert p1["reward_chosen"] == pytest.approx(direct(rm, tok, "The cat sat on the", " mat."), abs=1e-5)
    r = out["rank"][0]
    assert r["rewards"] == pytest.approx([direct(rm, tok, "Hello!", c) for c in r["completions"]], abs=1e-5)
    c = out["chat"][0]
    msgs = cases["chat"][0]["messages"]
    assert c["reward"] == pytest.approx(direct(rm, tok, msgs[:3], msgs[3:]), abs=1e-5)


def test_standard_hf_reward_model_loads_into_score(tmp_path):
    """A reward model made with plain transformers (LlamaForSequenceClassification, save_pretrained) is scored
    by posttrain like its own."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    _, tok = build_preset("tiny")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    hf = LlamaForSequenceClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    data = write_jsonl(tmp_path / "rows.jsonl", PC_ROWS[:3])
    out = tmp_path / "o.jsonl"
    assert main(["score", f"model={tmp_path / 'hf'}", f"data.train={data}", f"output={out}", "progress=false"]) == 0
    got = [r["reward"] for r in read_jsonl(out)]
    assert got == pytest.approx([direct(hf, tok, r["prompt"], r["completion"]) for r in PC_ROWS[:3]], abs=1e-5)


def test_bad_input_exits_2_one_line_nothing_written(rm_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, _, tok = rm_dir
    good = write_jsonl(tmp_path / "good.jsonl", PC_ROWS[:2])
    bad = write_jsonl(tmp_path / "bad.jsonl", [PC_ROWS[0], {"prompt": "hi", "completion": 7}])
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    lm_dir = tmp_path / "lm"
    lm, t = build_preset("tiny")
    save_model(lm, t, lm_dir)
    out = tmp_path / "out.jsonl"
    cases = [
        ([f"model={path}", f"data.train={bad}"], f"{bad}:2: column 'completion'"),
        ([f"model={path}", f"data.train={chat}"], f"{chat}:1: column 'messages' has no assistant"),
        ([f"model={lm_dir}", f"data.train={good}"], "not a reward model"),
        ([f"model={tmp_path}/nope", f"data.train={good}"], "no such directory"),
        ([f"model={path}"], "key 'data.train' is required"),
        ([f"model={path}", f"data.train={good}", f"output={tmp_path}"], "is a directory"),
    ]
    for args, needle in cases:
        o = [] if any(a.startswith("output=") for a in args) else [f"output={out}"]
        assert main(["score", *args, *o]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
        assert not out.exists()
        assert not any(p.name.startswith(".out.jsonl") for p in tmp_path.iterdir())  # no temp file left
    before = (tmp_path / "good.jsonl").read_bytes()  # output = the input (by another spelling): refused
    assert main(["score", f"model={path}", f"data.train={good}", f"output={tmp_path}/./good.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input data.train" in err, err
    assert (tmp_path / "good.jsonl").read_bytes() == before
