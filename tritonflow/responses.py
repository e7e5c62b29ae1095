"""The deployment ID a response names, in each form a user holds one: a saved body (a file or its
bytes, JSON or binary), the parsed JSON body, the headers, or a tritonclient InferResult.

The node's stamp (`parameters.deployment_id`, header `x-deployment-id`) wins; stock Triton's
`model_name` and `model_version` give the short form, which the repository resolves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from email.message import Message
from pathlib import Path
from typing import Any, TypeAlias

from tritonflow.lineage.errors import TritonflowError

HEADER = "x-deployment-id"
# what `lineage_of` takes: a deployment ID, a saved response file, its bytes, the JSON body, the headers
# (a mapping or http.client's message), or a tritonclient InferResult (HTTP or gRPC)
Response: TypeAlias = str | os.PathLike[str] | bytes | Mapping[str, Any] | Message | Any


def deployment_id_of(response: Response) -> str:
    """The full or short deployment ID `response` names; a string is taken as the ID itself."""
    if isinstance(response, str):
        return response
    if isinstance(response, os.PathLike):
        return id_from_file(Path(response))
    if isinstance(response, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(response), "the response bytes", "pass the whole body")
    if isinstance(response, Message):  # NOTE: http.client and urllib headers; .get ignores case
        if stamp := response.get(HEADER):
            return str(stamp)
        raise TritonflowError(f"the headers have no {HEADER}: pass the response body instead")
    get_response = getattr(response, "get_response", None)
    if callable(get_response):  # a tritonclient InferResult: a dict over HTTP, a ModelInferResponse over gRPC
        response = get_response()
    if isinstance(response, Mapping):
        return _from_mapping(response)
    if hasattr(response, "parameters") and hasattr(response, "model_name"):
        return _from_message(response)
    raise TritonflowError(
        f"cannot read a deployment ID from a {type(response).__name__}: give the ID, a saved "
        "response file (pathlib.Path), its bytes, the JSON body as a dict, the response headers, "
        "or a tritonclient InferResult"
    )


def id_from_file(path: Path) -> str:
    """The stamp of a saved response (`tritonflow lineage --response FILE`)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TritonflowError(f"cannot read --response {path}: {exc.strerror}") from None
    return _from_bytes(raw, str(path), "save the whole response body")


def _from_bytes(raw: bytes, where: str, fix: str) -> str:
    try:
        # A binary-extension body starts with its JSON header; raw_decode stops where JSON ends.
        body, _ = json.JSONDecoder().raw_decode(raw.decode("utf-8", errors="replace").lstrip())
    except ValueError:
        raise TritonflowError(f"{where} is not an inference response: it does not start with JSON") from None
    found = _from_body(body) if isinstance(body, dict) else None
    if found is None:
        raise TritonflowError(
            f"{where} has neither parameters.deployment_id nor model_name and model_version: {fix}"
        )
    return found


def _from_mapping(mapping: Mapping[str, Any]) -> str:
    """A JSON body, or headers (any case, as requests and tritonclient give them)."""
    stamp = next((v for k, v in mapping.items() if isinstance(k, str) and k.lower() == HEADER), None)
    found = str(stamp) if stamp else _from_body(mapping)
    if found is None:
        raise TritonflowError(
            f"the response has neither parameters.deployment_id, model_name and model_version, nor an "
            f"{HEADER} header: pass the whole body or its headers"
        )
    return found


def _from_body(body: Mapping[str, Any]) -> str | None:
    stamp = (body.get("parameters") or {}).get("deployment_id")
    if isinstance(stamp, dict):  # NOTE: gRPC's get_response(as_json=True) keeps InferParameter's oneof
        stamp = stamp.get("string_param")
    if stamp:
        return str(stamp)
    if body.get("model_name") and body.get("model_version"):
        return f"{body['model_name']}:{body['model_version']}"
    return None


def _from_message(message: Any) -> str:
    """A gRPC ModelInferResponse: the stamp is a string parameter."""
    if "deployment_id" in message.parameters:
        return str(message.parameters["deployment_id"].string_param)
    if message.model_name and message.model_version:
        return f"{message.model_name}:{message.model_version}"
    raise TritonflowError(
        "the gRPC response has neither parameters['deployment_id'] nor model_name and model_version"
    )
