"""Run directory: what Run.open does with an existing output_dir (see posttrain.engine.run)."""

from __future__ import annotations

import pytest
import yaml

from posttrain.config import SFTConfig, load_config
from posttrain.engine.run import Run, RunDirError, config_difference, discard_unstarted_runs


def cfg(tmp_path, **kw):
    return SFTConfig(output_dir=str(tmp_path / "run"), **kw)


def test_new_run_writes_config(tmp_path):
    c = cfg(tmp_path, lr=3e-4)
    run = Run.open(c, "sft")
    text = (run.path / "config.yaml").read_text()
    assert text.startswith("# posttrain sft\n")
    assert yaml.safe_load(text)["lr"] == 3e-4
    # the file is a valid config for the same stage
    again = load_config(SFTConfig, str(run.path / "config.yaml"))
    assert again == c
    assert not run.is_done() and run.latest_checkpoint() is None


def test_finished_run_same_config_is_reused_else_refused(tmp_path):
    c = cfg(tmp_path)
    run = Run.open(c, "sft")
    run.write_summary({"final_loss": 1.5})
    run.mark_done()
    again = Run.open(cfg(tmp_path, progress=False, num_threads=1), "sft")  # ignored keys
    assert again.is_done() and again.read_summary() == {"final_loss": 1.5}
    with pytest.raises(RunDirError) as e:
        Run.open(cfg(tmp_path, lr=1e-3), "sft")
    assert str(e.value) == (f"output_dir '{tmp_path / 'run'}' holds a finished run with a different config "
                            "(lr: 0.0001 -> 0.001); choose another output_dir or delete it")
    with pytest.raises(RunDirError, match="holds a finished sft run; set resume=true"):
        Run.open(cfg(tmp_path, resume=False), "sft")
    with pytest.raises(RunDirError, match=r"stage: 'sft' -> 'pretrain'"):
        Run.open(cfg(tmp_path), "pretrain")
    assert (tmp_path / "run" / "DONE").is_file()  # nothing was touched


def test_unfinished_run(tmp_path):
    c = cfg(tmp_path)
    run = Run.open(c, "sft")
    ck = run.checkpoint_dir(4)
    ck.mkdir(parents=True)
    (ck / "state.pt").write_bytes(b"x")
    run.metrics.write({"step": 1, "loss": 2.0})
    assert Run.open(c, "sft").latest_checkpoint() == ck  # resume: kept
    with pytest.raises(RunDirError, match=r"holds an unfinished run with a different config \(max_steps: 100 -> 5\)"):
        Run.open(cfg(tmp_path, max_steps=5), "sft")
    fresh = Run.open(cfg(tmp_path, max_steps=5, resume=False), "sft")  # start over
    assert fresh.latest_checkpoint() is None and not (fresh.path / "metrics.jsonl").exists()
    assert yaml.safe_load((fresh.path / "config.yaml").read_text())["max_steps"] == 5


