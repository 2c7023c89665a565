"""Small data steps recipes need between training stages (a recipe command like the others).

``select-data``: pick and mix rows of earlier outputs or world files into ``RUN/data.jsonl`` — e.g. DeepSeek
R1's cold-start set (only the reasoning-format rows of the instruction data), the mix of reasoning and general
prompts for rejection sampling, or the rejection-sampled reasoning rows plus general instruction rows for the
second SFT. Each input is filtered by toy-world prompt family (``families``) and capped (``max_rows``);
``world_answers`` adds the checkable ``answer`` of toy-world arith/reason prompts (so verifiers can score those
rows of a mixed prompt set; other rows get none). The output is shuffled with ``seed``. Like every stage it
writes ``config.yaml``, ``summary.json`` and ``DONE`` (a finished run with the same config is reused).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from posttrain.errors import DataError

__all__ = ["SelectInput", "SelectDataConfig", "select_data"]


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, protected_namespaces=())


class SelectInput(_Block):
    path: str = Field(..., description="a .jsonl/.json/.parquet/.csv file or dataset folder")
    families: list[str] | None = Field(None, description="keep rows whose prompt is of these toy-world families "
                                                         "(fact, emotional, howto, arith, reason, unknown)")
    exclude_families: list[str] = Field(default_factory=list, description="drop rows of these families")
    max_rows: int | None = Field(None, ge=1, description="keep at most N rows of this input (after filtering)")
    columns: list[str] | None = Field(None, description="keep only these columns (null: all)")


class SelectDataConfig(_Block):
    inputs: list[SelectInput] = Field(..., min_length=1, description="inputs, concatenated in order")
    world_answers: bool = Field(False, description="add the toy world's 'answer' to arith/reason prompts")
    shuffle: bool = Field(True, description="shuffle the selection (seeded)")
    output_dir: str = Field("runs/select_data", description="run directory (writes data.jsonl)")
    seed: int = Field(0, ge=0, description="shuffle seed")
    resume: bool = Field(True, description="reuse a finished run with the same config")
    progress: bool = Field(True, description="print a one-line summary")


def _prompt_of(row: dict):
    if "prompt" in row:
        return row["prompt"]
    msgs = row.get("messages") or []
    users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
    return users[:1]


def select_data(cfg: SelectDataConfig) -> dict:
    """Write ``RUN/data.jsonl`` (see the module docstring); returns the summary."""
    from posttrain.data.load import load_rows
    from posttrain.engine import Run
    from posttrain.io import write_jsonl
    from posttrain.world.tasks import family_of, parse_prompt, prompt_text

    selected: list[dict] = []
    per_input = []
    for k, inp in enumerate(cfg.inputs):
        rows = load_rows(inp.path).rows
        kept = []
        for r in rows:
            fam = family_of(_prompt_of(r))
            if inp.families is not None and fam not in inp.families:
                continue
            if fam in inp.exclude_families:
                continue
            r = dict(r) if inp.columns is None else {c: r[c] for c in inp.columns if c in r}
            if cfg.world_answers and "answer" not in r and fam in ("arith", "reason"):
                task = parse_prompt(prompt_text(_prompt_of(r)))
                r["answer"] = task.answer
            kept.append(r)
            if inp.max_rows is not None and len(kept) >= inp.max_rows:
                break
        per_input.append({"path": inp.path, "rows": len(rows), "kept": len(kept)})
        selected += kept
    if not selected:
        raise DataError("select-data: the inputs keep no row (check families / exclude_families)",
                        file=cfg.inputs[0].path)
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(selected)
    run = Run.open(cfg, "select-data")
    if run.is_done():
        return run.read_summary()
    families: dict[str, int] = {}
    for r in selected:
        f = family_of(_prompt_of(r))
        families[f] = families.get(f, 0) + 1
    out = Path(run.path) / "data.jsonl"
    write_jsonl(out, selected)
    summary = {"stage": "select-data", "rows": len(selected), "inputs": per_input, "families": families,
               "data": str(out), "with_answer": sum(1 for r in selected if "answer" in r),
               "empty_inputs": [i["path"] for i in per_input if i["kept"] == 0]}
    run.write_summary(summary)
    run.mark_done()
    if cfg.progress:
        for p in summary["empty_inputs"]:
            print(f"select-data: warning: no row of {p} was kept")
        print(f"select-data: {len(selected)} rows ({', '.join(f'{k} {v}' for k, v in sorted(families.items()))}) "
              f"-> {out}")
    return summary
