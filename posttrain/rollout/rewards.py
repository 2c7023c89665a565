"""Reward sources: what scores a batch of completions.

A :class:`RewardSource` is called as ``source(prompts, completions, **columns) -> list[float]`` — one float
per completion — and has a ``.name`` (used in metric keys). ``prompts[i]`` is the prompt of completion ``i``
(a string or a message list, as in the dataset); ``completions[i]`` is the generated assistant text
(decoded, stop token removed); ``columns`` are the dataset's other columns, one value per completion
(e.g. ``answer=[...]`` for verifiable data).

=================================  ====================================================================
spec (``build_reward``)            source
=================================  ====================================================================
``gold``                           :class:`GoldReward` — the toy world's hidden gold preference
``rm:PATH``                        :class:`RewardModelReward` — a sequence-classification reward model
``verifier:math``                  :class:`VerifierReward` — ``math_reward(completion, answer)`` (1/0)
``verifier:format``                :class:`VerifierReward` — ``think_format_reward(completion)`` (1/0)
``callable:pkg.mod:fn``            :class:`CallableReward` — ``fn(prompts, completions, **columns)``
                                   (``callable:path/to/file.py:fn`` also works)
``overlong:L_MAX:L_CACHE``         :class:`OverlongPenalty` — DAPO's soft overlong penalty (tokens)
``gold*0.5+verifier:math*1.0``     :class:`CombinedReward` — weighted sum (``0.5*gold`` also reads);
                                   also a list of specs / ``{"spec": s, "weight": w}`` / ``(s, w)``,
                                   or a dict ``{spec: weight}``
=================================  ====================================================================

A spec that cannot be built (unknown kind, a module that does not import, a missing reward model) raises a
one-line :class:`~posttrain.errors.UserError`. A source that reads a dataset column declares it
(``required_columns``); stages call :func:`check_columns` on the loaded rows, so a file without the column
fails at once, naming the file, before anything is sampled or written.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch

from posttrain.errors import ConfigError, DataError, UserError

__all__ = ["RewardSource", "CallableReward", "load_callable", "RewardModelReward", "VerifierReward",
           "GoldReward", "OverlongPenalty", "CombinedReward", "build_reward", "VERIFIER_SPECS", "required_columns",
           "check_columns"]


@runtime_checkable
class RewardSource(Protocol):
    """Scores completions: one float per completion."""

    name: str

    def __call__(self, prompts: list, completions: list[str], **columns: Any) -> list[float]: ...


def _check_batch(prompts: Sequence, completions: Sequence, columns: Mapping[str, Any]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"reward: {len(prompts)} prompts for {len(completions)} completions")
    for key, values in columns.items():
        if values is not None and hasattr(values, "__len__") and len(values) != len(completions):
            raise ValueError(f"reward: column '{key}' has {len(values)} values for {len(completions)} "
                             f"completions")


def _as_floats(name: str, values: Any, n: int) -> list[float]:
    """Validate what a user function returned: ``n`` finite numbers."""
    if isinstance(values, torch.Tensor):
        values = values.detach().flatten().tolist()
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise UserError(f"reward '{name}': must return a list of numbers ({err})") from None
    if len(out) != n:
        raise UserError(f"reward '{name}': returned {len(out)} values for {n} completions")
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise UserError(f"reward '{name}': value {out[bad[0]]} for completion {bad[0]} is not finite")
    return out


# --------------------------------------------------------------------------------------------------
# python callables


def load_callable(path: str) -> Callable:
    """Import ``"package.module:function"`` (or ``"path/to/file.py:function"``); one-line ConfigError on
    failure."""
    module_name, sep, attr = path.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reward 'callable:{path}': expected MODULE:FUNCTION (e.g. my_rewards:score)")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ConfigError(f"reward 'callable:{path}': no such file '{module_name}'")
            spec = importlib.util.spec_from_file_location(f"posttrain_user_reward_{file.stem}", file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as err:  # ImportError, SyntaxError, errors raised while importing
        detail = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"reward 'callable:{path}': cannot import '{module_name}' "
                          f"({type(err).__name__}: {detail})") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"reward 'callable:{path}': module '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise ConfigError(f"reward 'callable:{path}': '{attr}' is not callable")
    return fn


class CallableReward:
    """A user function ``fn(prompts, completions, **columns) -> list[float]``."""

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")

    def __call__(self, prompts: list, completions: list[str], **columns: Any) -> list[float]:
        _check_batch(prompts, completions, columns)
        return _as_floats(self.name, self.fn(prompts, completions, **columns), len(completions))


# --------------------------------------------------------------------------------------------------
# reward model


class RewardModelReward:
    """Scores with a sequence-classification reward model (``num_labels == 1``).

    Each (prompt, completion) is tokenised exactly as the data layer tokenises reward-model training
    data (``posttrain.data.tokenize``): the prompt on its own (a message list through the chat template with
    the generation prompt; a string as is), the completion on its own — for a message-list prompt the
    completion string is the assistant turn's content, encoded as ``content + <|im_end|>`` (ChatML); for a
    string prompt it is ``text + eos`` — and the two id lists are concatenated. Sequences longer than
    ``max_len`` keep the end of the prompt and cut the end of the completion (``encode_example``).

    Batches of ``batch_size`` are formed after sorting by length (less padding), right-padded, and scored
    at each row's last real token (``posttrain.models.heads.score_sequences``, correct for any padding side
    and independent of the pad id). The model runs in eval mode under ``inference_mode``.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, *, max_len: int | None = None,
                 name: str = "rm"):
        if batch_size < 1:
            raise ValueError(f"RewardModelReward: batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_len, self.name = batch_size, max_len, name
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def encode(self, prompt, completion) -> list[int]:
        """Token ids of one (prompt, completion) pair, as the data layer builds them."""
        from posttrain.data.tokenize import encode_completion, encode_example, encode_prompt

        turn = completion
        if isinstance(prompt, list) and isinstance(completion, str):
            turn = [{"role": "assistant", "content": completion}]
        if self.max_len is not None:
            return encode_example(self.tokenizer, prompt, turn, max_len=self.max_len).input_ids
        return encode_prompt(self.tokenizer, prompt) + encode_completion(self.tokenizer, turn, prompt=prompt)

    def __call__(self, prompts: list, completions: list[str], **columns: Any) -> list[float]:
        from posttrain.models.heads import score_sequences

        _check_batch(prompts, completions, columns)
        seqs = [self.encode(p, c) for p, c in zip(prompts, completions)]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        device = next(self.model.parameters()).device
        scores = [0.0] * len(seqs)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start:start + self.batch_size]
                    width = max(len(seqs[i]) for i in idx)
                    ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)  # [b, T]
                    mask = torch.zeros(len(idx), width, dtype=torch.long)  # [b, T]
                    for row, i in enumerate(idx):
                        ids[row, :len(seqs[i])] = torch.tensor(seqs[i], dtype=torch.long)
                        mask[row, :len(seqs[i])] = 1
                    values = score_sequences(self.model, ids.to(device), mask.to(device))  # [b]
                    for row, v in zip(idx, values.float().tolist()):
                        scores[row] = v
        finally:
            if was_training:
                self.model.train()
        return scores


