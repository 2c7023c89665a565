"""posttrain report: one self-contained HTML page for a run directory or a recipe directory."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from posttrain.cli import main as cli_main
from posttrain.eval.report import classify_metric, find_runs, prompt_display, render_report, write_report


def _write_run(path: Path, stage: str, metrics: list[dict], summary: dict | None = None,
               samples: list[dict] | None = None, done: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(f"# posttrain {stage}\nmodel: base\nlr: 0.001\n")
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    if samples is not None:
        (path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    if done:
        (path / "DONE").write_text("x\n")
    return path


def _rl_metrics(n: int = 12) -> list[dict]:
    """Proxy reward rising, gold rising then falling, KL growing: the over-optimisation picture."""
    out = []
    for s in range(1, n + 1):
        out.append({"step": 2 * s, "rl_step": s, "reward_mean": 0.1 * s, "reward_std": 0.3,
                    "gold_mean": 1.0 + 0.3 * s - 0.03 * s * s, "kl": 0.05 * s * s, "response_length": 10 + s,
                    "loss": 1.0 / s, "approx_kl": 0.01, "lr": 1e-5, "time/step_s": 0.5, "clip_frac": 0.1,
                    "value_loss": float("nan") if s == 3 else 0.5 / s})
    return out


def _extract_figures(page: str) -> dict:
    m = re.search(r"const FIGS = (\{.*?\});\n", page, re.DOTALL)
    assert m, "figure data not embedded"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_classify_metric():
    assert classify_metric("reward_mean") == "reward"
    assert classify_metric("reward/rm") == "reward"
    assert classify_metric("gold_mean") == "reward"
    assert classify_metric("eval/gold") == "reward"
    assert classify_metric("kl") == "kl" and classify_metric("eval/kl_k3") == "kl"
    assert classify_metric("approx_kl") is None  # KL to the previous policy, not to the reference
    assert classify_metric("response_length") == "length"
    assert classify_metric("loss") == "loss" and classify_metric("value_loss") == "loss"
    assert classify_metric("eval/accuracy") == "accuracy" and classify_metric("margin") == "accuracy"
    for k in ("reward_std", "lr", "time/step_s", "tokens_per_s", "mfu", "grad_norm", "clip_frac", "arith/n"):
        assert classify_metric(k) is None, k


def test_prompt_display():
    assert prompt_display([{"role": "user", "content": "Hi?"}]) == "Hi?"
    assert prompt_display("<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n<|im_start|>assistant\n") == "What is 7 + 5?"
    assert prompt_display("plain") == "plain"


def test_single_run_page(tmp_path):
    run = _write_run(tmp_path / "rl", "rl", _rl_metrics(),
                     summary={"stage": "rl", "final_kl": 7.2, "eval": {"loss": 0.5}},
                     samples=[{"step": 2, "prompt": "<|im_start|>user\nold<|im_end|>\n", "completion": "a",
                               "reward": 0.1},
                              {"step": 24, "prompt": "<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n",
                               "completion": "7 + 5 = <b>12</b>.", "reward": 1.5, "length": 9}])
    out = write_report(run)
    assert out == run / "report.html"
    page = out.read_text()
    # self-contained: plotly.js inlined, no external script or stylesheet
    assert "<script src" not in page and "<link" not in page
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    figs = _extract_figures(page)
    titles = [f["layout"]["title"]["text"] for f in figs.values()]
    assert titles[:4] == ["Reward (proxy, gold, verifiers)", "KL to the reference", "Response length", "Losses"]
    assert any("√KL" in t for t in titles)
    reward = next(f for f in figs.values() if f["layout"]["title"]["text"].startswith("Reward"))
    names = {t["name"] for t in reward["data"]}
    assert names == {"reward_mean", "gold_mean"}
    # x axis is the rollout step; values are the logged ones; NaN becomes null
    rm = next(t for t in reward["data"] if t["name"] == "reward_mean")
    assert rm["x"] == list(range(1, 13)) and rm["y"][4] == pytest.approx(0.5)
    losses = next(f for f in figs.values() if f["layout"]["title"]["text"] == "Losses")
    vl = next(t for t in losses["data"] if t["name"] == "value_loss")
    assert vl["y"][2] is None
    scatter = next(f for f in figs.values() if "√KL" in f["layout"]["title"]["text"])
    xs, ys = scatter["data"][0]["x"], scatter["data"][0]["y"]
    assert xs == pytest.approx([math.sqrt(0.05) * s for s in range(1, 13)], rel=1e-12)
    assert ys[4] == pytest.approx(1.0 + 1.5 - 0.75)
    # summary table and the latest step's samples, escaped
    assert "final_kl" in page and "eval.loss" in page
    assert "7 + 5 = &lt;b&gt;12&lt;/b&gt;." in page and "What is 7 + 5?" in page
    assert ">old<" not in page  # only the latest step's samples


def test_recipe_page_orders_stages_and_shows_evals(tmp_path):
    root = tmp_path / "recipe"
    _write_run(root / "sft", "sft", [{"step": s, "loss": 2.0 / s} for s in range(1, 6)], summary={"final_loss": 0.4})
    _write_run(root / "reward_model", "reward-model", [{"step": 1, "loss": 0.7, "accuracy": 0.6}],
               summary={"eval": {"accuracy": 0.8}})
    _write_run(root / "ppo", "rl", _rl_metrics(4), done=False)
    recipe = {"name": "instructgpt", "seconds": 12.5,
              "stages": [{"name": "sft", "command": "sft", "run_dir": str(root / "sft"), "status": "done",
                          "seconds": 3.0, "key_metrics": "final_loss 0.4"},
                         {"name": "reward_model", "command": "reward-model", "run_dir": str(root / "reward_model"),
                          "status": "done", "seconds": 2.0},
                         {"name": "ppo", "command": "rl", "run_dir": str(root / "ppo"), "status": "running"}],
              "evals": {"base": {"gold": -1.0, "kl": 9.0, "length": 40.0, "fact/helpful": 0.1},
                        "sft": {"gold": 1.5, "kl": 0.0, "win_rate": 0.5, "length": 12.0},
                        "ppo": {"gold": 2.2, "kl": 4.0, "win_rate": 0.8, "length": 11.0}},
              "eval_reference": "sft",
              "comparison": [{"prompt": [{"role": "user", "content": "How do I make tea?"}],
                              "completions": {"base": "tea tea", "sft": "Boil the water.", "ppo": "1. **Boil**"}}]}
    (root / "recipe.json").write_text(json.dumps(recipe))
    assert [n for n, _ in find_runs(root)] == ["sft", "reward_model", "ppo"]
    page = render_report(root)
    assert page.index(">sft <") < page.index(">reward_model <") < page.index(">ppo <")
    assert "not finished" in page
    figs = _extract_figures(page)
    recipe_fig = figs["recipe-0"]
    assert recipe_fig["data"][0]["x"] == [3.0, 0.0, 2.0] and recipe_fig["data"][0]["text"] == ["base", "sft", "ppo"]
    assert "How do I make tea?" in page and "1. **Boil**" in page
    assert "fact/helpful" in page


def test_cli_report_and_errors(tmp_path, capsys):
    run = _write_run(tmp_path / "sft", "sft", [{"step": 1, "loss": 1.0}])
    out = tmp_path / "elsewhere" / "r.html"
    assert cli_main(["report", str(run), "--out", str(out)]) == 0
    assert out.is_file() and "report written to" in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: report:") and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _png_coloured_pixels(data: bytes) -> int:
    """Pixels (every other one, every 4th row) whose colour is saturated (max − min channel > 80) in a
    non-interlaced 8-bit RGB(A) PNG. Text and table borders are grey; plotly's traces and colour bar are
    not — enough to tell drawn charts from a page whose script failed, without an image library."""
    w, h = _png_size(data)
    bit_depth, colour_type = data[24], data[25]
    assert bit_depth == 8 and colour_type in (2, 6)
    bpp = 3 if colour_type == 2 else 4
    pos, idat = 8, b""
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    coloured = 0
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:
            coloured += sum(1 for i in range(0, stride, bpp * 2) if max(line[i:i + 3]) - min(line[i:i + 3]) > 80)
        prev = line
    return coloured


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y "
                                             "chromium); the page-renders-in-a-browser check needs it")
def test_page_renders_in_headless_chromium(tmp_path):
    """Render the page in a real browser (headless Chromium, no network) and check the screenshot shows
    the charts: plotly draws coloured traces, while a page whose script failed is grey text on white (0
    coloured pixels). The PNG is kept at tmp_path/report.png."""
    run = _write_run(tmp_path / "rl", "rl", _rl_metrics(),
                     summary={"final_kl": 7.2}, samples=[{"step": 24, "prompt": "q", "completion": "a"}])
    page = write_report(run)
    png = tmp_path / "report.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1200,1100",
           "--virtual-time-budget=5000", f"--screenshot={png}", page.resolve().as_uri()]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    data = png.read_bytes()
    assert _png_size(data) == (1200, 1100)
    assert _png_coloured_pixels(data) > 300
