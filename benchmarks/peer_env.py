"""The peers' virtual environments, shared by every benchmark script (never a posttrain dependency).

``trl``: ``benchmarks/.env-trl`` with ``trl==1.16.0``; ``trl112``: ``benchmarks/.env-trl112`` with
``trl==1.12.0`` (the last release that ships PPO). Each is created on first use under an exclusive ``flock``
on ``<env>.lock`` (several benchmarks may ask at once): ``python -m venv``, then the pinned CPU
``torch==2.13.0`` FIRST (an unpinned torch would pull a multi-GB CUDA build), then TRL, then posttrain in
editable mode without dependencies (for the shared fixtures). An environment counts as ready when it imports
trl, torch and posttrain at the pinned versions.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TORCH_PIN = "torch==2.13.0"
ENVS: dict[str, tuple[Path, str]] = {
    "trl": (HERE / ".env-trl", "trl==1.16.0"),
    "trl112": (HERE / ".env-trl112", "trl==1.12.0"),
}


def env_python(name: str = "trl") -> Path:
    return ENVS[name][0] / "bin" / "python"


def _imports(py: Path, module: str) -> bool:
    return py.exists() and subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0


def env_ok(name: str = "trl") -> bool:
    """The environment imports trl, torch and posttrain at the pinned versions."""
    py, want = env_python(name), f"{ENVS[name][1].split('==')[1]} {TORCH_PIN.split('==')[1]}"
    if not py.exists():
        return False
    r = subprocess.run([str(py), "-c", "import trl, torch, posttrain; print(trl.__version__, torch.__version__)"],
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.startswith(want)


def ensure_env(name: str = "trl") -> Path:
    """Create (or complete) the environment ``name`` if needed; returns its python."""
    folder, trl_pin = ENVS[name]
    py = env_python(name)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not env_ok(name):
                print(f"setting up {folder} ({TORCH_PIN}, then {trl_pin}, then posttrain editable) ...", flush=True)
                if not py.exists():
                    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
                pip = [str(py), "-m", "pip", "install", "-q"]
                if not _imports(py, "torch"):
                    subprocess.run(pip + [TORCH_PIN], check=True)
                subprocess.run(pip + [trl_pin], check=True)
                if not _imports(py, "posttrain"):
                    subprocess.run(pip + ["--no-deps", "-e", str(ROOT)], check=True)
                if not env_ok(name):
                    raise SystemExit(f"could not set up {folder}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return py
