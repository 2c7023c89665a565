"""posttrain.models.load: devices, dtypes, specs (folder / run dir / hub id / preset), atomic saves."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.data.chat import CHATML_TEMPLATE
from posttrain.errors import ConfigError, ModelError
from posttrain.models.load import (
    load_causal_lm, resolve_device, resolve_dtype, resolve_model_path, save_model, unwrap_model,
)
from posttrain.models.presets import build_preset
from posttrain.models.tokenizer import train_tokenizer

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def saved(tmp_path):
    model, tok = build_preset("tiny", seed=7)
    path = save_model(model, tok, tmp_path / "runs" / "sft" / "model")
    return model, tok, path


def _one_line_model_error(spec, **kw) -> str:
    with pytest.raises(ModelError) as err:
        load_causal_lm(spec, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- devices and dtypes
def test_resolve_device():
    if torch.cuda.is_available():
        expected = "cuda"
    elif torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert resolve_device().type == expected == resolve_device("auto").type
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="device 'bogus': unknown device"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") is torch.float32
    for names, dt in ((("fp32", "float32", "torch.float32"), torch.float32),
                      (("bf16", "bfloat16", "BF16"), torch.bfloat16), (("fp16", "float16"), torch.float16)):
        for n in names:
            assert resolve_dtype(n, "cpu") is dt
    assert resolve_dtype(torch.float64) is torch.float64
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        assert resolve_dtype("auto", "cuda") is expected
    with pytest.raises(ConfigError, match="dtype 'int8': unknown dtype"):
        resolve_dtype("int8")


# ----------------------------------------------------------------------------- save / load
def test_save_then_load_folder_and_run_dir_give_identical_logits(saved, tmp_path, monkeypatch):
    model, tok, path = saved
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp dirs left behind
    ref = model(IDS).logits
    for spec in (str(path), str(tmp_path / "runs" / "sft")):
        m2, t2 = load_causal_lm(spec, device="cpu")
        assert not m2.training and m2.dtype == torch.float32
        assert torch.equal(m2(IDS).logits, ref)
        assert t2("hello world")["input_ids"] == tok("hello world")["input_ids"]
        assert t2.chat_template == CHATML_TEMPLATE
    # model=runs/sft relative to the working directory, as a user writes it on the command line.
    monkeypatch.chdir(tmp_path)
    m3, _ = load_causal_lm("runs/sft", device="cpu")
    assert torch.equal(m3(IDS).logits, ref)
    assert resolve_model_path("runs/sft") == tmp_path.joinpath("runs", "sft", "model").relative_to(tmp_path)


def test_load_with_dtype_and_the_hf_loader_agrees(saved):
    _, _, path = saved
    m, _ = load_causal_lm(str(path), device="cpu", dtype="bf16")
    assert m.dtype == torch.bfloat16
    plain = AutoModelForCausalLM.from_pretrained(path)
    m32, _ = load_causal_lm(str(path), device="cpu", dtype="fp32")
    assert torch.equal(plain(IDS).logits, m32(IDS).logits)


def test_save_overwrites_existing_folder_atomically(saved):
    _, tok, path = saved
    other, _ = build_preset("tiny", seed=8)
    save_model(other, tok, path)
    back, _ = load_causal_lm(str(path), device="cpu")
    assert torch.equal(back(IDS).logits, other(IDS).logits)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model"]


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    model, tok = build_preset("tiny")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tok, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(model, tok, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_unwrap_model_strips_wrappers():
    model, _ = build_preset("tiny")

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert unwrap_model(Wrap(Wrap(model))) is model


def test_tokenizer_override_and_chat_template_added(tmp_path):
    model, _ = build_preset("tiny")
    # A tokenizer without chat template and without pad token (pad must become eos).
    tok = train_tokenizer(["hello world"] * 3, 300)
    tok.chat_template = None
    save_model(model, None, tmp_path / "m")
    tok.save_pretrained(tmp_path / "tok")
    raw = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert raw.chat_template is None
    m, t = load_causal_lm(str(tmp_path / "m"), device="cpu", tokenizer=str(tmp_path / "tok"))
    assert t.chat_template == CHATML_TEMPLATE
    assert len(t) == len(tok)


def test_preset_spec(monkeypatch):
    m, t = load_causal_lm("preset:tiny", device="cpu", dtype="fp32")
    ref, _ = build_preset("tiny")
    assert torch.equal(m(IDS).logits, ref(IDS).logits)
    assert len(t) == m.config.vocab_size
    m16, _ = load_causal_lm("preset:tiny", device="cpu", dtype="bf16")
    assert m16.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- errors a user can cause
def test_unknown_preset_lists_names():
    assert _one_line_model_error("preset:nope") == (
        "model 'preset:nope': unknown preset (choose from: tiny, small, qwen2-0.5b)")


def test_missing_paths_say_no_such_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert _one_line_model_error("runs/sft") == "model 'runs/sft': no such directory"
    assert _one_line_model_error("./sft") == "model './sft': no such directory"
    assert _one_line_model_error("a/b/c") == "model 'a/b/c': no such directory"
    absent = str(tmp_path / "nothing")
    assert _one_line_model_error(absent) == f"model '{absent}': no such directory"


def test_hub_id_offline_is_one_line():
    assert _one_line_model_error("someorg/not-a-real-model-xyz") == (
        "model 'someorg/not-a-real-model-xyz': not a local folder and the hub is unreachable (offline)")
    assert _one_line_model_error("not-a-real-model-xyz") == (
        "model 'not-a-real-model-xyz': not a local folder and the hub is unreachable (offline)")


def test_folders_that_hold_no_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert _one_line_model_error("empty") == "model 'empty': not a Hugging Face model folder (no config.json)"
    run = tmp_path / "runs" / "rm"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("stage: rm\n")
    assert _one_line_model_error("runs/rm") == (
        "model 'runs/rm': run directory has no model/ folder with a config.json (did the stage finish?)")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    assert _one_line_model_error("weights.bin") == "model 'weights.bin': is a file, not a model folder"


def test_corrupt_config_and_missing_tokenizer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert _one_line_model_error("bad").startswith("model 'bad': cannot read config.json (")
    model, _ = build_preset("tiny")
    save_model(model, None, tmp_path / "notok")
    assert _one_line_model_error("notok").startswith("tokenizer 'notok': no loadable tokenizer files in")


def test_cut_off_weights_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, tok = build_preset("tiny")
    save_model(model, tok, tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])  # a download or copy cut off
    msg = _one_line_model_error("m")
    assert msg.startswith("model 'm': cannot load weights (model.safetensors: "), msg
    save_model(model, tok, tmp_path / "b")  # the older pytorch_model.bin form instead of safetensors
    (tmp_path / "b" / "model.safetensors").unlink()
    b = tmp_path / "b" / "pytorch_model.bin"
    torch.save(model.state_dict(), b)
    b.write_bytes(b.read_bytes()[:1000])
    assert _one_line_model_error("b") == ("model 'b': cannot load weights (pytorch_model.bin: not a readable "
                                          "PyTorch checkpoint; cut off or corrupt?)")


def test_tokenizer_larger_than_embedding_is_rejected(tmp_path):
    small_tok = train_tokenizer(["hi there"] * 3, 300)
    model, _ = build_preset("tiny", tokenizer=small_tok)
    _, big_tok = build_preset("tiny")  # 512 tokens > len(small_tok) rows
    save_model(model, big_tok, tmp_path / "m")
    msg = _one_line_model_error(str(tmp_path / "m"), device="cpu")
    assert f"tokenizer has 512 tokens but the model embeds only {len(small_tok)}" in msg


def test_reward_model_folder_is_not_a_causal_lm(tmp_path):
    from posttrain.models.heads import reward_model_from_causal

    model, tok = build_preset("tiny")
    rm, _ = reward_model_from_causal(model, tokenizer=tok)
    save_model(rm, tok, tmp_path / "rm")
    cfg = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]
    msg = _one_line_model_error(str(tmp_path / "rm"))
    assert msg == f"model '{tmp_path / 'rm'}': is a LlamaForSequenceClassification, not a causal LM"
