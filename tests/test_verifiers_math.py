"""posttrain.verifiers.math: answer extraction, equivalence, and the 1/0 math reward."""

from __future__ import annotations

import threading

import pytest

from posttrain.verifiers.math import answers_equivalent, extract_answer, math_reward


@pytest.mark.parametrize("text, expected", [
    ("so the result is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),  # nested braces
    ("\\boxed{2} first, then \\boxed{\\sqrt{\\frac{1}{4}}}", "\\sqrt{\\frac{1}{4}}"),  # the LAST box
    ("\\boxed{{1,2},{3}}", "{1,2},{3}"),
    ("the value is \\boxed 7", "7"),
    ("\\fbox{-2}", "-2"),
    ("Let me think.\nx = 3.\nAnswer: 12", "12"),  # answer line beats the last number
    ("answer: 5 apples\nsome words 99", "5 apples"),
    ("Final answer is $\\frac{1}{2}$.", "$\\frac{1}{2}$"),
    ("Natalia sold 48 clips.\n#### 72", "72"),
    ("We get -7 and then -12", "-12"),  # the last number, negative
    ("It costs 1,000 dollars in total.", "1,000"),
    ("about 2.5 hours", "2.5"),
    ("3/4 of the cake", "3/4"),
    ("step 1 gives 2. step 2 gives 3.", "3"),
    ("no numbers at all", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("pred, gold", [
    ("1/2", "0.5"),
    ("0.5", "1/2"),
    ("1,000", "1000"),
    ("1000", "1,000"),
    ("-0", "0"),
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac{1}{2}", "1/2"),
    ("\\frac34", "0.75"),
    ("5 apples", "5"),
    ("5", "5 apples"),
    ("-3", "-3"),
    ("-3.50", "-3.5"),
    ("$12$", "12"),
    ("\\boxed{7}", "7"),
    ("50%", "0.5"),
    ("x = 5", "5"),
    ("\\sqrt{\\frac{1}{4}}", "1/2"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("12.", "12"),
])
def test_equivalent(pred, gold):
    assert answers_equivalent(pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ("-3", "3"),  # sign matters
    ("7", "8"),
    ("0.33", "1/3"),  # two plain numbers are compared exactly
    ("3x", "3"),  # an expression is not a unit
    ("\\frac{1}{3}", "0.3"),
    ("", "1"),
    (None, "1"),
    ("1", None),
])
def test_not_equivalent(pred, gold):
    assert not answers_equivalent(pred, gold)


def test_math_reward_tricky_cases():
    assert math_reward("so we get \\boxed{\\frac{3}{4}}", "0.75") == 1.0  # nested \boxed{\frac{3}{4}}
    assert math_reward("The answer is 1/2.", "0.5") == 1.0
    assert math_reward("In total there are 1,000 birds.", "1000") == 1.0
    assert math_reward("Answer: 5 apples", 5) == 1.0  # trailing unit; integer gold
    assert math_reward("the temperature falls to -4", "-4") == 1.0  # negative numbers
    assert math_reward("the temperature falls to -4", "4") == 0.0
    assert math_reward("Answer: -0", "0") == 1.0
    assert math_reward("I am not sure what to say.", "3") == 0.0  # no answer at all
    assert math_reward("Answer: 41", "42") == 0.0  # a wrong answer
    assert math_reward("2 + 2 = 4, so \\boxed{5}", "4") == 0.0  # the boxed answer counts, not the last number
    assert math_reward("", "1") == 0.0


def test_math_reward_works_off_the_main_thread():
    """math-verify's signal-based timeouts only work in the main thread; off it they are switched off."""
    results = []
    t = threading.Thread(target=lambda: results.append((math_reward("\\boxed{\\frac{1}{2}}", "0.5"),
                                                       math_reward("\\boxed{x^2}", "x*x"))))
    t.start()
    t.join()
    assert results == [(1.0, 1.0)]
