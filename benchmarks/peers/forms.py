"""A peer's own HTTP request and answer: JSON rows in, class probabilities out.

The node and Triton take binary tensors through tritonclient for batches; the peers are sent what
their users send them, plain JSON, for single rows and batches alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Form:
    """POST `encode(rows)` to `path`; `decode(body)` is the (rows, classes) probabilities."""

    path: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]


def v2_json(model: str, output: str | None = None) -> Form:
    """KServe v2 JSON, as the node's single-row request (input `input__0`); `output` asks for one by name."""

    def encode(rows: np.ndarray) -> bytes:
        tensor = {"name": "input__0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}
        request: dict[str, object] = {"inputs": [tensor]}
        if output:
            request["outputs"] = [{"name": output}]
        return json.dumps(request).encode()

    def decode(body: bytes) -> np.ndarray:
        first = json.loads(body)["outputs"][0]
        return np.asarray(first["data"], dtype=np.float64).reshape(first["shape"])

    return Form(f"/v2/models/{model}/infer", encode, decode)


def json_rows(path: str, wrap: Callable[[list[list[float]]], object], unwrap: Callable[[Any], Any]) -> Form:
    """Rows as a JSON list of lists, `wrap`ped into the peer's body; `unwrap` finds the probabilities."""
    return Form(
        path,
        lambda rows: json.dumps(wrap(rows.tolist())).encode(),
        lambda body: np.asarray(unwrap(json.loads(body)), dtype=np.float64),
    )
