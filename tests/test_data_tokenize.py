"""Tokenisation with loss masks: hand-checked tokens, exact boundaries, truncation, all kinds.

The test tokenizer (tests/data_fixtures.py) has ids 0..3 = <|endoftext|>, <|pad|>, <|im_start|>,
<|im_end|>; its BPE merges were learned from "The cat sat on the mat." etc., so "Ġsat" is ONE token.
"""

from __future__ import annotations

import json

import pytest

from posttrain.data import (
    CHATML_TEMPLATE,
    Encoded,
    EncodedLabeled,
    EncodedPair,
    EncodedPrompt,
    EncodedRanking,
    TruncationStats,
    encode_completion,
    encode_dataset,
    encode_example,
    encode_messages,
    encode_prompt,
    encode_text,
    is_chatml,
    load_rows,
    render_prompt,
    split_prompt,
)
from posttrain.errors import ConfigError, DataError, ModelError
from tests.data_fixtures import make_tokenizer

EOS, PAD, IM_START, IM_END = 0, 1, 2, 3
U = {"role": "user", "content": "Hello!"}
A = {"role": "assistant", "content": "I am fine."}
# A non-ChatML template: "[role] content<eos>\n" per turn, generation prompt "[assistant] ".
PLAIN_TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|endoftext|>\n{% endfor %}"
                  "{% if add_generation_prompt %}[assistant] {% endif %}")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def toks(tok, ids):
    return tok.convert_ids_to_tokens(list(ids))


def masked_spans(tok, enc: Encoded) -> list[str]:
    """Decode each contiguous run of loss tokens."""
    spans, cur = [], []
    for i, m in zip(enc.input_ids, enc.loss_mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    return [tok.decode(s) for s in spans]


def test_fixture_ids(tok):
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2, 3]
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (EOS, PAD, None)


def test_standard_pair_hand_checked_and_no_merge_across_boundary(tok):
    """prompt "The cat sa" | completion "t on the mat."

    Jointly, "The cat sat on the mat." is  The Ġcat Ġsat Ġon Ġthe Ġmat .   ('Ġsat' straddles the split,
    so no mask over the joint ids could mark exactly the completion). Separately:
      prompt      The Ġcat Ġs a                       -> loss 0 0 0 0
      completion  t Ġon Ġthe Ġmat . <|endoftext|>      -> loss 1 1 1 1 1 1
    """
    joint = tok.encode("The cat sat on the mat.", add_special_tokens=False)
    assert toks(tok, joint) == ["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", "."]
    enc = encode_example(tok, "The cat sa", "t on the mat.", max_len=64)
    assert toks(tok, enc.input_ids) == ["The", "Ġcat", "Ġs", "a", "t", "Ġon", "Ġthe", "Ġmat", ".", "<|endoftext|>"]
    assert enc.input_ids == tok.convert_tokens_to_ids(toks(tok, enc.input_ids))
    assert enc.input_ids[-1] == EOS
    assert enc.loss_mask == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert enc.prompt_len == 4 and not enc.truncated_prompt and not enc.truncated_completion
    assert enc.input_ids[:4] == encode_prompt(tok, "The cat sa")
    assert enc.input_ids[4:] == encode_completion(tok, "t on the mat.")
    assert masked_spans(tok, enc) == ["t on the mat.<|endoftext|>"]
    # completion_only_loss=False: every token but position 0
    assert encode_example(tok, "The cat sa", "t on the mat.", max_len=64,
                          completion_only_loss=False).loss_mask == [0] + [1] * 9


