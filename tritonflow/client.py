"""`infer_frame`: a pandas DataFrame in, a model's answer and the deployment that gave it out.

A thin layer over tritonclient, for any Triton server (tritonflow's node or Triton itself). The
model's metadata says what to send: a model with one input per column (a tabular ensemble) gets
each column by name, strings as BYTES; a model with one matrix input (a bare forest) gets the
frame's columns as that matrix, in the frame's order. Columns are checked against the model before
anything is sent, so a missing, extra or mistyped column is an error naming it, not a 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from tritonclient.utils import InferenceServerException

from tritonflow.serving.frames import FrameError, column_tensor

if TYPE_CHECKING:
    import pandas as pd


def infer_frame(
    url: str, model: str, frame: pd.DataFrame, *, version: str = "", protocol: str = "http"
) -> tuple[np.ndarray, str | None]:
    """The model's first output for `frame`'s rows, and the deployment ID the server stamped on
    the answer (None from a server that stamps none, such as Triton itself)."""
    if protocol not in ("http", "grpc"):
        raise FrameError(f"protocol {protocol!r} is not one of http, grpc")
    if protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    client = client_module.InferenceServerClient(url)
    try:
        metadata = _metadata(client, model, version, protocol)
        tensors = []
        for name, datatype, rows in frame_inputs(frame, metadata["inputs"]):
            tensor = client_module.InferInput(name, list(rows.shape), datatype)
            tensor.set_data_from_numpy(rows)
            tensors.append(tensor)
        output = metadata["outputs"][0]["name"]
        try:
            result = client.infer(model, tensors, model_version=version)
        except InferenceServerException as exc:
            raise FrameError(f"model {model!r} refused the frame: {exc.message()}") from None
        return result.as_numpy(output), _deployment_id(result.get_response(), protocol)
    finally:
        client.close()


def frame_inputs(frame: pd.DataFrame, inputs: list[dict[str, Any]]) -> list[tuple[str, str, np.ndarray]]:
    """(input name, datatype, array) per model input, from the model metadata's `inputs`."""
    columns = [str(c) for c in frame.columns]
    names = [i["name"] for i in inputs]
    if len(inputs) == 1 and names[0] not in columns:  # one matrix input: the whole frame
        (only,) = inputs
        width = only["shape"][-1] if len(only["shape"]) > 1 else 1
        if width not in (-1, len(columns)):
            raise FrameError(
                f"model input {only['name']!r} takes {width} columns, the frame has {len(columns)}: "
                "send the columns the model was trained on, in that order"
            )
        return [(only["name"], only["datatype"], column_tensor(frame, None, only["datatype"]))]
    missing = [n for n in names if n not in columns]
    extra = [c for c in columns if c not in names]
    if missing or extra:
        raise FrameError(
            f"the frame's columns do not match the model's inputs: "
            f"{'missing ' + ', '.join(map(repr, missing)) if missing else ''}"
            f"{'; ' if missing and extra else ''}{'extra ' + ', '.join(map(repr, extra)) if extra else ''} "
            f"(the model takes {', '.join(names)})"
        )
    out = []
    for spec in inputs:
        rows = column_tensor(frame, spec["name"], spec["datatype"])
        out.append((spec["name"], spec["datatype"], rows if len(spec["shape"]) > 1 else rows.ravel()))
    return out


def _metadata(client: Any, model: str, version: str, protocol: str) -> dict[str, Any]:
    """The model's metadata, shapes as ints (gRPC's JSON form spells int64 as strings)."""
    try:
        if protocol == "http":
            metadata: dict[str, Any] = client.get_model_metadata(model, model_version=version)
        else:
            metadata = client.get_model_metadata(model, model_version=version, as_json=True)
    except InferenceServerException as exc:
        raise FrameError(f"cannot read the metadata of model {model!r}: {exc.message()}") from None
    except OSError as exc:  # NOTE: HTTP's client raises the socket's error (refused, unreachable)
        raise FrameError(f"cannot reach the server for model {model!r}: {exc}") from None
    for tensor in (*metadata["inputs"], *metadata["outputs"]):
        tensor["shape"] = [int(d) for d in tensor["shape"]]
    return metadata


def _deployment_id(response: Any, protocol: str) -> str | None:
    if protocol == "http":
        value = (response.get("parameters") or {}).get("deployment_id")
        return str(value) if value is not None else None
    parameters = response.parameters
    return parameters["deployment_id"].string_param if "deployment_id" in parameters else None
