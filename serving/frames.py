"""A pandas DataFrame as the tensors of a model with one input per column, and back to Triton types.

One encoding for every side that turns a frame into tensors: the client (`tritonflow.client`),
the export of a tabular pipeline and its parity gate (plugin/exporters/tabular.py). Strings go as
BYTES (UTF-8), numbers as the column's own type, each column a [rows, 1] tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tritonflow.lineage.errors import TritonflowError

if TYPE_CHECKING:
    import pandas as pd

# Triton datatype -> numpy dtype, for the inputs a frame can fill
NUMPY = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
# What a missing value (None, NaN) of a string column is sent as: the empty string.
MISSING_STRING = ""


class FrameError(TritonflowError):
    """A frame that does not fit a model's inputs; the message names the column."""


def column_datatype(column: pd.Series) -> str:
    """The Triton datatype a column travels as: its numeric type, else BYTES (str, object and
    category columns; pandas 3 gives text columns the `str` dtype, not object)."""
    import pandas as pd

    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(dtype):
        return "BYTES"
    if pd.api.types.is_bool_dtype(dtype):
        return "BOOL"
    kind = np.dtype(dtype).name.upper().replace("FLOAT", "FP")
    if kind not in NUMPY:
        raise FrameError(f"column {column.name!r} has the dtype {dtype}, which no Triton datatype holds")
    return kind


def column_tensor(frame: pd.DataFrame, name: str | None, datatype: str) -> np.ndarray:
    """One column as the datatype's [rows, 1] array (with `name` None: the whole frame as a
    [rows, columns] matrix); strings as an object array of UTF-8 bytes."""
    # NOTE: a Series, not frame[[name]]: a one-column DataFrame costs ~0.3 ms per column to slice
    values = frame if name is None else frame[name]
    what = "the frame" if name is None else f"column {name!r}"
    shape = (len(frame), -1)
    if datatype == "BYTES":
        flat = values.to_numpy(dtype=object).ravel()
        encoded = [MISSING_STRING.encode() if _missing(v) else str(v).encode() for v in flat]
        return np.array(encoded, dtype=object).reshape(shape)
    if datatype not in NUMPY:
        raise FrameError(f"{what}: the model's datatype {datatype} cannot be filled from a frame")
    try:
        return values.to_numpy(dtype=NUMPY[datatype]).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise FrameError(f"{what} must hold numbers for the model's {datatype} input: {exc}") from None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)