def test_conversational_pair_hand_checked(tok):
    """ChatML: prompt = "<|im_start|>user\\nHello!<|im_end|>\\n<|im_start|>assistant\\n" (12 tokens),
    completion = "I am fine.<|im_end|>" (5 tokens, loss on all 5; no trailing "\\n")."""
    assert render_prompt(tok, [U]) == "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(tok, "plain") == "plain"
    enc = encode_example(tok, [U], [A], max_len=64)
    assert toks(tok, enc.input_ids) == [
        "<|im_start|>", "user", "Ċ", "Hello", "!", "<|im_end|>", "Ċ", "<|im_start|>", "a", "ss", "istant", "Ċ",
        "I", "Ġam", "Ġfine", ".", "<|im_end|>"]
    assert enc.input_ids[:8] == [IM_START, 315, 202, 324, 4, IM_END, 202, IM_START]
    assert enc.input_ids[-1] == IM_END
    assert enc.loss_mask == [0] * 12 + [1] * 5
    assert enc.prompt_len == 12
    assert encode_completion(tok, [A]) == enc.input_ids[12:]
    assert masked_spans(tok, enc) == ["I am fine.<|im_end|>"]


def test_template_fallback_is_chatml(tok):
    bare = make_tokenizer(with_template=False)
    assert bare.chat_template is None and is_chatml(bare) and is_chatml(tok)
    assert encode_example(bare, [U], [A], max_len=64) == encode_example(tok, [U], [A], max_len=64)


