"""A tiny, deterministic byte-level BPE tokenizer for the data tests (no network, no model files).

Specials get ids 0..3 in this order: ``<|endoftext|>`` (eos), ``<|pad|>`` (pad), ``<|im_start|>``,
``<|im_end|>``. The merges are learned from :data:`SENTENCES`, so words such as ``Ġsat`` and ``Ġmat`` are
single tokens; this is what lets the tests build a prompt/completion split that a joint tokenisation
would merge across.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from posttrain.data.chat import CHATML_TEMPLATE

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
SENTENCES = [
    "The cat sat on the mat.",
    "The dog sat on the log.",
    "What is two plus two? Two plus two is four.",
    "Hello! How are you today? I am fine, thank you.",
    "user assistant system tool",
] * 4


@functools.lru_cache(maxsize=None)
def _base() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return tok


@functools.lru_cache(maxsize=None)
def make_tokenizer(with_template: bool = True, bos: bool = False,
                   chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """The test tokenizer (cached: never mutate the returned object in a test).

    ``bos=True`` adds a ``<|bos|>`` special (id 334) that the tokenizer prepends by default, like Llama.
    ``chat_template`` replaces ChatML; ``with_template=False`` leaves the tokenizer without a template.
    """
    tok = Tokenizer.from_str(_base().to_str())
    kwargs = {}
    if bos:
        tok.add_special_tokens(["<|bos|>"])
        bos_id = tok.token_to_id("<|bos|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos_id)])
        kwargs["bos_token"] = "<|bos|>"
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], **kwargs,
    )
    if with_template:
        hf.chat_template = chat_template or CHATML_TEMPLATE
    return hf
