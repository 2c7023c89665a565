"""``posttrain report RUN_DIR [--out FILE]``: one self-contained HTML page for a run or a recipe.

The page needs nothing but a browser: plotly.js is inlined (from the installed ``plotly`` package), the data
is embedded as JSON. For each stage's run directory it shows

* curves against the step (``rl_step`` for RL runs): reward / proxy / gold, KL to the reference, response
  length, losses, and accuracy / margin (reward models, DPO) — whichever of these the run logged;
* gold reward against √KL (the over-optimisation picture of Gao et al. 2023), when the run logged both;
* the summary (``summary.json``) as a table, and sample completions (``samples.jsonl``, latest step first).

For a recipe directory (``recipe.json`` written by :mod:`posttrain.recipes`, or any folder whose children are
run directories) it starts with the table of stages (time, status, key metrics), the recipe's evaluation of
each model (gold, win rate, KL, length, per-family measures), gold vs √KL across the models, and the same
prompts answered by every model side by side; then one section per stage.

Which metric goes in which chart is decided by its name (see :func:`classify_metric`).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from posttrain.errors import UserError
from posttrain.io import atomic_write_text, read_jsonl

__all__ = ["write_report", "render_report", "classify_metric", "find_runs", "load_run", "main"]

RECIPE_FILE = "recipe.json"
MAX_SAMPLES = 12
PANELS = ("reward", "kl", "length", "loss", "accuracy")
PANEL_TITLES = {"reward": "Reward (proxy, gold, verifiers)", "kl": "KL to the reference",
                "length": "Response length", "loss": "Losses", "accuracy": "Accuracy / margin"}

_SKIP = re.compile(r"(^|/|_)(std|max|min|time|seconds|lr|beta|steps?_per_s|tokens_per_s|examples_per_s|mfu|"
                   r"grad_norm|epoch|n|num_.*|generated_tokens)$")


# ------------------------------------------------------------------------------------------- metrics
def classify_metric(key: str) -> str | None:
    """The chart a metric belongs to (one of :data:`PANELS`), or None.

    ``reward``: reward_mean, reward/*, score, proxy, gold, gold_mean, …; ``kl``: kl, kl_k3, kl_ref, ref_kl,
    eval/kl, … (not approx_kl, which is KL to the previous policy); ``length``: response_length, length,
    *_length, words; ``loss``: loss and *_loss; ``accuracy``: *accuracy*, margin, win_rate. Standard
    deviations, maxima, times, learning rate and throughput are left out."""
    k = key.lower()
    last = k.rsplit("/", 1)[-1]
    if _SKIP.search(k) or "time" in k:
        return None
    if last in ("approx_kl", "policy_kl") or "clip" in last or "ratio" in last:
        return None
    if last in ("kl", "kl_k1", "kl_k3", "kl_ref", "ref_kl", "kl_to_ref", "kl_seq") or k.startswith("kl/"):
        return "kl"
    if "length" in last or last in ("words", "len"):
        return "length"
    if last.endswith("loss"):
        return "loss"
    if "accuracy" in last or "margin" in last or last.startswith("win_rate") or last == "acc":
        return "accuracy"
    if (k.startswith("reward") or "gold" in k or last in ("score", "proxy", "rewards", "reward")
            or k.startswith("verifier") or "/reward" in k):
        return "reward"
    return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _x_of(rec: dict) -> float | None:
    x = rec.get("rl_step", rec.get("step"))
    return float(x) if _finite(x) else None


def metric_series(records: Iterable[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """``{key: (xs, ys)}`` of every numeric metric (x = ``rl_step`` when logged, else ``step``)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        x = _x_of(rec)
        if x is None:
            continue
        for k, v in rec.items():
            if k in ("step", "rl_step") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue  # NaN / inf are kept (drawn as gaps)
            xs, ys = out.setdefault(k, ([], []))
            xs.append(x)
            ys.append(float(v))
    return out


def _gold_key(keys: Iterable[str]) -> str | None:
    keys = list(keys)
    for cand in ("gold_mean", "gold", "reward/gold", "eval/gold", "gold/mean"):
        if cand in keys:
            return cand
    return next((k for k in keys if "gold" in k and classify_metric(k) == "reward"), None)


def _kl_key(keys: Iterable[str]) -> str | None:
    keys = list(keys)
    for cand in ("kl", "kl_ref", "ref_kl", "eval/kl"):
        if cand in keys:
            return cand
    return next((k for k in keys if classify_metric(k) == "kl"), None)


# ---------------------------------------------------------------------------------------------- runs
def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "metrics.jsonl").is_file()


def find_runs(root: Path) -> list[tuple[str, Path]]:
    """``[(name, run_dir)]``: ``root`` itself when it is a run directory (plus nested runs, e.g. the SFT run
    of rejection sampling), else its child run directories in recipe order (``recipe.json``) or by name."""
    root = Path(root)
    runs: list[tuple[str, Path]] = []
    if _is_run(root):
        runs.append((root.name, root))
        runs += [(f"{root.name}/{c.name}", c) for c in sorted(root.iterdir()) if c.is_dir() and _is_run(c)]
        return runs
    order: list[str] = []
    recipe = _read_json(root / RECIPE_FILE)
    for st in recipe.get("stages", []):
        rd = st.get("run_dir")
        if rd:
            order.append(Path(rd).name)
    children = [c for c in sorted(root.iterdir()) if c.is_dir() and _is_run(c)] if root.is_dir() else []
    children.sort(key=lambda c: (order.index(c.name) if c.name in order else len(order), c.name))
    for c in children:
        runs.append((c.name, c))
        runs += [(f"{c.name}/{g.name}", g) for g in sorted(c.iterdir()) if g.is_dir() and _is_run(g)]
    return runs


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return read_jsonl(path)
    except (OSError, json.JSONDecodeError):  # a run being written: keep the complete lines
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


def load_run(path: Path) -> dict:
    """``{stage, config, metrics, summary, samples, done}`` of one run directory (missing parts empty)."""
    path = Path(path)
    cfg_text = (path / "config.yaml").read_text(encoding="utf-8") if (path / "config.yaml").is_file() else ""
    first = cfg_text.splitlines()[0] if cfg_text else ""
    stage = first[len("# posttrain "):].strip() if first.startswith("# posttrain ") else path.name
    return {"stage": stage, "config": cfg_text, "metrics": _read_jsonl(path / "metrics.jsonl"),
            "summary": _read_json(path / "summary.json"), "samples": _read_jsonl(path / "samples.jsonl"),
            "done": (path / "DONE").is_file()}


# ------------------------------------------------------------------------------------------- figures
def _js_num(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _line_figure(title: str, series: dict[str, tuple[list[float], list[float]]], x_title: str) -> dict:
    traces = [{"type": "scatter", "mode": "lines+markers" if len(xs) < 40 else "lines", "name": k,
               "x": xs, "y": [_js_num(y) for y in ys]} for k, (xs, ys) in sorted(series.items())]
    return {"data": traces, "layout": {"title": {"text": title, "x": 0.01, "xanchor": "left"}, "xaxis": {"title": {"text": x_title}},
                                       "margin": {"t": 40, "r": 10, "b": 40, "l": 50}, "height": 320,
                                       "legend": {"orientation": "h", "y": -0.25}}}


def _scatter_figure(title: str, points: list[tuple[float, float, str]], x_title: str, y_title: str,
                    *, lines: bool = True) -> dict:
    trace = {"type": "scatter", "mode": "lines+markers+text" if lines else "markers+text",
             "x": [p[0] for p in points], "y": [p[1] for p in points], "text": [p[2] for p in points],
             "textposition": "top center", "name": y_title}
    return {"data": [trace], "layout": {"title": {"text": title, "x": 0.01, "xanchor": "left"}, "xaxis": {"title": {"text": x_title}},
                                        "yaxis": {"title": {"text": y_title}}, "height": 320,
                                        "margin": {"t": 40, "r": 10, "b": 40, "l": 50}, "showlegend": False}}


def run_figures(run: dict) -> list[dict]:
    """The charts of one run (only those it has data for)."""
    series = metric_series(run["metrics"])
    x_title = "rollout step" if any("rl_step" in r for r in run["metrics"]) else "step"
    figs = []
    for panel in PANELS:
        chosen = {k: v for k, v in series.items() if classify_metric(k) == panel}
        if chosen:
            figs.append(_line_figure(PANEL_TITLES[panel], chosen, x_title))
    gk, kk = _gold_key(series), _kl_key(series)
    if gk and kk:
        gold = dict(zip(*series[gk]))
        pts = [(math.sqrt(max(kl, 0.0)), gold[x], f"{x:g}") for x, kl in zip(*series[kk])
               if x in gold and math.isfinite(kl) and math.isfinite(gold[x])]
        if len(pts) >= 2:
            fig = _scatter_figure(f"{gk} vs √KL", [(a, b, "") for a, b, _ in pts], "√KL", gk)
            fig["data"][0]["marker"] = {"color": [float(p[2]) for p in pts], "colorscale": "Viridis",
                                        "showscale": True, "colorbar": {"title": {"text": x_title}}}
            figs.append(fig)
    return figs


# --------------------------------------------------------------------------------------------- html
def _esc(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


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


def _summary_table(summary: dict) -> str:
    flat = {k: v for k, v in _flatten(summary).items()
            if isinstance(v, (int, float, str, bool)) or v is None}
    if not flat:
        return "<p class='muted'>no summary.json (the run has not finished)</p>"
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in flat.items())
    return f"<table class='kv'>{rows}</table>"


_CHATML_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.DOTALL)


def prompt_display(prompt: Any) -> str:
    """The user's text of a prompt (message list, rendered ChatML string, or plain string)."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else json.dumps(prompt)
    if isinstance(prompt, str):
        found = _CHATML_USER.findall(prompt)
        return found[-1] if found else prompt
    return str(prompt)


def _samples_table(samples: list[dict], limit: int = MAX_SAMPLES) -> str:
    if not samples:
        return "<p class='muted'>no samples.jsonl</p>"
    last_step = max((s.get("step", 0) for s in samples if _finite(s.get("step", 0))), default=0)
    latest = [s for s in samples if s.get("step", 0) == last_step] or samples
    latest = latest[:limit]
    extra = [k for k in latest[0] if k not in ("prompt", "completion", "step", "rl_step")
             and all(isinstance(s.get(k), (int, float, bool)) for s in latest)][:5]
    head = "".join(f"<th>{_esc(k)}</th>" for k in ["prompt", "completion", *extra])
    body = ""
    for s in latest:
        cells = [f"<td class='txt'>{_esc(prompt_display(s.get('prompt', '')))}</td>",
                 f"<td class='txt'>{_esc(s.get('completion', ''))}</td>"]
        cells += [f"<td>{_esc(_fmt(s.get(k)))}</td>" for k in extra]
        body += "<tr>" + "".join(cells) + "</tr>"
    return (f"<p class='muted'>step {_esc(_fmt(last_step))} ({len(latest)} of {len(samples)} samples)</p>"
            f"<table class='grid'><tr>{head}</tr>{body}</table>")


def _figure_divs(figs: list[dict], prefix: str, registry: list[tuple[str, dict]]) -> str:
    out = []
    for i, fig in enumerate(figs):
        div_id = f"{prefix}-{i}"
        registry.append((div_id, fig))
        out.append(f"<div class='fig' id='{div_id}'></div>")
    return "<div class='figs'>" + "".join(out) + "</div>" if out else "<p class='muted'>no metrics logged</p>"


EVAL_COLUMNS = ("gold", "win_rate", "kl", "kl_k3", "length", "finished", "helpful", "correct", "fact/helpful",
                "fact/correct", "emotional/warmth", "howto/structured", "howto/list", "arith/exact_match",
                "reason/exact_match", "reason/format")

STAGE_KEY_METRICS = ("final_loss", "eval.loss", "eval.accuracy", "eval.gold_agreement", "eval.margin",
                     "final_reward_mean", "final_gold_mean", "final_kl", "final_response_length",
                     "selected", "pairs", "accuracy", "gold", "win_rate", "kl")


def _key_metrics(summary: dict, n: int = 5) -> str:
    flat = _flatten(summary)
    picked = [(k, flat[k]) for k in STAGE_KEY_METRICS if _finite(flat.get(k))]
    return ", ".join(f"{k} {_fmt(v)}" for k, v in picked[:n])


def _recipe_section(recipe: dict, registry: list) -> str:
    parts = [f"<section><h2>Recipe: {_esc(recipe.get('name', ''))}</h2>"]
    stages = recipe.get("stages", [])
    if stages:
        rows = ""
        for st in stages:
            rows += (f"<tr><td>{_esc(st.get('name', ''))}</td><td>{_esc(st.get('command', ''))}</td>"
                     f"<td>{_esc(st.get('status', ''))}</td><td>{_esc(_fmt(st.get('seconds', '')))}</td>"
                     f"<td class='txt'>{_esc(st.get('key_metrics', ''))}</td></tr>")
        total = recipe.get("seconds")
        parts.append("<h3>Stages</h3><table class='grid'><tr><th>stage</th><th>command</th><th>status</th>"
                     f"<th>seconds</th><th>key metrics</th></tr>{rows}</table>")
        if _finite(total):
            parts.append(f"<p class='muted'>total {_fmt(total)} s</p>")
    evals = recipe.get("evals") or {}
    order = [m for m in recipe.get("eval_models") or [] if m in evals] + \
        [m for m in evals if m not in (recipe.get("eval_models") or [])]
    if evals:
        models = order
        present = {k for m in evals.values() for k in m}
        cols = [c for c in EVAL_COLUMNS if c in present]
        cols += sorted(k for k in present if k.startswith(("reward/", "win_rate/")))
        head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
        body = "".join("<tr><th>" + _esc(m) + "</th>" + "".join(
            f"<td>{_esc(_fmt(evals[m].get(c))) if c in evals[m] else ''}</td>" for c in cols) + "</tr>"
            for m in models)
        ref = recipe.get("eval_reference", "")
        parts.append(f"<h3>Evaluation of each model</h3><p class='muted'>{_esc(recipe.get('eval_note', ''))}"
                     f"</p><div class='scroll'><table class='grid'><tr><th>model</th>{head}</tr>{body}</table>"
                     "</div>")
        pts = [(math.sqrt(max(evals[m]["kl"], 0.0)), evals[m]["gold"], m) for m in models
               if _finite(evals[m].get("kl")) and _finite(evals[m].get("gold"))]
        if len(pts) >= 2:
            parts.append(_figure_divs([_scatter_figure(f"Gold reward vs √KL(π ‖ {ref or 'reference'})", pts,
                                                       "√KL", "gold", lines=False)], "recipe", registry))
    comparison = recipe.get("comparison") or []
    if comparison:
        first = comparison[0].get("completions", {})
        models = [m for m in order if m in first] + [m for m in first if m not in order]
        head = "".join(f"<th>{_esc(m)}</th>" for m in models)
        body = ""
        for row in comparison:
            body += (f"<tr><td class='txt'>{_esc(prompt_display(row.get('prompt', '')))}</td>" +
                     "".join(f"<td class='txt'>{_esc(row['completions'].get(m, ''))}</td>" for m in models) +
                     "</tr>")
        parts.append(f"<h3>Same prompts, every model</h3><table class='grid'><tr><th>prompt</th>{head}</tr>"
                     f"{body}</table>")
    parts.append("</section>")
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px} .muted{color:#777;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
table.grid td,table.grid th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
table.kv th{text-align:left;padding:2px 12px 2px 0;font-weight:500;color:#555} table.kv td{padding:2px 0}
td.txt{white-space:pre-wrap;max-width:420px;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.figs{display:flex;flex-wrap:wrap;gap:8px} .fig{width:560px;height:320px;border:1px solid #eee}
.cols{display:flex;gap:24px;flex-wrap:wrap} .scroll{overflow-x:auto}
details pre{font-size:12px;background:#f7f7f7;padding:8px;max-height:320px;overflow:auto}
"""


def render_report(root: str | Path, *, title: str | None = None) -> str:
    """The HTML page (a string) for a run directory or a recipe directory."""
    from plotly.offline import get_plotlyjs

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"report: '{root}' is not a directory (expected a run or recipe directory)")
    runs = find_runs(root)
    recipe = _read_json(root / RECIPE_FILE)
    if not runs and not recipe:
        raise UserError(f"report: '{root}' holds no run directory (no config.yaml / metrics.jsonl) and no "
                        f"{RECIPE_FILE}")
    registry: list[tuple[str, dict]] = []
    body = []
    if recipe:
        body.append(_recipe_section(recipe, registry))
    for i, (name, path) in enumerate(runs):
        run = load_run(path)
        status = "finished" if run["done"] else "not finished"
        body.append(f"<section><h2>{_esc(name)} <span class='muted'>({_esc(run['stage'])}, {status})</span></h2>"
                    f"<p class='muted'>{_esc(path)}</p>")
        body.append(_figure_divs(run_figures(run), f"run{i}", registry))
        body.append("<div class='cols'><div><h3>Summary</h3>" + _summary_table(run["summary"]) + "</div>"
                    "<div style='flex:1;min-width:480px'><h3>Sample completions</h3>"
                    + _samples_table(run["samples"]) + "</div></div>")
        if run["config"]:
            body.append(f"<details><summary>config.yaml</summary><pre>{_esc(run['config'])}</pre></details>")
        body.append("</section>")
    title = title or (f"posttrain recipe {recipe.get('name')}" if recipe else f"posttrain run {root.name}")
    figures_json = json.dumps({k: v for k, v in registry}, allow_nan=False).replace("</", "<\\/")
    script = ("const FIGS = " + figures_json + ";\n"
              "for (const [id, f] of Object.entries(FIGS)) {\n"
              "  Plotly.newPlot(id, f.data, f.layout, {displaylogo: false, responsive: true});\n}\n")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{_esc(title)}</title><style>{CSS}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>"
            f"<h1>{_esc(title)}</h1><p class='muted'>{_esc(root.resolve())}</p>" + "".join(body) +
            f"<script>{script}</script></body></html>")


def write_report(root: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Write the report of ``root`` to ``out`` (default ``ROOT/report.html``), atomically; returns the path."""
    out = Path(out) if out is not None else Path(root) / "report.html"
    atomic_write_text(out, render_report(root, title=title))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain report",
                                     description="write one self-contained HTML page for a run or recipe "
                                                 "directory")
    parser.add_argument("run_dir", help="a stage's run directory or a recipe directory")
    parser.add_argument("--out", "-o", default=None, help="output file (default RUN_DIR/report.html)")
    parser.add_argument("--title", default=None, help="page title")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse prints its own usage line
        return int(e.code or 0)
    path = write_report(args.run_dir, args.out, title=args.title)
    print(f"report written to {path}")
    return 0
