"""The one table between Triton datatypes ("FP32"), config enums (TYPE_FP32) and numpy dtypes."""

from __future__ import annotations

import numpy as np

# Triton protocol datatype -> numpy dtype, for inputs and outputs. BYTES is not among them: no input takes it.
NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
# Outputs only: the classification extension answers BYTES, an object array of one bytes per element.
BYTES = np.dtype(object)
DATATYPE: dict[np.dtype, str] = {**{dtype: name for name, dtype in NUMPY.items()}, BYTES: "BYTES"}


def from_config(config_type: str) -> str:
    """TYPE_FP32 -> FP32 (model config enum name to protocol datatype)."""
    return config_type.removeprefix("TYPE_")


def to_config(datatype: str) -> str:
    """FP32 -> TYPE_FP32."""
    return f"TYPE_{datatype}"
