"""Plug-in tables name their classes as "package.module.Name" strings, imported on first use.

So the heavy dependency behind one entry (boto3, onnxruntime, nvForest, skl2onnx) loads only
when that entry is used, and a missing optional one fails only the feature that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any


def load_object(path: str) -> Any:
    """The object named by `path` ("package.module.Name"), importing its module now."""
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)
