"""The tabular flow's data and models (frame, labels, build) for tests that deploy without running it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

FLOW = Path(__file__).resolve().parent / "plugin" / "flows" / "tabular_flow.py"


def tabular_flow() -> Any:
    """tests/plugin/flows/tabular_flow.py as a module, without running the flow."""
    spec = importlib.util.spec_from_file_location("tabular_flow_data", FLOW)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
