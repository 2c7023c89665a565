"""Chat templates: the tokenizer's own, or a built-in ChatML fallback."""

from __future__ import annotations

# ChatML (as used by Qwen2 and many others). A completion (assistant turn) ends with <|im_end|>,
# which is also where generation stops.
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
