"""Build the toy world on disk: datasets, tokenizer and a pretrained base model, cached by a manifest.

``build_world(out_dir, seed=0)`` writes::

    OUT/
      manifest.json          version, seed, specs, sha256 of every file, content hash, sizes, timings
      pretrain/ sft/ sft_messages/ preference/ ranking/ kto/ verifiable/ rl/ prompts/   (jsonl)
      tokenizer/             byte-level BPE, ChatML template (posttrain.models.tokenizer.train_tokenizer)
      base_model/            Llama-shaped ~2.1M-parameter causal LM + its tokenizer (from_pretrained loads it)

The default ``OUT`` is ``$POSTTRAIN_WORLD`` or ``.posttrain/world`` in the working directory. A second call
with the same seed and version reuses everything: each part (data, tokenizer, base model) is rebuilt only
when its spec changed (sizes, shapes, steps, and a hash of the source files that generate it), a part it
depends on was rebuilt, or one of its files no longer matches the hash in the manifest. Files are written
atomically (:mod:`posttrain.io`); the manifest is written last, so an interrupted build is resumed, not
trusted. Concurrent builds of one folder are serialised by a lock file.

Pretraining runs through the shared engine (``posttrain.stages.pretrain``), called from :func:`_pretrain`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from posttrain.io import atomic_dir, atomic_write_json, read_jsonl, write_jsonl

WORLD_VERSION = "1"
ENV_VAR = "POSTTRAIN_WORLD"
DEFAULT_DIR = Path(".posttrain") / "world"
FAMILY_FILES = ("fact", "emotional", "howto", "arith", "reason")


# ------------------------------------------------------------------------------------------------ specs
@dataclass(frozen=True)
class DataSpec:
    corpus_rounds: int = 30       # entity paragraphs per entity
    corpus_scale: float = 1.0     # × CORPUS_MIX documents of the other kinds


@dataclass(frozen=True)
class TokenizerSpec:
    vocab_size: int = 1536


@dataclass(frozen=True)
class ModelSpec:
    """A Llama-shaped decoder (RMSNorm, RoPE, SwiGLU, tied embeddings): ≈2.07M parameters (vocab 1536)."""

    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256


@dataclass(frozen=True)
class PretrainSpec:
    steps: int = 450
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class WorldPaths:
    """Where everything of a built world lives (``root`` is the build folder)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def _p(self, rel: str) -> Path:
        return self.root / rel

    manifest = property(lambda s: s._p("manifest.json"))
    tokenizer = property(lambda s: s._p("tokenizer"))
    base_model = property(lambda s: s._p("base_model"))
    pretrain_train = property(lambda s: s._p("pretrain/train.jsonl"))
    pretrain_eval = property(lambda s: s._p("pretrain/eval.jsonl"))
    sft_train = property(lambda s: s._p("sft/train.jsonl"))
    sft_eval = property(lambda s: s._p("sft/eval.jsonl"))
    messages_train = property(lambda s: s._p("sft_messages/train.jsonl"))
    messages_eval = property(lambda s: s._p("sft_messages/eval.jsonl"))
    preference_train = property(lambda s: s._p("preference/train.jsonl"))
    preference_eval = property(lambda s: s._p("preference/eval.jsonl"))
    ranking_train = property(lambda s: s._p("ranking/train.jsonl"))
    ranking_eval = property(lambda s: s._p("ranking/eval.jsonl"))
    kto_train = property(lambda s: s._p("kto/train.jsonl"))
    kto_eval = property(lambda s: s._p("kto/eval.jsonl"))
    verifiable_train = property(lambda s: s._p("verifiable/train.jsonl"))
    verifiable_eval = property(lambda s: s._p("verifiable/eval.jsonl"))
    rl_prompts = property(lambda s: s._p("rl/train.jsonl"))

    @property
    def prompts(self) -> dict[str, Path]:
        """Eval prompt files per family."""
        return {f: self._p(f"prompts/{f}.jsonl") for f in FAMILY_FILES}

    def datasets(self) -> dict[str, Path]:
        """Every dataset file, by its path relative to ``root``."""
        m = json.loads(self.manifest.read_text())
        return {rel: self.root / rel for rel in m["parts"]["data"]["files"]}

    def read_manifest(self) -> dict:
        return json.loads(self.manifest.read_text())


def default_world_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