# --------------------------------------------------------------------------------------------------
# verifiers, gold, length


class VerifierReward:
    """``verifier_fn(completion, answer)`` per row, with ``answer`` from the ``answer_column`` column;
    ``answer_column=None`` for verifiers of the completion alone (``verifier_fn(completion)``)."""

    def __init__(self, verifier_fn: Callable, answer_column: str | None = "answer", name: str | None = None):
        self.fn, self.answer_column = verifier_fn, answer_column
        self.name = name or f"verifier:{getattr(verifier_fn, '__name__', 'fn')}"
        self.required_columns = (answer_column,) if answer_column is not None else ()

    def __call__(self, prompts: list, completions: list[str], **columns: Any) -> list[float]:
        _check_batch(prompts, completions, columns)
        if self.answer_column is None:
            return [float(self.fn(c)) for c in completions]
        answers = columns.get(self.answer_column)
        if answers is None:
            raise DataError(f"column '{self.answer_column}' is missing (reward '{self.name}' needs it)",
                            field=self.answer_column)
        return [float(self.fn(c, a)) for c, a in zip(completions, answers)]


class GoldReward:
    """The toy world's gold reward ``posttrain.world.gold.gold_reward(prompt, response)`` (imported on first
    use)."""

    name = "gold"

    def __init__(self):
        self._fn: Callable | None = None

    def __call__(self, prompts: list, completions: list[str], **columns: Any) -> list[float]:
        _check_batch(prompts, completions, columns)
        if self._fn is None:
            from posttrain.world.gold import gold_reward

            self._fn = gold_reward
        return [float(self._fn(p, c)) for p, c in zip(prompts, completions)]


