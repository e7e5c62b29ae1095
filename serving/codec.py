"""KServe v2 / Triton HTTP bodies <-> ndarrays: JSON tensors and the binary tensor data extension.

Decoded once at the edge: past this module the server sees ndarrays, never JSON or raw bytes.
A binary request is `<JSON header><tensor bytes>...`, the header's length given by the HTTP
header `Inference-Header-Content-Length`, each binary input sized by `binary_data_size`; the
response mirrors it for outputs asked for in binary (`binary_data`, `binary_data_output`).
BYTES tensors are a JSON string per element, or Triton's raw form (each element after its length,
4 bytes little-endian) in binary and in shared memory; inputs must be UTF-8 text.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from tritonflow.serving import strict_json
from tritonflow.serving.datatypes import BYTES, DATATYPE, TENSOR
from tritonflow.serving.errors import (
    BadTensorData,
    MalformedRequest,
    MissingField,
    Unsupported,
    UnsupportedEncoding,
)

# Content-Encoding -> zlib wbits ("deflate" is the zlib format, as tritonclient sends it).
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_TENSOR = "{name, shape, datatype, data}"
MAX_DIMS = 64  # NOTE: numpy's limit: a longer shape cannot be an array at all


@dataclass(frozen=True, slots=True)
class Region:
    """A place in a registered shared memory region (system shared memory extension)."""

    name: str
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """What a request asks of one output, the same for every transport."""

    binary: bool | None = None  # HTTP binary_data; None: the request's binary_data_output
    class_count: int = 0  # classification extension: the top class_count "score:index[:label]" strings
    region: Region | None = None  # written to this shared memory region instead of the response


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]  # by name, shaped and typed as the request says
    outputs: dict[str, RequestedOutput] | None  # by name, in the order asked; None: every output, as is
    binary_output: bool = False  # HTTP request parameter `binary_data_output`


@dataclass(slots=True)
class InferResponse:
    id: str | None
    stamp: dict[str, str]  # model_name, model_version, deployment_id (and an ensemble's tritonflow_steps)
    outputs: dict[str, np.ndarray]


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo a request's Content-Encoding; the decompressed size is held to the same `limit`."""
    if encoding not in ENCODINGS:
        raise UnsupportedEncoding(encoding, tuple(ENCODINGS))
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    try:
        data = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise MalformedRequest(f"body is not valid {encoding} data: {exc}") from None
    if inflater.unconsumed_tail:
        raise MalformedRequest(f"decompressed body is over the limit of {limit} bytes")
    if not inflater.eof:
        raise MalformedRequest(f"body ends before its {encoding} data does")
    return data


# Reads an input tensor out of a shared memory region: SharedMemory.read(region, datatype, shape).
ReadRegion = Callable[[Region, str, list[int]], np.ndarray]


def read_region(read: ReadRegion, name: str, region: Region, datatype: str, shape: list[int]) -> np.ndarray:
    """Input `name` out of its shared memory region; BYTES as Triton lays them out (the region's
    window holds the length-prefixed elements, so its byte size is theirs)."""
    if datatype != "BYTES":
        return read(region, datatype, shape)
    return deserialize_bytes(name, read(region, "UINT8", [region.byte_size]).tobytes(), shape)


