"""Recipes: multi-stage pipelines, each stage reading the previous stage's run directory.

``posttrain recipe instructgpt|tulu3|r1|my_recipe.yaml [output_dir=runs/NAME] [STAGE.key=value ...]``

A recipe (YAML, schema :class:`RecipeConfig`) is an ordered list of stages, each a ``posttrain`` command and
its config; strings may refer to

* ``${STAGE}`` — the run directory of an EARLIER stage (``model: ${sft}`` loads ``RECIPE/sft/model``);
* ``${world}`` — the toy world's folder (built on first use: ``posttrain.world.build.build_world``);
* ``${output_dir}`` — the recipe's folder; ``${NAME}`` — an entry of the recipe's ``vars``.

Every stage writes ``OUTPUT_DIR/STAGE`` (unless its config sets ``output_dir``). Re-running a recipe skips
the stages that finished with the same config (their ``DONE`` marker) and resumes an unfinished one (from
its checkpoints when it has any: ``checkpoint_every``). After the stages the recipe evaluates every policy
(the base model and each policy-producing stage) on the toy world's held-out prompts with
:func:`posttrain.eval.evaluate_policy` — gold reward, win rate vs the ``eval.baseline`` stage, KL to the
``eval.reference`` stage, length, per-family measures — checks the recipe's ``checks``, prints one summary
(stages, time, key metrics; the evaluation table), and writes ``OUTPUT_DIR/recipe.json`` and the HTML report
``OUTPUT_DIR/report.html``.

Overrides: ``output_dir=…``, ``seed=…``, ``world=…``, ``eval.KEY=…``, ``defaults.KEY=…`` (a key set in every
stage whose config has it, e.g. ``defaults.device=cpu``), ``vars.NAME=…``, and ``STAGE.KEY=…`` for one stage.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from posttrain.config import GenerationConfig, build_config, deep_merge, parse_overrides, read_yaml
from posttrain.errors import ConfigError, UserError

__all__ = ["RecipeConfig", "RecipeStage", "EvalSettings", "Check", "STAGE_COMMANDS", "BUILTIN", "load_recipe",
           "resolve_stages", "run_recipe", "main"]

RECIPES_DIR = Path(__file__).resolve().parent
BUILTIN = ("instructgpt", "tulu3", "r1")

# command -> (config class, run function, whether the stage makes a policy at RUN/model: "run" (always),
# "train" (when its config has train=true), None (never))
STAGE_COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "pretrain": ("posttrain.config:PretrainConfig", "posttrain.stages.pretrain:run", "run"),
    "sft": ("posttrain.config:SFTConfig", "posttrain.stages.sft:run", "run"),
    "reward-model": ("posttrain.config:RewardModelConfig", "posttrain.stages.reward_model:run", None),
    "dpo": ("posttrain.config:DPOConfig", "posttrain.stages.dpo:run", "run"),
    "preference-data": ("posttrain.config:PreferenceDataConfig", "posttrain.stages.dpo:preference_data", None),
    "rl": ("posttrain.config:RLConfig", "posttrain.stages.rl:run", "run"),
    "rejection-sampling": ("posttrain.config:RejectionSamplingConfig", "posttrain.stages.rejection_sampling:run",
                           "train"),
    "best-of-n": ("posttrain.config:BestOfNConfig", "posttrain.stages.rejection_sampling:best_of_n", None),
    "select-data": ("posttrain.recipes.steps:SelectDataConfig", "posttrain.recipes.steps:select_data", None),
}

_REF = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, protected_namespaces=())


class RecipeStage(_Block):
    name: str = Field(..., description="stage name: its run directory is OUTPUT_DIR/NAME; ${NAME} refers to it")
    command: str = Field(..., description="a posttrain command: " + ", ".join(STAGE_COMMANDS))
    config: dict[str, Any] = Field(default_factory=dict, description="the command's config (its keys)")
    evaluate: bool | None = Field(None, description="evaluate this stage's policy (null: when the command "
                                                    "produces one)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v) or v in ("world", "output_dir", "base"):
            raise ValueError(f"stage name {v!r} must be an identifier (letters, digits, _) other than world, "
                             f"output_dir, base")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        if v not in STAGE_COMMANDS:
            raise ValueError(f"unknown command {v!r} (expected one of {', '.join(STAGE_COMMANDS)})")
        return v


class EvalSettings(_Block):
    enabled: bool = Field(True, description="evaluate the policies after the stages")
    families: list[str] = Field(default_factory=lambda: ["fact", "emotional", "howto", "arith", "reason"],
                                description="toy-world prompt families (posttrain.world.evaluate.eval_rows)")
    per_family: int | None = Field(32, ge=1, description="eval prompts per family (null: all)")
    prompts: str | None = Field(None, description="a .jsonl of prompt rows to evaluate on instead of the toy "
                                                  "world's (gold only for toy-world prompts)")
    num_samples: int = Field(1, ge=1, description="samples per prompt")
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(max_new_tokens=48),
                                         description="sampling for evaluation (temperature 1: KL is a true KL)")
    batch_size: int = Field(64, ge=1, description="prompts per generation call")
    base: str | None = Field("${base}", description="the base model, evaluated as 'base' (null: skip)")
    baseline: str | None = Field(None, description="stage whose completions the win rate is measured against "
                                                   "(default: the first policy stage)")
    reference: str | None = Field(None, description="stage whose model the KL is measured to (default: the "
                                                    "baseline)")
    device: str = Field("auto", description="device for evaluation")
    seed: int = Field(0, ge=0, description="sampling seed (every model gets the same one)")


class Check(_Block):
    """An acceptance check on the evaluation: ``MODEL.METRIC OP VALUE`` or ``MODEL.METRIC OP THAN.METRIC``."""

    model: str
    metric: str
    op: Literal[">=", ">", "<=", "<"] = ">="
    value: float | None = None
    than: str | None = Field(None, description="compare with this model's value of the same metric")
    note: str = ""

    @model_validator(mode="after")
    def _one_target(self) -> "Check":
        if (self.value is None) == (self.than is None):
            raise ValueError("a check needs exactly one of 'value' and 'than'")
        return self


class RecipeConfig(_Block):
    name: str = Field(..., description="recipe name")
    description: str = Field("", description="one paragraph: what the recipe reproduces")
    output_dir: str | None = Field(None, description="where the stages' run directories go (default runs/NAME)")
    world: str | None = Field("auto", description="toy world folder for ${world} (auto: $POSTTRAIN_WORLD or "
                                                  ".posttrain/world; built when missing)")
    seed: int = Field(0, ge=0, description="seed given to every stage that does not set one")
    vars: dict[str, str] = Field(default_factory=dict, description="names usable as ${NAME} in stage configs")
    defaults: dict[str, Any] = Field(default_factory=dict, description="keys set in every stage whose config "
                                                                       "has them (e.g. device, progress)")
    stages: list[RecipeStage] = Field(..., min_length=1, description="the stages, in order")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="evaluation of the policies")
    checks: list[Check] = Field(default_factory=list, description="acceptance checks on the evaluation")
    report: bool = Field(True, description="write OUTPUT_DIR/report.html at the end")
    rerun_from: str | None = Field(None, description="delete this stage's run directory and every later "
                                                     "stage's before running (to redo them with a new config)")

    @model_validator(mode="after")
    def _unique(self) -> "RecipeConfig":
        names = [s.name for s in self.stages]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"stage name '{dup}' is used twice")
        clash = next((n for n in names if n in self.vars), None)
        if clash:
            raise ValueError(f"'{clash}' is both a stage name and a var")
        if self.rerun_from is not None and self.rerun_from not in names:
            raise ValueError(f"rerun_from: '{self.rerun_from}' is not a stage ({', '.join(names)})")
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


# ------------------------------------------------------------------------------------------- loading
def recipe_path(name: str) -> Path:
    """A built-in recipe's YAML (``instructgpt`` …) or a user's file."""
    if name in BUILTIN:
        return RECIPES_DIR / f"{name}.yaml"
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"{p}: no such recipe file")
        return p
    raise ConfigError(f"unknown recipe '{name}' (built-in: {', '.join(BUILTIN)}; or a path to a .yaml file)")


def _split_overrides(values: dict, stage_names: set[str]) -> tuple[dict, dict[str, dict]]:
    top, per_stage = {}, {}
    for k, v in values.items():
        if k in stage_names:
            if not isinstance(v, dict):
                raise ConfigError(f"override '{k}={v}': '{k}' is a stage; set its keys as {k}.KEY=VALUE")
            per_stage[k] = v
        else:
            top[k] = v
    return top, per_stage


def _check_shape(raw: dict, source: str) -> None:
    """One-line ConfigErrors for a ``stages`` block of the wrong shape (before pydantic, whose messages for
    these would be generic, and before the overrides are merged into it)."""
    if "stages" not in raw or raw["stages"] is None:
        return  # pydantic: key 'stages' is required
    stages = raw["stages"]
    if not isinstance(stages, list):
        raise ConfigError(f"{source}: key 'stages': must be a list of stages")
    if not stages:
        raise ConfigError(f"{source}: key 'stages': the list of stages is empty")
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise ConfigError(f"{source}: key 'stages.{i}': a stage must be a mapping with keys name, command "
                              f"and config (got {type(st).__name__} {st!r})")
        for key in ("name", "command"):
            if key in st and not isinstance(st[key], str):
                raise ConfigError(f"{source}: key 'stages.{i}.{key}': must be text (got {st[key]!r})")
        if st.get("config") is not None and not isinstance(st["config"], dict):
            raise ConfigError(f"{source}: key 'stages.{i}.config': must be a mapping of the command's keys "
                              f"(got {type(st['config']).__name__} {st['config']!r})")


def _check_override_keys(overrides: list[str], stage_names: list[str]) -> None:
    """A ``KEY=VALUE`` override whose first part is neither a stage nor a recipe key is named as such (not
    blamed on the recipe file)."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        top = key.split(".")[0]
        if top and top not in stage_names and top not in RecipeConfig.model_fields:
            raise ConfigError(f"recipe override '{key}': unknown stage or key '{top}' "
                              f"(stages: {', '.join(stage_names)})")


