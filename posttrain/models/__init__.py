"""Models: load any HF causal LM or tokenizer, offline presets, reward/value heads, per-token log-probs.

Token-space convention: per-token tensors are [B, T] aligned with ``input_ids``; position t holds
log p(x_t | x_<t) and position 0 holds 0 (see :mod:`posttrain.models.logprobs`).
"""

from posttrain.models.heads import (
    last_token_index, load_reward_model, load_value_model, reward_model_from_causal, score_sequences,
    token_values, value_model_from_causal,
)
from posttrain.models.load import (
    load_causal_lm, load_pretrained, load_tokenizer, resolve_device, resolve_dtype, resolve_model_path,
    save_model, unwrap_model,
)
from posttrain.models.logprobs import position_ids_from_mask, sequence_logprobs, token_entropy, token_logprobs
from posttrain.models.presets import (
    PRESETS, PresetSpec, build_preset, count_params, default_tokenizer, preset_config,
)
from posttrain.models.tokenizer import (
    EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, ensure_chat_template, stop_token_ids, train_tokenizer,
)

__all__ = [
    # tokenizer
    "train_tokenizer", "ensure_chat_template", "stop_token_ids", "EOS_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS",
    # presets
    "PRESETS", "PresetSpec", "build_preset", "count_params", "default_tokenizer", "preset_config",
    # loading
    "resolve_device", "resolve_dtype", "resolve_model_path", "load_causal_lm", "load_pretrained",
    "load_tokenizer", "save_model", "unwrap_model",
    # heads
    "reward_model_from_causal", "value_model_from_causal", "load_reward_model", "load_value_model",
    "score_sequences", "token_values", "last_token_index",
    # log-probs
    "token_logprobs", "token_entropy", "sequence_logprobs", "position_ids_from_mask",
]
