"""posttrain.rollout.rewards: reward sources and the build_reward factory."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from posttrain.errors import ConfigError, DataError, ModelError, UserError
from posttrain.models.presets import default_tokenizer
from posttrain.rollout.rewards import (CallableReward, CombinedReward, GoldReward, OverlongPenalty,
                                       RewardModelReward, RewardSource, VerifierReward, build_reward,
                                       check_columns, load_callable, required_columns)
from posttrain.verifiers.math import math_reward


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------------------------------
# callables


def _lengths(prompts, completions, **columns):
    return [len(c) + columns.get("bonus", [0] * len(c))[i] for i, c in enumerate(completions)]


def test_callable_reward_passes_columns_and_checks_the_result():
    r = CallableReward(_lengths)
    assert r.name == "_lengths" and isinstance(r, RewardSource)
    assert r(["p", "q"], ["abc", "de"], bonus=[10, 20]) == [13.0, 22.0]
    bad_len = CallableReward(lambda p, c, **k: [1.0], name="short")
    with pytest.raises(UserError) as err:
        bad_len(["p", "q"], ["a", "b"])
    assert _one_line(err) == "reward 'short': returned 1 values for 2 completions"
    nan = CallableReward(lambda p, c, **k: [0.0, float("nan")], name="nan")
    with pytest.raises(UserError) as err:
        nan(["p", "q"], ["a", "b"])
    assert _one_line(err) == "reward 'nan': value nan for completion 1 is not finite"
    tensor_out = CallableReward(lambda p, c, **k: torch.tensor([0.5, 1.5]), name="t")
    assert tensor_out(["p", "q"], ["a", "b"]) == [0.5, 1.5]


def test_load_callable_modules_files_and_errors(tmp_path):
    import os.path

    assert load_callable("os.path:join") is os.path.join
    f = tmp_path / "my_rewards.py"
    f.write_text("def score(prompts, completions, **cols):\n    return [float(len(c)) for c in completions]\n")
    fn = load_callable(f"{f}:score")
    assert fn(["x"], ["four"]) == [4.0]
    with pytest.raises(ConfigError) as err:
        load_callable("no_such_module_xyz.sub:fn")
    assert _one_line(err) == ("reward 'callable:no_such_module_xyz.sub:fn': cannot import 'no_such_module_xyz.sub' "
                              "(ModuleNotFoundError: No module named 'no_such_module_xyz')")
    with pytest.raises(ConfigError) as err:
        load_callable("os.path:no_such_fn")
    assert _one_line(err) == "reward 'callable:os.path:no_such_fn': module 'os.path' has no attribute 'no_such_fn'"
    with pytest.raises(ConfigError) as err:
        load_callable("os.path")
    assert _one_line(err) == "reward 'callable:os.path': expected MODULE:FUNCTION (e.g. my_rewards:score)"
    with pytest.raises(ConfigError) as err:
        load_callable("os.path:sep")
    assert _one_line(err) == "reward 'callable:os.path:sep': 'sep' is not callable"
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(ConfigError) as err:
        load_callable(f"{broken}:f")
    assert _one_line(err).startswith(f"reward 'callable:{broken}:f': cannot import '{broken}' (SyntaxError: ")
    with pytest.raises(ConfigError) as err:
        load_callable("missing_file.py:f")
    assert _one_line(err) == "reward 'callable:missing_file.py:f': no such file 'missing_file.py'"


# ----------------------------------------------------------------------------------------------------
# reward model


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture(scope="module")
def rm(tokenizer):
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                      initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    return LlamaForSequenceClassification(cfg).eval()


CHAT_PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
                [{"role": "user", "content": "Hi"}],
                [{"role": "user", "content": "Tell me about the river and the sea, please."}]]
COMPLETIONS = ["The capital of France is Paris.", "Hello!", "The river runs to the sea. It is slow and brown."]


def _single_score(rm, ids):
    with torch.no_grad():
        return float(rm(input_ids=torch.tensor([ids])).logits[0, 0])


def test_reward_model_renders_like_the_data_layer(rm, tokenizer):
    """Conversational: ``<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n`` tokenised on its own, then
    the content + ``<|im_end|>``; a string prompt: the text as is, then completion + eos."""
    reward = RewardModelReward(rm, tokenizer, batch_size=2)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt_text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    expected = (tokenizer.encode(prompt_text, add_special_tokens=False)
                + tokenizer.encode("The capital of France is Paris.", add_special_tokens=False) + [im_end])
    assert reward.encode(CHAT_PROMPTS[0], COMPLETIONS[0]) == expected
    plain = reward.encode("Question: 2+2?", " 4")
    assert plain == (tokenizer.encode("Question: 2+2?", add_special_tokens=False)
                     + tokenizer.encode(" 4", add_special_tokens=False) + [tokenizer.eos_token_id])


def test_reward_model_scores_equal_unbatched_forward_and_keep_order(rm, tokenizer):
    """Batched scores (sorted by length, right-padded, read at the last real token) equal one unpadded
    forward per sequence within 1e-5, for any batch size, and follow the input order."""
    reward = RewardModelReward(rm, tokenizer, batch_size=2)
    scores = reward(CHAT_PROMPTS, COMPLETIONS)
    single = [_single_score(rm, reward.encode(p, c)) for p, c in zip(CHAT_PROMPTS, COMPLETIONS)]
    assert max(abs(a - b) for a, b in zip(scores, single)) < 1e-5
    assert len(set(round(s, 4) for s in scores)) == 3  # the scores really differ
    big = RewardModelReward(rm, tokenizer, batch_size=16)(CHAT_PROMPTS, COMPLETIONS)
    assert max(abs(a - b) for a, b in zip(scores, big)) < 1e-5
    perm = [2, 0, 1]
    permuted = reward([CHAT_PROMPTS[i] for i in perm], [COMPLETIONS[i] for i in perm])
    assert max(abs(permuted[k] - scores[i]) for k, i in enumerate(perm)) < 1e-5


def test_reward_model_truncation_keeps_prompt_end(rm, tokenizer):
    reward = RewardModelReward(rm, tokenizer, max_len=12)
    ids = reward.encode(CHAT_PROMPTS[2], COMPLETIONS[2])
    assert len(ids) == 12
    full = RewardModelReward(rm, tokenizer).encode(CHAT_PROMPTS[2], COMPLETIONS[2])
    assert len(full) > 12


def test_build_reward_rm_from_a_saved_folder(rm, tokenizer, tmp_path):
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    reward = build_reward(f"rm:{tmp_path / 'rm'}", device="cpu", batch_size=2)
    assert isinstance(reward, RewardModelReward) and reward.name == "rm"
    expected = RewardModelReward(rm, tokenizer)(CHAT_PROMPTS, COMPLETIONS)
    got = reward(CHAT_PROMPTS, COMPLETIONS)
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-5
    with pytest.raises(ModelError) as err:
        build_reward(f"rm:{tmp_path / 'missing'}")
    _one_line(err)


# ----------------------------------------------------------------------------------------------------
# verifiers, gold, length


def test_verifier_reward_reads_the_answer_column():
    r = VerifierReward(math_reward)
    assert r.name == "verifier:math_reward"
    comps = ["so \\boxed{\\frac{1}{2}}", "Answer: 7", "I do not know"]
    assert r(["p"] * 3, comps, answer=["0.5", "8", "3"]) == [1.0, 0.0, 0.0]
    with pytest.raises(DataError) as err:
        r(["p"] * 3, comps, other=[1, 2, 3])
    assert _one_line(err) == "column 'answer' is missing (reward 'verifier:math_reward' needs it)"
    assert err.value.field == "answer"
    fmt = build_reward("verifier:format")
    assert fmt(["p", "p"], ["<think>a</think> 4", "4"]) == [1.0, 0.0]


def test_columns_a_reward_needs_are_checked_against_the_rows_naming_the_file():
    """verifier:math reads 'answer'; a file where no row has it fails when loaded, naming the file (the
    runtime message above names none); a mixed file (answer on some rows) passes, like verifier:format."""
    math = build_reward("verifier:math")
    both = build_reward("gold*0.5+verifier:math")
    assert required_columns(math) == {"answer": "verifier:math"}
    assert required_columns(both) == {"answer": "verifier:math"}
    assert required_columns(build_reward("verifier:format")) == {} == required_columns(GoldReward())
    with pytest.raises(DataError) as err:
        check_columns(both, [{}, {"other": 1}, {"answer": None}], file="data/rl.jsonl")
    assert _one_line(err) == "data/rl.jsonl: column 'answer' is missing (reward 'verifier:math' needs it)"
    assert err.value.field == "answer" and err.value.file == "data/rl.jsonl"
    check_columns(math, [{}, {"answer": "7"}], file="x.jsonl")
    check_columns(build_reward("verifier:format"), [{}], file="x.jsonl")


def test_gold_reward_is_the_world_gold_and_is_imported_lazily():
    from posttrain.world.gold import gold_reward

    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], "Tell me something."]
    comps = ["2 + 3 = 5.", "Something something something"]
    assert GoldReward()(prompts, comps) == [gold_reward(p, c) for p, c in zip(prompts, comps)]
    code = ("import sys, posttrain.rollout.rewards as r; r.build_reward('gold'); "
            "print(any(m.startswith('posttrain.world') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_overlong_penalty_from_lengths_or_tokenizer(tokenizer):
    """L_max = 10, L_cache = 4: lengths 6 -> 0, 8 -> (6 - 8)/4 = -0.5, 10 -> -1, 11 -> -1."""
    r = build_reward("overlong:10:4", tokenizer=tokenizer)
    assert isinstance(r, OverlongPenalty) and r.name == "overlong:10:4"
    assert r(["p"] * 4, ["a"] * 4, completion_lengths=torch.tensor([6, 8, 10, 11])) == [0.0, -0.5, -1.0, -1.0]
    text = "The library is a quiet place"
    n = len(tokenizer.encode(text, add_special_tokens=False)) + 1
    assert r(["p"], [text]) == [build_reward("overlong:10:4")(["p"], ["x"], completion_lengths=[n])[0]]
    with pytest.raises(ConfigError):
        build_reward("overlong:4:10")


# ----------------------------------------------------------------------------------------------------
# combinations and the factory


class _Const:
    def __init__(self, name, values):
        self.name, self.values = name, values

    def __call__(self, prompts, completions, **columns):
        return list(self.values)


def test_combined_reward_weighted_sum_and_metrics():
    """a = [1, 2, 3] (w 0.5), b = [0, 1, 0] (w 2): total = [0.5, 3, 1.5]; metrics are the raw means
    a 2, b 1/3, and the total's mean 5/3."""
    c = CombinedReward([(_Const("a", [1, 2, 3]), 0.5), (_Const("b", [0, 1, 0]), 2.0)])
    assert c(["p"] * 3, ["x"] * 3) == [0.5, 3.0, 1.5]
    assert c.last_metrics == pytest.approx({"reward/a": 2.0, "reward/b": 1 / 3, "reward/total": 5 / 3},
                                           rel=1e-12)
    assert c.last_components == {"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 0.0]}
    assert c.name == "a*0.5+b*2"
    twice = CombinedReward([(_Const("a", [1]), 1.0), (_Const("a", [3]), 1.0)])
    assert twice(["p"], ["x"]) == [4.0] and set(twice.last_metrics) == {"reward/a", "reward/a#2", "reward/total"}


def test_build_reward_specs(tmp_path):
    f = tmp_path / "rw.py"
    f.write_text("def n_words(prompts, completions, **cols):\n    return [len(c.split()) for c in completions]\n")
    assert isinstance(build_reward("gold"), GoldReward)
    v = build_reward("verifier:math")
    assert isinstance(v, VerifierReward) and v.name == "verifier:math"
    c = build_reward(f"callable:{f}:n_words")
    assert isinstance(c, CallableReward) and c(["p"], ["one two three"]) == [3.0]
    answers = dict(answer=["4", "5"])
    comps = ["Answer: 4 and more words", "Answer: 6"]
    for spec in (f"verifier:math*2+callable:{f}:n_words*0.5", f"2*verifier:math + 0.5*callable:{f}:n_words",
                 [("verifier:math", 2), {"spec": f"callable:{f}:n_words", "weight": 0.5}],
                 {"verifier:math": 2, f"callable:{f}:n_words": 0.5}):
        r = build_reward(spec)
        assert isinstance(r, CombinedReward), spec
        # math: [1, 0] * 2; words: [5, 2] * 0.5
        assert r(["p", "q"], comps, **answers) == [2 + 2.5, 0 + 1.0], spec
        assert r.last_metrics["reward/verifier:math"] == 0.5
    assert build_reward(["gold"]).components[0][1] == 1.0
    assert build_reward(_lengths).name == "_lengths"
    src = _Const("k", [1.0])
    assert build_reward(src) is src


@pytest.mark.parametrize("spec, message", [
    ("goldd", "reward 'goldd': unknown reward source (expected gold, rm:PATH, verifier:NAME, callable:MODULE:FN, "
              "overlong:L_MAX:L_CACHE, or weighted sums like gold*0.5+verifier:math*1.0)"),
    ("verifier:chess", "reward 'verifier:chess': unknown verifier 'chess' (choose from: math, format)"),
    ("gold*x", "reward 'gold*x': expected SPEC*WEIGHT (e.g. gold*0.5)"),
    ("gold+", "reward 'gold+': empty term in a weighted sum"),
    ("overlong:10", "reward 'overlong:10': expected overlong:L_MAX:L_CACHE (two integers)"),
    ("gold*inf", "reward 'gold*inf': weight inf is not finite"),
])
def test_build_reward_errors_are_one_line(spec, message):
    with pytest.raises(ConfigError) as err:
        build_reward(spec)
    assert _one_line(err) == message
