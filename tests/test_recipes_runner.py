"""The recipe runner: references between stages, skip finished stages, resume an unfinished one, recipe.json,
summary, report — with a fake stage command (fast), plus select-data and the R1 rule reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

import posttrain.recipes as recipes
from posttrain.cli import main as cli_main
from posttrain.errors import ConfigError, UserError
from posttrain.recipes import format_summary, load_recipe, resolve_stages, run_recipe

CALLS: list[tuple[str, int]] = []   # (output_dir name, step) of every fake step executed
FAIL = {"stage": None, "at": None}  # make a fake stage crash at this step (not part of its config)


class FakeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = "none"
    output_dir: str = "runs/fake"
    seed: int = 0
    steps: int = 3
    resume: bool = True
    progress: bool = True


def fake_run(cfg: FakeConfig) -> dict:
    """A stage in miniature: Run.open, one 'checkpoint' per step (progress.txt), summary, DONE."""
    from posttrain.engine import Run

    run = Run.open(cfg, "fake")
    if run.is_done():
        return run.read_summary()
    prog = run.path / "progress.txt"
    start = int(prog.read_text()) if prog.is_file() else 0
    for step in range(start, cfg.steps):
        if FAIL["stage"] == run.path.name and FAIL["at"] == step:
            raise RuntimeError("simulated crash")
        CALLS.append((run.path.name, step))
        prog.write_text(str(step + 1))
        run.metrics.write({"step": step + 1, "loss": 1.0 / (step + 1)})
    summary = {"stage": "fake", "final_loss": 1.0 / cfg.steps, "model_in": cfg.model}
    run.write_summary(summary)
    run.mark_done()
    return summary


@pytest.fixture
def fake_command(monkeypatch):
    monkeypatch.setitem(recipes.STAGE_COMMANDS, "fake", (f"{__name__}:FakeConfig", f"{__name__}:fake_run", None))
    CALLS.clear()
    FAIL.update(stage=None, at=None)
    yield


def _recipe_file(tmp_path: Path, stages: list[dict], **extra) -> Path:
    doc = {"name": "toy", "world": str(tmp_path / "no_world"), "eval": {"enabled": False},
           "vars": {"start": "${output_dir}/start_model"}, "stages": stages, **extra}
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


STAGES = [{"name": "a", "command": "fake", "config": {"model": "${start}", "steps": 2}},
          {"name": "b", "command": "fake", "config": {"model": "${a}", "steps": 3}},
          {"name": "c", "command": "fake", "config": {"model": "rm:${b}", "steps": 1}}]


def test_references_resolve_to_earlier_run_dirs(tmp_path, fake_command):
    path = _recipe_file(tmp_path, STAGES)
    out = tmp_path / "out"
    recipe = load_recipe(str(path), [f"output_dir={out}", "b.steps=4", "seed=7"])
    resolved = resolve_stages(recipe)
    cfgs = {st.name: cfg for st, cfg in resolved}
    assert cfgs["a"].model == f"{out}/start_model"      # vars may use ${output_dir}
    assert cfgs["b"].model == f"{out}/a"               # ${a} = stage a's run directory
    assert cfgs["c"].model == f"rm:{out}/b"            # inside a larger string
    assert cfgs["b"].steps == 4 and cfgs["a"].steps == 2  # STAGE.key=value override reaches one stage
    assert all(c.seed == 7 for c in cfgs.values())     # recipe seed fills stages that set none
    assert cfgs["c"].output_dir == f"{out}/c"


def test_reference_errors_are_one_line(tmp_path, fake_command):
    bad_later = [{"name": "a", "command": "fake", "config": {"model": "${b}"}},
                 {"name": "b", "command": "fake", "config": {}}]
    with pytest.raises(ConfigError, match=r"stage 'a': key 'model': \$\{b\} refers to stage 'b', which has not"):
        resolve_stages(load_recipe(str(_recipe_file(tmp_path, bad_later))))
    unknown = [{"name": "a", "command": "fake", "config": {"model": "${nope}"}}]
    with pytest.raises(ConfigError, match=r"unknown reference \$\{nope\}"):
        resolve_stages(load_recipe(str(_recipe_file(tmp_path, unknown))))
    with pytest.raises(ConfigError, match="stage 'b': unknown key 'stepz'"):
        resolve_stages(load_recipe(str(_recipe_file(tmp_path, STAGES)), ["b.stepz=1"]))
    dup = [{"name": "a", "command": "fake"}, {"name": "a", "command": "fake"}]
    with pytest.raises(ConfigError, match="used twice"):
        load_recipe(str(_recipe_file(tmp_path, dup)))
    with pytest.raises(ConfigError, match="unknown command"):
        load_recipe(str(_recipe_file(tmp_path, [{"name": "a", "command": "train-everything"}])))
    for err in (ConfigError("x"),):
        assert "\n" not in str(err)


def test_run_skip_finished_and_resume_unfinished(tmp_path, fake_command, capsys):
    path = _recipe_file(tmp_path, STAGES)
    out = tmp_path / "out"
    recipe = load_recipe(str(path), [f"output_dir={out}"])
    # 1st run: stage b crashes at its step 1 (after completing step 0)
    FAIL.update(stage="b", at=1)
    with pytest.raises(RuntimeError):
        run_recipe(recipe, quiet=True)
    assert CALLS == [("a", 0), ("a", 1), ("b", 0)]
    state = json.loads((out / "recipe.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["done", "failed", "pending"]
    # 2nd run: a is reused (not re-run), b resumes at step 1, c runs
    FAIL.update(stage=None, at=None)
    CALLS.clear()
    state = run_recipe(recipe, quiet=True)
    assert CALLS == [("b", 1), ("b", 2), ("c", 0)]
    assert [s["status"] for s in state["stages"]] == ["done (reused)", "done", "done"]
    assert json.loads((out / "c" / "summary.json").read_text())["model_in"] == f"rm:{out}/b"
    assert state["stages"][1]["key_metrics"] == "final_loss 0.3333"
    # 3rd run: everything reused, nothing executed; a changed config re-runs only what changed
    CALLS.clear()
    state = run_recipe(recipe, quiet=True)
    assert CALLS == [] and all(s["status"] == "done (reused)" for s in state["stages"])
    # the report covers every stage, in recipe order
    page = (out / "report.html").read_text()
    assert page.index(">a <") < page.index(">b <") < page.index(">c <")
    text = format_summary(state)
    assert "stage" in text and "done (reused)" in text and str(out / "report.html") in text
    # a finished stage with another config: the stage's own run-directory rule refuses (one line)
    with pytest.raises(UserError, match="different config"):
        run_recipe(load_recipe(str(path), [f"output_dir={out}", "c.steps=2"]), quiet=True)


def test_missing_command_error_or_partial_run(tmp_path, fake_command, monkeypatch):
    monkeypatch.setitem(recipes.STAGE_COMMANDS, "later", (f"{__name__}:FakeConfig", "posttrain.no_such_module:run",
                                                         None))
    stages = STAGES[:1] + [{"name": "z", "command": "later", "config": {"model": "${a}"}}]
    recipe = load_recipe(str(_recipe_file(tmp_path, stages)), [f"output_dir={tmp_path / 'o'}"])
    with pytest.raises(UserError, match="stage 'z' needs `posttrain later`, which is not available"):
        run_recipe(recipe, quiet=True)
    assert CALLS == []  # nothing ran
    state = run_recipe(recipe, allow_missing=True, quiet=True)
    assert CALLS == [("a", 0), ("a", 1)]
    assert state["missing"] == [{"stage": "z", "command": "later", "available": False}]
    assert [s["status"] for s in state["stages"]] == ["done", "missing"]


def test_cli_recipe_errors_exit_2(tmp_path, fake_command, capsys):
    assert cli_main(["recipe", "no_such_recipe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown recipe 'no_such_recipe'") and err.count("\n") == 1
    assert cli_main(["recipe", str(_recipe_file(tmp_path, STAGES)), "a.bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
    assert cli_main(["recipe", "--help"]) == 0


@pytest.mark.parametrize("name", ["instructgpt", "tulu3", "r1"])
def test_builtin_recipes_resolve(name, tmp_path):
    """Every shipped recipe validates: all stage configs build, references point to earlier stages."""
    recipe = load_recipe(name, [f"output_dir={tmp_path}/{name}", f"world={tmp_path}/world"])
    resolved = resolve_stages(recipe)
    assert resolved and all(Path(cfg.output_dir).parent == tmp_path / name for _, cfg in resolved)
    assert recipe.checks, "each recipe states its acceptance checks"
    evaluated = [st.name for st, cfg in resolved if recipes.policy_dir(st, cfg) is not None]
    for c in recipe.checks:
        assert c.model in evaluated + ["base"]


def test_select_data_filters_mixes_and_adds_answers(tmp_path):
    from posttrain.recipes.steps import SelectDataConfig, select_data

    def user(t):
        return [{"role": "user", "content": t}]

    def asst(t):
        return [{"role": "assistant", "content": t}]

    src = tmp_path / "sft.jsonl"
    rows = [{"prompt": user("What is 7 + 5?"), "completion": asst("7 + 5 = 12.")},
            {"prompt": user("How do I make tea?"), "completion": asst("Boil the water.")},
            {"prompt": user("Tom has 3 apples. He gets 4 more. How many apples does Tom have now?"),
             "completion": asst("<think>3 + 4 = 7.</think> Tom has 7 apples.")},
            {"prompt": user("How do I bake bread?"), "completion": asst("Mix, knead, bake.")}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = SelectDataConfig(inputs=[{"path": str(src), "families": ["arith", "reason"]},
                                   {"path": str(src), "exclude_families": ["arith", "reason"], "max_rows": 1}],
                           world_answers=True, shuffle=False, output_dir=str(tmp_path / "sel"), progress=False)
    summary = select_data(cfg)
    out = [json.loads(l) for l in (tmp_path / "sel" / "data.jsonl").read_text().splitlines()]
    assert [r["prompt"][0]["content"] for r in out] == ["What is 7 + 5?", rows[2]["prompt"][0]["content"],
                                                        "How do I make tea?"]
    assert [r.get("answer") for r in out] == ["12", "7", None]
    assert summary["rows"] == 3 and summary["families"] == {"arith": 1, "reason": 1, "howto": 1}
    assert (tmp_path / "sel" / "DONE").is_file()
    # the mixed file (answer on some rows) loads as prompt-completion data
    from posttrain.data.load import load_rows

    assert load_rows(str(tmp_path / "sel" / "data.jsonl")).kind == "prompt_completion"


def test_r1_rule_reward_hand_numbers():
    """answer 7: think + right → 1 + 0.5; no think, right → 1; think, wrong → 0.5; no answer column → 0."""
    from posttrain.recipes.rewards import r1_rule_reward

    comps = ["<think>3 + 4 = 7</think> Tom has 7 apples.", "Tom has 7 apples.",
             "<think>3 + 4 = 7</think> Tom has 8 apples.", "<think>x</think> Boil the water."]
    assert r1_rule_reward([""] * 4, comps, answer=["7", "7", "7", None]) == [1.5, 1.0, 0.5, 0.0]
    assert r1_rule_reward([""], ["7"]) == [0.0]


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("stages,message", [
    (5, "key 'stages': must be a list of stages"),
    ([], "key 'stages': the list of stages is empty"),
    ([5], "key 'stages.0': a stage must be a mapping with keys name, command and config (got int 5)"),
    ([{"name": "a"}], "key 'stages.0.command' is required"),
    ([{"name": "a", "command": "fake", "config": 5}],
     "key 'stages.0.config': must be a mapping of the command's keys (got int 5)"),
    ([{"name": 3, "command": "fake"}], "key 'stages.0.name': must be text (got 3)"),
])
def test_cli_recipe_of_the_wrong_shape_is_one_line(tmp_path, fake_command, capsys, stages, message):
    path = _recipe_file(tmp_path, stages)
    assert cli_main(["recipe", str(path), "--show"]) == 2
    cap = capsys.readouterr()
    assert cap.err == f"error: {path}: {message}\n" and "Traceback" not in cap.out + cap.err


@pytest.mark.parametrize("override,key", [("sfft.max_steps=1", "sfft.max_steps"), ("sed=1", "sed")])
def test_cli_recipe_override_of_an_unknown_stage_blames_the_override(override, key, capsys):
    assert cli_main(["recipe", "instructgpt", "--show", override]) == 2
    top = key.split(".")[0]
    assert capsys.readouterr().err == (f"error: recipe override '{key}': unknown stage or key '{top}' "
                                       f"(stages: sft, reward_model, ppo)\n")
    assert cli_main(["recipe", "instructgpt", "--show", "eval.per_family=abc"]) == 2
    assert capsys.readouterr().err.startswith("error: recipe override: key 'eval.per_family': ")


@pytest.fixture
def no_world_build(monkeypatch):
    """A recipe under test must never build the toy world (minutes)."""
    import posttrain.world.build as build

    def refuse(*a, **k):
        raise AssertionError("the toy world was being built")

    monkeypatch.setattr(build, "build_world", refuse)


@pytest.mark.parametrize("stage,key,content,message", [
    ("sft", "data.train", '{"prompt": "a", "completion": "b"}\n{oops\n', "{f}:2: not valid JSON"),
    ("reward_model", "data.train", "", "{f}: file is empty"),
])
def test_builtin_recipe_with_a_bad_data_file_fails_before_writing_or_building(tmp_path, capsys, no_world_build,
                                                                                stage, key, content, message):
    """instructgpt from a folder with no toy world: the bad file given for one stage is found before the world
    would be built, before recipe.json or OUTPUT_DIR is written, naming the recipe and the stage."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    out, world = tmp_path / "out", tmp_path / "world"
    rc = cli_main(["recipe", "instructgpt", f"output_dir={out}", f"world={world}", f"{stage}.{key}={bad}",
                   "sft.max_steps=1"])
    assert rc == 2
    cap = capsys.readouterr()
    assert cap.err.startswith(f"error: recipe 'instructgpt', stage '{stage}': " + message.format(f=bad))
    assert cap.err.count("\n") == 1 and "Traceback" not in cap.out + cap.err
    assert not out.exists() and not world.exists()