def load_recipe(name: str, overrides: list[str] | None = None) -> RecipeConfig:
    """The validated recipe ``name`` (built-in or a YAML path) with ``key=value`` overrides applied.

    A problem of the file is reported naming the file; one that only the overrides bring in is reported as
    ``recipe override ...``."""
    path = recipe_path(name)
    raw = read_yaml(path)
    _check_shape(raw, str(path))
    overrides = list(overrides or [])
    values = parse_overrides(overrides)
    stage_names = [s["name"] for s in raw.get("stages") or [] if isinstance(s.get("name"), str)]
    _check_override_keys(overrides, stage_names)
    top, per_stage = _split_overrides(values, set(stage_names))
    merged = deep_merge(raw, top)
    if per_stage:
        merged["stages"] = [dict(s, config=deep_merge(s.get("config") or {}, per_stage.get(s.get("name"), {})))
                            for s in raw.get("stages") or []]
    if not top:
        return build_config(RecipeConfig, merged, str(path))
    try:
        return build_config(RecipeConfig, merged, str(path))
    except ConfigError:
        build_config(RecipeConfig, raw, str(path))  # the file's own problem: raised naming the file
        return build_config(RecipeConfig, merged, "recipe override")


def _import(path: str):
    mod, _, attr = path.partition(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and (e.name == mod or mod.startswith(e.name + ".")):
            return None
        raise
    return getattr(module, attr, None)


def world_dir(recipe: RecipeConfig) -> Path:
    from posttrain.world.build import default_world_dir

    return default_world_dir() if recipe.world in (None, "auto") else Path(recipe.world)


def _uses(obj: Any, name: str) -> bool:
    if isinstance(obj, str):
        return any(m.group(1).split(".")[0] == name for m in _REF.finditer(obj))
    if isinstance(obj, dict):
        return any(_uses(v, name) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_uses(v, name) for v in obj)
    if isinstance(obj, BaseModel):
        return _uses(obj.model_dump(), name)
    return False


def _substitute(obj: Any, names: dict[str, str], later: set[str], ctx: str, path: str = "") -> Any:
    """Replace ``${NAME}`` in every string of ``obj``; one-line ConfigError naming ``ctx`` and the key."""
    if isinstance(obj, str):
        def repl(m: re.Match) -> str:
            key = m.group(1)
            if key in names:
                return names[key]
            where = f"{ctx}: key '{path}'" if path else ctx
            if key in later:
                raise ConfigError(f"{where}: ${{{key}}} refers to stage '{key}', which has not run yet "
                                  f"(a stage reads only earlier stages)")
            raise ConfigError(f"{where}: unknown reference ${{{key}}} (known: {', '.join(sorted(names))})")

        return _REF.sub(repl, obj)
    if isinstance(obj, dict):
        return {k: _substitute(v, names, later, ctx, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, names, later, ctx, f"{path}[{i}]") for i, v in enumerate(obj)]
    return obj


def base_names(recipe: RecipeConfig) -> dict[str, str]:
    """``world``, ``output_dir`` and the recipe's ``vars`` (which may refer to the first two and each
    other), resolved."""
    names = {"world": str(world_dir(recipe)), "output_dir": str(recipe.out)}
    pending = dict(recipe.vars)
    for _ in range(len(pending) + 1):
        progress = False
        for k, v in list(pending.items()):
            refs = {m.group(1) for m in _REF.finditer(v)}
            if refs <= set(names):
                names[k] = _substitute(v, names, set(), f"recipe '{recipe.name}'", f"vars.{k}")
                del pending[k]
                progress = True
        if not pending or not progress:
            break
    if pending:
        k = next(iter(pending))
        raise ConfigError(f"recipe '{recipe.name}': vars.{k}: cannot resolve {pending[k]!r}")
    return names


def resolve_stages(recipe: RecipeConfig) -> list[tuple[RecipeStage, BaseModel]]:
    """Every stage's validated, frozen config (references resolved, defaults and output_dir filled in).

    All configs are built before anything runs, so a typo in the last stage fails at once."""
    names = base_names(recipe)
    order = [s.name for s in recipe.stages]
    out = []
    for idx, st in enumerate(recipe.stages):
        later = set(order[idx:])  # itself and the stages after it
        cls = _import(STAGE_COMMANDS[st.command][0])
        where = f"recipe '{recipe.name}', stage '{st.name}'"
        values = _substitute(dict(st.config), names, later, where)
        fields = cls.model_fields
        for k, v in recipe.defaults.items():
            if k in fields and k not in values:
                values[k] = _substitute(v, names, later, f"recipe '{recipe.name}'", f"defaults.{k}")
        if "seed" in fields and "seed" not in values:
            values["seed"] = recipe.seed
        if "output_dir" in fields and not values.get("output_dir"):
            values["output_dir"] = str(recipe.out / st.name)
        cfg = build_config(cls, values, where)
        out.append((st, cfg))
        names[st.name] = str(cfg.output_dir) if getattr(cfg, "output_dir", None) else str(recipe.out / st.name)
    return out


# ------------------------------------------------------------------------------------------- running
def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished_same(cfg: BaseModel) -> bool:
    """The stage's run directory is finished (DONE) with this very config."""
    import yaml

    from posttrain.engine.run import config_difference

    run_dir = Path(cfg.output_dir)
    if not (run_dir / "DONE").is_file() or not (run_dir / "config.yaml").is_file():
        return False
    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return False
    return config_difference(old, cfg.model_dump(mode="json")) is None


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flat(v, key) if isinstance(v, dict) and v else {key: v})
    return out


