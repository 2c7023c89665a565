"""The run directory a stage writes (layout in :mod:`posttrain.io`).

:meth:`Run.open` decides what to do with an existing ``output_dir``:

=====================================  ==========================================================
``output_dir`` holds                   what happens
=====================================  ==========================================================
nothing (absent or empty folder)       a new run
files but no ``config.yaml``           refused: not a posttrain run directory
a finished run (``DONE``), same config ``resume=true``: reused as is (``run.is_done()``; the stage
                                       returns the stored summary); ``resume=false``: refused
a finished run, another config         refused, naming the first differing key
an unfinished run, same config         ``resume=true``: continued from its latest checkpoint (by the
                                       trainer); ``resume=false``: cleared and started over
an unfinished run, another config      with checkpoints and ``resume=true``: refused; otherwise cleared
=====================================  ==========================================================

"Same config" ignores keys that change neither the data order nor the numbers (``progress``, ``resume``,
``num_threads``, ``tensorboard``, ``device``, ``log_every``), and a key the stored config lacks (a run
written before posttrain had that key) when the new value is the key's default.

Only rank 0 touches the file system; the decision is broadcast so every rank raises the same error.
Stages open the run only after the model and data have been loaded and validated, so a user error in
either leaves no half-written directory behind.

Some user errors can only show once the stage runs (a reward function that returns NaN, a LoRA target
the model lacks). For those, :func:`discard_unstarted_runs` (called once by the CLI's error handler) removes
every run directory that THIS process created with :meth:`Run.open` (``output_dir`` absent or empty) and
that still holds nothing but the ``config.yaml`` it wrote: no step, metric, sample or checkpoint. A folder
that existed before keeps its place (an empty one is emptied again; a resumed or restarted run is never
touched), and a run that failed after writing anything keeps all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import ConfigError
from posttrain.io import MetricsWriter, atomic_write_json, atomic_write_text, read_jsonl, write_jsonl

from . import distributed

IGNORED_KEYS = frozenset({"progress", "resume", "num_threads", "tensorboard", "device", "log_every", "output_dir"})
CHECKPOINT_PREFIX = "step-"


class RunDirError(ConfigError):
    """``output_dir`` holds something a new run may not overwrite."""


@dataclass(frozen=True)
class _Opened:
    """A run directory this process created (see :func:`discard_unstarted_runs`)."""

    path: Path
    config_text: str         # what Run.open wrote to config.yaml
    created: Path | None     # the topmost folder Run.open created (None: ``path`` existed, empty)


_OPENED: list[_Opened] = []  # rank 0 only; newest last


def _forget(path: Path) -> None:
    path = Path(os.path.abspath(path))
    _OPENED[:] = [o for o in _OPENED if o.path != path]


def _first_missing(path: Path) -> Path | None:
    """The topmost ancestor of ``path`` (itself included) that does not exist, or None when it exists."""
    if path.exists():
        return None
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def _unstarted(o: _Opened) -> bool:
    """``o.path`` holds exactly the config.yaml Run.open wrote, and nothing else."""
    try:
        children = [c.name for c in o.path.iterdir()]
        return children == ["config.yaml"] and (o.path / "config.yaml").read_text(encoding="utf-8") == o.config_text
    except OSError:
        return False


def discard_unstarted_runs() -> list[Path]:
    """Remove the run directories this process created that hold only their ``config.yaml`` (the stage
    stopped on a user error before writing a step, metric, sample or checkpoint); returns them.

    A folder that existed before ``Run.open`` (empty) is emptied but kept; parent folders ``Run.open``
    created are removed when they are left empty. Runs that wrote anything else, finished runs and runs in
    folders that already held a run are never touched. Called once by the CLI when a ``UserError`` ends a
    command (the recipe runner's stages included)."""
    removed = []
    while _OPENED:
        o = _OPENED.pop()
        if not _unstarted(o):
            continue
        (o.path / "config.yaml").unlink()
        removed.append(o.path)
        if o.created is None:
            continue
        d = o.path
        while True:
            try:
                d.rmdir()  # only ever an empty folder
            except OSError:
                break
            if d == o.created or d.parent == d:
                break
            d = d.parent
    return removed


class _NullMetrics:
    """What ranks other than 0 get: writes nothing."""

    path = None

    def write(self, record: dict) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def config_difference(old: dict, new: dict, defaults: dict | None = None) -> str | None:
    """``"key: old → new"`` for the first key that differs (ignoring :data:`IGNORED_KEYS`), else None.

    ``defaults``: the config class's default values; a key the old config lacks (written by a version of
    posttrain that did not have it yet) whose new value is its default is not a difference."""
    a, b = _flatten(old), _flatten(new)
    d = _flatten(defaults or {})
    for key in list(dict.fromkeys([*b, *a])):
        if key.split(".")[0] in IGNORED_KEYS:
            continue
        if key not in a and key in d and b.get(key) == d[key]:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            return f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}"
    return None


def _defaults(cfg) -> dict:
    """The default values of ``cfg``'s class (fields without a default are left out)."""
    return type(cfg).model_construct().model_dump(mode="json", warnings=False)


def checkpoint_steps(ckpt_root: Path) -> list[int]:
    if not ckpt_root.is_dir():
        return []
    steps = []
    for p in ckpt_root.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "state.pt").is_file():
            try:
                steps.append(int(p.name[len(CHECKPOINT_PREFIX):]))
            except ValueError:
                continue
    return sorted(steps)


