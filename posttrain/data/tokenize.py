"""Tokenisation with loss masks.

Conventions (shared with ``losses/`` and ``models/``):

- ``input_ids`` and ``loss_mask`` have the same length; ``loss_mask[t] = 1`` marks a token whose
  log-prob ``log p(x_t | x_<t)`` is trained on. ``loss_mask[0]`` is always 0 (nothing predicts it).
- A prompt and its completion are tokenised SEPARATELY and concatenated, so the mask boundary is exact
  and no BPE merge crosses it (tokenising ``prompt + completion`` jointly may merge, e.g. ``"...sa" + "t"``
  into ``"Ġsat"``). This is also what generation sees: the prompt's ids, then the sampled ids.
- A string prompt is encoded as is (plus the tokenizer's BOS when it adds one by default); a message list
  is rendered with the chat template (the tokenizer's own, else ChatML) with ``add_generation_prompt=True``
  and encoded without extra special tokens (templates write their own BOS).
- A string completion is ``text + eos``. A message-list completion (an assistant turn) is the text the
  template writes after the generation prompt, cut after its last end marker (``<|im_end|>`` or the eos
  token): for ChatML that is exactly ``content + <|im_end|>``, and the ``\\n`` the template writes after
  ``<|im_end|>`` is not part of the completion (generation stops at ``<|im_end|>``).
- Truncation keeps the END of the prompt (``max_prompt_len``, and always leaves room for one completion
  token) and cuts the END of the completion to fit ``max_len``; a cut completion loses its eos.
  :class:`TruncationStats` counts what was cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from posttrain.data.chat import IM_END, render_chat
from posttrain.data.formats import KINDS
from posttrain.errors import ConfigError, DataError, ModelError

Prompt = str | list[dict]


@dataclass(frozen=True, slots=True)
class Encoded:
    """One tokenised example. ``prompt_len`` = number of leading tokens that are prompt (for multi-turn
    chats: the tokens before the first assistant token)."""

    input_ids: list[int]
    loss_mask: list[int]
    prompt_len: int
    truncated_prompt: bool = False
    truncated_completion: bool = False
    prompt_tokens_dropped: int = 0
    completion_tokens_dropped: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """A preference pair sharing one prompt (``chosen.input_ids[:prompt_len]`` == rejected's)."""

    chosen: Encoded
    rejected: Encoded
    margin: float | None = None


@dataclass(frozen=True, slots=True)
class EncodedLabeled:
    """An unpaired (KTO) example: ``label`` True = desirable."""

    example: Encoded
    label: bool


@dataclass(frozen=True, slots=True)
class EncodedRanking:
    """K completions of one prompt, ``ranked[0]`` best (already put in ``ranking`` order)."""

    ranked: list[Encoded]


@dataclass(frozen=True, slots=True)
class EncodedPrompt:
    """A prompt for generation (RL / rejection sampling); ``answer`` for verifiable rows."""

    prompt_ids: list[int]
    prompt: Prompt
    answer: str | None = None
    truncated_prompt: bool = False


@dataclass
class TruncationStats:
    """Counts what truncation cut; ``add`` each :class:`Encoded`."""

    examples: int = 0
    truncated_prompts: int = 0
    truncated_completions: int = 0
    prompt_tokens_dropped: int = 0
    completion_tokens_dropped: int = 0
    dropped_examples: int = 0  # examples left with no loss token (removed by encode_dataset)

    def add(self, enc: Encoded) -> None:
        self.examples += 1
        self.truncated_prompts += int(enc.truncated_prompt)
        self.truncated_completions += int(enc.truncated_completion)
        self.prompt_tokens_dropped += enc.prompt_tokens_dropped
        self.completion_tokens_dropped += enc.completion_tokens_dropped

    def as_dict(self) -> dict[str, int]:
        return {
            "examples": self.examples, "truncated_prompts": self.truncated_prompts,
            "truncated_completions": self.truncated_completions,
            "prompt_tokens_dropped": self.prompt_tokens_dropped,
            "completion_tokens_dropped": self.completion_tokens_dropped,
            "dropped_examples": self.dropped_examples,
        }

    def __str__(self) -> str:
        return (f"{self.examples} sequences: {self.truncated_prompts} prompts truncated "
                f"({self.prompt_tokens_dropped} tokens), {self.truncated_completions} completions truncated "
                f"({self.completion_tokens_dropped} tokens), {self.dropped_examples} dropped (no loss tokens)")


# --------------------------------------------------------------------------------------------------
# low-level helpers


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def _bos_prefix(tokenizer) -> list[int]:
    """``[bos]`` when the tokenizer adds a BOS by default (Llama-style), else ``[]`` (GPT-2/Qwen-style)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ModelError("the tokenizer has no eos token (set tokenizer.eos_token); "
                         "string completions end with it")
    return int(eos)


def _end_markers(tokenizer) -> list[str]:
    return [m for m in (IM_END, getattr(tokenizer, "eos_token", None)) if m]


def _cut_after_end(tokenizer, tail: str) -> int:
    """Index just after the last end marker in ``tail`` (``len(tail)`` when there is none)."""
    best = -1
    for m in _end_markers(tokenizer):
        j = tail.rfind(m)
        if j >= 0:
            best = max(best, j + len(m))
    return best if best >= 0 else len(tail)


def _check_lengths(max_len: int | None, max_prompt_len: int | None) -> None:
    if max_len is not None and max_len < 2:
        raise ConfigError(f"max_len must be at least 2, got {max_len}")
    if max_prompt_len is not None:
        if max_prompt_len < 1:
            raise ConfigError(f"max_prompt_len must be at least 1, got {max_prompt_len}")
        if max_len is not None and max_prompt_len >= max_len:
            raise ConfigError(f"max_prompt_len ({max_prompt_len}) must be smaller than max_len ({max_len})")


# --------------------------------------------------------------------------------------------------
# prompts and completions


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """A string prompt as is; a message list rendered with the chat template and the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    return render_chat(tokenizer, list(prompt), add_generation_prompt=True)


def _prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    if isinstance(prompt, str):
        return _bos_prefix(tokenizer) + _ids(tokenizer, prompt)
    return _ids(tokenizer, render_prompt(tokenizer, prompt))


def encode_prompt(tokenizer, prompt: Prompt, *, max_prompt_len: int | None = None) -> list[int]:
    """Token ids of the prompt; longer than ``max_prompt_len`` keeps the END (left truncation)."""
    _check_lengths(None, max_prompt_len)
    ids = _prompt_ids(tokenizer, prompt)
    if max_prompt_len is not None and len(ids) > max_prompt_len:
        ids = ids[len(ids) - max_prompt_len:]
    return ids


def completion_text(tokenizer, completion: list[dict], *, prompt: list[dict] | None = None) -> str:
    """The text a message-list completion contributes after the generation prompt (see module doc)."""
    context = list(prompt) if isinstance(prompt, list) and prompt else [{"role": "user", "content": "x"}]
    head = render_chat(tokenizer, context, add_generation_prompt=True)
    full = render_chat(tokenizer, context + list(completion), add_generation_prompt=False)
    if full.startswith(head):
        tail = full[len(head):]
        return tail[:_cut_after_end(tokenizer, tail)]
    # Template does not extend its generation prompt (rare): content + end marker.
    end = IM_END if IM_END in tokenizer.get_vocab() else (tokenizer.eos_token or "")
    return "".join(m["content"] for m in completion) + end


def encode_completion(tokenizer, completion: Prompt, *, prompt: Prompt | None = None) -> list[int]:
    """Token ids of a completion: ``text + eos`` for a string; for a message list (an assistant turn)
    the template's assistant text up to its end marker (ChatML: ``content + <|im_end|>``). No BOS.
    ``prompt`` (a message list) is the context the template renders the turn in (default: one user turn).
    """
    if isinstance(completion, str):
        return _ids(tokenizer, completion) + [_eos_id(tokenizer)]
    return _ids(tokenizer, completion_text(tokenizer, completion,
                                           prompt=prompt if isinstance(prompt, list) else None))


def encode_example(tokenizer, prompt: Prompt, completion: Prompt, *, max_len: int,
                   max_prompt_len: int | None = None, completion_only_loss: bool = True,
                   stats: TruncationStats | None = None) -> Encoded:
    """Prompt and completion tokenised separately and concatenated; loss on the completion tokens
    (``completion_only_loss=False``: on every token but the first). See the module doc for truncation."""
    _check_lengths(max_len, max_prompt_len)
    p = _prompt_ids(tokenizer, prompt)
    c = encode_completion(tokenizer, completion, prompt=prompt)
    limit = max_len - 1 if max_prompt_len is None else max_prompt_len
    p_drop = max(0, len(p) - limit)
    if p_drop:
        p = p[p_drop:]
    room = max_len - len(p)
    c_drop = max(0, len(c) - room)
    if c_drop:
        c = c[:room]
    ids = p + c
    if completion_only_loss:
        mask = [0] * len(p) + [1] * len(c)
    else:
        mask = [1] * len(ids)
    mask[0] = 0
    enc = Encoded(ids, mask, len(p), p_drop > 0, c_drop > 0, p_drop, c_drop)
    if stats is not None:
        stats.add(enc)
    return enc


def encode_messages(tokenizer, messages: list[dict], *, max_len: int | None,
                    assistant_only_loss: bool = True, stats: TruncationStats | None = None) -> Encoded:
    """A multi-turn chat; loss on each assistant turn's text up to its end marker (ChatML:
    ``content + <|im_end|>``), nothing else (``assistant_only_loss=False``: every token but the first).

    The conversation is rendered incrementally (``messages[:i]``, with and without the generation
    prompt) and each piece is tokenised separately, so masks follow the template exactly; a template
    whose renders are not prefixes of each other is reported as a ModelError. Text after the final
    assistant turn's end marker is dropped, so a ``[user, assistant]`` chat encodes exactly like
    ``encode_example(prompt=[user], completion=[assistant])``. Truncation cuts the end.
    """
    _check_lengths(max_len, None)
    pieces: list[tuple[str, int]] = []  # (text, in_loss)
    prev = ""
    msgs = list(messages)
    for i, m in enumerate(msgs):
        full = render_chat(tokenizer, msgs[: i + 1], add_generation_prompt=False)
        if not full.startswith(prev):
            raise ModelError(f"the chat template is not incremental: rendering message {i} changes the "
                             "text before it, so assistant tokens cannot be masked exactly")
        if m["role"] == "assistant":
            head = render_chat(tokenizer, msgs[:i], add_generation_prompt=True) if i else \
                render_chat(tokenizer, [], add_generation_prompt=True)
            if not (head.startswith(prev) and full.startswith(head)):
                raise ModelError(f"the chat template is not incremental around assistant message {i}")
            tail = full[len(head):]
            cut = _cut_after_end(tokenizer, tail)
            pieces += [(head[len(prev):], 0), (tail[:cut], 1), (tail[cut:], 0)]
        else:
            pieces.append((full[len(prev):], 0))
        prev = full
    if msgs and msgs[-1]["role"] == "assistant":
        pieces.pop()  # what the template writes after the final end marker (ChatML: "\n") is dropped
    ids: list[int] = []
    mask: list[int] = []
    for text, in_loss in pieces:
        t = _ids(tokenizer, text)
        ids += t
        mask += [in_loss] * len(t)
    c_drop = 0
    if max_len is not None and len(ids) > max_len:
        c_drop = len(ids) - max_len
        ids, mask = ids[:max_len], mask[:max_len]
    if not assistant_only_loss:
        mask = [1] * len(ids)
    if mask:
        mask[0] = 0
    first = next((t for t, v in enumerate(mask) if v), len(mask))
    enc = Encoded(ids, mask, first, False, c_drop > 0, 0, c_drop)
    if stats is not None:
        stats.add(enc)
    return enc


def encode_text(tokenizer, text: str, *, max_len: int | None = None,
                stats: TruncationStats | None = None) -> Encoded:
    """Language modelling: ``[bos] + text + eos`` (BOS only when the tokenizer adds one by default),
    loss on every token but the first; truncation cuts the end (for long documents use
    :func:`posttrain.data.packing.pack` with ``overflow="split"`` instead)."""
    _check_lengths(max_len, None)
    ids = _bos_prefix(tokenizer) + _ids(tokenizer, text) + [_eos_id(tokenizer)]
    drop = 0
    if max_len is not None and len(ids) > max_len:
        drop = len(ids) - max_len
        ids = ids[:max_len]
    mask = [0] + [1] * (len(ids) - 1)
    enc = Encoded(ids, mask, 0, False, drop > 0, 0, drop)
    if stats is not None:
        stats.add(enc)
    return enc


# --------------------------------------------------------------------------------------------------
# preference helpers and whole datasets


def split_prompt(chosen: Prompt, rejected: Prompt) -> tuple[Prompt, Prompt, Prompt]:
    """Implicit-prompt preference rows: return ``(prompt, chosen_completion, rejected_completion)``.

    Message lists: the prompt is the longest shared run of leading messages that is followed by an
    assistant message in both. Strings: the longest shared character prefix, cut back to its last
    whitespace (the whitespace starts the completions, like GPT-2-style tokens ``Ġword``); ``""`` if none.
    """
    if isinstance(chosen, list):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        while k > 0 and not (k < len(chosen) and k < len(rejected)
                             and chosen[k]["role"] == "assistant" and rejected[k]["role"] == "assistant"):
            k -= 1
        return chosen[:k], chosen[k:], rejected[k:]
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and not chosen[k - 1].isspace():
        k -= 1
    while k > 0 and chosen[k - 1].isspace():
        k -= 1
    return chosen[:k], chosen[k:], rejected[k:]


@dataclass
class EncodedDataset:
    kind: str
    examples: list = field(default_factory=list)
    stats: TruncationStats = field(default_factory=TruncationStats)
    source: str | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)

    def __getitem__(self, i: int):
        return self.examples[i]


