"""The retrain flow's data and pipeline (frame, labels, build) for tests that deploy without running it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

FLOW = Path(__file__).resolve().parent / "plugin" / "flows" / "retrain_flow.py"


def retrain_flow() -> Any:
    """tests/plugin/flows/retrain_flow.py as a module, without running the flow."""
    spec = importlib.util.spec_from_file_location("retrain_flow_data", FLOW)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
