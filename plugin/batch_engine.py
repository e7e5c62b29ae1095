"""A forest's second file: the model in the format of a CPU engine faster than FIL's on batches.

Published beside the Treelite checkpoint only when the parity gate passes it on the engine that
reads it, so the node's measured choice (serving/backends/forest_engines.py) never changes an
answer. A model the converter cannot write, or whose file answers differently, is published
without it: the checkpoint alone serves it, as before, and the record says why.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from tritonflow.lineage.errors import TritonflowError
from tritonflow.plugin.exporters.base import Export, brief
from tritonflow.plugin.parity import check_parity
from tritonflow.serving.backends.forest_engines import ENGINE_FILES


def with_batch_engine(export: Export, rows: np.ndarray) -> tuple[Export, dict[str, Any] | None]:
    """The export with its batch engine's file when that passes the parity gate on `rows`, and the
    record's note on it (None: the export has no batch engine, e.g. an ONNX model)."""
    if export.batch_engine_file is None:
        return export, None
    engine = "the batch engine"
    try:
        engine, data = export.batch_engine_file()
        file = ENGINE_FILES[engine]
        candidate = dataclasses.replace(export, files={**export.files, file: data})
        parity = check_parity(candidate, rows, engine=engine)
    except TritonflowError as exc:  # ParityError, BackendError, ExportError: their messages say why
        return export, _left_out(export, engine, str(exc))
    except Exception as exc:  # a converter's own error: this model's trees are beyond it
        return export, _left_out(export, engine, f"{type(exc).__name__}: {brief(exc)}")
    note = {"engine": engine, "file": file, "max_abs_diff": parity["max_abs_diff"]}
    return candidate, {**note, "latency": parity["latency"]}


def _left_out(export: Export, engine: str, reason: str) -> dict[str, Any]:
    print(
        f"@deploy: warning: publishing without {engine}'s file (the FIL checkpoint serves every batch): "
        f"{reason}",
        file=sys.stderr,
    )
    return {"engine": engine, "left_out": reason}
