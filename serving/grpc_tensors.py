"""Triton gRPC ModelInferRequest/Response <-> the codec's InferRequest/InferResponse.

Decoded once at the edge, as serving/codec.py does for HTTP: raw contents become arrays without a
copy (np.frombuffer), typed contents (fp32_contents, int64_contents...) one array each, and every
framing mistake is a MalformedRequest naming the input, with Triton's words where clients match them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from tritonflow.serving.codec import (
    MAX_DIMS,
    InferRequest,
    InferResponse,
    ReadRegion,
    RequestedOutput,
    class_count,
    deserialize_bytes,
    read_region,
    response_parameters,
    shared_memory_region,
    tensor_bytes,
    text_array,
)
from tritonflow.serving.datatypes import BYTES, DATATYPE, TENSOR
from tritonflow.serving.errors import MalformedRequest

# Datatype -> the InferTensorContents field that holds it typed (FP16 has none: raw contents only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_request(request: pb.ModelInferRequest, read: ReadRegion | None = None) -> InferRequest:
    """The request's inputs as arrays and what it asks of its outputs; `read` gives inputs in shared
    memory (None: refused)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise MalformedRequest(
            f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents: give one "
            "raw_input_contents per input, in the inputs' order, or typed contents for every input"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise MalformedRequest(f"input {tensor.name!r} is given twice")
        inputs[tensor.name] = _input(tensor, raw[i] if raw else None, read)
    outputs: dict[str, RequestedOutput] | None = None
    if request.outputs:
        outputs = {}
        for asked in request.outputs:
            if asked.name in outputs:
                raise MalformedRequest(f"output {asked.name!r} is asked for twice")
            outputs[asked.name] = _requested(asked)
    return InferRequest(request.id or None, inputs, outputs)


def _input(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, read: ReadRegion | None
) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    dtype = TENSOR.get(datatype)
    if dtype is None:
        raise MalformedRequest(
            f"input {name!r}: datatype {datatype!r} is not served: expected one of {', '.join(TENSOR)}"
        )
    shape = list(tensor.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise MalformedRequest(f"input {name!r}: shape {shape} is not at most {MAX_DIMS} non-negative sizes")
    if "shared_memory_region" in tensor.parameters:
        if read is None:
            raise MalformedRequest(f"input {name!r}: this node has no shared memory regions to read from")
        if raw is not None or tensor.HasField("contents"):
            raise MalformedRequest(f"input {name!r} has data and a shared memory region: give one")
        region = shared_memory_region(f"input {name!r}", _values(tensor.parameters))
        return read_region(read, name, region, datatype, shape)
    count = math.prod(shape)
    typed = tensor.HasField("contents")
    if raw is not None:
        if typed:
            raise MalformedRequest(
                f"contents field must not be specified when using raw_input_contents for {name!r}: give one"
            )
        if dtype == BYTES:
            return deserialize_bytes(name, raw, shape)
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise MalformedRequest(
                f"input byte size mismatch for input {name!r}: expected {expected} "
                f"(shape {shape} of {datatype}), got {len(raw)}"
            )
        array = np.frombuffer(raw, dtype)
        # NOTE: a bytes object's data is 16-byte aligned in CPython; checked, as an engine needs it
        return (array if array.flags.aligned else array.copy()).reshape(shape)
    field = CONTENTS.get(datatype)
    sent = [f for f, _ in tensor.contents.ListFields()] if typed else []
    if field is None or any(f.name != field for f in sent):
        where = f"contents.{field}" if field else "raw_input_contents (it has no typed contents field)"
        raise MalformedRequest(
            f"input {name!r} of datatype {datatype} has its data in "
            f"{', '.join(f.name for f in sent) or 'no field'}: expected {where}"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise MalformedRequest(
            f"input {name!r}: contents has {len(values)} values, shape {shape} takes {count}"
        )
    if dtype == BYTES:
        return text_array(name, list(values)).reshape(shape)
    return np.asarray(values, dtype).reshape(shape)


def _requested(asked: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    """`classification` -> class_count; the shared memory parameters -> Region; binary_data ignored."""
    if not asked.parameters:
        return RequestedOutput()
    parameters = _values(asked.parameters)
    tensor = f"output {asked.name!r}"
    region = shared_memory_region(tensor, parameters) if "shared_memory_region" in parameters else None
    return RequestedOutput(None, class_count(asked.name, parameters.get("classification", 0)), region)


def _values(parameters: Any) -> dict[str, Any]:
    """A parameters map as the plain values the codec checks (InferParameter holds one of them)."""
    return {
        key: getattr(p, p.WhichOneof("parameter_choice") or "string_param") for key, p in parameters.items()
    }


def encode_response(response: InferResponse, request: InferRequest) -> pb.ModelInferResponse:
    """The stamp in `parameters` beside model_name/version; each output's bytes in raw_output_contents."""
    stamp = response.stamp
    message = pb.ModelInferResponse(
        model_name=stamp["model_name"], model_version=stamp["model_version"], id=response.id or ""
    )
    for key, value in response_parameters(stamp).items():
        message.parameters[key].string_param = value
    wanted = request.outputs
    for name, array in response.outputs.items():
        tensor = message.outputs.add(name=name, datatype=DATATYPE[array.dtype], shape=array.shape)
        region = wanted[name].region if wanted else None
        if region is not None:
            tensor.parameters["shared_memory_region"].string_param = region.name
            tensor.parameters["shared_memory_offset"].int64_param = region.offset
            tensor.parameters["shared_memory_byte_size"].int64_param = region.byte_size
            message.raw_output_contents.append(b"")  # NOTE: clients find each output's bytes by its index
        else:
            message.raw_output_contents.append(tensor_bytes(array))
    return message