def test_multi_turn_loss_only_on_assistant_turns(tok):
    msgs = [{"role": "system", "content": "Be kind."}, U, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you today?"}, A]
    enc = encode_messages(tok, msgs, max_len=None)
    assert masked_spans(tok, enc) == ["Hello!<|im_end|>", "I am fine.<|im_end|>"]
    # pieces are tokenised separately, but for ChatML every boundary is a special token or "\n", so the
    # ids equal tokenising the whole render (minus the "\n" after the final <|im_end|>)
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert full.endswith("<|im_end|>\n")
    assert enc.input_ids == tok.encode(full[:-1], add_special_tokens=False)
    assert enc.prompt_len == enc.loss_mask.index(1)
    assert toks(tok, enc.input_ids[enc.prompt_len - 5:enc.prompt_len]) == \
        ["<|im_start|>", "a", "ss", "istant", "Ċ"]
    assert encode_messages(tok, msgs, max_len=None, assistant_only_loss=False).loss_mask == \
        [0] + [1] * (len(enc) - 1)
    # a single exchange encodes exactly like the prompt/completion pair
    assert encode_messages(tok, [U, A], max_len=64) == encode_example(tok, [U], [A], max_len=64)


def test_multi_turn_truncation_and_stats(tok):
    msgs = [U, A, U, A]
    full = encode_messages(tok, msgs, max_len=None)
    st = TruncationStats()
    cut = encode_messages(tok, msgs, max_len=len(full) - 3, stats=st)
    assert cut.input_ids == full.input_ids[:-3] and cut.loss_mask == full.loss_mask[:-3]
    assert cut.truncated_completion and cut.completion_tokens_dropped == 3
    assert st.as_dict() == {"examples": 1, "truncated_prompts": 0, "truncated_completions": 1,
                            "prompt_tokens_dropped": 0, "completion_tokens_dropped": 3, "dropped_examples": 0}


def test_non_chatml_template_uses_template_tail():
    t = make_tokenizer(chat_template=PLAIN_TEMPLATE)
    assert not is_chatml(t)
    assert render_prompt(t, [U]) == "[user] Hello!<|endoftext|>\n[assistant] "
    c = encode_completion(t, [A])
    assert t.decode(c) == "I am fine.<|endoftext|>" and c[-1] == EOS
    enc = encode_messages(t, [U, A, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bye"}],
                          max_len=None)
    assert masked_spans(t, enc) == ["I am fine.<|endoftext|>", "Bye<|endoftext|>"]


def test_bos_only_where_the_tokenizer_adds_it():
    """A Llama-style tokenizer (adds <|bos|> = 334 by default): string prompts and texts start with it,
    completions never do; chat prompts take whatever the template writes (ChatML: no BOS)."""
    t = make_tokenizer(bos=True)
    enc = encode_example(t, "The cat", " sat", max_len=16)
    assert enc.input_ids == [334, 270, 309, 284, EOS] and enc.loss_mask == [0, 0, 0, 1, 1]
    assert 334 not in encode_example(t, [U], [A], max_len=64).input_ids
    assert encode_text(t, "The cat", max_len=None).input_ids == [334, 270, 309, EOS]
    assert encode_text(make_tokenizer(), "The cat").input_ids == [270, 309, EOS]


def test_encode_text():
    t = make_tokenizer()
    enc = encode_text(t, "The cat sat on the mat.")
    assert toks(t, enc.input_ids) == ["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", ".", "<|endoftext|>"]
    assert enc.loss_mask == [0, 1, 1, 1, 1, 1, 1, 1] and enc.prompt_len == 0
    cut = encode_text(t, "The cat sat on the mat.", max_len=3)
    assert cut.input_ids == enc.input_ids[:3] and cut.truncated_completion and cut.completion_tokens_dropped == 5


def test_truncation_keeps_prompt_end_and_cuts_completion_end(tok):
    """prompt  The Ġcat Ġsat Ġon Ġthe Ġmat .  (7)  -> max_prompt_len=4 keeps  Ġon Ġthe Ġmat .
    completion The Ġdog Ġsat Ġon Ġthe Ġlog . eos (8) -> room 10-4 = 6 keeps the first 6 (eos lost)."""
    st = TruncationStats()
    p, c = "The cat sat on the mat.", "The dog sat on the log."
    enc = encode_example(tok, p, c, max_len=10, max_prompt_len=4, stats=st)
    assert toks(tok, enc.input_ids) == ["Ġon", "Ġthe", "Ġmat", ".", "The", "Ġdog", "Ġsat", "Ġon", "Ġthe", "Ġlog"]
    assert enc.loss_mask == [0] * 4 + [1] * 6 and enc.prompt_len == 4
    assert (enc.truncated_prompt, enc.prompt_tokens_dropped) == (True, 3)
    assert (enc.truncated_completion, enc.completion_tokens_dropped) == (True, 2)
    assert encode_prompt(tok, p, max_prompt_len=4) == enc.input_ids[:4]
    encode_example(tok, "Hello!", "Two", max_len=10, max_prompt_len=4, stats=st)
    assert st.as_dict() == {"examples": 2, "truncated_prompts": 1, "truncated_completions": 1,
                            "prompt_tokens_dropped": 3, "completion_tokens_dropped": 2, "dropped_examples": 0}
    assert str(st).startswith("2 sequences: 1 prompts truncated (3 tokens), 1 completions truncated (2 tokens)")
    # without max_prompt_len the prompt still leaves room for one completion token
    e2 = encode_example(tok, p, c, max_len=5)
    assert e2.input_ids == encode_prompt(tok, p)[-4:] + encode_completion(tok, c)[:1]
    assert e2.loss_mask == [0, 0, 0, 0, 1]


def test_length_errors_are_config_errors(tok):
    with pytest.raises(ConfigError, match=r"^max_prompt_len \(10\) must be smaller than max_len \(10\)$"):
        encode_example(tok, "a", "b", max_len=10, max_prompt_len=10)
    with pytest.raises(ConfigError, match=r"^max_len must be at least 2, got 1$"):
        encode_example(tok, "a", "b", max_len=1)


def test_no_eos_is_model_error():
    t = make_tokenizer()
    t2 = type(t)(tokenizer_object=t.backend_tokenizer, pad_token="<|pad|>")
    assert t2.eos_token_id is None
    with pytest.raises(ModelError, match="no eos token"):
        encode_completion(t2, "x")


def test_split_prompt():
    assert split_prompt("The cat sat on the mat.", "The cat sat on the log.") == \
        ("The cat sat on the", " mat.", " log.")
    assert split_prompt("Yes", "No") == ("", "Yes", "No")
    A2 = {"role": "assistant", "content": "Bye"}
    assert split_prompt([U, A], [U, A2]) == ([U], [A], [A2])
    # shared assistant turn: the prompt ends before the first assistant turn that differs
    assert split_prompt([U, A, U, A], [U, A, U, A2]) == ([U, A, U], [A], [A2])


def test_encode_dataset_all_kinds(tok):
    ds = encode_dataset(tok, [{"prompt": "The cat sat on the", "chosen": " mat.", "rejected": " log.",
                               "margin": 2},
                              {"chosen": "The cat sat on the mat.", "rejected": "The cat sat on the log."}],
                        "preference", max_len=32)
    explicit, implicit = ds.examples
    assert isinstance(explicit, EncodedPair) and explicit.margin == 2.0 and implicit.margin is None
    assert explicit.chosen == implicit.chosen and explicit.rejected == implicit.rejected
    n = explicit.chosen.prompt_len
    assert explicit.chosen.input_ids[:n] == explicit.rejected.input_ids[:n]
    assert masked_spans(tok, explicit.rejected) == [" log.<|endoftext|>"]
    # conversational implicit prompt
    A2 = {"role": "assistant", "content": "Bye"}
    pair = encode_dataset(tok, [{"chosen": [U, A], "rejected": [U, A2]}], "preference", max_len=64)[0]
    assert pair.chosen == encode_example(tok, [U], [A], max_len=64)

    rk = encode_dataset(tok, [{"prompt": "Q", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}],
                        "ranking", max_len=32)[0]
    assert isinstance(rk, EncodedRanking)
    assert [masked_spans(tok, e) for e in rk.ranked] == [["c<|endoftext|>"], ["a<|endoftext|>"], ["b<|endoftext|>"]]

    kto = encode_dataset(tok, [{"prompt": "Q", "completion": "a", "label": False}], "unpaired", max_len=32)[0]
    assert isinstance(kto, EncodedLabeled) and kto.label is False
    assert kto.example == encode_example(tok, "Q", "a", max_len=32)

    v = encode_dataset(tok, [{"prompt": [U], "answer": 4}], "verifiable", max_len=32, max_prompt_len=5)[0]
    assert isinstance(v, EncodedPrompt) and v.answer == "4" and v.truncated_prompt
    assert v.prompt_ids == encode_prompt(tok, [U])[-5:]

    sft = encode_dataset(tok, [{"text": "The cat"}], "text", max_len=32)
    assert sft[0] == encode_text(tok, "The cat") and sft.stats.examples == 1


def test_encode_dataset_drops_examples_without_loss_tokens(tok):
    long_system = {"role": "system", "content": "Hello! How are you today? I am fine, thank you." * 3}
    rows = [{"messages": [long_system, U, A]}, {"messages": [U, A]}]
    ds = encode_dataset(tok, rows, "conversational", max_len=20, progress=False)
    assert len(ds) == 1 and ds[0] == encode_messages(tok, [U, A], max_len=20)
    assert ds.stats.dropped_examples == 1 and ds.stats.truncated_completions == 1
    kept = encode_dataset(tok, rows, "conversational", max_len=20, drop_empty=False)
    assert len(kept) == 2 and kept[0].num_loss_tokens == 0


def test_encode_dataset_names_the_row_when_the_template_fails(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = make_tokenizer(chat_template="{% if messages|length > 2 %}{{ raise_exception('too many turns') }}"
                                     "{% endif %}" + CHATML_TEMPLATE)
    (tmp_path / "x.jsonl").write_text(json.dumps({"messages": [U, A]}) + "\n"
                                      + json.dumps({"messages": [U, A, U, A]}) + "\n")
    rows = load_rows("x.jsonl")
    with pytest.raises(DataError) as ei:
        encode_dataset(t, rows, max_len=64)
    assert str(ei.value) == "x.jsonl:2: chat template failed: too many turns"


def test_encode_dataset_progress_bar_does_not_change_results(tok, capsys):
    rows = [{"prompt": "Q", "completion": w} for w in ("a", "b", "c")]
    quiet = encode_dataset(tok, rows, "prompt_completion", max_len=16, progress=False)
    shown = encode_dataset(tok, rows, "prompt_completion", max_len=16, progress=True, source="mem")
    assert quiet.examples == shown.examples and len(shown) == 3
    assert "tokenising mem" in capsys.readouterr().err
