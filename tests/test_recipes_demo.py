"""posttrain demo: the printed comparison (fast), argument errors (fast), and — marked slow — the demo and the
three recipes end to end on a tiny toy world (few steps: it checks that every stage chains, not the effects;
the measured effects are the acceptance runs, written up in the report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.cli import main as cli_main
from posttrain.recipes.demo import format_comparison

STATE = {
    "eval_models": ["base", "sft", "ppo"],
    "evals": {"ppo": {"gold": 2.25, "win_rate": 0.8125, "kl": 3.5, "length": 14.0},
              "base": {"gold": -1.5, "win_rate": 0.0625, "kl": 12.0, "length": 47.9},
              "sft": {"gold": 1.75, "win_rate": 0.5, "kl": 0.0, "length": 16.0}},
    "eval_baseline": "sft", "eval_reference": "sft", "eval_note": "160 prompts",
    "comparison": [{"family": "fact", "prompt": [{"role": "user", "content": "What is the capital of Velmora?"}],
                    "completions": {"base": "Velmora is a land of rivers and " * 6, "sft": "The capital is Ost.",
                                    "ppo": "The capital of Velmora is Ost."}}],
}


def test_format_comparison_side_by_side_and_table():
    text = format_comparison(STATE, width=80)
    lines = text.splitlines()
    assert "[fact] What is the capital of Velmora?" in text
    # models in recipe order with readable labels; long answers wrapped within the width
    i_base = next(i for i, l in enumerate(lines) if l.strip().startswith("base model"))
    i_sft = next(i for i, l in enumerate(lines) if l.strip().startswith("SFT "))
    i_ppo = next(i for i, l in enumerate(lines) if l.strip().startswith("RLHF (PPO)") and "Ost" in l)
    assert i_base < i_sft < i_ppo
    assert all(len(l) <= 80 for l in lines if "Velmora is a land" in l or "rivers" in l)
    header = next(l for l in lines if l.startswith("model"))
    assert "gold reward" in header and "win rate vs sft" in header and "KL to sft" in header
    row = next(l for l in lines if l.startswith("RLHF (PPO)") and "0.812" in l)
    assert row.split()[-4:] == ["2.250", "0.812", "3.500", "14.000"]


def test_demo_argument_errors(capsys):
    assert cli_main(["demo", "widht=3"]) == 2
    assert "unknown key 'widht'" in capsys.readouterr().err
    assert cli_main(["demo", "--help"]) == 0


# --------------------------------------------------------------------------------------------- slow e2e
@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from posttrain.world.build import build_world

    root = tmp_path_factory.mktemp("world")
    build_world(root, pretrain_steps=2)
    return root


FAST = ["defaults.progress=false", "eval.per_family=3"]


@pytest.mark.slow
def test_demo_end_to_end_on_tiny_world(tiny_world, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", f"output_dir={out}", f"world={tiny_world}", "quiet=true", *FAST, "sft.max_steps=2",
            "reward_model.max_steps=2", "ppo.max_steps=1", "ppo.prompts_per_step=4", "ppo.minibatch_size=4",
            "ppo.batch_size=4"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "[fact]" in printed and "[emotional]" in printed and "[howto]" in printed
    assert "RLHF (PPO)" in printed and "win rate vs sft" in printed
    state = json.loads((out / "recipe.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["done", "done", "done"]
    assert set(state["evals"]) == {"base", "sft", "ppo"}
    assert state["evals"]["sft"]["kl"] == 0.0 and state["evals"]["sft"]["win_rate"] == 0.5
    assert state["evals"]["base"]["kl"] > 0
    assert (out / "report.html").is_file() and (out / "eval" / "ppo.json").is_file()
    # a second demo reuses every stage and every evaluation
    mtime = (out / "eval" / "ppo.json").stat().st_mtime_ns
    assert cli_main(args) == 0
    state = json.loads((out / "recipe.json").read_text())
    assert all(s["status"] == "done (reused)" for s in state["stages"])
    assert (out / "eval" / "ppo.json").stat().st_mtime_ns == mtime


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", [
    ("tulu3", ["sft.max_steps=2", "judge.max_steps=2", "prefs.data.max_train_rows=8", "dpo.max_steps=1",
               "rlvr.max_steps=1", "rlvr.prompts_per_step=2", "rlvr.group_size=4"]),
    ("r1", ["cold_sft.max_steps=2", "reason_rl.max_steps=1", "reason_rl.prompts_per_step=2",
            "reason_rl.group_size=4", "rm.max_steps=2", "rs.data.max_train_rows=6",
            "rs.num_samples=2", "rs.require_finished=false", "sft.max_steps=2", "final_rl.max_steps=1", "final_rl.prompts_per_step=2",
            "final_rl.group_size=4"]),
])
def test_recipe_chains_end_to_end(name, overrides, tiny_world, tmp_path):
    from posttrain.recipes import load_recipe, run_recipe

    out = tmp_path / name
    recipe = load_recipe(name, [f"output_dir={out}", f"world={tiny_world}", *FAST, *overrides])
    state = run_recipe(recipe, quiet=True)
    assert all(s["status"] == "done" for s in state["stages"]), state["stages"]
    assert state["checks"] and all(c["value"] is not None for c in state["checks"])
    assert (out / "report.html").is_file()
