"""The toy-world arithmetic rewards of ``posttrain.stages.rl_check`` (``--rlvr-reward worked|shaped|partial|copy``)."""

from __future__ import annotations

from posttrain.rollout.rewards import build_reward
from posttrain.stages.rl_check import operand_credit_reward, restated_operands_reward, worked_arith_reward


def _p(text):
    return [{"role": "user", "content": text}]


PROMPTS = [_p("Compute 7 * 4.")] * 5 + [_p("Compute 9 - 3.")]
COMPLETIONS = [
    "7 * 4 = 28.",          # right operands, right answer
    "7 * 4 = 27.",          # right operands, wrong answer
    "14 * 2 = 28.",         # miscopied operands, right number
    "28.",                  # no equation written
    "7 * 4 = 28. 7 + 4 = 11.",  # a second equation with the wrong operator
    "9 - 3 = 6.",
]


def test_restated_operands_pays_the_copy_whatever_the_answer():
    assert restated_operands_reward(PROMPTS, COMPLETIONS) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_worked_pays_the_right_answer_from_the_prompts_operands_only():
    # a bare right answer writes no equation, so none is miscopied: paid (the restatement reward does not)
    assert worked_arith_reward(PROMPTS, COMPLETIONS) == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]


def test_shaped_spec_is_the_weighted_sum_of_verifier_and_restatement():
    reward = build_reward("verifier:math*1.0+callable:posttrain.stages.rl_check:restated_operands_reward*0.5")
    answers = ["28"] * 5 + ["6"]
    got = reward(PROMPTS, COMPLETIONS, answer=answers)
    got = got[0] if isinstance(got, tuple) else got
    math = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]  # the answer-only verifier reads the last number written
    restated = [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert [float(g) for g in got] == [m + 0.5 * r for m, r in zip(math, restated)]


def test_operand_credit_counts_each_part_of_each_equation():
    # worked by hand against (7, "*", 4): 3/3, 3/3, 1/3 (14 * 2: neither operand, but the operator is "*"),
    # no equation 0, mean of 3/3 and 2/3 (the "+" is wrong), and 9 - 3 against itself 3/3
    got = operand_credit_reward(PROMPTS, COMPLETIONS)
    want = [1.0, 1.0, 1 / 3, 0.0, (1 + 2 / 3) / 2, 1.0]
    assert got == want


def test_operand_credit_is_between_zero_and_the_all_or_nothing_reward():
    prompts = [_p("What is 8 - 8?")] * 4
    completions = ["11 - 11 = 0.", "8 - 11 = -3.", "8 + 8 = 16.", "8 - 8 = 0."]
    credit = operand_credit_reward(prompts, completions)
    assert credit == [1 / 3, 2 / 3, 2 / 3, 1.0]
    assert all(c >= r for c, r in zip(credit, restated_operands_reward(prompts, completions)))