class Run:
    """One stage's run directory. Construct with :meth:`open`."""

    def __init__(self, path: Path, stage: str, cfg, *, is_main: bool = True):
        self.path, self.stage, self.cfg, self.is_main = Path(path), stage, cfg, is_main
        self.metrics = MetricsWriter(self.path / "metrics.jsonl") if is_main else _NullMetrics()

    # ------------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, cfg, stage: str, *, output_dir: str | None = None) -> "Run":
        """Create (or reuse, see the module docstring) the run directory ``cfg.output_dir``."""
        from posttrain.config import dump_config

        path = Path(output_dir if output_dir is not None else cfg.output_dir)
        is_main = distributed.is_main()
        decision: tuple[str, str] = ("ok", "")
        if is_main:
            try:
                decision = cls._decide(path, cfg, stage)
            except RunDirError as e:
                decision = ("error", str(e))
        decision = distributed.broadcast_object(decision)
        if decision[0] == "error":
            raise RunDirError(decision[1])
        created = _first_missing(path) if is_main and decision[0] == "new" else None  # before anything exists
        run = cls(path, stage, cfg, is_main=is_main)
        if is_main and decision[0] in ("new", "restart", "continue"):
            _forget(path)  # reopened: it is no longer a folder this open created
            if decision[0] == "restart":
                for child in path.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            path.mkdir(parents=True, exist_ok=True)
            text = f"# posttrain {stage}\n" + dump_config(cfg)
            atomic_write_text(path / "config.yaml", text)
            if decision[0] == "new":
                _OPENED.append(_Opened(Path(os.path.abspath(path)), text,
                                       Path(os.path.abspath(created)) if created is not None else None))
        distributed.barrier()
        return run

    @staticmethod
    def _decide(path: Path, cfg, stage: str) -> tuple[str, str]:
        if not path.exists():
            return ("new", "")
        if not path.is_dir():
            raise RunDirError(f"output_dir '{path}' is a file, not a directory")
        if not any(path.iterdir()):
            return ("new", "")
        cfg_file = path / "config.yaml"
        if not cfg_file.is_file():
            raise RunDirError(f"output_dir '{path}' exists and is not a posttrain run directory (no "
                              f"config.yaml); choose another output_dir")
        try:
            old = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            old = {}
        old_stage = _stage_of(cfg_file)
        diff = config_difference(old, cfg.model_dump(mode="json"), _defaults(cfg))
        if old_stage and old_stage != stage:
            diff = f"stage: {old_stage!r} -> {stage!r}"
        done = (path / "DONE").is_file()
        has_ckpt = bool(checkpoint_steps(path / "checkpoints"))
        if done:
            if diff is not None:
                raise RunDirError(f"output_dir '{path}' holds a finished run with a different config ({diff}); "
                                  f"choose another output_dir or delete it")
            if not cfg.resume:
                raise RunDirError(f"output_dir '{path}' holds a finished {stage} run; set resume=true to reuse "
                                  f"it, or choose another output_dir")
            return ("done", "")
        if diff is None:
            return ("continue", "") if cfg.resume else ("restart", "")
        if has_ckpt and cfg.resume:
            raise RunDirError(f"output_dir '{path}' holds an unfinished run with a different config ({diff}); "
                              f"set resume=false to start it over, or choose another output_dir")
        return ("restart", "")

    # ------------------------------------------------------------------------------------- contents
    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoint_steps(self) -> list[int]:
        return checkpoint_steps(self.checkpoints_dir)

    def latest_checkpoint(self) -> Path | None:
        steps = self.checkpoint_steps()
        return self.checkpoint_dir(steps[-1]) if steps else None

    def is_done(self) -> bool:
        return (self.path / "DONE").is_file()

    def mark_done(self) -> None:
        """Write ``DONE`` (last thing a stage does)."""
        if self.is_main:
            atomic_write_text(self.path / "DONE", time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
            _forget(self.path)
        distributed.barrier()

    def write_summary(self, summary: dict) -> None:
        if self.is_main:
            atomic_write_json(self.path / "summary.json", summary)

    def read_summary(self) -> dict:
        p = self.path / "summary.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    def write_samples(self, rows: list[dict]) -> None:
        """Replace ``samples.jsonl`` with ``rows``."""
        if self.is_main:
            write_jsonl(self.path / "samples.jsonl", rows)

    def append_samples(self, rows: list[dict]) -> None:
        """Add ``rows`` to ``samples.jsonl``, replacing earlier rows of the same ``step`` (a resumed run
        that samples a step again does not duplicate it)."""
        if self.is_main:
            p = self.path / "samples.jsonl"
            steps = {r.get("step") for r in rows}
            old = [r for r in read_jsonl(p) if r.get("step") not in steps] if p.is_file() else []
            write_jsonl(p, old + list(rows))

    def truncate_after(self, step: int) -> None:
        """Drop metrics and step-tagged samples beyond ``step`` (on resume). A line cut short by a kill
        mid-write is dropped too."""
        if not self.is_main:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            p = self.path / name
            if p.is_file():
                write_jsonl(p, [r for r in _read_jsonl_lenient(p) if r.get("step", 0) <= step])

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, stage={self.stage!r})"


def _read_jsonl_lenient(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _stage_of(cfg_file: Path) -> str | None:
    with open(cfg_file, encoding="utf-8") as f:
        first = f.readline().strip()
    if first.startswith("# posttrain "):
        return first[len("# posttrain "):].strip() or None
    return None