def decode_request(body: bytes, header_length: int | None, read: ReadRegion | None = None) -> InferRequest:
    """Parse an infer request; every framing or tensor error is a MalformedRequest naming the part.
    `read` gives inputs in shared memory (None: a node without the extension refuses them)."""
    if header_length is None:
        text, binary = body, memoryview(b"")
    elif 0 <= header_length <= len(body):
        text, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        raise MalformedRequest(
            f"Inference-Header-Content-Length is {header_length}, but the body has {len(body)} bytes"
        )
    try:
        header = orjson.loads(text)
    except ValueError as exc:
        raise MalformedRequest(f"the inference header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedRequest("the inference header must be a JSON object")
    specs = header.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise MissingField("inputs", f"a non-empty list of {_TENSOR}")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(specs):
        name, array, offset = _decode_input(i, spec, binary, offset, read)
        if name in inputs:
            raise MalformedRequest(f"input {name!r} is given twice")
        inputs[name] = array
    if offset != len(binary):
        raise MalformedRequest(
            f"{len(binary) - offset} bytes of binary data follow the inputs' binary_data_size total"
        )
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedRequest(f"id must be a string, got {request_id!r}")
    parameters = _object(header.get("parameters"), "parameters")
    return InferRequest(
        request_id, inputs, _requested_outputs(header.get("outputs")), _flag(parameters, "binary_data_output")
    )


def _decode_input(
    i: int, spec: Any, binary: memoryview, offset: int, read: ReadRegion | None
) -> tuple[str, np.ndarray, int]:
    if not isinstance(spec, dict):
        raise MalformedRequest(f"inputs[{i}] must be an object {_TENSOR}")
    name = spec.get("name")
    if not isinstance(name, str):
        raise MissingField(f"inputs[{i}].name", "a string")
    datatype = spec.get("datatype")
    dtype = TENSOR.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise MalformedRequest(
            f"input {name!r}: datatype {datatype!r} is not served: expected one of {', '.join(TENSOR)}"
        )
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise MissingField(f"input {name!r} shape", f"a list of at most {MAX_DIMS} non-negative integers")
    parameters = _object(spec.get("parameters"), f"input {name!r} parameters")
    if "shared_memory_region" in parameters:
        if read is None:
            raise Unsupported("shared memory")
        if "data" in spec or "binary_data_size" in parameters:
            raise MalformedRequest(f"input {name!r} has data and a shared memory region: give one")
        region = shared_memory_region(f"input {name!r}", parameters)
        return name, read_region(read, name, region, DATATYPE[dtype], shape), offset
    count = math.prod(shape)
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise MalformedRequest(f"input {name!r} has both data and binary_data_size: give one")
        if dtype == BYTES:
            if type(size) is not int or not 0 <= size <= len(binary) - offset:
                raise MalformedRequest(
                    f"input {name!r}: binary_data_size is {size!r}, but {len(binary) - offset} bytes of "
                    f"binary data are left at offset {offset}"
                )
            return name, deserialize_bytes(name, binary[offset : offset + size], shape), offset + size
        expected = count * dtype.itemsize
        if type(size) is not int or size != expected:
            raise MalformedRequest(
                f"input {name!r}: binary_data_size is {size!r}, but shape {shape} of {datatype} "
                f"takes {expected} bytes"
            )
        if offset + size > len(binary):
            raise MalformedRequest(
                f"input {name!r} needs {size} bytes of binary data at offset {offset}, "
                f"but only {len(binary) - offset} are left"
            )
        array = np.frombuffer(binary, dtype, count, offset)
        # NOTE: the JSON header's length puts tensors at any byte offset; engines want aligned data.
        if not array.flags.aligned:
            array = array.copy()
        return name, array.reshape(shape), offset + size
    data = spec.get("data")
    if data is None:
        raise MissingField(f"input {name!r} data", "'data' (flat or nested) or parameters.binary_data_size")
    array = strings_from_json(name, data) if dtype == BYTES else strict_json.to_array(name, datatype, data)
    if array.size != count:
        raise MalformedRequest(f"input {name!r}: data has {array.size} values, shape {shape} takes {count}")
    return name, array.reshape(shape), offset


def _requested_outputs(specs: Any) -> dict[str, RequestedOutput] | None:
    if specs is None:
        return None
    if not isinstance(specs, list):
        raise MalformedRequest("outputs must be a list of {name, parameters}")
    outputs: dict[str, RequestedOutput] = {}
    for i, spec in enumerate(specs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise MissingField(f"outputs[{i}].name", "a string")
        if name in outputs:
            raise MalformedRequest(f"output {name!r} is asked for twice")
        parameters = _object(spec.get("parameters"), f"output {name!r} parameters")
        region = None
        if "shared_memory_region" in parameters:
            region = shared_memory_region(f"output {name!r}", parameters)
        binary = _flag(parameters, "binary_data") if "binary_data" in parameters else None
        count = class_count(name, parameters.get("classification", 0))
        outputs[name] = RequestedOutput(binary, count, region)
    return outputs


def class_count(output: str, value: Any) -> int:
    """The classification extension's class count of an output, checked as every transport sends it."""
    if type(value) is not int or value < 0:
        raise MalformedRequest(
            f"output {output!r}: classification is {value!r}: expected the number of top classes to "
            "answer (a positive integer; 0: the output itself)"
        )
    return value


def shared_memory_region(tensor: str, parameters: dict[str, Any]) -> Region:
    """A tensor's shared_memory_region, _offset (default 0) and _byte_size, checked for every transport."""
    name, offset = parameters.get("shared_memory_region"), parameters.get("shared_memory_offset", 0)
    size = parameters.get("shared_memory_byte_size")
    if not isinstance(name, str) or type(offset) is not int or type(size) is not int or min(offset, size) < 0:
        raise MalformedRequest(
            f"{tensor}: shared_memory_region {name!r}, shared_memory_offset {offset!r}, "
            f"shared_memory_byte_size {size!r}: expected a region's name and two non-negative integers"
        )
    return Region(name, offset, size)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedRequest(f"{what} must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise MalformedRequest(f"parameter {key} must be true or false, got {value!r}")
    return value


def deserialize_bytes(name: str, raw: bytes | memoryview, shape: list[int]) -> np.ndarray:
    """A BYTES input from Triton's raw form (each element after its length, 4 bytes little-endian),
    every element UTF-8 text; any framing or text error names the input and the element."""
    count, view, at = math.prod(shape), memoryview(raw), 0
    items: list[bytes] = []
    for i in range(count):
        if len(view) - at < 4:
            raise MalformedRequest(
                f"input {name!r}: BYTES element {i} needs a 4-byte length at byte {at}, but "
                f"{len(view) - at} bytes are left (shape {shape} takes {count} elements)"
            )
        length = int.from_bytes(view[at : at + 4], "little")
        at += 4
        if length > len(view) - at:
            raise MalformedRequest(
                f"input {name!r}: BYTES element {i} is {length} bytes long at byte {at}, but only "
                f"{len(view) - at} bytes are left"
            )
        items.append(bytes(view[at : at + length]))
        at += length
    if at != len(view):
        raise MalformedRequest(
            f"input {name!r}: {len(view) - at} bytes follow the last of its {count} BYTES elements "
            f"(shape {shape})"
        )
    return text_array(name, items).reshape(shape)


def text_array(name: str, items: list[bytes]) -> np.ndarray:
    """A flat BYTES array of `items`, once each is UTF-8 text (the engines of the node take strings)."""
    for i, item in enumerate(items):
        try:
            item.decode()
        except UnicodeDecodeError as exc:
            raise BadTensorData(
                name,
                "BYTES",
                f"element {i} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                "send UTF-8 strings",
            ) from None
    array = np.empty(len(items), BYTES)
    array[:] = items
    return array


def strings_from_json(name: str, data: Any) -> np.ndarray:
    """A BYTES input's JSON `data`: strings (flat or nested), as Triton takes them; nothing else."""
    if type(data) is not list:
        raise BadTensorData(name, "BYTES", f"data is {type(data).__name__}", "send a list of strings")
    values = data
    while values and all(type(v) is list for v in values):
        values = [leaf for v in values for leaf in v]
    for i, value in enumerate(values):
        if type(value) is not str:
            shown = "a list" if type(value) is list else orjson.dumps(value).decode()[:40]
            raise BadTensorData(
                name, "BYTES", f"value {i} is {shown}", "send strings (flat, or nested evenly as the shape)"
            )
    array = np.empty(len(values), BYTES)
    array[:] = [v.encode() for v in values]
    return array


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor's raw form, as Triton's wire carries it: each element, in row-major order,
    after its length as 4 little-endian bytes."""
    return b"".join(len(item).to_bytes(4, "little") + item for item in array.ravel().tolist())


def tensor_bytes(array: np.ndarray) -> bytes:
    """An output's raw bytes, as every transport sends them (HTTP binary, gRPC raw_output_contents,
    a shared memory region): BYTES serialized, any other datatype as its array's memory."""
    return serialize_bytes(array) if array.dtype == BYTES else array.tobytes()


def response_parameters(stamp: dict[str, str]) -> dict[str, str]:
    """The response parameters of a stamp: deployment_id, and an ensemble's tritonflow_steps."""
    return {k: v for k, v in stamp.items() if k not in ("model_name", "model_version")}


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    wanted = request.outputs
    outputs, chunks = [], []
    for name, array in response.outputs.items():
        asked = wanted[name] if wanted else RequestedOutput()
        entry: dict[str, Any] = {"name": name, "datatype": DATATYPE[array.dtype], "shape": list(array.shape)}
        outputs.append(entry)
        if asked.region is not None:
            continue  # NOTE: written into its region by the data plane: Triton answers name, datatype, shape
        if request.binary_output if asked.binary is None else asked.binary:
            raw = tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            # NOTE: BYTES in JSON is a string per element (classification's are UTF-8: labels files are)
            entry["data"] = (
                [b.decode() for b in array.ravel()] if array.dtype == BYTES else array.ravel().tolist()
            )
    stamp = response.stamp
    body: dict[str, Any] = {"model_name": stamp["model_name"], "model_version": stamp["model_version"]}
    if response.id is not None:
        body["id"] = response.id
    body["parameters"] = response_parameters(stamp)
    body["outputs"] = outputs
    header = orjson.dumps(body)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