class OverlongPenalty:
    """DAPO's soft overlong penalty (Yu et al. 2025, eq. 13; ``posttrain.verifiers.length``) on the
    completion length in tokens. The length is taken from a ``completion_lengths`` column when the caller
    passes one (the RL stage knows the sampled lengths, stop token included); otherwise the completion text is
    tokenised (``tokenizer.encode(text, add_special_tokens=False)``, + 1 for the stop token)."""

    def __init__(self, max_len: int, cache_len: int, tokenizer=None):
        from posttrain.verifiers.length import soft_overlong_penalty

        soft_overlong_penalty(0, max_len=max_len, cache_len=cache_len)  # validates the arguments
        self.max_len, self.cache_len, self.tokenizer = max_len, cache_len, tokenizer
        self.name = f"overlong:{max_len}:{cache_len}"

    def __call__(self, prompts: list, completions: list[str], **columns: Any) -> list[float]:
        from posttrain.verifiers.length import soft_overlong_penalties

        _check_batch(prompts, completions, columns)
        lengths = columns.get("completion_lengths")
        if lengths is None:
            if self.tokenizer is None:
                raise ConfigError(f"reward '{self.name}': needs a tokenizer or a 'completion_lengths' column")
            lengths = [len(self.tokenizer.encode(c, add_special_tokens=False)) + 1 for c in completions]
        elif isinstance(lengths, torch.Tensor):
            lengths = lengths.tolist()
        return soft_overlong_penalties(lengths, max_len=self.max_len, cache_len=self.cache_len)


# --------------------------------------------------------------------------------------------------
# weighted sums


class CombinedReward:
    """``r = Σ_k w_k · r_k``. After each call, ``last_metrics`` holds ``reward/<name>`` (the mean of each
    source's raw reward, before weighting) and ``reward/total`` (the mean of the weighted sum);
    ``last_components`` the raw per-completion rewards of each source."""

    def __init__(self, components: Sequence[tuple[RewardSource, float]]):
        if not components:
            raise ConfigError("reward: an empty list of reward sources")
        self.components = [(src, float(w)) for src, w in components]
        names: list[str] = []
        for src, _ in self.components:
            name = src.name
            k = 2
            while name in names:  # the same source twice: gold, gold#2
                name, k = f"{src.name}#{k}", k + 1
            names.append(name)
        self.names = names
        self.name = "+".join(f"{n}*{w:g}" for n, (_, w) in zip(names, self.components))
        self.last_metrics: dict[str, float] = {}
        self.last_components: dict[str, list[float]] = {}

    def __call__(self, prompts: list, completions: list[str], **columns: Any) -> list[float]:
        _check_batch(prompts, completions, columns)
        n = len(completions)
        total = [0.0] * n
        metrics, parts = {}, {}
        for name, (src, w) in zip(self.names, self.components):
            values = _as_floats(name, src(prompts, completions, **columns), n)
            parts[name] = values
            metrics[f"reward/{name}"] = sum(values) / n if n else 0.0
            total = [t + w * v for t, v in zip(total, values)]
        metrics["reward/total"] = sum(total) / n if n else 0.0
        self.last_metrics, self.last_components = metrics, parts
        return total


# --------------------------------------------------------------------------------------------------
# columns a source needs


def required_columns(source: Any) -> dict[str, str]:
    """``{column: reward name}`` of the dataset columns ``source`` reads (its ``required_columns``; for a
    :class:`CombinedReward`, those of every component)."""
    if isinstance(source, CombinedReward):
        out: dict[str, str] = {}
        for src, _ in source.components:
            for col, name in required_columns(src).items():
                out.setdefault(col, name)
        return out
    return {col: getattr(source, "name", "reward") for col in getattr(source, "required_columns", ())}


def check_columns(source: Any, rows: Sequence[Mapping[str, Any]], *, file: str) -> None:
    """One-line :class:`~posttrain.errors.DataError` naming ``file`` when no row of ``rows`` carries a column
    the reward ``source`` needs — checked when the data is loaded, before anything is sampled or written."""
    for col, name in required_columns(source).items():
        if not any(isinstance(r, Mapping) and r.get(col) is not None for r in rows):
            raise DataError(f"column '{col}' is missing (reward '{name}' needs it)", file=file, field=col)


# --------------------------------------------------------------------------------------------------
# factory

VERIFIER_SPECS: dict[str, tuple[str, str, str | None]] = {
    # name: (module, function, answer column or None)
    "math": ("posttrain.verifiers.math", "math_reward", "answer"),
    "format": ("posttrain.verifiers.format", "think_format_reward", None),
}

_KINDS = "gold, rm:PATH, verifier:NAME, callable:MODULE:FN, overlong:L_MAX:L_CACHE"


