"""The test flows' data and models (frame, labels, build) for tests that deploy without running them,
and the one way tests read a finished run's artifacts (Metaflow's Client, in a subprocess)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

FLOWS = Path(__file__).resolve().parent / "plugin" / "flows"
FLOW = FLOWS / "tabular_flow.py"
RETRAIN_FLOW = FLOWS / "retrain_flow.py"


def flow_module(path: Path) -> Any:
    """A flow file as a module, without running the flow."""
    spec = importlib.util.spec_from_file_location(f"{path.stem}_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tabular_flow() -> Any:
    return flow_module(FLOW)


def retrain_flow() -> Any:
    return flow_module(RETRAIN_FLOW)


def client_answer(code: str, env: dict[str, str], cwd: Path) -> Any:
    """What `code` (run with Metaflow's Client in a fresh interpreter) prints as JSON on its last line."""
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
