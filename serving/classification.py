"""The classification extension: instead of an output, its top `class_count` entries, as Triton answers.

Per batch row (the whole tensor for a model without batching), the elements of the output,
flattened, ranked by value: each becomes the string "<value>:<index>", or "<value>:<index>:<label>"
when the output has a labels file, the value formatted as C++ std::to_string does ("%f" for floats).
The answer is a BYTES tensor of shape [rows, min(class_count, elements)] ([min(...)] unbatched).
Measured on Triton 24.10 (tests/triton/test_triton_classification.py): a class_count above the
element count answers every element, and equal values come in the order Triton's std::sort leaves
them: column order up to 16 columns (it insertion-sorts those), beyond that the order stl_sort
reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tritonflow.serving.errors import Unsupported
from tritonflow.serving.stl_sort import THRESHOLD, stl_sort

# Triton's classification takes every integer and float type but FP16 (and neither BOOL nor BYTES).
CLASSIFIABLE = frozenset(
    ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"]
)


def check_classifiable(output: str, datatype: str, model: str) -> None:
    """Refuse, before inference, a class_count on an output Triton cannot rank."""
    if datatype not in CLASSIFIABLE:
        raise Unsupported(
            f"classification of output {output!r} of model {model} ({datatype})",
            f"it ranks outputs of type {', '.join(sorted(CLASSIFIABLE))}: ask for the output itself",
        )


def classify(array: np.ndarray, class_count: int, batched: bool, labels: Sequence[str] | None) -> np.ndarray:
    """The top `class_count` "<value>:<index>[:<label>]" strings of each row of `array`, as bytes."""
    values = array.reshape(len(array) if batched else 1, -1)
    columns = values.shape[1]
    top = min(class_count, columns)
    # NOTE: a stable ascending sort of the reversed columns, read backwards: descending, ties in column order
    order = columns - 1 - np.argsort(values[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :top]
    if columns > THRESHOLD:
        _std_order(values, order)
    form = "%f" if values.dtype.kind == "f" else "%d"
    names = list(labels or ())
    # NOTE: as Triton's label provider: no line for the index (or an empty one) answers no label
    suffix = {
        i: f":{i}:{names[i]}" if i < len(names) and names[i] else f":{i}" for i in np.unique(order).tolist()
    }
    scores = np.take_along_axis(values, order, axis=1).ravel().tolist()
    ranked = np.empty(order.size, dtype=object)
    ranked[:] = [(form % v + suffix[i]).encode() for v, i in zip(scores, order.ravel().tolist(), strict=True)]
    return ranked.reshape(order.shape if batched else order.shape[1:])


def _std_order(values: np.ndarray, order: np.ndarray) -> None:
    """Reorder the rows whose answer holds a value that another column has too, as std::sort leaves
    them: past its insertion sort only equal values make its order differ from a stable one."""
    top = order.shape[1]
    descending = np.sort(values, axis=1)[:, ::-1]
    pairs = min(top, values.shape[1] - 1)  # each answered value against the next one
    found: dict[tuple[Any, ...], list[int]] = {}  # NOTE: rows with the same values share the work
    for row in np.flatnonzero((descending[:, 1 : pairs + 1] == descending[:, :pairs]).any(axis=1)).tolist():
        scores = values[row].tolist()
        key = tuple(scores)
        if key not in found:
            found[key] = _std_sorted(scores)[:top]
        order[row] = found[key]


def _std_sorted(scores: list[Any]) -> list[int]:
    """The columns as Triton's std::sort, with its comparison, leaves them."""
    ranked = list(range(len(scores)))
    stl_sort(ranked, lambda i, j: scores[i] > scores[j])
    return ranked
