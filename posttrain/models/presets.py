"""Tiny offline model presets: random-init Llama/Qwen2-shaped causal LMs built from a config.

No weights are downloaded. ``build_preset("tiny")`` gives a model and a byte-level BPE tokenizer trained
on a small built-in English text (:data:`DEFAULT_TEXT`, 512 tokens), in a second on a CPU.

=============  ======  ==========================================================================
preset         params  shape
=============  ======  ==========================================================================
``tiny``       0.26M   Llama: d=64, 3 layers, 4 heads, ff 256, untied embeddings (vocab 512)
``small``      4.7M    Llama: d=256, 6 layers, 8 heads / 4 KV heads, ff 704, untied (vocab 512)
``qwen2-0.5b`` 0.39B   Qwen2-0.5B shape (d=896, 24 layers, 14 heads / 2 KV, ff 4864, tied) with a
                       32000-row vocabulary; for GPU benchmarks
=============  ======  ==========================================================================

Parameter counts are for the default tokenizer; they change with ``len(tokenizer)``. The config's
``vocab_size`` is ``len(tokenizer)``, except that a preset with ``min_vocab_size`` (``qwen2-0.5b``)
pads the embedding and LM head up to that many rows so its size matches the real model's class; the
extra rows are never produced by the tokenizer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, PreTrainedModel, Qwen2Config

from posttrain.errors import ModelError
from posttrain.models.tokenizer import stop_token_ids, train_bpe, wrap_tokenizer

__all__ = ["PresetSpec", "PRESETS", "DEFAULT_TEXT", "DEFAULT_VOCAB_SIZE", "default_tokenizer",
           "preset_config", "build_preset", "count_params"]


@dataclass(frozen=True)
class PresetSpec:
    """The shape of a preset causal LM (a Llama- or Qwen2-shaped HF config, minus the vocabulary)."""

    description: str
    family: str  # "llama" | "qwen2"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 1024
    min_vocab_size: int | None = None  # pad the vocabulary up to this many rows (benchmark presets)


PRESETS: dict[str, PresetSpec] = {
    "tiny": PresetSpec(
        description="Llama-shaped, ~0.26M params (d=64, 3 layers, 4 heads, ff 256, untied); CPU tests",
        family="llama", hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=256, tie_word_embeddings=False),
    "small": PresetSpec(
        description="Llama-shaped, ~4.7M params (d=256, 6 layers, 8 heads / 4 KV, ff 704, untied); toy world",
        family="llama", hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
        num_key_value_heads=4, intermediate_size=704, tie_word_embeddings=False),
    "qwen2-0.5b": PresetSpec(
        description="Qwen2-0.5B-shaped, ~0.39B params (d=896, 24 layers, 14 heads / 2 KV, ff 4864, tied, "
                    "vocab 32000); GPU benchmarks",
        family="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True,
        max_position_embeddings=32768, min_vocab_size=32000),
}

# A small built-in English text for the default tokenizer (written for this project).
DEFAULT_TEXT: tuple[str, ...] = (
    'The library is a quiet place in the middle of the town. People come here to read, to study, and '
    'to think. On a rainy afternoon the tables fill with students who open their notebooks and write '
    'down what they have learned. An old clock on the wall counts the hours, and the librarian walks '
    'between the shelves, putting each book back where it belongs.',
    'A good question is often more useful than a quick answer. When you ask why something happens, '
    'you begin to see how the parts of the world fit together. Water boils because heat makes its '
    'molecules move faster. Leaves turn red in the autumn because the green colour fades and the '
    'other colours remain. The moon changes shape because we see different parts of it lit by the '
    'sun.',
    'In the morning the baker wakes before the sun rises. She mixes flour, water, salt and yeast, and'
    ' she leaves the dough to rest while the oven grows warm. By the time the first customers arrive,'
    ' the shop smells of fresh bread, and the shelves are full of loaves, rolls and small sweet '
    'cakes.',
    'Learning a new language takes patience. At first every sentence is hard, and you must think '
    'about each word. After a few months the words come more easily, and one day you notice that you '
    'have understood a whole conversation without translating it in your head.',
    'The river starts as a small stream high in the mountains. It runs over stones and under bridges,'
    ' through forests and fields, and it grows wider as other streams join it. Near the sea it '
    'becomes slow and brown, and boats carry goods from one city to another along its banks.',
    'Numbers help us describe the world. Two plus three is five, and ten minus four is six. If a '
    'train travels sixty miles in one hour, it will travel one hundred and twenty miles in two hours.'
    ' A recipe that serves four people needs twice as much of everything to serve eight.',
    'Please write a short answer to the following question. What is the capital of France? The '
    'capital of France is Paris. What is the largest planet in our solar system? The largest planet '
    'is Jupiter. How many days are there in a week? There are seven days in a week.',
    'A helpful assistant listens carefully, answers clearly, and admits when it does not know. It '
    'gives the most important information first and then adds details if they are needed. It is '
    'polite, it stays on topic, and it never pretends to be certain when it is only guessing.',
    'The garden was planted in the spring. There were rows of carrots and beans, a small apple tree, '
    'and flowers of every colour along the fence. Each evening the children carried water from the '
    'well, and by the end of the summer they had more vegetables than they could eat.',
    'Scientists test their ideas with careful experiments. They change one thing at a time, measure '
    'what happens, and write down the results. If the results agree with the idea, they repeat the '
    'experiment to make sure. If they do not agree, they look for a better explanation.',
    'The city wakes slowly on Sunday. The streets are quiet, the shops open late, and families walk '
    'together in the park. Some people sit in cafes and read the newspaper, while others ride their '
    'bicycles along the river or visit friends for lunch.',
    'Computers follow instructions written by people. A program is a list of steps, and the computer '
    'carries them out one after another, very quickly and without getting tired. When a program has a'
    ' mistake, the computer still follows it exactly, so the programmer must find the error and '
    'correct it.',
    'Once upon a time there was a small fox who lived at the edge of a great forest. Every day he '
    'watched the birds and wondered what the world looked like from the sky. One morning a kind old '
    'owl offered to tell him about the mountains, the rivers and the towns that she had seen on her '
    'long journeys.',
    'History is the story of how people lived in the past. We learn it from old letters, buildings, '
    'tools and songs. By studying history we can understand why our towns look the way they do, why '
    'we speak the languages we speak, and how ideas have travelled from one country to another.',
    'Good health depends on simple habits. Sleep enough, drink water, eat fruit and vegetables, and '
    'move your body every day. Walking for half an hour is good exercise, and spending time with '
    'friends is good for the mind as well as the heart.',
    'The weather changes from day to day. Yesterday it was cold and windy, and the sky was grey with '
    'clouds. Today the sun is shining, the air is warm, and the snow on the hills has started to '
    'melt. Tomorrow, the forecast says, there may be rain in the afternoon.',
    'Music can make people happy or sad, calm or excited. Some songs are very old and have been sung '
    'by many generations, while others were written only last year. Learning to play an instrument '
    'takes practice, but even a simple melody can bring joy to those who hear it.',
    'When you write a letter, start by saying hello and asking how the other person is. Then explain '
    'why you are writing, give your news, and ask any questions you have. Finish by saying goodbye '
    'and signing your name at the bottom of the page.',
    'The ocean covers most of the surface of the earth. It is home to fish, whales, turtles and '
    'countless small creatures that we cannot see without a microscope. Its currents carry warm water'
    ' from the tropics towards the poles and help to shape the climate of every continent.',
    'A map shows where places are and how to travel between them. North is usually at the top, and a '
    'small scale in the corner tells you how many miles each inch represents. With a good map and a '
    'little patience, you can find your way almost anywhere.',
)
DEFAULT_VOCAB_SIZE = 512


@functools.lru_cache(maxsize=1)
def _default_tokenizer_json() -> str:
    return train_bpe(DEFAULT_TEXT, DEFAULT_VOCAB_SIZE, min_frequency=2).to_str()


def default_tokenizer():
    """The default byte-level BPE tokenizer (512 tokens), trained once per process on :data:`DEFAULT_TEXT`.

    Training is cached; each call returns a fresh tokenizer object, so callers may change it (for
    example ``padding_side``) without affecting one another."""
    from tokenizers import Tokenizer

    return wrap_tokenizer(Tokenizer.from_str(_default_tokenizer_json()))


def _spec(name: str) -> PresetSpec:
    if name not in PRESETS:
        raise ModelError(f"model 'preset:{name}': unknown preset (choose from: {', '.join(PRESETS)})")
    return PRESETS[name]


def preset_config(name: str, tokenizer) -> PretrainedConfig:
    """The HF config of preset ``name`` for ``tokenizer`` (vocab, pad and eos ids taken from it)."""
    spec = _spec(name)
    vocab_size = len(tokenizer)
    if spec.min_vocab_size is not None:
        vocab_size = max(vocab_size, spec.min_vocab_size)
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[spec.family]
    return cls(**kwargs)


def build_preset(name: str, *, tokenizer=None, seed: int = 0, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, object]:
    """Build preset ``name`` offline: a random-init causal LM and its tokenizer.

    ``tokenizer=None`` uses :func:`default_tokenizer`. The same ``seed`` gives the same weights; the
    global torch RNG is left untouched. ``device="meta"`` builds the shape only (no memory), e.g. to
    count parameters of ``qwen2-0.5b``. The model's ``generation_config`` stops at eos and
    ``<|im_end|>``.
    """
    tok = default_tokenizer() if tokenizer is None else tokenizer
    config = preset_config(name, tok)
    stops = stop_token_ids(tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if device is not None and torch.device(device).type == "meta":
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            if device is not None:
                model = model.to(device)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = stops if len(stops) > 1 else (stops[0] if stops else None)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.eval()
    return model, tok


def count_params(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (tied weights counted once)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in params.values())
