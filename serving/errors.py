"""Errors a client can act on: one base carrying the HTTP status, typed subclasses, one renderer.

Subclasses build their message from typed arguments so that every error says what was expected.
An error raised after the model version is resolved carries that version's stamp, so a client
sees which deployment refused it (header `x-deployment-id` and the body's `deployment_id`).
"""

from __future__ import annotations

import json

from tritonflow.lineage.errors import TritonflowError

Headers = list[tuple[bytes, bytes]]
JSON_TYPE = (b"content-type", b"application/json")


class ServingError(TritonflowError):
    """A request the server cannot serve; `status` is the HTTP status it answers with."""

    status = 400
    retry_after: int | None = None  # seconds; sent as Retry-After when set (429, 503)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: model_name, model_version and deployment_id of the version that raised it, once resolved
        self.stamp: dict[str, str] | None = None


class MalformedRequest(ServingError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"malformed request: {detail}")


class BadTensorData(MalformedRequest):
    """A JSON tensor value its datatype would not hold as sent: a string, a boolean, a fraction, too big."""

    def __init__(self, name: str, datatype: str, problem: str, remedy: str) -> None:
        super().__init__(f"input {name!r}: data is not {datatype}: {problem}: {remedy}")


class MissingField(ServingError):
    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"malformed request: missing {field}: expected {expected}")


class Unsupported(ServingError):
    def __init__(self, feature: str, instead: str = "") -> None:
        super().__init__(f"{feature} is not supported by this server" + (f": {instead}" if instead else ""))


class RepositoryNameUnsupported(ServingError):
    status = 501  # NOTE: Triton's UNSUPPORTED (gRPC UNIMPLEMENTED), its text, which clients match

    def __init__(self, name: str) -> None:
        super().__init__(
            f"'repository_name' specification is not supported: the node serves one repository, got "
            f"{name[:100]!r}: leave repository_name empty"
        )


class RequestTooLarge(ServingError):
    status = 413

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"request body of {size} bytes is over the limit of {limit} bytes "
            "(split the batch, or start the server with a larger --max-request-bytes)"
        )


class UnsupportedEncoding(ServingError):
    status = 415

    def __init__(self, encoding: str, supported: tuple[str, ...]) -> None:
        super().__init__(f"Content-Encoding {encoding!r} is not supported: use one of {', '.join(supported)}")


class RouteNotFound(ServingError):
    status = 404

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"no endpoint {method} {path} (see the KServe v2 / Triton HTTP API)")


class MethodNotAllowed(ServingError):
    status = 405

    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(f"{method} is not allowed on {path}: use {' or '.join(allowed)}")


class ModelNotFound(ServingError):
    """Triton's text for a model or version that is not there (its clients and examples match it)."""

    status = 404

    def __init__(self, name: str, version: int | None = None, reason: str | None = None) -> None:
        what = f"model {name!r}" if version is None else f"model {name!r} version {version}"
        unknown = f"Request for unknown model: {name!r}" + ("" if version is None else f" version {version}")
        super().__init__(f"{what} is not available: {reason}" if reason else f"{unknown} is not found")


class InvalidVersion(ServingError):
    def __init__(self, text: str) -> None:
        super().__init__(f"model version {text!r} is not a version number: expected a positive integer")


