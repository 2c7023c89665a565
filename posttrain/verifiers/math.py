"""Math answer extraction and equivalence (RLVR rewards).

``math_reward(completion, answer)`` is 1.0 when the answer extracted from ``completion`` is mathematically
equivalent to the reference ``answer``, else 0.0 (no extractable answer → 0.0).

Extraction (:func:`extract_answer`), first rule that matches wins:

1. the content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (braces matched, so nesting such as
   ``\\boxed{\\frac{3}{4}}`` works; ``\\boxed 5`` without braces too);
2. the LAST ``answer: ...`` / ``Answer is ...`` / ``#### ...`` (GSM8K) on a line: the rest of that line;
3. the LAST number in the text (``-3``, ``1,000``, ``2.5``, ``3/4``).

Equivalence (:func:`answers_equivalent`): both sides are cleaned (``$``, ``\\boxed``, a trailing full stop,
a trailing unit word such as ``5 apples`` → ``5``), then compared by

1. exact string equality after cleaning,
2. math-verify (``verify(parse(gold), parse(pred))``; each side parsed as ``$…$`` LaTeX first, as plain text
   if that finds nothing), which handles ``1/2`` = ``0.5`` = ``\\frac{1}{2}``, ``-0`` = ``0``, ``1,000`` = ``1000``,
   except that two PLAIN numbers (integers with thousands separators, decimals, ``a/b``,
   ``\\frac{a}{b}``, percentages) are compared exactly as fractions (so ``0.33`` is not ``1/3``; math-verify
   would round to 6 decimals),
3. when math-verify parses nothing: sympy ``simplify(a - b) == 0``.

math-verify protects its parsers with ``signal.alarm`` timeouts, which only work in the main thread; in any
other thread the timeouts are switched off (a pathological expression can then take long).
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

__all__ = ["extract_answer", "answers_equivalent", "math_reward"]

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_LINE = re.compile(r"(?im)(?:\banswer\s*(?:is\s*:?|:)|^\s*####)\s*(.+?)\s*$")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?(?![\w])|(?<![\w.])-?\.\d+")
_UNIT_SUFFIX = re.compile(r"^\s*(-?[\d.,/]+)\s+[a-zA-Z]{2,}(?:\s+[a-zA-Z]+)*\s*$")  # "5 apples", "3 red cars"


def _boxed_contents(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (braces balanced), or None."""
    matches = list(_BOX.finditer(text))
    for m in reversed(matches):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1:j].strip()
                j += 1
            continue  # unbalanced: try an earlier one
        rest = text[i:].split()
        if rest:  # "\boxed 5"
            return rest[0].rstrip(".,;$")
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer in a model completion (see module docstring), or None when there is none."""
    if not text:
        return None
    boxed = _boxed_contents(text)
    if boxed:
        return boxed
    lines = _ANSWER_LINE.findall(text)
    if lines:
        answer = lines[-1].strip().rstrip(".").strip()
        if answer:
            return answer
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(" ", "")
    return None


def _clean(s: str) -> str:
    s = str(s).strip()
    boxed = _boxed_contents(s)
    if boxed:
        s = boxed
    s = s.strip().strip("$").strip()
    s = s.removeprefix("\\(").removesuffix("\\)").strip()
    s = s.removesuffix(".").strip()
    m = _UNIT_SUFFIX.match(s)
    if m and re.search(r"\d", m.group(1)):
        s = m.group(1).rstrip(".")
    return s


def _to_fraction(s: str) -> Fraction | None:
    """Exact value of a plain number: 12, -1,000, 2.5, -.5, 3/4, \\frac{3}{4}, 50%."""
    t = s.replace(" ", "").replace("\\!", "").replace("{,}", "")
    t = re.sub(r"\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", r"\1/\2", t)
    t = re.sub(r"\\[dt]?frac(\d)(\d)", r"\1/\2", t)
    percent = t.endswith("%") or t.endswith("\\%")
    t = t.removesuffix("\\%").removesuffix("%")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", t):
        t = t.replace(",", "")
    try:
        if "/" in t:
            num, den = t.split("/", 1)
            value = Fraction(num) / Fraction(den)
        else:
            value = Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def _math_verify_equal(pred: str, gold: str) -> bool | None:
    """math-verify's verdict, or None when it could not parse one side."""
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency
        return None
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    def _parse(s: str):
        parsed = parse(f"${s}$", parsing_timeout=timeout)
        return parsed if parsed else parse(s, parsing_timeout=timeout)

    try:
        g, p = _parse(gold), _parse(pred)
        if not g or not p:
            return None
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:  # math-verify raises a variety of sympy / timeout errors
        return None


def _sympy_equal(pred: str, gold: str) -> bool:
    try:
        import sympy
        from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                                standard_transformations)

        transformations = standard_transformations + (implicit_multiplication_application,)
        a = parse_expr(pred.replace("^", "**"), transformations=transformations, evaluate=True)
        b = parse_expr(gold.replace("^", "**"), transformations=transformations, evaluate=True)
        return bool(sympy.simplify(a - b) == 0)
    except Exception:
        return False


def answers_equivalent(pred: str | None, gold: str | int | float | None) -> bool:
    """True when ``pred`` and ``gold`` denote the same mathematical value (see module docstring)."""
    if pred is None or gold is None:
        return False
    p, g = _clean(str(pred)), _clean(str(gold))
    if not p or not g:
        return False
    if p == g:
        return True
    fp, fg = _to_fraction(p), _to_fraction(g)
    if fp is not None and fg is not None:  # both plain numbers: exact comparison decides
        return fp == fg
    verdict = _math_verify_equal(p, g)
    if verdict is not None:
        return verdict
    return _sympy_equal(p, g)


def math_reward(completion: str, answer: str | int | float) -> float:
    """1.0 when the completion's extracted answer is equivalent to ``answer``, else 0.0."""
    pred = extract_answer(completion)
    if pred is None:
        return 0.0
    return 1.0 if answers_equivalent(pred, answer) else 0.0
