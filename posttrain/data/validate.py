"""Row validation: report the FIRST problem in a dataset as one line (``FILE:ROW: ...``).

Every check raises :class:`posttrain.errors.DataError`; ROW is 1-based (the line number for ``.jsonl``,
the row index + 1 otherwise). Message-list items are numbered from 0 (``item 0`` is the first message),
like the indices in ``ranking``. The checks, in the order they run for a row:

1.  the row is an object                         ``row must be an object, got list``
2.  required columns present                     ``column 'chosen' is missing``
3.  text columns are text                        ``column 'text' must be text, got list``
4.  prompt-like columns are text or messages     ``column 'prompt' must be text or a list of messages, got int``
5.  text / message lists are not empty           ``column 'chosen' is empty``
6.  each message is ``{role, content}``          ``column 'messages' item 0: must be an object with 'role'
                                                 and 'content'``
7.  message content is text                      ``column 'messages' item 0: 'content' must be text, got null``
8.  roles are known                              ``column 'messages' item 1: unknown role 'robot' (expected
                                                 system, user, assistant, tool)``
9.  a chat has an assistant turn                 ``column 'messages' has no assistant turn``
10. a completion (message list) starts with the assistant
                                                 ``column 'completion' item 0: expected role 'assistant', got 'user'``
11. text and messages are not mixed in a row     ``columns 'prompt' and 'chosen' mix text and message lists``
12. chosen != rejected                           ``'chosen' and 'rejected' are identical``
13. ``label`` is a bool                          ``column 'label' must be true or false``
14. numbers are numbers                          ``column 'margin' must be a number, got str``
15. no NaN / inf                                 ``column 'margin' is NaN`` / ``column 'margin' is infinite``
16. ``completions`` is a list of >= 2            ``column 'completions' needs at least 2 items, got 1``
17. ``completions`` and ``ranking`` lengths      ``columns 'completions' (3) and 'ranking' (2) have different lengths``
18. ``ranking`` holds integers                   ``column 'ranking' must be a list of integers``
19. ``ranking`` is a permutation                 ``column 'ranking' is not a permutation of 0..3``
20. ``completions`` are distinct                 ``column 'completions' items 0 and 1 are identical``
21. ``answer`` is text or a number, not empty    ``column 'answer' must be text or a number, got list``

File-level checks (empty file, bad JSON, unreadable parquet, no rows of the expected kind, ...) live in
:mod:`posttrain.data.load`; :func:`check_kind` reports the "no rows of the expected kind" case.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from posttrain.data.formats import KINDS, ROLES, detect_kind, is_message, type_name
from posttrain.errors import DataError


class _Where:
    __slots__ = ("source", "row")

    def __init__(self, source: str | None, row: int | None):
        self.source, self.row = source, row

    def error(self, msg: str, field: str | None = None) -> DataError:
        return DataError(msg, file=self.source, row=self.row, field=field)


def check_kind(columns: Sequence[str], kinds: Sequence[str] | None, *, source: str | None) -> str:
    """Detect the kind from ``columns`` (restricted to ``kinds``); raise a one-line DataError naming the
    columns found and the columns expected when nothing matches."""
    kind = detect_kind(columns, kinds)
    if kind is not None:
        return kind
    found = ", ".join(sorted(columns)) or "none"
    wanted = kinds if kinds is not None else list(KINDS)
    expected = "; ".join(f"{k} ({KINDS[k].describe_columns()})" for k in wanted)
    which = "the expected kind" if kinds is not None else "any known kind"
    raise DataError(f"no rows of {which} (columns found: {found}; expected: {expected})", file=source)


def validate_rows(rows: Sequence[Any], *, source: str | None = None, kinds: Sequence[str] | None = None,
                  row_numbers: Sequence[int] | None = None, kind: str | None = None) -> str:
    """Validate every row; return the kind. Unless given, the kind is detected (within ``kinds``) from the
    union of all rows' columns, so a row that lacks a column is reported as that row's problem.
    ``row_numbers[i]`` is the number shown for ``rows[i]`` (default ``i + 1``)."""
    if not rows:
        raise DataError("file is empty", file=source)
    if kind is None:
        columns: dict[str, None] = {}
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                n = row_numbers[i] if row_numbers is not None else i + 1
                raise DataError(f"row must be an object, got {type_name(r)}", file=source, row=n)
            columns.update(dict.fromkeys(r))
        kind = check_kind(list(columns), kinds, source=source)
    elif kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}")
    for i, row in enumerate(rows):
        validate_row(row, kind, source=source, row=row_numbers[i] if row_numbers is not None else i + 1)
    return kind


def validate_row(value: Any, kind: str, *, source: str | None = None, row: int | None = None) -> None:
    """Validate one row (``value``) of ``kind``; raise DataError naming ``source:row`` on the first
    problem (``row`` is the 1-based number to show)."""
    w = _Where(source, row)
    r = value
    if not isinstance(r, dict):
        raise w.error(f"row must be an object, got {type_name(r)}")
    spec = KINDS[kind]
    for col in spec.required:
        if col not in r:
            raise w.error(f"column {col!r} is missing", col)
    _CHECKS[kind](r, w)


# --------------------------------------------------------------------------------------------------
# value checks


def _text(r: dict, col: str, w: _Where) -> None:
    v = r[col]
    if not isinstance(v, str):
        raise w.error(f"column {col!r} must be text, got {type_name(v)}", col)
    if not v.strip():
        raise w.error(f"column {col!r} is empty", col)


def _messages(v: list, col: str, w: _Where, *, label: str | None = None) -> None:
    """Check a message list's items (``label`` names the value inside a column, e.g. ``item 2``)."""
    name = f"column {col!r}" + (f" {label}" if label else "")
    for j, m in enumerate(v):
        if not is_message(m):
            raise w.error(f"{name} item {j}: must be an object with 'role' and 'content'", col)
        role = m["role"]
        if role not in ROLES:
            raise w.error(f"{name} item {j}: unknown role {role!r} (expected {', '.join(ROLES)})", col)
        if not isinstance(m["content"], str):
            raise w.error(f"{name} item {j}: 'content' must be text, got {type_name(m['content'])}", col)