def test_recipe_stage_data_and_model_checked_before_the_first_stage_runs(tmp_path, fake_command, capsys):
    """A fake first stage, then real stages whose files are bad: nothing runs, nothing is written. Paths
    inside an earlier stage's run directory are not checked (they do not exist yet)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "out"
    stages = [{"name": "a", "command": "fake", "config": {"steps": 1}},
              {"name": "rm", "command": "reward-model", "config": {"model": "${a}", "data": {"train": str(empty)}}}]
    assert cli_main(["recipe", str(_recipe_file(tmp_path, stages)), f"output_dir={out}"]) == 2
    assert capsys.readouterr().err == f"error: recipe 'toy', stage 'rm': {empty}: file is empty\n"
    assert CALLS == [] and not out.exists()
    stages[1] = {"name": "sft", "command": "sft", "config": {"model": str(tmp_path / "no_model"),
                                                             "data": {"train": "${a}/data.jsonl"}}}
    assert cli_main(["recipe", str(_recipe_file(tmp_path, stages)), f"output_dir={out}"]) == 2
    assert capsys.readouterr().err == (f"error: recipe 'toy', stage 'sft': model '{tmp_path / 'no_model'}': "
                                       f"no such directory\n")
    assert CALLS == [] and not out.exists()


def test_recipe_stage_failing_at_run_time_leaves_no_unstarted_run_dir(tmp_path, fake_command, capsys):
    """A user error only the stage itself can find (its reward function returns NaN at the first step): the
    earlier stage's run stays, the failed stage's folder (config.yaml only) goes, recipe.json says which
    stage failed."""
    data = tmp_path / "rl.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is 2+{i}?"}) + "\n" for i in range(4)))
    fn = tmp_path / "nanrew.py"
    fn.write_text("def nan(prompts, completions, **kw):\n    return [float('nan')] * len(completions)\n")
    spec = f"callable:{fn}:nan"
    stages = [{"name": "a", "command": "fake", "config": {"steps": 1}},
              {"name": "r", "command": "rl", "config": {
                  "model": "preset:tiny", "data": {"train": str(data)}, "reward": spec, "max_steps": 1,
                  "progress": False, "num_threads": 1, "prompts_per_step": 2, "group_size": 2, "batch_size": 4,
                  "generation": {"max_new_tokens": 4}, "sample_every": 0}}]
    out = tmp_path / "out"
    assert cli_main(["recipe", str(_recipe_file(tmp_path, stages)), f"output_dir={out}"]) == 2
    assert capsys.readouterr().err == f"error: reward '{spec}': value nan for completion 0 is not finite\n"
    assert (out / "a" / "DONE").is_file() and not (out / "r").exists()
    state = json.loads((out / "recipe.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["done", "failed"]
