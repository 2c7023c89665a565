"""``posttrain demo``: the toy-world RLHF pipeline end to end, in minutes on a laptop CPU.

Builds the toy world when needed (``posttrain.world.build.build_world``), runs the InstructGPT recipe
(SFT → K-wise reward model → PPO with the KL penalty in the reward), then prints

* the same prompts — a factual question, an emotional request, a how-to request — answered by the base
  model, the SFT model and the RLHF (PPO) model, side by side;
* a table of gold reward, win rate vs SFT, KL to SFT and mean length for each model;

and writes the HTML report (``OUTPUT_DIR/report.html``). While some stages are not available in this version
it runs the ones that are and says which are missing. A second ``posttrain demo`` reuses everything.

``posttrain demo [output_dir=runs/demo] [world=DIR] [STAGE.KEY=VALUE ...]`` (stage overrides as in
``posttrain recipe instructgpt``).
"""

from __future__ import annotations

import sys
import textwrap
import time

from pydantic import BaseModel, ConfigDict, Field

from posttrain.config import build_config, parse_overrides

__all__ = ["DemoConfig", "main", "run_demo", "format_comparison"]

DEMO_KEYS = ("output_dir", "world", "width", "quiet")
LABELS = {"base": "base model", "sft": "SFT", "ppo": "RLHF (PPO)"}


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    output_dir: str = Field("runs/demo", description="where the recipe's stages and the report go")
    world: str = Field("auto", description="toy world folder (auto: $POSTTRAIN_WORLD or .posttrain/world)")
    width: int = Field(100, ge=40, le=400, description="width of the printed side-by-side table")
    quiet: bool = Field(False, description="print only the final tables")


def _prompt_text(prompt) -> str:
    from posttrain.eval.report import prompt_display

    return prompt_display(prompt)


def format_comparison(state: dict, width: int = 100) -> str:
    """The side-by-side answers and the metrics table of a finished recipe state."""
    lines: list[str] = []
    evals = state.get("evals") or {}
    models = [m for m in state.get("eval_models") or [] if m in evals] + \
        [m for m in evals if m not in (state.get("eval_models") or [])]
    comparison = state.get("comparison") or []
    if comparison:
        lines += ["", "=" * width, "The same prompts, answered by each model (one sample, temperature 1)", "=" * width]
        label_w = max(len(LABELS.get(m, m)) for m in models) + 2
        for row in comparison:
            lines.append(f"\n[{row.get('family', '')}] {_prompt_text(row['prompt'])}")
            for m in models:
                text = " ".join(str(row["completions"].get(m, "")).split()) or "(empty)"
                wrapped = textwrap.wrap(text, width=max(20, width - label_w - 2)) or [""]
                lines.append(f"  {LABELS.get(m, m):<{label_w}}{wrapped[0]}")
                lines += [f"  {'':<{label_w}}{w}" for w in wrapped[1:]]
    if evals:
        base = state.get("eval_baseline", "sft")
        ref = state.get("eval_reference", "sft")
        cols = [("gold", "gold reward"), ("win_rate", f"win rate vs {base}"), ("kl", f"KL to {ref}"),
                ("length", "mean length (tokens)")]
        header = ["model"] + [c[1] for c in cols]
        rows = [header] + [[LABELS.get(m, m)] + [f"{evals[m][k]:.3f}" if isinstance(evals[m].get(k), (int, float))
                                                 else "-" for k, _ in cols] for m in models]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines += ["", "=" * width, f"Evaluation on held-out prompts ({state.get('eval_note', '')})", "=" * width]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(cfg: DemoConfig, stage_overrides: list[str] | None = None) -> dict:
    from posttrain.recipes import load_recipe, run_recipe

    t0 = time.time()
    overrides = [f"output_dir={cfg.output_dir}", f"world={cfg.world}", *(stage_overrides or [])]
    recipe = load_recipe("instructgpt", overrides)
    state = run_recipe(recipe, allow_missing=True, quiet=cfg.quiet)
    state["demo_seconds"] = round(time.time() - t0, 1)
    print(format_comparison(state, cfg.width))
    if state.get("missing"):
        print("\nnot available in this version yet: " + ", ".join(
            f"{m['stage']} (`posttrain {m['command']}`)" for m in state["missing"]) +
              " — the demo ran the stages before it.")
    print(f"\ndemo finished in {state['demo_seconds']:.0f} s (toy world {state.get('world_seconds', 0):.0f} s); "
          f"report: {state.get('report', '(none)')}")
    return state


def _check_keys(overrides: list[str]) -> None:
    """An override that is neither a demo key, a recipe key nor a stage of the recipe: one line naming it."""
    import difflib

    from posttrain.config import read_yaml
    from posttrain.errors import ConfigError
    from posttrain.recipes import RecipeConfig, recipe_path

    stages = [s["name"] for s in read_yaml(recipe_path("instructgpt"))["stages"]]
    known = [*DEMO_KEYS, *RecipeConfig.model_fields, *stages]
    for item in overrides:
        top = item.split("=", 1)[0].strip().split(".")[0]
        if top not in known:
            hint = difflib.get_close_matches(top, known, n=1)
            raise ConfigError(f"demo: unknown key '{top}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                              + f"; demo keys: {', '.join(DEMO_KEYS)}; stage keys: STAGE.KEY=VALUE for "
                              f"{', '.join(stages)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    values = parse_overrides(argv)
    demo_values = {k: values.pop(k) for k in list(values) if k in DEMO_KEYS}
    cfg = build_config(DemoConfig, demo_values, "demo")
    rest = [a for a in argv if a.split("=", 1)[0].split(".")[0] not in DEMO_KEYS]
    _check_keys(rest)
    run_demo(cfg, rest)
    return 0
