"""Datasets: formats, loading + validation, chat templates, tokenisation with loss masks, collation,
packing.

Typical use::

    rows = load_rows("prefs.jsonl", kinds=["preference"])         # validated, one-line DataErrors
    data = encode_dataset(tokenizer, rows, max_len=512, max_prompt_len=256)
    batch = collate_pairs([p.chosen for p in data], [p.rejected for p in data], pad_id)
"""

from posttrain.data.chat import CHATML_TEMPLATE, IM_END, IM_START, chat_template_of, is_chatml, render_chat
from posttrain.data.collate import collate_lm, collate_pairs, collate_prompts, pad_sequences
from posttrain.data.formats import KIND_NAMES, KINDS, ROLES, Kind, detect_kind, is_conversational, is_messages
from posttrain.data.load import Rows, load_rows
from posttrain.data.packing import PackedRow, block_causal_mask, collate_packed, pack
from posttrain.data.tokenize import (
    Encoded,
    EncodedDataset,
    EncodedLabeled,
    EncodedPair,
    EncodedPrompt,
    EncodedRanking,
    TruncationStats,
    completion_text,
    encode_completion,
    encode_dataset,
    encode_example,
    encode_messages,
    encode_prompt,
    encode_text,
    render_prompt,
    split_prompt,
)
from posttrain.data.validate import check_kind, validate_row, validate_rows

__all__ = [
    "CHATML_TEMPLATE", "IM_END", "IM_START", "chat_template_of", "is_chatml", "render_chat",
    "collate_lm", "collate_pairs", "collate_prompts", "pad_sequences",
    "KIND_NAMES", "KINDS", "ROLES", "Kind", "detect_kind", "is_conversational", "is_messages",
    "Rows", "load_rows",
    "PackedRow", "block_causal_mask", "collate_packed", "pack",
    "Encoded", "EncodedDataset", "EncodedLabeled", "EncodedPair", "EncodedPrompt", "EncodedRanking",
    "TruncationStats", "completion_text", "encode_completion", "encode_dataset", "encode_example",
    "encode_messages", "encode_prompt", "encode_text", "render_prompt", "split_prompt",
    "check_kind", "validate_row", "validate_rows",
]