KEY_METRICS = {
    "sft": ("final_loss", "eval.loss", "eval.ppl"),
    "pretrain": ("final_loss", "eval.loss", "eval.ppl"),
    "reward-model": ("final_loss", "eval.accuracy", "eval.gold_agreement", "eval.length_correlation"),
    "dpo": ("final_loss", "final_accuracy", "final_margin", "eval.accuracy", "eval.margin"),
    "preference-data": ("pairs", "ties_dropped", "gap.mean"),
    "rl": ("final_reward_mean", "final_gold_mean", "final_kl", "final_response_length"),
    "rejection-sampling": ("selected", "scores.mean", "selected_scores.mean", "selected_gold.mean"),
    "best-of-n": (),
    "select-data": ("rows",),
}


def key_metrics(command: str, summary: dict, n: int = 4) -> str:
    """A short ``key value, …`` string of a stage summary's headline numbers."""
    flat = _flat(summary)
    keys = [k for k in KEY_METRICS.get(command, ()) if isinstance(flat.get(k), (int, float))]
    if not keys:  # fall back to a few numbers that look like results
        keys = [k for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and any(w in k for w in ("loss", "accuracy", "reward", "gold", "kl", "rows", "selected"))][:n]
    return ", ".join(f"{k} {_fmt(flat[k])}" for k in keys[:n])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def policy_dir(st: RecipeStage, cfg: BaseModel) -> Path | None:
    """Where the stage's final policy lives (a run directory), or None when it makes none."""
    where = STAGE_COMMANDS[st.command][2]
    if st.evaluate is False or where is None:
        return None
    if where == "train" and not getattr(cfg, "train", True):
        return None
    return Path(cfg.output_dir)


