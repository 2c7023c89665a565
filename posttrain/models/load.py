"""Load any Hugging Face causal LM (local folder, run directory, hub id, or offline preset); save one.

``spec`` forms accepted by :func:`load_causal_lm`:

- ``preset:NAME`` — a random-init model built offline (:mod:`posttrain.models.presets`);
- a local HF folder (has ``config.json``);
- a posttrain run directory (has ``model/config.json``) — resolves to its ``model/`` subfolder, so
  ``model=runs/sft`` feeds the next stage;
- a hub id (``org/name`` or ``name``) — only when online; with ``HF_HUB_OFFLINE=1`` it loads from the
  local HF cache or fails with one line.

Something that can only be a path (starts with ``.``, ``/`` or ``~``, has more than one ``/``, or
``a/b`` where ``a`` is an existing local folder) and does not exist gives
``model 'runs/sft': no such directory``. An ``org/name`` spec whose ``org`` is not a local folder is
tried as a hub id.

Every failure a user can cause raises :class:`posttrain.errors.ModelError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from posttrain.errors import ConfigError, ModelError
from posttrain.io import atomic_dir
from posttrain.models.tokenizer import ensure_chat_template

__all__ = [
    "resolve_device", "resolve_dtype", "resolve_model_path", "resolve_tokenizer_path", "hub_offline",
    "load_pretrained", "load_tokenizer", "load_causal_lm", "save_model", "unwrap_model", "quiet_progress",
]

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp64": torch.float64, "float64": torch.float64,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "DONE")


@contextlib.contextmanager
def quiet_progress():
    """Hide transformers' per-file progress bars ("Loading weights", "Writing model shards")."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------- devices and dtypes
def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → cuda if available, else mps, else cpu. Also ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    if isinstance(name, torch.device):
        return name
    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}': unknown device (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}': CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}': only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device '{name}': MPS is not available on this machine")
    elif dev.type not in ("cpu", "meta"):
        raise ConfigError(f"device '{name}': unsupported device type (use auto, cpu, cuda, cuda:N or mps)")
    return dev


def resolve_dtype(name: str | torch.dtype = "auto", device: str | torch.device | None = None) -> torch.dtype:
    """``auto`` → bf16 on a CUDA device that supports it, fp32 otherwise; or ``fp32``/``bf16``/``fp16``."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower()
    if key == "auto":
        dev = resolve_device(device if device is not None else "auto")
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if key.startswith("torch."):
        key = key[len("torch."):]
    if key not in _DTYPES:
        raise ConfigError(f"dtype '{name}': unknown dtype (use auto, fp32, bf16 or fp16)")
    return _DTYPES[key]


# ----------------------------------------------------------------------------- resolving a spec
def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value, read now."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _looks_like_path(spec: str) -> bool:
    if spec.startswith((".", "/", "~")) or "\\" in spec or spec.endswith("/"):
        return True
    if spec.count("/") >= 2 or not _HUB_ID.match(spec) or ".." in spec:
        return True
    if "/" in spec and Path(spec.split("/", 1)[0]).is_dir():
        return True
    return False


def resolve_model_path(spec: str, *, _markers: tuple[str, ...] = ("config.json",),
                       _what: str = "model") -> Path | str:
    """A local model folder (``Path``) for ``spec``, or ``spec`` itself (a ``str``) when it is a hub id.

    A run directory resolves to its ``model/`` subfolder. Raises :class:`ModelError` for paths that
    do not exist or hold no HF model."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"{_what} {spec!r}: expected a folder, a hub id or preset:NAME")
    path = Path(spec).expanduser()
    has = lambda folder: any((folder / m).is_file() for m in _markers)  # noqa: E731
    if path.is_dir():
        if has(path):
            return path
        if has(path / "model"):
            return path / "model"
        if any((path / m).exists() for m in _RUN_MARKERS):
            raise ModelError(f"{_what} '{spec}': run directory has no model/ folder with a {_markers[0]} "
                             "(did the stage finish?)")
        if _what == "model":
            raise ModelError(f"model '{spec}': not a Hugging Face model folder (no config.json)")
        raise ModelError(f"tokenizer '{spec}': no loadable tokenizer files in {path} (pass tokenizer=FOLDER)")
    if path.exists():
        raise ModelError(f"{_what} '{spec}': is a file, not a {_what} folder")
    if _looks_like_path(spec):
        raise ModelError(f"{_what} '{spec}': no such directory")
    return spec


def resolve_tokenizer_path(spec: str) -> Path | str:
    """Like :func:`resolve_model_path`, for a folder holding tokenizer files."""
    return resolve_model_path(spec, _markers=("tokenizer_config.json", "tokenizer.json", "vocab.json",
                                              "tokenizer.model"), _what="tokenizer")


def _hub_error(spec: str, err: Exception) -> ModelError:
    text = " ".join(str(err).split())
    low = text.lower()
    unreachable = ("offline", "connect", "timed out", "name resolution", "network",
                   "cannot find the requested files in the disk cache")
    if hub_offline() or any(s in low for s in unreachable):
        return ModelError(f"model '{spec}': not a local folder and the hub is unreachable (offline)")
    if len(text) > 160:
        text = text[:157] + "..."
    return ModelError(f"model '{spec}': not a local folder and could not be loaded from the hub ({text})")


