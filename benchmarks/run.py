"""One entry point for the side-by-side benchmarks: ``python -m benchmarks.run [STAGE ...] [--quick]``.

Stages: ``sft``, ``reward``, ``dpo``, ``grpo``, ``rloo``, ``ppo``, ``rollout`` (default: all). Each stage's
script runs posttrain and the peer (TRL, in its own virtual environment under ``benchmarks/.env-trl*``,
created on first use; never a posttrain dependency) alternately on the same model weights, data, batch,
sequence lengths, precision and optimiser, and prints its own table; this runner calls them one after the
other so that their figures come from one invocation, and forwards ``--device`` where the script has it.
``--quick`` runs fewer rounds/steps (for a smoke check, not for the figures in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.peer_env import ensure_env

ROOT = Path(__file__).resolve().parent.parent

# stage -> (script, extra args, extra args when --quick)
STAGES: dict[str, tuple[str, list[str], list[str]]] = {
    "sft": ("sft_bench.py", [], ["--rounds", "1", "--steps", "10"]),
    "reward": ("reward_bench.py", [], ["--rounds", "1", "--steps", "10"]),
    "dpo": ("dpo_bench.py", [], ["--rounds", "1", "--steps", "8"]),
    "grpo": ("rl_bench.py", ["--algos", "grpo"], ["--rounds", "1", "--steps", "4"]),
    "rloo": ("rl_bench.py", ["--algos", "rloo"], ["--rounds", "1", "--steps", "4"]),
    "ppo": ("rl_bench.py", ["--algos", "ppo"], ["--rounds", "1", "--steps", "3"]),
    "rollout": ("rollout_bench.py", [], ["--repeats", "1"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("stages", nargs="*", metavar="STAGE", help=f"any of {', '.join(STAGES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps (smoke check)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (rollout benchmark)")
    args = ap.parse_args(argv)
    stages = args.stages or list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage '{unknown[0]}' (choose from {', '.join(STAGES)})")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done: list[tuple[str, int, float]] = []
    for name in stages:
        script, extra, quick = STAGES[name]
        py = sys.executable
        if name == "sft":
            py = str(ensure_env("trl"))  # the SFT script imports both libraries (posttrain is installed there editable)
        cmd = [py, str(ROOT / "benchmarks" / script), *extra, *(quick if args.quick else [])]
        if name == "rollout" and args.device != "cpu":
            cmd += ["--device", args.device]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        done.append((name, rc, time.time() - t0))
    print("\nstage     rc   seconds")
    for name, rc, s in done:
        print(f"{name:<8} {rc:>3}  {s:8.1f}")
    return max((rc for _, rc, _ in done), default=0)


if __name__ == "__main__":
    sys.exit(main())