def encode_dataset(tokenizer, rows: Any, kind: str | None = None, *, max_len: int,
                   max_prompt_len: int | None = None, completion_only_loss: bool = True,
                   assistant_only_loss: bool = True, drop_empty: bool = True,
                   progress: bool | None = None, source: str | None = None) -> EncodedDataset:
    """Tokenise validated rows (a :class:`posttrain.data.load.Rows` or a list of dicts with ``kind``).

    Per kind, ``examples`` holds: text / prompt_completion / conversational -> :class:`Encoded`;
    preference -> :class:`EncodedPair`; unpaired -> :class:`EncodedLabeled`; ranking ->
    :class:`EncodedRanking`; verifiable -> :class:`EncodedPrompt` (``max_prompt_len``, else ``max_len``).
    ``drop_empty`` removes examples left with no loss token (counted in ``stats.dropped_examples``).
    A tqdm bar is shown for 2000+ rows (``progress`` forces it on/off).
    """
    from tqdm.auto import tqdm

    kind = kind or getattr(rows, "kind", None)
    if kind not in KINDS:
        raise ValueError(f"unknown or missing dataset kind {kind!r}")
    source = source or getattr(rows, "source", None)
    row_number = getattr(rows, "row_number", lambda i: i + 1)
    data = list(getattr(rows, "rows", rows))
    _check_lengths(max_len, max_prompt_len)
    out = EncodedDataset(kind=kind, source=source)
    st = out.stats
    show = progress if progress is not None else len(data) >= 2000
    bar = tqdm(data, total=len(data), desc=f"tokenising {source or kind}", disable=not show, leave=False)

    def ex(prompt: Prompt, completion: Prompt) -> Encoded:
        return encode_example(tokenizer, prompt, completion, max_len=max_len, max_prompt_len=max_prompt_len,
                              completion_only_loss=completion_only_loss, stats=st)

    for i, r in enumerate(bar):
        try:
            item = _encode_row(tokenizer, r, kind, ex, max_len, max_prompt_len, assistant_only_loss, st)
        except DataError as e:
            if e.file is None:
                raise DataError(str(e), file=source, row=row_number(i), field=e.field) from None
            raise
        if drop_empty and not _has_loss(item):
            st.dropped_examples += 1
            continue
        out.examples.append(item)
    return out


