"""posttrain.models.heads: reward / value models in standard HF forms, padding-proof pooling."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from posttrain.errors import ModelError
from posttrain.models.heads import (
    last_token_index, load_reward_model, load_value_model, reward_model_from_causal, score_sequences,
    token_values, value_model_from_causal,
)
from posttrain.models.load import save_model
from posttrain.models.presets import build_preset

ROWS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24], [30, 31]]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def causal():
    return build_preset("tiny", seed=11)


@pytest.fixture(scope="module")
def rm(causal):
    model, tok = causal
    return reward_model_from_causal(model, tokenizer=tok)


def _pad(rows, pad_id, side):
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad_id)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids, mask


def _alone(fn, model, row):
    return fn(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))


def test_reward_model_copies_backbone_without_sharing_and_inits_head(causal, rm):
    """Head weight = randn(seed 0) / sqrt(d + 1), d = 64 → std 1/sqrt(65) ≈ 0.124."""
    model, _ = causal
    rmodel, tok = rm
    assert type(rmodel).__name__ == "LlamaForSequenceClassification"
    assert rmodel.config.num_labels == 1 and rmodel.config.pad_token_id == tok.pad_token_id == 1
    src = model.model.state_dict()
    dst = rmodel.model.state_dict()
    assert src.keys() == dst.keys() and all(torch.equal(src[k], dst[k]) for k in src)
    assert rmodel.model.embed_tokens.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    gen = torch.Generator().manual_seed(0)
    expected = torch.randn((1, 64), generator=gen) / math.sqrt(65)
    assert torch.equal(rmodel.score.weight.detach(), expected)
    again, _ = reward_model_from_causal(model, tokenizer=tok)
    assert torch.equal(again.score.weight, rmodel.score.weight)  # deterministic for the same seed


def test_zero_head_gives_zero_rewards(causal):
    model, tok = causal
    zero_rm, _ = reward_model_from_causal(model, tokenizer=tok, head_init="zero")
    ids, mask = _pad(ROWS, tok.pad_token_id, "right")
    assert torch.equal(score_sequences(zero_rm, ids, mask), torch.zeros(len(ROWS)))


@pytest.mark.parametrize("side", ["left", "right"])
def test_scores_same_for_left_and_right_padding_and_unbatched(rm, side):
    rmodel, tok = rm
    ids, mask = _pad(ROWS, tok.pad_token_id, side)
    batched = score_sequences(rmodel, ids, mask)
    alone = torch.cat([_alone(score_sequences, rmodel, r) for r in ROWS])
    assert batched.shape == (len(ROWS),)
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    assert alone.std() > 1e-3  # the rewards actually differ between rows


def test_agrees_with_hf_forward_when_pad_is_distinct(rm):
    rmodel, tok = rm
    ids, mask = _pad(ROWS, tok.pad_token_id, "right")
    hf = rmodel(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(score_sequences(rmodel, ids, mask), hf, rtol=0, atol=1e-5)


def test_pad_equal_to_eos_still_reads_the_last_real_token(causal):
    """With pad == eos and sequences ending in eos, HF's forward (last token != pad id) reads the
    token before the final eos; score_sequences reads the final eos itself."""
    model, tok = causal
    eos = tok.eos_token_id
    rmodel, _ = reward_model_from_causal(model, tokenizer=tok)
    rmodel.config.pad_token_id = eos
    rows = [r + [eos] for r in ROWS]
    ids, mask = _pad(rows, eos, "right")
    ours = score_sequences(rmodel, ids, mask)
    alone = torch.cat([_alone(score_sequences, rmodel, r) for r in rows])
    torch.testing.assert_close(ours, alone, rtol=0, atol=1e-5)
    hf = rmodel(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert (hf - ours).abs().min() > 1e-4  # HF pooled a different token for every row


def test_saved_reward_model_reloads_with_plain_hf_and_scores_identically(rm, tmp_path):
    rmodel, tok = rm
    save_model(rmodel, tok, tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    ids, mask = _pad(ROWS, tok.pad_token_id, "left")
    assert torch.equal(score_sequences(plain, ids, mask), score_sequences(rmodel, ids, mask))
    loaded, tok2 = load_reward_model(str(tmp_path / "rm"), device="cpu")
    assert torch.equal(score_sequences(loaded, ids, mask), score_sequences(rmodel, ids, mask))
    assert tok2.pad_token_id == tok.pad_token_id


def test_reward_model_from_a_causal_folder_and_run_dir(causal, tmp_path):
    model, tok = causal
    save_model(model, tok, tmp_path / "runs" / "sft" / "model")
    from_folder, tok2 = reward_model_from_causal(str(tmp_path / "runs" / "sft"), device="cpu")
    from_model, _ = reward_model_from_causal(model, tokenizer=tok)
    ids, mask = _pad(ROWS, tok.pad_token_id, "right")
    assert torch.equal(score_sequences(from_folder, ids, mask), score_sequences(from_model, ids, mask))
    assert len(tok2) == len(tok)


def test_gradients_reach_backbone_and_head(rm):
    rmodel, tok = rm
    ids, mask = _pad(ROWS, tok.pad_token_id, "left")
    score_sequences(rmodel, ids, mask).sum().backward()
    assert rmodel.score.weight.grad.abs().sum() > 0
    assert rmodel.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    rmodel.zero_grad(set_to_none=True)


def test_load_reward_model_rejects_causal_lm_and_multi_label(causal, tmp_path):
    model, tok = causal
    save_model(model, tok, tmp_path / "lm")
    with pytest.raises(ModelError, match="is a LlamaForCausalLM, not a reward model"):
        load_reward_model(str(tmp_path / "lm"))
    two = AutoModelForSequenceClassification.from_config(model.config.__class__(
        **{**model.config.to_dict(), "num_labels": 2}))
    save_model(two, tok, tmp_path / "two")
    with pytest.raises(ModelError, match="must have num_labels=1, has 2"):
        load_reward_model(str(tmp_path / "two"))
    with pytest.raises(ModelError, match="no such directory"):
        load_reward_model(str(tmp_path / "absent"))


def test_preset_reward_model():
    rmodel, tok = load_reward_model("preset:tiny", device="cpu")
    ids, mask = _pad(ROWS, tok.pad_token_id, "right")
    assert score_sequences(rmodel, ids, mask).shape == (len(ROWS),)


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[0, 0]]))


# ----------------------------------------------------------------------------- value models
def test_value_model_from_causal_is_zero_init_token_classifier(causal):
    model, tok = causal
    vm, _ = value_model_from_causal(model, tokenizer=tok)
    assert type(vm).__name__ == "LlamaForTokenClassification" and vm.config.num_labels == 1
    ids, mask = _pad(ROWS, tok.pad_token_id, "right")
    values = token_values(vm, ids, mask)
    assert values.shape == ids.shape and torch.equal(values, torch.zeros_like(values))


@pytest.mark.parametrize("side", ["left", "right"])
def test_value_model_from_reward_model_copies_head(rm, tmp_path, side):
    """Initialised from the RM (InstructGPT): the value at the last real token equals the RM score."""
    rmodel, tok = rm
    save_model(rmodel, tok, tmp_path / "rm")
    vm, _ = value_model_from_causal(str(tmp_path / "rm"), device="cpu")
    assert torch.equal(vm.score.weight, rmodel.score.weight) and torch.equal(vm.score.bias, torch.zeros(1))
    ids, mask = _pad(ROWS, tok.pad_token_id, side)
    values = token_values(vm, ids, mask)  # [B, T]
    last = values[torch.arange(len(ROWS)), last_token_index(mask)]
    torch.testing.assert_close(last, score_sequences(rmodel, ids, mask), rtol=0, atol=1e-6)
    for i, r in enumerate(ROWS):
        torch.testing.assert_close(values[i][mask[i].bool()], _alone(token_values, vm, r)[0], rtol=0, atol=1e-5)
    assert (values[~mask.bool()] == 0).all()


def test_value_model_is_deterministic_in_train_mode_and_reloads(rm, tmp_path):
    rmodel, tok = rm
    vm, _ = value_model_from_causal(rmodel, tokenizer=tok)
    vm.train()
    ids, mask = _pad(ROWS, tok.pad_token_id, "right")
    assert torch.equal(token_values(vm, ids, mask), token_values(vm, ids, mask))  # head dropout is 0
    save_model(vm, tok, tmp_path / "vm")
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "vm")
    assert torch.equal(token_values(plain, ids, mask), token_values(vm.eval(), ids, mask))
    loaded, _ = load_value_model(str(tmp_path / "vm"), device="cpu")
    assert loaded.dropout.p == 0.0


def test_unknown_head_init_is_a_model_error(causal):
    model, tok = causal
    with pytest.raises(ModelError, match="head_init 'xavier': unknown"):
        reward_model_from_causal(model, tokenizer=tok, head_init="xavier")
