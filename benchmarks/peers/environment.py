"""Each peer's own virtual environment: made by the benchmark, cached outside the checkout (as Triton's
is, tests/triton/triton_env.py) under ~/.cache/tritonflow/peers/<name>, so clean checkouts reuse it.

Peers pin packages that clash with tritonflow's (MLServer, KServe and MLflow each want their own
fastapi, uvicorn, pydantic, protobuf), so none is installed beside the node. scikit-learn, XGBoost and
numpy are pinned to this environment's versions: every peer loads the very model files the others serve.
A folder counts as made once `.complete` names the same requirements; otherwise it is made anew.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import say

ENVS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tritonflow" / "peers"
COMPLETE = ".complete"  # written last: a folder without it is a set-up that died halfway
MODEL_LIBRARIES = ("scikit-learn", "xgboost", "numpy")


class PeerUnavailable(RuntimeError):
    """A peer that cannot be installed or started here: the benchmark skips it and prints why."""


def model_pins() -> tuple[str, ...]:
    """`name==version` of the libraries the models were trained with, as installed here."""
    return tuple(f"{dist}=={importlib.metadata.version(dist)}" for dist in MODEL_LIBRARIES)


def python_of(name: str) -> Path:
    return ENVS / name / "bin" / "python"


def facts(name: str) -> dict[str, object]:
    """What the set-up recorded: requirements, install seconds, size on disk; {} if not made."""
    stamp = ENVS / name / COMPLETE
    return json.loads(stamp.read_text()) if stamp.is_file() else {}


def ensure(name: str, requirements: tuple[str, ...]) -> Path:
    """The Python of `name`'s environment, made (or remade, if its requirements changed) when needed.

    Raises PeerUnavailable with pip's last lines when the packages cannot be installed (no network).
    """
    wanted = [*requirements, *model_pins()]
    if facts(name).get("requirements") == wanted:
        return python_of(name)
    ENVS.mkdir(parents=True, exist_ok=True)
    with (ENVS / f"{name}.lock").open("w") as lock:
        # NOTE: two benchmark runs or tests must not build one folder at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if facts(name).get("requirements") == wanted:
            return python_of(name)
        folder = ENVS / name
        shutil.rmtree(folder, ignore_errors=True)
        say(f"{name}: making its environment in {folder}: pip install {' '.join(wanted)}")
        started = time.monotonic()
        pip = [str(python_of(name)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        for step, command in (
            ("venv", [sys.executable, "-m", "venv", str(folder)]),
            ("pip", [*pip, *wanted]),
        ):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise PeerUnavailable(f"{name}: {step} failed: {(done.stdout + done.stderr)[-1500:]}")
        record = {
            "requirements": wanted,
            "install_s": round(time.monotonic() - started, 1),
            "size_mb": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20),
        }
        (folder / COMPLETE).write_text(json.dumps(record, indent=2) + "\n")
        say(f"{name}: made in {record['install_s']} s, {record['size_mb']} MB")
    return python_of(name)
