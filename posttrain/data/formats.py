"""Dataset kinds and their columns (the same column names as TRL datasets; see DESIGN.md).

=================  ===========================================  ==========================
kind               required columns                             optional columns
=================  ===========================================  ==========================
preference         ``chosen``, ``rejected``                     ``prompt``, ``margin``
ranking            ``prompt``, ``completions``, ``ranking``
unpaired           ``prompt``, ``completion``, ``label``
prompt_completion  ``prompt``, ``completion``
verifiable         ``prompt``, ``answer``
conversational     ``messages``
text               ``text``
prompt             ``prompt``                                   (any other columns)
=================  ===========================================  ==========================

Values of ``prompt``/``completion``/``chosen``/``rejected``/``completions`` items are either strings
("standard" data) or message lists ``[{"role": ..., "content": ...}, ...]`` ("conversational" data);
``messages`` is always a message list. Roles: system, user, assistant, tool. ``ranking`` lists indices
into ``completions``, best first. ``label`` is a bool (True = desirable). ``margin`` is a float (how much
better ``chosen`` is; used by margin reward losses).

The table above is also the detection order of :func:`detect_kind`: the first kind whose required
columns are all present wins, so a file with ``prompt, chosen, rejected`` is ``preference`` even though it
also has a ``prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Kind:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    description: str = ""

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional

    def describe_columns(self) -> str:
        """``'prompt?, chosen, rejected, margin?'`` (optional columns carry a ``?``), in table order."""
        order = [c for c in ("prompt", "messages", "text", "chosen", "rejected", "completion",
                             "completions", "ranking", "label", "answer", "margin") if c in self.columns]
        return ", ".join(c if c in self.required else c + "?" for c in order)


# Detection order (most specific first).
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("preference", ("chosen", "rejected"), ("prompt", "margin"),
             "pairs: a preferred and a dispreferred response (reward models, DPO family)"),
        Kind("ranking", ("prompt", "completions", "ranking"), (),
             "K responses per prompt with a best-first ranking (K-wise reward models)"),
        Kind("unpaired", ("prompt", "completion", "label"), (),
             "single responses labelled desirable/undesirable (KTO)"),
        Kind("prompt_completion", ("prompt", "completion"), (),
             "instruction tuning: loss on the completion"),
        Kind("verifiable", ("prompt", "answer"), (),
             "prompts with a checkable answer (RLVR)"),
        Kind("conversational", ("messages",), (),
             "multi-turn chats: loss on the assistant turns"),
        Kind("text", ("text",), (), "plain text: language modelling on every token"),
        Kind("prompt", ("prompt",), (), "prompts only: what RL, rejection sampling and best-of-n sample for"),
    )
}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)

# Columns whose values are text or message lists (both allowed).
TEXT_OR_MESSAGES = ("prompt", "completion", "chosen", "rejected")


def detect_kind(columns: Iterable[str], kinds: Sequence[str] | None = None) -> str | None:
    """The first kind (in :data:`KINDS` order, restricted to ``kinds`` when given) whose required
    columns are all in ``columns``; ``None`` when none matches. Extra columns are ignored.

    >>> detect_kind(["prompt", "chosen", "rejected"])
    'preference'
    >>> detect_kind(["prompt", "completion"], kinds=["preference"]) is None
    True
    """
    cols = set(columns)
    if kinds is not None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown dataset kind(s) {unknown}; expected one of {list(KIND_NAMES)}")
    for name, kind in KINDS.items():
        if kinds is not None and name not in kinds:
            continue
        if all(c in cols for c in kind.required):
            return name
    return None


def is_message(value: Any) -> bool:
    return isinstance(value, dict) and "role" in value and "content" in value


def is_messages(value: Any) -> bool:
    """A non-empty list whose items are all ``{role, content}`` dicts."""
    return isinstance(value, list) and len(value) > 0 and all(is_message(m) for m in value)


def is_conversational(row: dict) -> bool:
    """Whether a (valid) row holds message lists rather than strings."""
    if "messages" in row:
        return True
    for col in TEXT_OR_MESSAGES:
        if col in row and row[col] is not None:
            return isinstance(row[col], list)
    comps = row.get("completions")
    return bool(comps) and isinstance(comps[0], list)


def type_name(value: Any) -> str:
    """JSON-flavoured type names for messages: ``null``, ``bool``, ``int``, ``float``, ``list``, ``dict``."""
    if value is None:
        return "null"
    return type(value).__name__
