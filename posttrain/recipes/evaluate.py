"""Evaluation of a recipe's policies: the base model and every policy-producing stage, on the same prompts.

Each model is sampled once per evaluation setting with :func:`posttrain.eval.evaluate_policy` (same seed for
every model), scored with the toy world's gold reward, compared with the baseline stage's completions (gold
win rate, ties ½) and measured for KL to the reference stage's model (Monte-Carlo sequence KL on its own
samples). Results are cached in ``OUTPUT_DIR/eval/NAME.json``, keyed by the model's files and the settings, so
re-running a finished recipe re-evaluates nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from posttrain.errors import ConfigError
from posttrain.io import atomic_write_json, read_jsonl

__all__ = ["evaluate_recipe", "eval_rows_for", "model_fingerprint", "COMPARISON_FAMILIES"]

COMPARISON_FAMILIES = ("fact", "emotional", "howto")


def model_fingerprint(path: Path) -> str:
    """Changes whenever the model at ``path`` (a run dir or a model folder) is rewritten."""
    from posttrain.models.load import resolve_model_path

    where = Path(resolve_model_path(str(path)))
    h = hashlib.sha256(str(where.resolve()).encode())
    for f in sorted(where.glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def eval_rows_for(settings, world: str | os.PathLike) -> list[dict]:
    """The evaluation prompts: ``settings.prompts`` (a .jsonl with a ``prompt`` column) or the toy world's
    held-out prompts of ``settings.families`` (``settings.per_family`` each)."""
    from posttrain.eval.policy import world_eval_rows

    if settings.prompts:
        p = Path(settings.prompts)
        if not p.is_file():
            raise ConfigError(f"eval.prompts: no such file '{p}'")
        try:
            rows = read_jsonl(p)
        except (ValueError, UnicodeDecodeError) as e:  # a line that is not JSON (JSONDecodeError), not UTF-8
            raise ConfigError(f"eval.prompts: '{p}' is not valid JSON lines ({str(e).splitlines()[0]})") from None
        if not isinstance(rows, list) or any(not isinstance(r, dict) for r in rows):
            raise ConfigError(f"eval.prompts: '{p}' needs one JSON object per line")
        if not rows or any("prompt" not in r for r in rows):
            raise ConfigError(f"eval.prompts: '{p}' needs a 'prompt' column in every row")
        return rows
    return world_eval_rows(world, settings.families, per_family=settings.per_family)


def _load(path: str, device: str):
    from posttrain.models.load import load_causal_lm

    return load_causal_lm(path, device=device, dtype="fp32")


def evaluate_recipe(recipe, finished: list, names: dict[str, str], *, log: Callable[[str], None] = print) -> dict:
    """``{"evals": {model: metrics}, "comparison": [...], "eval_note": str, "eval_reference": name}``.

    ``finished``: ``[(RecipeStage, config)]`` of the stages that ran (or were reused)."""
    from posttrain.eval.policy import EvalResult, evaluate_policy
    from posttrain.recipes import _substitute, policy_dir

    s = recipe.eval
    models: list[tuple[str, str]] = []
    if s.base and not (s.base == "${base}" and "base" not in names):
        base = _substitute(s.base, names, set(), f"recipe '{recipe.name}'", "eval.base")
        models.append(("base", base))
    for st, cfg in finished:
        p = policy_dir(st, cfg)
        if p is not None and (st.evaluate is not False):
            models.append((st.name, str(p)))
    if not models:
        return {"evals": {}, "comparison": [], "eval_note": "no policy to evaluate"}
    stage_models = [m for m in models if m[0] != "base"]
    baseline = s.baseline or (stage_models[0][0] if stage_models else None)
    reference = s.reference or baseline
    known = dict(models)
    for key, val in (("eval.baseline", baseline), ("eval.reference", reference)):
        if val is not None and val not in known:
            raise ConfigError(f"recipe '{recipe.name}': {key}: '{val}' is not an evaluated model "
                              f"({', '.join(known)})")
    rows = eval_rows_for(s, names["world"])
    settings = s.model_dump(mode="json")
    out_dir = Path(names["output_dir"]) / "eval"
    order = sorted(models, key=lambda m: (m[0] != baseline, m[0] != reference))  # baseline first
    results: dict[str, dict] = {}
    completions: dict[str, list[str]] = {}
    ref_model = None
    ref_fp = model_fingerprint(Path(known[reference])) if reference else None
    base_fp = None
    t0 = time.time()
    for name, path in order:
        fp = model_fingerprint(Path(path))
        key = json.dumps({"model": fp, "settings": settings, "rows": len(rows), "baseline": base_fp,
                          "reference": ref_fp, "is_baseline": name == baseline}, sort_keys=True)
        cache = out_dir / f"{name}.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else None
        if cached and cached.get("key") == key:
            results[name] = cached["metrics"]
            completions[name] = cached["completions"]
        else:
            t1 = time.time()
            model, tok = _load(path, s.device)
            if name == reference:
                ref_model = model
            elif reference is not None and ref_model is None:
                ref_model, _ = _load(known[reference], s.device)
            base_res = None
            if baseline is not None and name != baseline:
                base_res = EvalResult(prompts=[], completions=completions[baseline], lengths=[], finished=[],
                                      families=[])
            res = evaluate_policy(model, tok, rows, reference=ref_model if name != reference else None,
                                  baseline=base_res, generation=s.generation, batch_size=s.batch_size,
                                  seed=s.seed, num_samples=s.num_samples)
            metrics = dict(res.metrics)
            if name == baseline:
                metrics["win_rate"] = 0.5  # against itself: every prompt ties (same samples)
            if name == reference:
                metrics["kl"] = 0.0
                metrics["kl_k3"] = 0.0
            results[name] = metrics
            completions[name] = res.completions
            atomic_write_json(cache, {"key": key, "model": path, "metrics": metrics,
                                      "completions": res.completions, "samples": res.rows()})
            log(f"  evaluated {name} in {time.time() - t1:.0f} s: gold {metrics.get('gold', float('nan')):.3f}, "
                f"win rate vs {baseline} {metrics.get('win_rate', float('nan')):.3f}, "
                f"KL to {reference} {metrics.get('kl', float('nan')):.3f}, length {metrics['length']:.1f}")
            if model is not ref_model:
                del model
        if name == baseline:
            base_fp = model_fingerprint(Path(path))
    evals = {name: results[name] for name, _ in models}  # recipe order
    G = s.num_samples
    comparison = []
    for fam in COMPARISON_FAMILIES:
        idx = next((i for i, r in enumerate(rows) if r.get("family") == fam), None)
        if idx is not None:
            comparison.append({"family": fam, "prompt": rows[idx]["prompt"],
                               "completions": {n: completions[n][idx * G] for n, _ in models}})
    note = (f"{len(rows)} held-out prompts × {G} sample(s), temperature {s.generation.temperature:g}, "
            f"{s.generation.max_new_tokens} new tokens; win rate (gold, ties ½) vs {baseline}; "
            f"KL(π ‖ {reference}) per sequence")
    return {"evals": evals, "eval_models": [n for n, _ in models], "comparison": comparison, "eval_note": note, "eval_reference": reference,
            "eval_baseline": baseline, "eval_seconds": round(time.time() - t0, 1)}