class InvalidModelName(ServingError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class Forbidden(ServingError):
    """A restricted API group called without its header (`--restrict`)."""

    status = 403

    def __init__(self, group: str, header: str) -> None:
        super().__init__(
            f"this endpoint belongs to the restricted API group {group!r}: send the header {header!r} "
            "with the value the server was started with (--restrict)"
        )


class ModelControlDisabled(ServingError):
    def __init__(self, action: str, mode: str) -> None:
        super().__init__(
            f"{action} requests are refused in model control mode {mode!r}: the server follows the "
            "repository; start it with --model-control-mode explicit to load and unload by request"
        )


class TooManyRequests(ServingError):
    status = 429

    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(f"too many {what} requests at once: retry in {retry_after} s")
        self.retry_after = retry_after


class UnknownTensor(ServingError):
    def __init__(self, kind: str, name: str, model: str, expected: list[str]) -> None:
        super().__init__(f"unknown {kind} {name!r} for model {model}: expected {kind}s {', '.join(expected)}")


class MissingInputs(ServingError):
    def __init__(self, model: str, missing: list[str]) -> None:
        super().__init__(f"model {model} needs inputs {', '.join(missing)}, which the request does not have")


class WrongDatatype(ServingError):
    def __init__(self, name: str, model: str, got: str, expected: str) -> None:
        super().__init__(f"input {name!r} of model {model} has datatype {got}: expected {expected}")


class WrongShape(ServingError):
    def __init__(self, name: str, model: str, got: list[int], expected: list[int]) -> None:
        super().__init__(
            f"input {name!r} of model {model} has shape {got}: expected {expected} (-1: any size)"
        )


class BadBatchSize(ServingError):
    def __init__(self, model: str, rows: int, limit: int) -> None:
        super().__init__(f"request for model {model} has {rows} rows: expected 1 to {limit} (max_batch_size)")


class LoadFailed(ServingError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"failed to load {name!r}: {reason}")  # NOTE: Triton's words, which clients match


class UnknownRegion(ServingError):
    """Triton's text and status for a shared memory region that is not registered."""

    status = 404

    def __init__(self, name: str, kind: str = "") -> None:
        # NOTE: Triton names the kind in status calls ("system", "cuda"), not in an infer request
        super().__init__(f"Unable to find {kind + ' ' if kind else ''}shared memory region: {name!r}")


class RegionExists(ServingError):
    def __init__(self, name: str) -> None:
        super().__init__(f"shared memory region {name!r} already in manager: unregister it first")


class BadRegion(ServingError):
    """A shared memory key, window or size the node will not touch (Triton answers some with a 500)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class CudaSharedMemoryUnavailable(ServingError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"failed to register CUDA shared memory region {name!r}: this node has no GPU: "
            "use system shared memory"
        )


class ServerNotReady(ServingError):
    status = 503

    def __init__(self, reason: str = "the server is starting or shutting down") -> None:
        super().__init__(reason)


class InferenceFailed(ServingError):
    """The engine failed on a request that passed every check: a server-side fault, logged."""

    status = 500

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"inference failed in model {model}: {reason}")


class ValuesRefused(ServingError):
    """The model refused a request's values (an encoder that refuses categories it never saw): the
    client's to change, not a server fault."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(
            f"model {model} refused the request's values: {reason}: send values the model was trained "
            "on, or deploy it with an encoder that takes unknown ones (handle_unknown='ignore')"
        )


class InvalidSetting(ServingError):
    """A log or trace setting the node does not know, a bad value, or one it cannot honour."""

    def __init__(self, kind: str, key: str, value: object, expected: str) -> None:
        super().__init__(f"{kind} setting {key!r} cannot be {value!r}: {expected}")


class InternalError(ServingError):
    status = 500

    def __init__(self) -> None:
        super().__init__("internal server error (the server log has the traceback)")


class InflightBytesExceeded(ServingError):
    status = 503
    retry_after = 1

    def __init__(self, size: int, held: int, limit: int) -> None:
        super().__init__(
            f"a request body of {size} bytes does not fit beside the {held} bytes of bodies in flight: "
            f"the server holds at most {limit} (--max-inflight-bytes): retry shortly, send smaller "
            "batches, or start the server with a larger --max-inflight-bytes"
        )


class TooManyConnections(ServingError):
    status = 503
    retry_after = 1

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the server has its limit of {limit} connections open (--max-connections): retry shortly, "
            "reuse connections (keep-alive) or spread the load over more servers"
        )


class ShuttingDown(ServingError):
    status = 503
    retry_after = 1

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the server is shutting down and its {seconds:g} s for requests in progress "
            "(--shutdown-timeout) are over: send the request again, to another server"
        )


class RequestTimeout(ServingError):
    status = 408

    def __init__(self, part: str, seconds: float, flag: str) -> None:
        super().__init__(
            f"the request's {part} did not arrive within {seconds:g} s ({flag}): send the whole "
            "request without pausing, or ask the operator for a longer timeout"
        )


def render(exc: ServingError) -> tuple[int, bytes, Headers]:
    """The one translation of an error into a Triton-style `{"error": ...}` response."""
    body: dict[str, str] = {"error": str(exc)}
    headers = [JSON_TYPE]
    if exc.stamp is not None:
        body.update(exc.stamp)
        headers.append((b"x-deployment-id", exc.stamp["deployment_id"].encode()))
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(exc.retry_after).encode()))
    return exc.status, json.dumps(body).encode(), headers