def _text_or_messages(v: Any, col: str, w: _Where, *, label: str | None = None) -> bool:
    """Check a text-or-messages value; return True when it is a message list."""
    name = f"column {col!r}" + (f" {label}" if label else "")
    if isinstance(v, str):
        if not v.strip():
            raise w.error(f"{name} is empty", col)
        return False
    if isinstance(v, list):
        if not v:
            raise w.error(f"{name} is empty", col)
        _messages(v, col, w, label=label)
        return True
    raise w.error(f"{name} must be text or a list of messages, got {type_name(v)}", col)


def _has_assistant(v: list, col: str, w: _Where, *, label: str | None = None) -> None:
    if not any(m["role"] == "assistant" for m in v):
        name = f"column {col!r}" + (f" {label}" if label else "")
        raise w.error(f"{name} has no assistant turn", col)


def _starts_with_assistant(v: list, col: str, w: _Where, *, label: str | None = None) -> None:
    if v[0]["role"] != "assistant":
        name = f"column {col!r}" + (f" {label}" if label else "")
        raise w.error(f"{name} item 0: expected role 'assistant', got {v[0]['role']!r}", col)


def _same_style(a: str, a_msgs: bool, b: str, b_msgs: bool, w: _Where) -> None:
    if a_msgs != b_msgs:
        raise w.error(f"columns {a!r} and {b!r} mix text and message lists", b)


def _number(r: dict, col: str, w: _Where, *, optional: bool) -> None:
    v = r.get(col)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise w.error(f"column {col!r} must be a number, got {type_name(v)}", col)
    if isinstance(v, float) and math.isnan(v):
        raise w.error(f"column {col!r} is NaN", col)
    if isinstance(v, float) and math.isinf(v):
        raise w.error(f"column {col!r} is infinite", col)


def _completion(r: dict, w: _Where, prompt_msgs: bool, col: str = "completion") -> None:
    msgs = _text_or_messages(r[col], col, w)
    _same_style("prompt", prompt_msgs, col, msgs, w)
    if msgs:
        _starts_with_assistant(r[col], col, w)


