"""Checks a recipe runs before anything is written: every stage's data files and model paths.

:func:`preflight` is what :func:`posttrain.recipes.run_recipe` calls after the stage configs are built and
before it creates ``OUTPUT_DIR``, writes ``recipe.json`` or builds the toy world. For each stage it reads and
validates the data files it names (the loader ``posttrain check-data`` uses, :func:`posttrain.data.load.load_rows`,
restricted to the dataset kinds the stage's command accepts) and resolves its model, reference, value,
tokenizer and ``rm:`` reward-model paths (:func:`posttrain.models.load.resolve_model_path`: the folder exists
and holds a model; no weights are loaded). A bad one fails at once, naming the stage:
``recipe 'instructgpt', stage 'reward_model': data/empty.jsonl: file is empty`` — not after the earlier
stages have trained.

Skipped: values inside an earlier (or any) stage's run directory (they do not exist yet), files of a toy world
that is not built yet, hub ids (checked by the stage itself, which downloads them anyway), ``preset:`` models,
and stages of commands this module does not know (a recipe test's fake command).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from posttrain.errors import UserError

__all__ = ["preflight", "data_kinds"]

MODEL_KEYS = ("model", "ref_model", "value_model")


def data_kinds(command: str, cfg) -> dict[str, tuple[str, ...] | None]:
    """``{config key: accepted kinds}`` of the data files ``command`` reads with ``cfg`` (None: any kind);
    the kinds are the stage modules' own constants."""
    if command == "pretrain":
        return {"data.train": ("text",), "data.eval": ("text",)}
    if command == "sft":
        from posttrain.stages.sft import KINDS

        return {"data.train": KINDS, "data.eval": KINDS}
    if command == "reward-model":
        from posttrain.stages.reward_model import KINDS

        return {"data.train": KINDS, "data.eval": KINDS}
    if command == "dpo":
        kinds = ("preference", "ranking", "unpaired")  # which of them depends on the loss: the stage checks
        return {"data.train": kinds, "data.eval": kinds}
    if command == "preference-data":
        from posttrain.stages.dpo import PROMPT_KINDS

        return {"data.train": PROMPT_KINDS}
    if command == "rl":
        from posttrain.stages.rl import PROMPT_KINDS

        return {"data.train": PROMPT_KINDS}
    if command == "rejection-sampling":
        from posttrain.stages.rejection_sampling import PROMPT_KINDS
        from posttrain.stages.sft import KINDS

        return {"data.train": PROMPT_KINDS, **({"data.eval": KINDS} if getattr(cfg, "train", True) else {})}
    if command == "best-of-n":
        from posttrain.stages.rejection_sampling import PROMPT_KINDS

        return {"data.eval": PROMPT_KINDS} if cfg.data.eval else {"data.train": PROMPT_KINDS}
    if command == "select-data":
        return {f"inputs.{i}.path": None for i in range(len(cfg.inputs))}
    return {}


def _get(cfg, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _rm_paths(reward: Any) -> Iterator[str]:
    """The ``PATH`` of every ``rm:PATH`` term of a reward spec string (weights stripped)."""
    if not isinstance(reward, str):
        return
    for term in reward.split("+"):
        for part in term.split("*"):
            part = part.strip()
            if part.startswith("rm:") and part[3:].strip():
                yield part[3:].strip()


class _Scope:
    """Which paths can be checked now."""

    def __init__(self, run_dirs: Sequence[Path], world: Path):
        self.run_dirs = [Path(os.path.abspath(p)) for p in run_dirs]
        self.world = Path(os.path.abspath(world))
        self.world_built = (self.world / "manifest.json").is_file()

    def checkable(self, spec: str) -> bool:
        p = Path(os.path.abspath(os.path.expanduser(spec)))
        if any(p == d or d in p.parents for d in self.run_dirs):
            return False  # an earlier stage's output: does not exist yet
        if not self.world_built and (p == self.world or self.world in p.parents):
            return False  # built by the recipe before the stages run
        return True


def _is_local(spec: str) -> bool:
    """A spec the data loader reads from disk (else a hub id, left to the stage)."""
    from posttrain.data.load import EXTENSIONS

    return (Path(spec).expanduser().exists() or Path(spec).suffix.lower() in EXTENSIONS
            or spec.startswith((".", "/", "~")) or spec.endswith("/"))


def _stage_error(err: UserError, where: str) -> UserError:
    msg = f"{where}: {err}"
    try:
        new = type(err)(msg)
    except TypeError:  # a subclass with other required arguments
        new = UserError(msg)
    new.exit_code = err.exit_code
    return new


def preflight(recipe, resolved: Sequence[tuple[Any, Any]], world: str | os.PathLike) -> None:
    """Validate every stage's data files and model paths that exist before the recipe runs (see the module
    docstring); one-line UserError naming the recipe and stage."""
    from posttrain.data.load import load_rows
    from posttrain.models.load import resolve_model_path, resolve_tokenizer_path

    from . import STAGE_COMMANDS

    scope = _Scope([Path(cfg.output_dir) for _, cfg in resolved if getattr(cfg, "output_dir", None)], Path(world))
    for st, cfg in resolved:
        if not STAGE_COMMANDS[st.command][0].startswith("posttrain."):
            continue  # a command from outside posttrain: its config's meaning is unknown here
        where = f"recipe '{recipe.name}', stage '{st.name}'"
        try:
            for key, kinds in data_kinds(st.command, cfg).items():
                spec = _get(cfg, key)
                if isinstance(spec, str) and spec and _is_local(spec) and scope.checkable(spec):
                    load_rows(spec, kinds=list(kinds) if kinds is not None else None)
            models = [getattr(cfg, k, None) for k in MODEL_KEYS] + list(_rm_paths(getattr(cfg, "reward", None)))
            for spec in models:
                if isinstance(spec, str) and spec and not spec.startswith("preset:") and scope.checkable(spec):
                    resolve_model_path(spec)
            tok = getattr(cfg, "tokenizer", None)
            if isinstance(tok, str) and tok and scope.checkable(tok):
                resolve_tokenizer_path(tok)
        except UserError as err:
            raise _stage_error(err, where) from None
    if recipe.eval.enabled and recipe.eval.prompts and scope.checkable(recipe.eval.prompts):
        from .evaluate import eval_rows_for

        eval_rows_for(recipe.eval, world)
