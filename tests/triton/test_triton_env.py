"""The cached Triton environment is shared and never written by a session: each session's
tritonflow lives in its own environment over it, so checkouts testing at once do not swap code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from triton_env import ROOT, env_dir

pytestmark = pytest.mark.slow


def _where(python: Path, module: str) -> str:
    done = subprocess.run(
        [str(python), "-c", f"import {module}; print({module}.__file__)"],
        capture_output=True,
        text=True,
        cwd=Path("/"),  # NOTE: not the checkout, whose tritonflow/ folder would be imported first
    )
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def test_the_session_runs_this_checkouts_tritonflow_over_the_shared_packages(triton_env: Path) -> None:
    shared = env_dir()
    assert not triton_env.is_relative_to(shared)
    session = triton_env.parent.parent
    tritonflow = Path(_where(triton_env, "tritonflow"))
    assert tritonflow.is_relative_to(session), tritonflow
    assert (tritonflow.parent / "cli.py").read_text() == (ROOT / "tritonflow" / "cli.py").read_text()
    # pytriton (and Triton itself) come from the shared environment, unchanged
    assert Path(_where(triton_env, "pytriton")).is_relative_to(shared)