def test_foreign_directory_is_refused(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="exists and is not a posttrain run directory"):
        Run.open(cfg(tmp_path), "sft")
    assert (d / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Run.open(SFTConfig(output_dir=str(empty)), "sft").path == empty


def test_truncate_after_and_samples(tmp_path):
    run = Run.open(cfg(tmp_path), "sft")
    for s in (1, 2, 3):
        run.metrics.write({"step": s})
    run.write_samples([{"step": 1, "x": 1}])
    run.append_samples([{"step": 3, "x": 2}])
    run.truncate_after(2)
    from posttrain.io import read_jsonl

    assert [r["step"] for r in read_jsonl(run.path / "metrics.jsonl")] == [1, 2]
    assert read_jsonl(run.path / "samples.jsonl") == [{"step": 1, "x": 1}]


def test_config_difference():
    assert config_difference({"a": 1, "data": {"train": "x"}}, {"a": 1, "data": {"train": "y"}}) == \
        "data.train: 'x' -> 'y'"
    assert config_difference({"a": 1, "progress": True}, {"a": 1, "progress": False}) is None


def test_a_key_added_after_the_run_counts_only_when_it_is_not_its_default():
    """A finished run written before ``generation.backend`` existed is the same run as one with the
    default ``auto``, not with ``static``."""
    old = {"lr": 1e-3, "generation": {"temperature": 1.0}}
    defaults = {"lr": 5e-6, "generation": {"temperature": 1.0, "backend": "auto"}}
    new = {"lr": 1e-3, "generation": {"temperature": 1.0, "backend": "auto"}}
    assert config_difference(old, new) == "generation.backend: '<absent>' -> 'auto'"
    assert config_difference(old, new, defaults) is None
    new["generation"]["backend"] = "static"
    assert config_difference(old, new, defaults) == "generation.backend: '<absent>' -> 'static'"
    # a key present in the old run is compared as always, default or not
    assert config_difference({"lr": 1e-3}, {"lr": 5e-6}, defaults) == "lr: 0.001 -> 5e-06"


def test_truncate_drops_a_line_cut_by_a_kill(tmp_path):
    run = Run.open(cfg(tmp_path), "sft")
    run.metrics.write({"step": 1, "loss": 1.0})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # SIGKILL mid-write
    run.truncate_after(5)
    from posttrain.io import read_jsonl

    assert read_jsonl(run.path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]


def test_discard_unstarted_runs_removes_only_what_this_process_created_and_left_unstarted(tmp_path):
    """A UserError before the first step: the CLI calls discard_unstarted_runs. Removed: a run folder (and
    the parents) Run.open created that holds only its config.yaml. Kept: anything that wrote a metric, a
    checkpoint or a sample, a finished run, a folder that existed before (an empty one is emptied again),
    and a run continued or restarted in a folder that already held one."""
    discard_unstarted_runs()  # nothing left over from other tests
    new = Run.open(SFTConfig(output_dir=str(tmp_path / "a" / "b" / "new")), "sft")
    stepped = Run.open(SFTConfig(output_dir=str(tmp_path / "stepped")), "sft")
    stepped.metrics.write({"step": 1, "loss": 2.0})
    ckpt = Run.open(SFTConfig(output_dir=str(tmp_path / "ckpt")), "sft")
    (ckpt.checkpoint_dir(1)).mkdir(parents=True)
    (ckpt.checkpoint_dir(1) / "state.pt").write_bytes(b"x")
    done = Run.open(SFTConfig(output_dir=str(tmp_path / "done")), "sft")
    done.mark_done()
    (tmp_path / "empty").mkdir()
    Run.open(SFTConfig(output_dir=str(tmp_path / "empty")), "sft")
    (tmp_path / "a" / "other").mkdir()  # a sibling appeared under a created parent: that parent stays
    again = SFTConfig(output_dir=str(tmp_path / "again"))
    Run.open(again, "sft")
    Run.open(again, "sft")  # this process continues it: no longer a folder this open created
    restarted = SFTConfig(output_dir=str(tmp_path / "restarted"), resume=False)
    Run.open(restarted, "sft").metrics.write({"step": 1})
    Run.open(restarted, "sft")  # unfinished, resume=false: cleared and started over, in the same folder

    removed = discard_unstarted_runs()
    assert removed == [tmp_path / "empty", tmp_path / "a" / "b" / "new"]
    assert not (tmp_path / "a" / "b").exists() and (tmp_path / "a" / "other").is_dir()
    assert (tmp_path / "empty").is_dir() and list((tmp_path / "empty").iterdir()) == []
    for name in ("stepped", "ckpt", "done", "again", "restarted"):
        assert (tmp_path / name / "config.yaml").is_file(), name
    assert discard_unstarted_runs() == []  # the list is consumed


def test_discard_unstarted_runs_keeps_a_config_it_did_not_write(tmp_path):
    run = Run.open(cfg(tmp_path), "sft")
    (run.path / "config.yaml").write_text("# posttrain sft\nedited: true\n")
    assert discard_unstarted_runs() == [] and (run.path / "config.yaml").is_file()
