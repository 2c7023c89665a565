"""Tokenizers: train a byte-level BPE offline, and make any HF tokenizer chat-ready.

Byte-level BPE (Radford et al. 2019, GPT-2 §2.2): text is UTF-8 encoded, every byte is mapped to one of
256 printable symbols, and merges are learned over those symbols. Every string is therefore encodable
(no unknown token) and ``decode(encode(s)) == s`` for any ``s``.

Special tokens of a trained tokenizer, in id order::

    0 <|endoftext|>  eos_token (also ends pretraining documents)
    1 <|pad|>        pad_token (distinct from eos, so "last non-pad token" pooling is unambiguous)
    2 <|im_start|>   ChatML turn start
    3 <|im_end|>     ChatML turn end; a completion ends with it and generation stops at it
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from posttrain.data.chat import CHATML_TEMPLATE, IM_END, IM_START
from posttrain.errors import ModelError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, IM_START, IM_END]

__all__ = [
    "EOS_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS",
    "train_bpe", "wrap_tokenizer", "train_tokenizer", "ensure_chat_template", "stop_token_ids",
]


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> Tokenizer:
    """Train a raw ``tokenizers.Tokenizer`` (byte-level BPE) on ``texts``.

    ``vocab_size`` is an upper bound that includes the 4 special tokens and the 256 byte symbols; the
    result is smaller when the texts hold too few pairs seen ``min_frequency`` times. Training is
    deterministic: the byte alphabet is fixed, and the trainer breaks count ties by pair id.
    """
    n_base = len(SPECIAL_TOKENS) + 256
    if vocab_size < n_base:
        raise ValueError(f"vocab_size must be >= {n_base} (4 special tokens + 256 bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer)
    return tok


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a raw tokenizer trained by :func:`train_bpe` as a HF fast tokenizer (ChatML template)."""
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    hf.chat_template = CHATML_TEMPLATE
    return hf


def train_tokenizer(texts: Iterable[str], vocab_size: int, *,
                    min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline; same texts → identical vocab and merges.

    Special tokens: ``<|endoftext|>`` (eos), ``<|pad|>`` (pad), ``<|im_start|>``, ``<|im_end|>``;
    ``chat_template`` is ChatML. No BOS token is added. Saves and loads with
    ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    return wrap_tokenizer(train_bpe(texts, vocab_size, min_frequency=min_frequency))


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make ``tokenizer`` usable for chat data, in place; returns it.

    - no ``chat_template`` → ChatML (:data:`posttrain.data.chat.CHATML_TEMPLATE`);
    - no pad token → pad = eos (the usual choice for causal LMs; masks, not pad ids, mark padding).

    It does not add ``<|im_start|>``/``<|im_end|>`` to a vocabulary that lacks them (that would need an
    embedding resize); such a tokenizer spells them with ordinary tokens, and :func:`stop_token_ids`
    then only holds eos.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ModelError(f"tokenizer '{name}': has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids at which generation stops: eos, and ``<|im_end|>`` when it is a single token."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()  # includes added tokens
    if IM_END in vocab and int(vocab[IM_END]) not in ids:
        ids.append(int(vocab[IM_END]))
    return ids