def _load_config(spec: str, where: Path | str, trust_remote_code: bool):
    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code,
                                          local_files_only=isinstance(where, Path) or hub_offline())
    except (OSError, ValueError, KeyError) as err:
        if isinstance(where, str):
            raise _hub_error(spec, err) from None
        msg = " ".join(str(err).split())[:200]
        raise ModelError(f"model '{spec}': cannot read config.json ({msg})") from None


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    """Load a tokenizer from a folder, run directory or hub id, and make it chat-ready
    (:func:`posttrain.models.tokenizer.ensure_chat_template`)."""
    where = resolve_tokenizer_path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code,
                                            local_files_only=isinstance(where, Path) or hub_offline())
    except (OSError, ValueError, KeyError, TypeError) as err:
        if isinstance(where, str):
            raise _hub_error(spec, err) from None
        raise ModelError(f"tokenizer '{spec}': no loadable tokenizer files in {where} "
                         "(pass tokenizer=FOLDER)") from None
    return ensure_chat_template(tok)


def load_pretrained(spec: str, auto_cls, *, device: str | torch.device = "auto",
                    dtype: str | torch.dtype = "auto", tokenizer: str | None = None,
                    trust_remote_code: bool = False, expect: str | None = None, **kwargs):
    """Load ``auto_cls.from_pretrained`` for a folder / run dir / hub id ``spec``; returns (model, tokenizer).

    ``expect`` (``"causal"`` or ``"sequence-classification"``) checks the folder's recorded
    architecture and rejects the other kind with a one-line :class:`ModelError`."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    where = resolve_model_path(spec)
    config = _load_config(spec, where, trust_remote_code)
    archs = list(getattr(config, "architectures", None) or [])
    heads = ("ForSequenceClassification", "ForTokenClassification")
    if expect == "causal" and archs and all(a.endswith(heads) for a in archs):
        raise ModelError(f"model '{spec}': is a {archs[0]}, not a causal LM")
    if expect == "sequence-classification" and archs and not any(
            a.endswith("ForSequenceClassification") for a in archs):
        raise ModelError(f"model '{spec}': is a {archs[0]}, not a reward model "
                         "(build one with reward_model_from_causal)")
    tok = load_tokenizer(tokenizer if tokenizer is not None else spec, trust_remote_code=trust_remote_code)
    try:
        with quiet_progress():
            model = auto_cls.from_pretrained(where, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                             local_files_only=isinstance(where, Path) or hub_offline(),
                                             **kwargs)
    except (OSError, ValueError) as err:
        if isinstance(where, str):
            raise _hub_error(spec, err) from None
        msg = " ".join(str(err).split())[:200]
        raise ModelError(f"model '{spec}': cannot load weights ({msg})") from None
    except SafetensorError as err:  # a cut-off or corrupt *.safetensors file
        msg = " ".join(str(err).split())[:200]
        raise ModelError(f"model '{spec}': cannot load weights "
                         f"({_weights_file(where, '.safetensors')}{msg})") from None
    except (pickle.UnpicklingError, RuntimeError) as err:  # a cut-off or corrupt pytorch_model.bin
        if isinstance(err, RuntimeError) and not str(err).startswith("PytorchStreamReader"):
            raise
        raise ModelError(f"model '{spec}': cannot load weights ({_weights_file(where, '.bin')}"
                         "not a readable PyTorch checkpoint; cut off or corrupt?)") from None
    model = model.to(dev)
    _check_vocab(spec, model, tok)
    return model, tok


def _weights_file(where, suffix: str) -> str:
    """``"NAME: "`` for the weights file ending in ``suffix`` in folder ``where`` (``""`` if unclear)."""
    if not isinstance(where, Path) or not where.is_dir():
        return ""
    names = sorted(p.name for p in where.iterdir() if p.name.endswith(suffix))
    return f"{names[0]}: " if len(names) == 1 else ""


def _check_vocab(spec: str, model: PreTrainedModel, tok) -> None:
    emb = model.get_input_embeddings()
    n_rows = getattr(emb, "num_embeddings", None)
    if n_rows is not None and len(tok) > n_rows:
        raise ModelError(f"model '{spec}': tokenizer has {len(tok)} tokens but the model embeds only "
                         f"{n_rows} (wrong tokenizer?)")


def load_causal_lm(spec: str, *, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                   tokenizer: str | None = None, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer from ``spec``; returns ``(model, tokenizer)``.

    ``spec``: ``preset:NAME``, a local HF folder, a posttrain run directory, or a hub id (online only).
    ``tokenizer`` overrides where the tokenizer comes from. The tokenizer gets a ChatML template
    and a pad token when it has none. The model is in eval mode on ``device`` in ``dtype``.
    """
    if isinstance(spec, str) and spec.startswith("preset:"):
        from posttrain.models.presets import build_preset

        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code) if tokenizer else None
        model, tok = build_preset(spec[len("preset:"):], tokenizer=tok)
        return model.to(device=dev, dtype=torch_dtype), ensure_chat_template(tok)
    return load_pretrained(spec, AutoModelForCausalLM, device=device, dtype=dtype, tokenizer=tokenizer,
                           trust_remote_code=trust_remote_code, expect="causal")


# ----------------------------------------------------------------------------- saving
def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP/FSDP ``.module`` and ``torch.compile`` ``._orig_mod`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


def save_model(model: PreTrainedModel, tokenizer, path: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` in HF format to ``path`` atomically.

    The folder appears complete or not at all (``posttrain.io.atomic_dir``); an existing folder is
    replaced. ``tokenizer`` may be None. Returns the path."""
    model = unwrap_model(model)
    with atomic_dir(path) as tmp, quiet_progress():
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(path)
