"""2 ranks (torchrun, gloo) give the same final weights as 1 rank on the same global batch.

The test launches this file under ``python -m torch.distributed.run --standalone --nproc_per_node=2``;
each rank trains with batch 2 × accumulation 2 (global batch 8 = 2 ranks × 2 × 2), which exercises DDP's
gradient averaging (undone by the engine's ×world_size), ``no_sync`` on the first micro-batch and the
all-reduced token normaliser. The reference is one process with batch 8 × accumulation 1. Float64 with
ragged completion lengths; |Δ| < 1e-12 after 3 AdamW steps (also with ``gradient_checkpointing``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_engine_utils import collate, lm_loss, ragged_examples, stage_cfg, state, tiny_llama  # noqa: E402


def _train(out_dir: Path, model, *, batch_size: int, grad_accum: int, compile: bool = False,
           checkpointing: bool = False):
    from posttrain.engine import Run, StepSampler, Trainer, distributed

    info = distributed.init("cpu")
    ex = ragged_examples(24)
    cfg = stage_cfg(out_dir, batch_size=batch_size, grad_accum=grad_accum, max_steps=3, compile=compile,
                    gradient_checkpointing=checkpointing)
    run = Run.open(cfg, "test")
    tr = Trainer(cfg, run, model)
    sampler = StepSampler.from_config(cfg, len(ex), rank=info.rank, world=info.world_size)
    summary = tr.fit(sampler, lambda ix: collate(ex, ix), lm_loss)
    return info, summary


def _worker(out: str, compile: bool = False, checkpointing: bool = False) -> None:
    model = tiny_llama(0)
    from posttrain.engine import distributed

    info, summary = _train(Path(out) / "run", model, batch_size=2, grad_accum=2, compile=compile,
                           checkpointing=checkpointing)
    if info.rank == 0:
        torch.save({"state": state(model), "loss": summary["final_loss"], "world": info.world_size},
                   Path(out) / "ddp.pt")
    distributed.teardown()


def _two_ranks(tmp_path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).resolve()), str(tmp_path), *extra],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = torch.load(tmp_path / "ddp.pt")
    assert got["world"] == 2
    return got


def _against_one_rank(tmp_path, got: dict) -> tuple[float, float, dict]:
    """One eager process with batch 8 (the same global batch): max |Δ| between its weights and the 2-rank run's,
    how far its weights moved from the initial ones, and its summary."""
    ref = tiny_llama(0)
    init = state(ref)
    _, summary = _train(tmp_path / "ref", ref, batch_size=8, grad_accum=1)
    ref_state = state(ref)
    diff = max(float((ref_state[k] - got["state"][k]).abs().max()) for k in ref_state)
    moved = max(float((ref_state[k] - init[k]).abs().max()) for k in ref_state)
    return diff, moved, summary


def test_two_ranks_equal_one_rank(tmp_path):
    got = _two_ranks(tmp_path)
    diff, moved, summary = _against_one_rank(tmp_path, got)
    assert diff < 1e-12 and moved > 1e-3
    assert got["loss"] == summary["final_loss"] or abs(got["loss"] - summary["final_loss"]) < 1e-12


def test_two_compiled_ranks_equal_one_eager_rank(tmp_path):
    """``compile=true`` under DDP (``torch.compile`` of the DDP wrapper, gloo): the same weights as one eager
    rank to |Δ| < 1e-5 (measured 1.2e-6: HF's float32 RMSNorm inside the float64 model, rounded differently
    by the fused kernel, as in the single-rank compile test)."""
    diff, moved, _ = _against_one_rank(tmp_path, _two_ranks(tmp_path, "compile"))
    assert diff < 1e-5 and moved > 1e-3


def test_two_checkpointed_ranks_equal_one_rank(tmp_path):
    """``gradient_checkpointing=true`` under DDP (non-reentrant recompute inside DDP's backward, with
    ``no_sync`` on the first micro-batch): the plain single rank's weights to |Δ| < 1e-12."""
    diff, moved, _ = _against_one_rank(tmp_path, _two_ranks(tmp_path, "checkpointing"))
    assert diff < 1e-12 and moved > 1e-3


if __name__ == "__main__":
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    _worker(sys.argv[1], compile=mode == "compile", checkpointing=mode == "checkpointing")
