"""build_world: files, cache, manifest hashes, tokenizer and model folders, show/eval helpers, CLI.

The base model here is pretrained for 2 steps only (``pretrain_steps=2``): this tests the build, not the
model's quality (``python -m posttrain.world.check`` measures that on the full build).
"""

import json

import pytest

import posttrain.world.build as build
from posttrain.errors import ConfigError, DataError
from posttrain.world import eval_prompts, eval_rows, gold_summary
from posttrain.world.build import WorldPaths, build_world, default_world_dir, load_world
from posttrain.world.responses import good_response
from posttrain.world.show import show
from posttrain.world.tasks import parse_prompt, prompt_text


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    calls = []
    real = build._pretrain

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(build, "_pretrain", counting)
    root = tmp_path_factory.mktemp("world")
    paths = build_world(root, seed=0, pretrain_steps=2)
    yield paths, calls
    mp.undo()


def test_build_writes_everything_and_a_manifest(built):
    paths, calls = built
    assert len(calls) == 1
    m = paths.read_manifest()
    assert m["version"] == build.WORLD_VERSION and m["seed"] == 0
    for rel, h in {k: v for p in m["parts"].values() for k, v in p["files"].items()}.items():
        assert build._sha256_file(paths.root / rel) == h
    for p in (paths.sft_train, paths.preference_train, paths.ranking_train, paths.kto_train, paths.verifiable_train,
              paths.rl_prompts, paths.pretrain_eval, paths.messages_train, *paths.prompts.values()):
        assert p.is_file() and p.stat().st_size > 0
    assert m["parts"]["data"]["rows"]["preference/train.jsonl"] == 1600
    assert (paths.base_model / "config.json").is_file() and (paths.tokenizer / "tokenizer.json").is_file()
    pre = m["parts"]["base_model"]["pretrain"]
    assert pre["steps"] == 2 and pre["uniform_ppl"] == 1536.0 and 1.5e6 < pre["params"] < 3e6
    assert set(paths.datasets()) == set(m["parts"]["data"]["files"])
    # no temporary folders left behind
    assert not [p for p in paths.root.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def _fake_pretrain(init_dir, train_file, out_dir, spec, *, seed, log=None):
    """Stands in for pretraining where only the rebuild logic is under test: copies the initial model."""
    import shutil

    for f in init_dir.iterdir():
        shutil.copy(f, out_dir / f.name)
    return {"steps": 0, "tokens": 0, "train_loss": float("nan"), "seconds": 0.0}


def test_second_call_reuses_and_damage_or_force_rebuilds(built, monkeypatch):
    paths, calls = built
    before = paths.manifest.read_bytes()
    data_mtime = paths.sft_train.stat().st_mtime_ns
    assert build_world(paths.root, seed=0, pretrain_steps=2) == paths
    assert len(calls) == 1 and paths.manifest.read_bytes() == before
    fakes = []
    monkeypatch.setattr(build, "_pretrain", lambda *a, **k: fakes.append(a) or _fake_pretrain(*a, **k))
    # a damaged tokenizer: tokenizer and base model are rebuilt, the datasets are kept as they are
    (paths.tokenizer / "tokenizer.json").write_text("{}")
    build_world(paths.root, seed=0, pretrain_steps=2)
    assert len(fakes) == 1 and paths.sft_train.stat().st_mtime_ns == data_mtime
    m = json.loads(paths.manifest.read_text())
    assert m["parts"]["tokenizer"]["files"] == json.loads(before)["parts"]["tokenizer"]["files"]  # same bytes again
    # a damaged dataset file: data and everything downstream are rebuilt, to the same bytes
    sft = paths.sft_train.read_bytes()
    paths.sft_train.write_bytes(b"{}\n")
    build_world(paths.root, seed=0, pretrain_steps=2)
    assert len(fakes) == 2 and paths.sft_train.read_bytes() == sft
    assert json.loads(paths.manifest.read_text())["data_hash"] == json.loads(before)["data_hash"]
    build_world(paths.root, seed=0, pretrain_steps=2, force=True)
    assert len(fakes) == 3
    # another seed is another world
    other = build_world(paths.root.parent / "other", seed=1, pretrain_steps=2)
    assert other.read_manifest()["data_hash"] != json.loads(before)["data_hash"]


def test_tokenizer_and_model_folders_load_and_fit_the_length_budget(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths, _ = built
    tok = AutoTokenizer.from_pretrained(paths.base_model)
    model = AutoModelForCausalLM.from_pretrained(paths.base_model)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert im_end in model.generation_config.eos_token_id and tok.eos_token_id in model.generation_config.eos_token_id
    assert model.config.vocab_size == len(tok) == 1536
    # short sequences: user prompts ≤ 24 tokens, canonical good responses (+ <|im_end|>) ≤ 32 tokens
    rows = [r for f in ("fact", "emotional", "howto", "arith", "reason") for r in eval_rows(paths.root, f)]
    prompt_lens = [len(tok(prompt_text(r["prompt"]))["input_ids"]) for r in rows]
    good_lens = [len(tok(good_response(parse_prompt(prompt_text(r["prompt"]))) + "<|im_end|>")["input_ids"])
                 for r in rows]
    assert max(prompt_lens) <= 24 and max(good_lens) <= 32
    text = tok.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")


def test_eval_helpers_and_show(built):
    paths, _ = built
    facts = eval_prompts(paths.root, "fact")
    seen, unseen = eval_prompts(paths.root, "fact_seen"), eval_prompts(paths.root, "fact_unseen")
    assert len(facts) == 80 and len(seen) == len(unseen) == 40 and sorted(map(str, seen + unseen)) == \
        sorted(map(str, facts))
    assert len(eval_prompts(paths.root, "all")) == 80 + 36 + 12 + 64 + 64
    with pytest.raises(ConfigError):
        eval_prompts(paths.root, "poetry")
    # canonical answers: all helpful and correct, mean gold 3 (4 for reason prompts)
    prompts = eval_prompts(paths.root, "all")
    summary = gold_summary(prompts, [good_response(parse_prompt(prompt_text(p))) for p in prompts])
    assert summary["helpful"] == summary["correct"] == 1.0
    assert summary["reason/gold"] == pytest.approx(4.0, rel=1e-12) and summary["fact/gold"] == pytest.approx(3.0)
    text = show(paths.root, n=2)
    for rel in paths.datasets():
        assert f"== {rel}" in text
    assert "gold +3.00" in text and "#1 [gold" in text


def test_default_dir_env_and_missing_world(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_WORLD", str(tmp_path / "w"))
    assert default_world_dir() == tmp_path / "w"
    monkeypatch.delenv("POSTTRAIN_WORLD")
    assert str(default_world_dir()) == ".posttrain/world"
    with pytest.raises(DataError, match="no toy world here"):
        load_world(tmp_path / "nothing")
    assert WorldPaths(str(tmp_path)).sft_train == tmp_path / "sft" / "train.jsonl"


def test_cli_show(built, capsys):
    from posttrain.cli import main

    paths, _ = built
    assert main(["world", "show", "--out", str(paths.root), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "== sft/train.jsonl" in out and "content hash" in out
    assert main(["world", "show", "--out", str(paths.root / "missing")]) == 2
    assert "no toy world here" in capsys.readouterr().err


def test_pretraining_loop_lowers_the_loss(tmp_path, built):
    """Pretraining through the shared engine learns: 20 steps of a 0.1M-parameter model on the world corpus take the
    held-out loss from ≈ ln(1536) = 7.34 well below it."""
    paths, _ = built
    init = tmp_path / "init"
    build._init_model(init, paths.tokenizer, build.ModelSpec(hidden_size=64, intermediate_size=128,
                                                            num_hidden_layers=2, num_attention_heads=2,
                                                            num_key_value_heads=2), seed=0)
    before = build.eval_perplexity(init, paths.pretrain_eval)["eval_loss"]
    stats = build._pretrain(init, paths.pretrain_train, tmp_path / "out",
                            build.PretrainSpec(steps=20, batch_size=8, seq_len=64, lr=1e-2, warmup_steps=5), seed=0)
    after = build.eval_perplexity(tmp_path / "out", paths.pretrain_eval)["eval_loss"]
    assert before > 7.0 and after < before - 1.5 and stats["steps"] == 20
    assert 0 < stats["tokens"] <= 20 * 8 * 64
