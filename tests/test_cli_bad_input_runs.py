"""Bad input that shows only once a stage runs, through the CLI: exit 2, the one line, no traceback, and no
half-written run directory left behind (``posttrain.engine.run.discard_unstarted_runs``) — while a run that
wrote anything keeps it, and a folder that existed before is never removed.

Tiny preset model, one step, a reward written to a file under ``tmp_path`` (``callable:FILE.py:fn``).
"""

from __future__ import annotations

import json

import pytest

from posttrain.cli import main

REWARDS = '''
CALLS = {"n": 0}
def nan_reward(prompts, completions, **kw):
    return [float("nan")] * len(completions)
def short_reward(prompts, completions, **kw):
    return [1.0]
def strs(prompts, completions, **kw):
    return ["a"] * len(completions)
def nan_at_third_call(prompts, completions, **kw):
    CALLS["n"] += 1
    return [float("nan") if CALLS["n"] >= 3 else 0.5] * len(completions)
'''

RL = ["model=preset:tiny", "max_steps=1", "progress=false", "num_threads=1", "prompts_per_step=2", "group_size=2",
      "batch_size=4", "generation.max_new_tokens=4", "sample_every=0"]


def _prompts(tmp_path, answer: bool) -> str:
    rows = [{"prompt": [{"role": "user", "content": f"What is 2+{i}?"}], **({"answer": str(2 + i)} if answer else {})}
            for i in range(4)]
    p = tmp_path / ("rl.jsonl" if answer else "rl_noanswer.jsonl")
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _rewards(tmp_path) -> str:
    p = tmp_path / "badrew.py"
    p.write_text(REWARDS)
    return str(p)


def _one_error_line(capsys) -> str:
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: ")
    return cap.err[len("error: "):-1]


@pytest.mark.parametrize("command", ["rl", "rejection-sampling"])
def test_verifier_without_answer_column_names_the_file_and_writes_nothing(tmp_path, capsys, command):
    data = _prompts(tmp_path, answer=False)
    out = tmp_path / "out" / "53"
    extra = RL if command == "rl" else ["model=preset:tiny", "max_steps=1", "progress=false", "num_threads=1",
                                         "num_samples=2", "generation.max_new_tokens=4"]
    rc = main([command, "reward=verifier:math", f"data.train={data}", f"output_dir={out}", *extra])
    assert rc == 2
    assert _one_error_line(capsys) == f"{data}: column 'answer' is missing (reward 'verifier:math' needs it)"
    assert not out.exists() and not out.parent.exists()


@pytest.mark.parametrize("fn,message", [
    ("nan_reward", "value nan for completion 0 is not finite"),
    ("short_reward", "returned 1 values for 4 completions"),
    ("strs", "must return a list of numbers (could not convert string to float: 'a')"),
])
def test_bad_reward_function_leaves_no_run_directory(tmp_path, capsys, fn, message):
    spec = f"callable:{_rewards(tmp_path)}:{fn}"
    out = tmp_path / "out" / "run"  # its parent is created by the run too: both go
    rc = main(["rl", f"reward={spec}", f"data.train={_prompts(tmp_path, True)}", f"output_dir={out}", *RL])
    assert rc == 2
    assert _one_error_line(capsys) == f"reward '{spec}': {message}"
    assert not (tmp_path / "out").exists()


def test_bad_reward_in_an_existing_empty_folder_keeps_the_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    spec = f"callable:{_rewards(tmp_path)}:nan_reward"
    assert main(["rl", f"reward={spec}", f"data.train={_prompts(tmp_path, True)}", f"output_dir={out}", *RL]) == 2
    _one_error_line(capsys)
    assert out.is_dir() and list(out.iterdir()) == []  # as it was


def test_failure_mid_training_keeps_the_checkpoints(tmp_path, capsys):
    """The reward turns NaN at the third step: the two steps done and their checkpoints stay (resumable)."""
    spec = f"callable:{_rewards(tmp_path)}:nan_at_third_call"
    out = tmp_path / "run"
    rc = main(["rl", f"reward={spec}", f"data.train={_prompts(tmp_path, True)}", f"output_dir={out}",
               *[a for a in RL if a != "max_steps=1"], "max_steps=4", "checkpoint_every=1"])
    assert rc == 2
    assert _one_error_line(capsys) == f"reward '{spec}': value nan for completion 0 is not finite"
    assert (out / "config.yaml").is_file() and not (out / "DONE").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert [json.loads(line)["rl_step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_bad_reward_when_resuming_keeps_the_run(tmp_path, capsys):
    """A folder that already held this (unfinished) run is continued, so a user error never removes it."""
    data = _prompts(tmp_path, True)
    out = tmp_path / "run"
    spec = f"callable:{_rewards(tmp_path)}:nan_reward"
    args = ["rl", f"reward={spec}", f"data.train={data}", f"output_dir={out}", *RL]
    out.mkdir()
    # an unfinished run with the same config, as a crash would leave it
    from posttrain.config import RLConfig, load_config
    from posttrain.engine.run import Run

    Run.open(load_config(RLConfig, None, args[1:]), "rl")
    assert main(args) == 2
    _one_error_line(capsys)
    assert (out / "config.yaml").is_file()


def test_lora_target_module_the_model_lacks_writes_nothing(tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(4)))
    out = tmp_path / "112"
    rc = main(["sft", "model=preset:tiny", f"data.train={data}", "lora.enabled=true", "lora.target_modules=[foo_proj]",
               f"output_dir={out}", "max_steps=1", "progress=false", "num_threads=1"])
    assert rc == 2
    assert _one_error_line(capsys).startswith("lora.target_modules: 'foo_proj' is not a linear layer of this model")
    assert not out.exists()