class _Log:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, msg: str = "") -> None:
        if not self.quiet:
            print(msg, flush=True)


def _write_state(path: Path, state: dict) -> None:
    from posttrain.io import atomic_write_json

    atomic_write_json(path / "recipe.json", state)


def run_recipe(recipe: RecipeConfig, *, allow_missing: bool = False, quiet: bool = False) -> dict:
    """Run (or resume) ``recipe``; returns the recipe state (also ``OUTPUT_DIR/recipe.json``).

    ``allow_missing``: a stage whose command is not available in this version stops the recipe there with
    a note (``state["missing"]``) instead of an error — what ``posttrain demo`` does while stages are being
    written.

    Nothing is written (no ``OUTPUT_DIR``, no ``recipe.json``, no toy world) until every stage's config is
    valid and the data files and model paths that do not come from an earlier stage have been read and
    checked (:func:`posttrain.recipes.preflight.preflight`)."""
    log = _Log(quiet)
    t_start = time.time()
    resolved = resolve_stages(recipe)
    out = recipe.out
    names = base_names(recipe)
    prev = {}
    if (out / "recipe.json").is_file():
        try:
            prev = {s["name"]: s for s in json.loads((out / "recipe.json").read_text()).get("stages", [])}
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            prev = {}
    # ---- which commands exist (a missing one is an error before anything runs, unless allow_missing)
    runnable, missing = [], []
    for st, cfg in resolved:
        fn = _import(STAGE_COMMANDS[st.command][1])
        if fn is None or missing:
            missing.append((st, fn is None))
        else:
            runnable.append((st, cfg, fn))
    if missing and not allow_missing:
        st = next(s for s, absent in missing if absent)
        raise UserError(f"recipe '{recipe.name}': stage '{st.name}' needs `posttrain {st.command}`, which is "
                        f"not available in this version yet")
    # ---- data files and model paths that exist already: checked before anything is written or built
    from posttrain.recipes.preflight import preflight

    preflight(recipe, [(st, cfg) for st, cfg, _ in runnable], names["world"])
    out.mkdir(parents=True, exist_ok=True)
    if recipe.rerun_from is not None:
        import shutil

        first = [st.name for st, _ in resolved].index(recipe.rerun_from)
        for st, cfg in resolved[first:]:
            run_dir = Path(cfg.output_dir)
            if run_dir.is_dir() and ((run_dir / "config.yaml").is_file() or not any(run_dir.iterdir())):
                log(f"rerun_from={recipe.rerun_from}: deleting {run_dir}")
                shutil.rmtree(run_dir)
    state: dict[str, Any] = {"name": recipe.name, "description": recipe.description, "output_dir": str(out),
                             "world": names["world"], "stages": [], "missing": [], "evals": {}, "checks": [],
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for st, cfg in resolved:
        state["stages"].append({"name": st.name, "command": st.command, "run_dir": str(cfg.output_dir),
                                "status": "pending", "seconds": prev.get(st.name, {}).get("seconds")})
    for st, absent in missing:
        entry = next(e for e in state["stages"] if e["name"] == st.name)
        entry["status"] = "missing" if absent else "blocked"
        state["missing"].append({"stage": st.name, "command": st.command, "available": not absent})
    _write_state(out, state)

    # ---- the toy world, when referenced
    if any(_uses(st.config, "world") for st in recipe.stages) or _uses(recipe.vars, "world") or (
            recipe.eval.enabled and recipe.eval.prompts is None):
        from posttrain.world.build import build_world

        wd = Path(names["world"])
        if not (wd / "manifest.json").is_file():  # an existing world is used as built (any build options)
            log(f"building the toy world in {wd} (once; a few minutes) ...")
            t0 = time.time()
            build_world(wd, log=None if quiet else (lambda m: log("  " + m)))
            state["world_seconds"] = round(time.time() - t0, 1)

    # ---- stages
    n = len(resolved)
    for i, (st, cfg, fn) in enumerate(runnable):
        entry = state["stages"][i]
        if _finished_same(cfg):
            summary = json.loads((Path(cfg.output_dir) / "summary.json").read_text()) \
                if (Path(cfg.output_dir) / "summary.json").is_file() else {}
            entry.update(status="done (reused)", key_metrics=key_metrics(st.command, summary))
            log(f"[{i + 1}/{n}] {st.name} ({st.command}): finished earlier, reused "
                f"({entry['key_metrics']})")
            _write_state(out, state)
            continue
        log(f"[{i + 1}/{n}] {st.name}: posttrain {st.command} -> {cfg.output_dir}")
        entry["status"] = "running"
        _write_state(out, state)
        t0 = time.time()
        try:
            summary = fn(cfg) or {}
        except BaseException as err:
            entry.update(status="failed", seconds=round(time.time() - t0, 1))
            _write_state(out, state)
            from posttrain.engine.run import RunDirError

            if isinstance(err, RunDirError):
                raise RunDirError(f"recipe '{recipe.name}', stage '{st.name}': {err} (or redo it and the stages "
                                  f"after it: rerun_from={st.name})") from None
            raise
        entry.update(status="done", seconds=round(time.time() - t0, 1),
                     key_metrics=key_metrics(st.command, summary))
        log(f"[{i + 1}/{n}] {st.name}: done in {entry['seconds']:.0f} s ({entry['key_metrics']})")
        _write_state(out, state)
    for st, absent in missing:
        log(f"stage '{st.name}' skipped: `posttrain {st.command}` is "
            + ("not available in this version yet" if absent else "blocked by an earlier missing stage"))

    # ---- evaluation, checks, summary, report
    finished = [(st, cfg) for st, cfg, _ in runnable]
    if recipe.eval.enabled:
        from posttrain.recipes.evaluate import evaluate_recipe

        state.update(evaluate_recipe(recipe, finished, names, log=log))
        state["checks"] = run_checks(recipe.checks, state["evals"])
    state["seconds"] = round(sum(float(s.get("seconds") or 0.0) for s in state["stages"]), 1)
    state["wall_seconds_this_run"] = round(time.time() - t_start, 1)
    state["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_state(out, state)
    if recipe.report:
        from posttrain.eval.report import write_report

        state["report"] = str(write_report(out))
        _write_state(out, state)
    log(format_summary(state))
    return state


def run_checks(checks: list[Check], evals: dict[str, dict]) -> list[dict]:
    ops = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
    out = []
    for c in checks:
        got = evals.get(c.model, {}).get(c.metric)
        target = c.value if c.than is None else evals.get(c.than, {}).get(c.metric)
        ok = None if got is None or target is None else bool(ops[c.op](got, target))
        label = f"{c.model}.{c.metric} {c.op} " + (f"{c.value:g}" if c.than is None else f"{c.than}.{c.metric}")
        out.append({"check": label, "value": got, "target": target, "passed": ok, "note": c.note})
    return out


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


EVAL_COLUMNS = ("gold", "win_rate", "kl", "length", "fact/helpful", "emotional/warmth", "howto/structured",
                "arith/exact_match", "reason/format")


def format_summary(state: dict) -> str:
    """The end-of-recipe summary: stages table, evaluation table, checks."""
    lines = ["", f"recipe {state['name']}: {state.get('output_dir')}"]
    rows = [["stage", "command", "status", "seconds", "key metrics"]]
    for s in state["stages"]:
        sec = s.get("seconds")
        rows.append([s["name"], s["command"], s["status"], f"{sec:.0f}" if isinstance(sec, (int, float)) else "",
                     s.get("key_metrics", "")])
    lines.append(_table(rows))
    if state.get("world_seconds"):
        lines.append(f"toy world: {state['world_seconds']:.0f} s")
    evals = state.get("evals") or {}
    if evals:
        cols = [c for c in EVAL_COLUMNS if any(c in m for m in evals.values())]
        cols += sorted({k for m in evals.values() for k in m if k.startswith("reward/")})
        rows = [["model", *cols]]
        order = [n for n in state.get("eval_models") or [] if n in evals] + \
            [n for n in evals if n not in (state.get("eval_models") or [])]
        for name in order:
            m = evals[name]
            rows.append([name, *[_fmt(round(m[c], 3)) if isinstance(m.get(c), (int, float)) else "" for c in cols]])
        lines += ["", f"evaluation ({state.get('eval_note', '')})", _table(rows)]
    for c in state.get("checks") or []:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c["passed"]]
        val = _fmt(round(c["value"], 4)) if isinstance(c["value"], (int, float)) else "missing"
        lines.append(f"check {verdict}: {c['check']} (got {val})" + (f"  — {c['note']}" if c.get("note") else ""))
    if state.get("missing"):
        lines.append("not run (missing in this version): " + ", ".join(
            f"{m['stage']} (posttrain {m['command']})" for m in state["missing"]))
    if state.get("report"):
        lines.append(f"report: {state['report']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: posttrain recipe instructgpt|tulu3|r1|FILE.yaml [output_dir=DIR] [seed=N] "
              "[eval.KEY=VALUE] [defaults.KEY=VALUE] [STAGE.KEY=VALUE ...]\n\n"
              "Runs the stages in order (each reads the previous stage's run directory), skips finished ones, "
              "evaluates the policies on the toy world and writes OUTPUT_DIR/recipe.json and report.html.\n"
              "Built-in recipes: " + ", ".join(BUILTIN) + f" (YAML in {RECIPES_DIR}).\n"
              "  --show   print the resolved stage configs and exit")
        return 0
    show = "--show" in argv
    argv = [a for a in argv if a != "--show"]
    recipe = load_recipe(argv[0], argv[1:])
    if show:
        from posttrain.config import dump_config

        for st, cfg in resolve_stages(recipe):
            print(f"# stage {st.name}: posttrain {st.command}\n{dump_config(cfg)}")
        return 0
    run_recipe(recipe)  # checks are measurements: reported in the summary, they do not fail the run
    return 0
