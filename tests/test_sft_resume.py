"""SIGKILL mid-run, then resume: the final weights are identical (torch.equal) to an uninterrupted run.

``posttrain sft ... checkpoint_every=5`` runs in a subprocess; as soon as ``checkpoints/step-5`` appears the
process is killed with SIGKILL (no cleanup of any kind). The same command is then run again: it resumes from
the latest checkpoint (weights, AdamW moments, RNG states, step), truncates metrics.jsonl to that step and
finishes. Its final model must equal, tensor for tensor, that of one run without interruption.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from posttrain.io import read_jsonl

STEPS, EVERY = 40, 5


def _data(tmp_path: Path) -> str:
    rows = []
    for i in range(48):
        a, b = i % 7 + 1, (i * 3) % 5 + 1
        rows.append({"prompt": f"Q: {a} + {b} =", "completion": f" {a + b}." + " ok" * (i % 4)})
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _cmd(train: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "posttrain.cli", "sft", "model=preset:tiny", f"data.train={train}",
            f"output_dir={out}", f"max_steps={STEPS}", f"checkpoint_every={EVERY}", "keep_checkpoints=2",
            "batch_size=4", "grad_accum=2", "lr=0.003", "warmup_steps=3", "num_threads=1", "progress=false",
            "sample_prompts=0", "peak_flops=1e11", "data.max_len=48", "data.max_prompt_len=16"]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    train = _data(tmp_path)
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run(_cmd(train, ref), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(_cmd(train, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = run / "checkpoints" / f"step-{EVERY}"
    deadline = time.time() + 240
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert first.is_dir() and not (run / "DONE").exists() and not (run / "model").exists()
    killed_at = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert killed_at < STEPS

    again = subprocess.run(_cmd(train, run), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] >= EVERY and summary["steps"] == STEPS

    a, b = load_file(ref / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, STEPS + 1))
    ref_loss = [r["loss"] for r in read_jsonl(ref / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r] == ref_loss