def _has_loss(item: Any) -> bool:
    if isinstance(item, Encoded):
        return item.num_loss_tokens > 0
    if isinstance(item, EncodedPair):
        return item.chosen.num_loss_tokens > 0 and item.rejected.num_loss_tokens > 0
    if isinstance(item, EncodedLabeled):
        return item.example.num_loss_tokens > 0
    if isinstance(item, EncodedRanking):
        return all(e.num_loss_tokens > 0 for e in item.ranked)
    return True  # prompts


def _encode_row(tokenizer, r: dict, kind: str, ex, max_len: int, max_prompt_len: int | None,
                assistant_only_loss: bool, st: TruncationStats) -> Any:
    if kind == "text":
        return encode_text(tokenizer, r["text"], max_len=max_len, stats=st)
    if kind == "prompt_completion":
        return ex(r["prompt"], r["completion"])
    if kind == "conversational":
        return encode_messages(tokenizer, r["messages"], max_len=max_len,
                               assistant_only_loss=assistant_only_loss, stats=st)
    if kind == "preference":
        if r.get("prompt") is not None:
            p, c, rj = r["prompt"], r["chosen"], r["rejected"]
        else:
            p, c, rj = split_prompt(r["chosen"], r["rejected"])
        margin = r.get("margin")
        return EncodedPair(ex(p, c), ex(p, rj), None if margin is None else float(margin))
    if kind == "unpaired":
        return EncodedLabeled(ex(r["prompt"], r["completion"]), bool(r["label"]))
    if kind == "ranking":
        return EncodedRanking([ex(r["prompt"], r["completions"][j]) for j in r["ranking"]])
    if kind == "verifiable":
        full = _prompt_ids(tokenizer, r["prompt"])
        limit = max_prompt_len if max_prompt_len is not None else max_len
        ids = full[max(0, len(full) - limit):]
        answer = r["answer"] if isinstance(r["answer"], str) else str(r["answer"])
        return EncodedPrompt(ids, r["prompt"], answer, len(ids) < len(full))
    raise ValueError(f"unknown dataset kind {kind!r}")


__all__: Sequence[str] = (
    "Encoded", "EncodedPair", "EncodedLabeled", "EncodedRanking", "EncodedPrompt", "EncodedDataset",
    "TruncationStats", "render_prompt", "encode_prompt", "encode_completion", "completion_text",
    "encode_example", "encode_messages", "encode_text", "encode_dataset", "split_prompt",
)
