"""Evaluation: policies on prompts (gold reward, win rate, KL, length, per-family measures), reward models
(:mod:`posttrain.eval.rm`), and the HTML run report (:mod:`posttrain.eval.report`).

* :func:`evaluate_policy` — sample with the shared sampler, then measure (:mod:`posttrain.eval.policy`);
* :func:`world_eval_rows` — the toy world's held-out eval prompts per family;
* ``posttrain report RUN_DIR`` — :func:`posttrain.eval.report.write_report`.
"""

from posttrain.eval.policy import FAMILY_METRICS, EvalResult, evaluate_policy, generation_settings, world_eval_rows

__all__ = ["EvalResult", "evaluate_policy", "world_eval_rows", "generation_settings", "FAMILY_METRICS"]
