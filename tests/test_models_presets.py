"""posttrain.models.presets: offline random-init presets and the default tokenizer."""

from __future__ import annotations

import pytest
import torch

from posttrain.errors import ModelError
from posttrain.models.presets import (
    DEFAULT_VOCAB_SIZE, PRESETS, build_preset, count_params, default_tokenizer, preset_config,
)
from posttrain.models.tokenizer import train_tokenizer

# Target sizes from the task (tiny matches a TRL benchmark reference); ±15% allowed.
TARGETS = {"tiny": 0.26e6, "small": 4.7e6, "qwen2-0.5b": 0.39e9}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_sizes_within_15_percent(name):
    # qwen2-0.5b is built on the meta device only: shapes, no memory.
    model, tok = build_preset(name, device="meta" if name == "qwen2-0.5b" else None)
    n = count_params(model)
    assert abs(n - TARGETS[name]) / TARGETS[name] < 0.15, (name, n)


def test_exact_parameter_counts_worked_by_hand():
    """tiny (V=512, d=64, L=3, ff=256, untied):
    embed 512·64 = 32768, lm_head 32768; per layer attn 4·64² = 16384, mlp 3·64·256 = 49152,
    2 norms 128 → 65664; ×3 = 196992; final norm 64. Total 262592.

    qwen2-0.5b (V=32000, d=896, L=24, 14 heads/2 KV → k,v width 128, ff=4864, tied):
    per layer q 896²+896, k,v 896·128+128 each, o 896², mlp 3·896·4864, norms 2·896 → 14912384;
    ×24 = 357897216; embed 28672000; final norm 896. Total 386570112.
    """
    tiny, _ = build_preset("tiny")
    assert count_params(tiny) == 262592
    qwen, _ = build_preset("qwen2-0.5b", device="meta")
    assert count_params(qwen) == 386570112
    assert qwen.config.model_type == "qwen2" and qwen.config.tie_word_embeddings
    assert qwen.config.vocab_size == 32000


def test_vocab_is_len_tokenizer_and_special_ids_are_in_the_config():
    model, tok = build_preset("small")
    assert len(tok) == DEFAULT_VOCAB_SIZE == model.config.vocab_size
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id == 1
    assert model.config.eos_token_id == tok.eos_token_id == 0
    assert model.generation_config.eos_token_id == [0, 3]  # eos and <|im_end|>
    assert model.generation_config.pad_token_id == 1


def test_custom_tokenizer_sets_vocab():
    tok = train_tokenizer(["a bb ccc dddd"] * 4 + ["hello hello world"] * 2, 300)
    model, tok_out = build_preset("tiny", tokenizer=tok)
    assert tok_out is tok
    assert model.config.vocab_size == len(tok) < 300
    assert preset_config("tiny", tok).vocab_size == len(tok)


def test_same_seed_same_weights_different_seed_different_and_global_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, _ = build_preset("tiny", seed=0)
    assert torch.equal(torch.rand(3), expected_next)  # build_preset left the global RNG alone
    b, _ = build_preset("tiny", seed=0)
    c, _ = build_preset("tiny", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


def test_default_tokenizer_is_deterministic_and_a_fresh_object_each_call():
    t1, t2 = default_tokenizer(), default_tokenizer()
    assert t1 is not t2
    assert t1.backend_tokenizer.to_str() == t2.backend_tokenizer.to_str()
    t1.padding_side = "left"
    assert t2.padding_side == "right"
    assert default_tokenizer().padding_side == "right"
    assert t1.decode(t1("The river starts as a small stream.")["input_ids"]) == "The river starts as a small stream."


def test_tiny_model_runs_and_predicts_a_distribution():
    model, tok = build_preset("tiny")
    ids = torch.tensor([tok("The library is a quiet place")["input_ids"]])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    p = logits.double().softmax(-1).sum(-1)
    torch.testing.assert_close(p, torch.ones_like(p), rtol=0, atol=1e-9)


def test_unknown_preset_is_a_model_error_listing_names():
    with pytest.raises(ModelError) as err:
        build_preset("huge")
    msg = str(err.value)
    assert msg == "model 'preset:huge': unknown preset (choose from: tiny, small, qwen2-0.5b)"


def test_count_params_counts_tied_weights_once_and_trainable_only():
    model, _ = build_preset("qwen2-0.5b", device="meta")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tiny, _ = build_preset("tiny")
    for p in tiny.model.layers.parameters():
        p.requires_grad_(False)
    assert count_params(tiny, trainable_only=True) == 262592 - 3 * 65664
