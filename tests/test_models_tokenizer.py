"""posttrain.models.tokenizer: offline byte-level BPE, ChatML, stop tokens."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from posttrain.data.chat import CHATML_TEMPLATE, IM_END, IM_START
from posttrain.errors import ModelError
from posttrain.models.presets import DEFAULT_TEXT
from posttrain.models.tokenizer import (
    EOS_TOKEN, PAD_TOKEN, ensure_chat_template, stop_token_ids, train_tokenizer,
)

TEXTS = list(DEFAULT_TEXT)


def _model_json(tok) -> dict:
    return json.loads(tok.backend_tokenizer.to_str())["model"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 400)


def test_same_texts_give_identical_vocab_and_merges_in_process_and_in_a_fresh_process(tok):
    again = train_tokenizer(TEXTS, 400)
    a, b = _model_json(tok), _model_json(again)
    assert a["vocab"] == b["vocab"]
    assert a["merges"] == b["merges"]
    assert len(a["merges"]) == 400 - 260  # 4 specials + 256 bytes + merges = vocab_size
    # A fresh interpreter has fresh hash seeds (Python's and the Rust trainer's HashMaps).
    code = (
        "import json,sys; from posttrain.models.presets import DEFAULT_TEXT;"
        "from posttrain.models.tokenizer import train_tokenizer;"
        "t=train_tokenizer(list(DEFAULT_TEXT),400);"
        "sys.stdout.write(json.dumps(json.loads(t.backend_tokenizer.to_str())['model']['merges']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert json.loads(out.stdout) == a["merges"]


def test_different_texts_learn_different_merges(tok):
    other = train_tokenizer(["zzqx zzqx zzqx qxqx qxqx"] * 3, 300)
    assert _model_json(other)["merges"] != _model_json(tok)["merges"]
    # Only pairs seen >= min_frequency times are merged, so a tiny corpus stops short of vocab_size.
    assert len(other) < 300


def test_special_tokens_ids_and_chat_template(tok):
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == [EOS_TOKEN, PAD_TOKEN, IM_START, IM_END]
    assert (tok.eos_token, tok.eos_token_id) == (EOS_TOKEN, 0)
    assert (tok.pad_token, tok.pad_token_id) == (PAD_TOKEN, 1)
    assert tok.bos_token is None
    assert tok.chat_template == CHATML_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True,
                                   tokenize=False)
    assert text == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert ids[0] == 2 and ids.count(3) == 1 and ids.count(2) == 2  # markers are single tokens


@pytest.mark.parametrize("text", [
    "", " ", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "Ünïcödé ßtraße café",
    "日本語のテキスト", "emoji 🙂👍🏽 and ZWJ 👩‍👩‍👧", "literal <|im_end|> and <|endoftext|> inside",
    "\x00\x01 control \x7f chars", "mixed 123,456.78 numbers -0.5e10",
])
def test_round_trips_tricky_text(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert all(0 <= i < len(tok) for i in ids)
    assert tok.decode(ids) == text


def test_round_trips_random_unicode(tok):
    rng = random.Random(0)
    for _ in range(50):
        chars = []
        for _ in range(rng.randint(1, 40)):
            cp = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x1F300, 0x1FAFF)])
            chars.append(chr(cp))
        s = "".join(chars)
        assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s


def test_save_pretrained_and_auto_tokenizer_reload(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert len(back) == len(tok)
    assert (back.eos_token_id, back.pad_token_id) == (0, 1)
    assert back.chat_template == CHATML_TEMPLATE
    sample = TEXTS[3] + " 🙂 <|im_start|>x<|im_end|>"
    assert back(sample)["input_ids"] == tok(sample)["input_ids"]
    assert stop_token_ids(back) == [0, 3]


def test_vocab_size_below_bytes_plus_specials_is_rejected():
    with pytest.raises(ValueError, match="vocab_size must be >= 260"):
        train_tokenizer(TEXTS, 100)


def _bare_tokenizer(eos: str | None) -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    vocab_tokens = list(pre_tokenizers.ByteLevel.alphabet())
    raw.add_tokens(sorted(vocab_tokens))
    kwargs = {}
    if eos is not None:
        raw.add_special_tokens([eos])
        kwargs["eos_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=raw, **kwargs)


def test_ensure_chat_template_sets_chatml_and_pad_eq_eos():
    bare = _bare_tokenizer("</s>")
    assert bare.chat_template is None and bare.pad_token is None
    out = ensure_chat_template(bare)
    assert out is bare
    assert bare.chat_template == CHATML_TEMPLATE
    assert bare.pad_token == "</s>" and bare.pad_token_id == bare.eos_token_id
    # No <|im_end|> token in this vocabulary: only eos stops generation.
    assert stop_token_ids(bare) == [bare.eos_token_id]


def test_ensure_chat_template_keeps_an_existing_template_and_pad(tok):
    tok2 = train_tokenizer(TEXTS, 300)
    tok2.chat_template = "{{ messages[0]['content'] }}"
    ensure_chat_template(tok2)
    assert tok2.chat_template == "{{ messages[0]['content'] }}"
    assert tok2.pad_token == PAD_TOKEN


def test_ensure_chat_template_without_pad_or_eos_is_a_one_line_model_error():
    with pytest.raises(ModelError, match="has neither a pad token nor an eos token") as err:
        ensure_chat_template(_bare_tokenizer(None))
    assert "\n" not in str(err.value)


def test_stop_token_ids_eos_and_im_end(tok):
    assert stop_token_ids(tok) == [tok.eos_token_id, tok.convert_tokens_to_ids(IM_END)] == [0, 3]
