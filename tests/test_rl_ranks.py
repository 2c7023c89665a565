"""``posttrain rl`` under 2 data-parallel ranks (torchrun, gloo): each rank samples its own prompts (disjoint
at every step) with its own generator, and DDP keeps the policy (and PPO's value model) identical on every
rank — bit for bit after 3 steps — while the weights move. GRPO runs with DAPO's dynamic sampling (each rank
filters its own draw) and the packed prefix-sharing layout; PPO with its policy + value module.

The test launches this file under ``python -m torch.distributed.run --standalone --nproc_per_node=2``; each
rank writes its final state dict and its prompts, and the test compares them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def _prompts(path: Path) -> str:
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}], "answer": str(a + b)}
            for a in range(6) for b in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _worker(out: str, algo: str) -> None:
    sys.path.insert(0, str(HERE))
    from test_rl_stage import vowel_count

    from posttrain.config import RLConfig, load_config
    from posttrain.engine import Run, distributed
    from posttrain.stages.rl import RLTrainer, load

    info = distributed.init("cpu")
    extra = (["dynamic_sampling=true", "oversample=2", "share_prompt=true"] if algo == "grpo"
             else ["minibatch_size=4"])
    cfg = load_config(RLConfig, None, [
        "model=preset:tiny", f"data.train={Path(out) / 'prompts.jsonl'}", f"output_dir={Path(out) / 'run'}",
        f"algo={algo}", "max_steps=3", "lr=1e-2", "generation.max_new_tokens=8", "prompts_per_step=2",
        "group_size=4", "batch_size=4", "progress=false", "sample_every=0", "num_threads=1", "beta=0.05", *extra])
    ld = load(cfg, reward=vowel_count)
    loop = RLTrainer(cfg, Run.open(cfg, "rl"), ld.policy, ld.tokenizer, ld.prompts, ld.reward, ref_model=ld.ref,
                     value_model=ld.value)
    loop.fit()
    torch.save({"state": {k: v.detach().clone() for k, v in loop.module.state_dict().items()},
                "prompts": [loop.sampler.rank_indices(s) for s in range(3)], "world": info.world_size,
                "history": [{k: h[k] for k in ("reward_mean", "kl")} for h in loop.history]},
               Path(out) / f"rank{info.rank}.pt")
    distributed.teardown()


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_ranks_sample_their_own_prompts_and_stay_identical(tmp_path, algo):
    from posttrain.models.presets import build_preset

    _prompts(tmp_path / "prompts.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(Path(__file__).resolve()), str(tmp_path), algo],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["world"] == r1["world"] == 2 and len(r0["history"]) == 3
    for s in range(3):  # each rank its own share of the step's draw (dynamic sampling: 4 prompts per rank)
        assert not set(r0["prompts"][s]) & set(r1["prompts"][s])
        assert len(r0["prompts"][s]) == (4 if algo == "grpo" else 2)
    assert r0["state"].keys() == r1["state"].keys()
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])  # DDP kept the replicas equal
    init = build_preset("tiny")[0].state_dict()
    policy = {k.removeprefix("policy."): v for k, v in r0["state"].items() if not k.startswith("value.")}
    assert max(float((policy[k] - init[k]).abs().max()) for k in init) > 1e-3
    assert r0["history"] != r1["history"]  # different prompts and samples, hence different rewards


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