# --------------------------------------------------------------------------------------------------
# per-kind checks


def _check_text(r: dict, w: _Where) -> None:
    _text(r, "text", w)


def _check_prompt_completion(r: dict, w: _Where) -> None:
    p_msgs = _text_or_messages(r["prompt"], "prompt", w)
    _completion(r, w, p_msgs)


def _check_conversational(r: dict, w: _Where) -> None:
    v = r["messages"]
    if not isinstance(v, list):
        raise w.error(f"column 'messages' must be a list of messages, got {type_name(v)}", "messages")
    if not v:
        raise w.error("column 'messages' is empty", "messages")
    _messages(v, "messages", w)
    _has_assistant(v, "messages", w)


def _check_preference(r: dict, w: _Where) -> None:
    has_prompt = r.get("prompt") is not None
    p_msgs = _text_or_messages(r["prompt"], "prompt", w) if has_prompt else None
    c_msgs = _text_or_messages(r["chosen"], "chosen", w)
    r_msgs = _text_or_messages(r["rejected"], "rejected", w)
    if has_prompt:
        _same_style("prompt", p_msgs, "chosen", c_msgs, w)
    _same_style("chosen", c_msgs, "rejected", r_msgs, w)
    if c_msgs:
        for col in ("chosen", "rejected"):
            if has_prompt:
                _starts_with_assistant(r[col], col, w)
            else:
                _has_assistant(r[col], col, w)
    if r["chosen"] == r["rejected"]:
        raise w.error("'chosen' and 'rejected' are identical", "rejected")
    _number(r, "margin", w, optional=True)


def _check_unpaired(r: dict, w: _Where) -> None:
    _check_prompt_completion(r, w)
    if not isinstance(r["label"], bool):
        raise w.error("column 'label' must be true or false", "label")


def _check_ranking(r: dict, w: _Where) -> None:
    p_msgs = _text_or_messages(r["prompt"], "prompt", w)
    comps = r["completions"]
    if not isinstance(comps, list):
        raise w.error(f"column 'completions' must be a list, got {type_name(comps)}", "completions")
    if len(comps) < 2:
        raise w.error(f"column 'completions' needs at least 2 items, got {len(comps)}", "completions")
    for j, c in enumerate(comps):
        msgs = _text_or_messages(c, "completions", w, label=f"item {j}")
        if msgs != p_msgs:
            raise w.error("columns 'prompt' and 'completions' mix text and message lists", "completions")
        if msgs:
            _starts_with_assistant(c, "completions", w, label=f"item {j}")
    ranking = r["ranking"]
    if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                for i in ranking):
        raise w.error("column 'ranking' must be a list of integers", "ranking")
    if len(ranking) != len(comps):
        raise w.error(f"columns 'completions' ({len(comps)}) and 'ranking' ({len(ranking)}) "
                      "have different lengths", "ranking")
    if sorted(ranking) != list(range(len(comps))):
        raise w.error(f"column 'ranking' is not a permutation of 0..{len(comps) - 1}", "ranking")
    seen: dict[str, int] = {}
    for j, c in enumerate(comps):  # two equal completions cannot be ranked against each other
        key = c if isinstance(c, str) else repr(c)
        if key in seen:
            raise w.error(f"column 'completions' items {seen[key]} and {j} are identical", "completions")
        seen.setdefault(key, j)


def _check_verifiable(r: dict, w: _Where) -> None:
    _text_or_messages(r["prompt"], "prompt", w)
    a = r["answer"]
    if isinstance(a, str):
        if not a.strip():
            raise w.error("column 'answer' is empty", "answer")
        return
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise w.error(f"column 'answer' must be text or a number, got {type_name(a)}", "answer")
    _number(r, "answer", w, optional=False)


def _check_prompt(r: dict, w: _Where) -> None:
    _text_or_messages(r["prompt"], "prompt", w)


_CHECKS = {
    "prompt": _check_prompt,
    "text": _check_text,
    "prompt_completion": _check_prompt_completion,
    "conversational": _check_conversational,
    "preference": _check_preference,
    "unpaired": _check_unpaired,
    "ranking": _check_ranking,
    "verifiable": _check_verifiable,
}
