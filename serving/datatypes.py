"""The one table between Triton datatypes ("FP32"), config enums (TYPE_FP32) and numpy dtypes."""

from __future__ import annotations

import numpy as np

# Triton protocol datatype -> numpy dtype, the numeric ones: fixed-size elements, JSON numbers.
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
# BYTES (TYPE_STRING): an object array of one `bytes` per element, inside the node as on Triton's
# wire. Inputs are text: the edge checks that every element is UTF-8 (the engines take strings).
BYTES = np.dtype(object)
# Every datatype a tensor can have, inputs and outputs.
TENSOR: dict[str, np.dtype] = {**NUMPY, "BYTES": BYTES}
DATATYPE: dict[np.dtype, str] = {**{dtype: name for name, dtype in NUMPY.items()}, BYTES: "BYTES"}


def from_config(config_type: str) -> str:
    """TYPE_FP32 -> FP32 (model config enum name to protocol datatype; TYPE_STRING -> BYTES)."""
    return "BYTES" if config_type == "TYPE_STRING" else config_type.removeprefix("TYPE_")


def to_config(datatype: str) -> str:
    """FP32 -> TYPE_FP32; BYTES -> TYPE_STRING."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
