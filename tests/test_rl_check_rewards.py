"""The toy-world arithmetic rewards of ``posttrain.stages.rl_check`` (``--rlvr-reward worked|shaped``)."""

from __future__ import annotations

from posttrain.rollout.rewards import build_reward
from posttrain.stages.rl_check import restated_operands_reward, worked_arith_reward


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
