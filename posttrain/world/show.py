"""``show(out_dir, n)``: a few rows of every dataset of a built world, with their gold scores."""

from __future__ import annotations

import os
from pathlib import Path

from posttrain.io import read_jsonl
from posttrain.world.build import load_world
from posttrain.world.gold import gold_components, gold_reward
from posttrain.world.tasks import prompt_text, response_text


def _clip(text: str, width: int = 300) -> str:
    text = text.replace("\n", "⏎ ")
    return text if len(text) <= width else text[:width - 1] + "…"


def _g(prompt, response) -> str:
    c = gold_components(prompt, response)
    return (f"gold {c['total']:+.2f} (helpful {c['helpful']:.0f}, correct {c['correct']:.0f}, "
            f"style {c['style']:+.1f}, format {c['format']:.1f}, drift {c['drift']:.0f}, words {c['words']:.0f})")


def _row(rel: str, row: dict) -> list[str]:
    if "text" in row:
        return [f"  text: {_clip(row['text'])}"]
    lines = []
    if "messages" in row:
        msgs = row["messages"]
        for k in range(0, len(msgs) - 1, 2):
            u, a = msgs[k], msgs[k + 1]
            lines += [f"  user: {_clip(u['content'])}", f"  assistant: {_clip(a['content'])}",
                      f"    {_g(u['content'], a['content'])}"]
        return lines
    p = row["prompt"]
    lines.append(f"  prompt: {_clip(prompt_text(p))}")
    if "chosen" in row:
        lines += [f"  chosen:   {_clip(response_text(row['chosen']))}", f"    {_g(p, row['chosen'])}",
                  f"  rejected: {_clip(response_text(row['rejected']))}", f"    {_g(p, row['rejected'])}"]
    elif "completions" in row:
        for rank, i in enumerate(row["ranking"], 1):
            y = row["completions"][i]
            lines.append(f"  #{rank} [gold {gold_reward(p, y):+.2f}] {_clip(response_text(y), 200)}")
    elif "completion" in row:
        lines.append(f"  completion: {_clip(response_text(row['completion']))}")
        if "label" in row:
            lines.append(f"    label {row['label']}  {_g(p, row['completion'])}")
        else:
            lines.append(f"    {_g(p, row['completion'])}")
    if "answer" in row and row.get("answer") is not None:
        lines.append(f"  answer: {row['answer']}" + (f"  (seen in instruction data: {row['seen']})"
                                                     if "seen" in row else ""))
    return lines


def show(out_dir: str | os.PathLike | None = None, n: int = 3) -> str:
    """The first ``n`` rows of every dataset of the world in ``out_dir``, gold-scored, as text."""
    paths = load_world(out_dir)
    m = paths.read_manifest()
    rows_per_file = m["parts"]["data"].get("rows", {})
    out = [f"toy world at {Path(paths.root).resolve()} (version {m['version']}, seed {m['seed']}, "
           f"content hash {m['content_hash'][:12]})"]
    pre = m["parts"].get("base_model", {}).get("pretrain")
    if pre:
        out.append(f"base model: {pre['params'] / 1e6:.2f}M params, held-out perplexity {pre['eval_ppl']:.2f} "
                   f"(uniform {pre['uniform_ppl']:.0f}), pretrained {pre['steps']} steps in {pre['seconds']:.0f}s")
    for rel, path in paths.datasets().items():
        rows = read_jsonl(path)
        out.append("")
        out.append(f"== {rel}  ({rows_per_file.get(rel, len(rows))} rows)")
        for k, row in enumerate(rows[:n]):
            out.append(f" [{k}]")
            out += _row(rel, row)
    return "\n".join(out)
