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


def chat_template_of(tokenizer) -> str:
    """The tokenizer's own chat template, or :data:`CHATML_TEMPLATE` when it has none."""
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):  # named templates: use the default one
        tpl = tpl.get("default") or next(iter(tpl.values()), None)
    return tpl or CHATML_TEMPLATE


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """Render ``messages`` with :func:`chat_template_of` (no tokenisation).

    A template that fails on the messages (e.g. "roles must alternate") raises a one-line
    :class:`~posttrain.errors.DataError` without a file; callers that know the row re-raise it with one.
    """
    from posttrain.errors import DataError

    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=chat_template_of(tokenizer), tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as e:  # jinja2 TemplateError, or whatever `raise_exception` in a template raises
        msg = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"chat template failed: {msg}") from None


def is_chatml(tokenizer) -> bool:
    """Whether the template is ChatML-like: a generation prompt ends with ``<|im_start|>assistant\\n``."""
    try:
        gen = render_chat(tokenizer, [{"role": "user", "content": "x"}], add_generation_prompt=True)
    except Exception:
        return False
    return gen.endswith(IM_START + "assistant\n")