# -------------------------------------------------------------------------------------------- hashing
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_tree(root: Path, rels: list[str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for rel in rels:
        p = root / rel
        paths = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in paths:
            files[q.relative_to(root).as_posix()] = _sha256_file(q)
    return files


def _files_ok(root: Path, files: dict[str, str]) -> bool:
    return bool(files) and all((root / rel).is_file() and _sha256_file(root / rel) == h for rel, h in files.items())


def _combined_hash(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------ parts
def _write_datasets(root: Path, seed: int, spec: DataSpec) -> list[str]:
    from posttrain.world.datasets import generate_datasets

    data = generate_datasets(seed, corpus_rounds=spec.corpus_rounds, corpus_scale=spec.corpus_scale)
    for rel, rows in data.items():
        write_jsonl(root / rel, rows)
    return list(data)


def tokenizer_texts(root: Path) -> list[str]:
    """What the tokenizer is trained on: the corpus, plus the instruction and preference texts (so that
    ``**``, ``<think>`` and the assistant phrasing get merges of their own)."""
    texts = [r["text"] for r in read_jsonl(root / "pretrain/train.jsonl")]
    for r in read_jsonl(root / "sft/train.jsonl"):
        texts.append(r["prompt"][-1]["content"] + "\n" + r["completion"][0]["content"])
    for r in read_jsonl(root / "preference/train.jsonl"):
        texts.append(r["chosen"][0]["content"] + "\n" + r["rejected"][0]["content"])
    return texts


def _write_tokenizer(root: Path, spec: TokenizerSpec) -> None:
    from posttrain.models.tokenizer import train_tokenizer

    tok = train_tokenizer(tokenizer_texts(root), spec.vocab_size)
    with atomic_dir(root / "tokenizer") as tmp:
        tok.save_pretrained(tmp)


def make_model_config(spec: ModelSpec, tokenizer):
    from transformers import LlamaConfig

    from posttrain.models.tokenizer import stop_token_ids

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0, attention_bias=False,
        bos_token_id=None, eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )


def _init_model(init_dir: Path, tokenizer_dir: Path, spec: ModelSpec, seed: int) -> None:
    """A randomly initialised model (seeded) + tokenizer, saved as a HF folder."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(make_model_config(spec, tok))
    model.generation_config = GenerationConfig(eos_token_id=model.config.eos_token_id,
                                               pad_token_id=tok.pad_token_id, bos_token_id=None)
    model.save_pretrained(init_dir)
    tok.save_pretrained(init_dir)


def _pretrain(init_dir: Path, train_file: Path, out_dir: Path, spec: PretrainSpec, *, seed: int, log=None) -> dict:
    """Pretrain the initialised HF folder ``init_dir`` on ``train_file`` (``text`` rows) through the shared
    engine (:mod:`posttrain.stages.pretrain`: documents packed into ``seq_len`` rows with a block-diagonal
    mask, AdamW, warmup + cosine to ``min_lr_ratio·lr``, global-norm clipping) and write the trained HF model
    + tokenizer to ``out_dir``. Returns ``steps``, ``tokens``, ``train_loss``, ``seconds``."""
    from posttrain.config import DataConfig, PretrainConfig
    from posttrain.stages.pretrain import run

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=Path(out_dir).parent, prefix=".pretrain-run."))
    t0 = time.time()
    try:
        cfg = PretrainConfig(model=str(init_dir), output_dir=str(work), seed=seed, progress=log is not None,
                             data=DataConfig(train=str(train_file), max_len=spec.seq_len, max_prompt_len=8),
                             max_steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                             warmup_steps=spec.warmup_steps, lr_schedule="cosine", min_lr_ratio=spec.min_lr_ratio,
                             weight_decay=spec.weight_decay, adam_beta2=0.95, max_grad_norm=spec.max_grad_norm,
                             log_every=10)
        summary = run(cfg)
        for f in Path(summary["model_dir"]).iterdir():
            if f.is_file():
                shutil.copy2(f, Path(out_dir) / f.name)
        tail = [m["loss"] for m in read_jsonl(work / "metrics.jsonl") if "loss" in m][-5:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"steps": spec.steps, "tokens": int(summary["tokens_per_s"] * summary["train_time_s"]),
            "train_loss": sum(tail) / max(1, len(tail)), "seconds": time.time() - t0}


def eval_perplexity(model_dir: Path, eval_file: Path, *, seq_len: int = 128, batch_size: int = 32) -> dict:
    """Held-out token cross-entropy and perplexity of the model in ``model_dir`` on packed ``eval_file``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok([r["text"] for r in read_jsonl(eval_file)], add_special_tokens=False)["input_ids"]
    stream = [t for x in ids for t in x + [tok.eos_token_id]]
    rows = [stream[k:k + seq_len] for k in range(0, len(stream) - seq_len + 1, seq_len)]
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(rows), batch_size):
            batch = torch.tensor(rows[k:k + batch_size])  # [b, T]
            logits = model(input_ids=batch).logits[:, :-1].double()  # [b, T-1, V]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                    batch[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += batch[:, 1:].numel()
    loss = total / max(1, count)
    return {"eval_loss": loss, "eval_ppl": math.exp(loss), "uniform_ppl": float(len(tok)), "eval_tokens": count}


# ------------------------------------------------------------------------------------------------ build
# The sources each part is generated by: their hash is part of the part's spec, so a changed generator
# (a new template, another gold weight, another pretraining loop) rebuilds what it affects.
_DATA_SOURCES = ("kb.py", "tasks.py", "responses.py", "gold.py", "annotators.py", "corpus.py", "datasets.py")
_MODEL_SOURCES = ("build.py",)


def _code_hash(names: tuple[str, ...]) -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()[:16]


def _spec(seed: int, pretrain_steps: int | None) -> dict:
    pre = PretrainSpec() if pretrain_steps is None else dataclasses.replace(PretrainSpec(), steps=pretrain_steps)
    return {"version": WORLD_VERSION, "seed": seed,
            "data": {**dataclasses.asdict(DataSpec()), "code": _code_hash(_DATA_SOURCES)},
            "tokenizer": dataclasses.asdict(TokenizerSpec()),
            "base_model": {"model": dataclasses.asdict(ModelSpec()), "pretrain": dataclasses.asdict(pre),
                           "code": _code_hash(_MODEL_SOURCES)}}


def build_world(out_dir: str | os.PathLike | None = None, *, seed: int = 0, force: bool = False,
                pretrain_steps: int | None = None, log=None) -> WorldPaths:
    """Build (or reuse) the toy world under ``out_dir`` and return its paths.

    ``seed`` decides every random choice (splits, corpus, responses, labels, model init). ``force``
    rebuilds everything. ``pretrain_steps`` overrides the pretraining length (a tiny value gives a fast,
    untrained base model, e.g. for tests); it is part of the cache key. ``log`` (e.g. ``print``) receives
    progress lines.
    """
    root = Path(out_dir) if out_dir is not None else default_world_dir()
    paths = WorldPaths(root)
    spec = _spec(seed, pretrain_steps)
    with _lock(root):
        old = json.loads(paths.manifest.read_text()) if paths.manifest.is_file() and not force else None
        old_parts = (old or {}).get("parts", {}) if (old or {}).get("version") == WORLD_VERSION and \
            (old or {}).get("seed") == seed else {}
        parts: dict[str, dict] = {}
        timings: dict[str, float] = {}
        rebuilt_upstream = False
        t_start = time.time()
        for name in ("data", "tokenizer", "base_model"):
            prev = old_parts.get(name)
            if (not rebuilt_upstream and prev and prev.get("spec") == spec[name]
                    and _files_ok(root, prev.get("files", {}))):
                parts[name] = prev
                timings[name] = 0.0
                continue
            rebuilt_upstream = True
            t0, c0 = time.time(), time.process_time()
            extra: dict = {}
            if name == "data":
                if log:
                    log("world: generating datasets")
                rels = _write_datasets(root, seed, DataSpec(**{k: v for k, v in spec["data"].items() if k != "code"}))
                extra["rows"] = {rel: sum(1 for _ in open(root / rel, encoding="utf-8")) for rel in rels}
            elif name == "tokenizer":
                if log:
                    log("world: training the tokenizer")
                _write_tokenizer(root, TokenizerSpec(**spec["tokenizer"]))
                rels = ["tokenizer"]
            else:
                rels = ["base_model"]
                extra = _build_base_model(root, seed, spec["base_model"], log)
            parts[name] = {"spec": spec[name], "files": _hash_tree(root, rels), **extra,
                           "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}
            timings[name] = parts[name]["seconds"]
        if rebuilt_upstream or old is None:
            files = {rel: h for p in parts.values() for rel, h in p["files"].items()}
            manifest = {"version": WORLD_VERSION, "seed": seed, "parts": parts,
                        "data_hash": _combined_hash(parts["data"]["files"]),
                        "content_hash": _combined_hash(files),
                        "last_build_seconds": time.time() - t_start, "last_build_timings": timings}
            atomic_write_json(paths.manifest, manifest)
    return paths


def _build_base_model(root: Path, seed: int, spec: dict, log) -> dict:
    spec = {k: v for k, v in spec.items() if k != "code"}
    model_spec, pre_spec = ModelSpec(**spec["model"]), PretrainSpec(**spec["pretrain"])
    with atomic_dir(root / "base_model") as out:
        init = Path(tempfile.mkdtemp(dir=root, prefix=".base_model.init."))
        try:
            _init_model(init, root / "tokenizer", model_spec, seed)
            if log:
                log(f"world: pretraining the base model ({pre_spec.steps} steps)")
            stats = _pretrain(init, root / "pretrain/train.jsonl", out, pre_spec, seed=seed, log=log)
        finally:
            shutil.rmtree(init, ignore_errors=True)
        stats.update(eval_perplexity(out, root / "pretrain/eval.jsonl", seq_len=pre_spec.seq_len))
    import torch
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(root / "base_model").parameters())
    stats["params"] = n_params
    if log:
        log(f"world: base model {n_params / 1e6:.2f}M params, held-out ppl {stats['eval_ppl']:.2f} "
            f"(uniform {stats['uniform_ppl']:.0f}), pretraining {stats['seconds']:.0f}s")
    return {"pretrain": stats}


def load_world(out_dir: str | os.PathLike | None = None) -> WorldPaths:
    """The paths of an already built world (raises ``DataError`` when there is none)."""
    from posttrain.errors import DataError

    root = Path(out_dir) if out_dir is not None else default_world_dir()
    if not (root / "manifest.json").is_file():
        raise DataError("no toy world here (run `posttrain world build`)", file=str(root))
    return WorldPaths(root)