def _weight(spec: Any, w: Any) -> float:
    try:
        w = float(w)
    except (TypeError, ValueError):
        raise ConfigError(f"reward '{spec}': weight {w!r} is not a number") from None
    if not math.isfinite(w):
        raise ConfigError(f"reward '{spec}': weight {w} is not finite")
    return w


def _split_weight(term: str) -> tuple[str, float]:
    """``"gold*0.5"`` or ``"0.5*gold"`` -> ("gold", 0.5); ``"gold"`` -> ("gold", 1.0)."""
    term = term.strip()
    if "*" in term:
        left, _, right = term.rpartition("*")
        for spec, w in ((left, right), (right, left)):
            try:
                return spec.strip(), _weight(term, float(w))
            except ValueError:
                continue
        raise ConfigError(f"reward '{term}': expected SPEC*WEIGHT (e.g. gold*0.5)")
    return term, 1.0


def _build_one(spec: str, *, tokenizer, device, dtype, batch_size: int, max_len: int | None) -> RewardSource:
    kind, _, arg = spec.partition(":")
    kind = kind.strip()
    if kind == "gold" and not arg:
        return GoldReward()
    if kind == "rm" and arg:
        from posttrain.models.heads import load_reward_model

        model, tok = load_reward_model(arg, device=device, dtype=dtype)
        return RewardModelReward(model, tok, batch_size, max_len=max_len, name="rm")
    if kind == "verifier" and arg:
        if arg not in VERIFIER_SPECS:
            raise ConfigError(f"reward '{spec}': unknown verifier '{arg}' (choose from: "
                              f"{', '.join(VERIFIER_SPECS)})")
        module, fn_name, column = VERIFIER_SPECS[arg]
        fn = getattr(importlib.import_module(module), fn_name)
        return VerifierReward(fn, answer_column=column, name=f"verifier:{arg}")
    if kind == "callable" and arg:
        return CallableReward(load_callable(arg), name=f"callable:{arg}")
    if kind == "overlong" and arg:
        bits = arg.split(":")
        try:
            max_l, cache_l = (int(b) for b in bits)
        except ValueError:
            raise ConfigError(f"reward '{spec}': expected overlong:L_MAX:L_CACHE (two integers)") from None
        if not 0 < cache_l <= max_l:
            raise ConfigError(f"reward '{spec}': need 0 < L_CACHE <= L_MAX")
        return OverlongPenalty(max_l, cache_l, tokenizer)
    raise ConfigError(f"reward '{spec}': unknown reward source (expected {_KINDS}, or weighted sums "
                      f"like gold*0.5+verifier:math*1.0)")


def build_reward(spec: str | Mapping | Sequence | RewardSource | Callable, *, tokenizer=None,
                 device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                 batch_size: int = 16, max_len: int | None = None) -> RewardSource:
    """Build a reward source from a spec (see the module docstring for the forms).

    ``tokenizer`` is used by ``overlong:`` specs; ``device``/``dtype``/``batch_size``/``max_len`` by
    ``rm:`` specs. A plain function is wrapped in :class:`CallableReward`; a RewardSource is returned as is.
    """
    kw = dict(tokenizer=tokenizer, device=device, dtype=dtype, batch_size=batch_size, max_len=max_len)
    if isinstance(spec, str):
        terms = [t for t in spec.split("+")]
        if any(not t.strip() for t in terms):
            raise ConfigError(f"reward '{spec}': empty term in a weighted sum")
        if len(terms) == 1 and "*" not in spec:
            return _build_one(spec.strip(), **kw)
        return CombinedReward([(_build_one(s, **kw), w) for s, w in map(_split_weight, terms)])
    if isinstance(spec, Mapping):
        if "spec" in spec:
            return CombinedReward([(build_reward(spec["spec"], **kw), _weight(spec, spec.get("weight", 1.0)))])
        return CombinedReward([(build_reward(s, **kw), _weight(s, w)) for s, w in spec.items()])
    if isinstance(spec, (list, tuple)):
        components = []
        for item in spec:
            if isinstance(item, Mapping) and "spec" in item:
                components.append((build_reward(item["spec"], **kw), _weight(item, item.get("weight", 1.0))))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                components.append((build_reward(item[0], **kw), _weight(item[0], item[1])))
            else:
                components.append((build_reward(item, **kw), 1.0))
        return CombinedReward(components)
    if isinstance(spec, RewardSource):
        return spec
    if callable(spec):
        return CallableReward(spec)
    raise ConfigError(f"reward {spec!r}: expected a string spec, a list, or a dict")
