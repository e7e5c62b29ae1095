"""KServe v2 / Triton HTTP over raw ASGI: every URL in one flat list, handlers that only translate.

No framework on the hot path: a list of compiled patterns, the body read with a size limit, one
error handler. The logic lives in the data plane; the tensor formats in the codec.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST

from tritonflow.lineage import layout
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.ids import check_model_name
from tritonflow.serving import codec
from tritonflow.serving.batcher import Traffic
from tritonflow.serving.dataplane import DataPlane
from tritonflow.serving.errors import (
    JSON_TYPE,
    Headers,
    InternalError,
    InvalidModelName,
    InvalidVersion,
    MalformedRequest,
    MethodNotAllowed,
    RequestTooLarge,
    RouteNotFound,
    ServingError,
    render,
)
from tritonflow.serving.limits import DEFAULT_MAX_INFLIGHT_BYTES, InflightBytes, is_encoded
from tritonflow.serving.settings import trace_from_http, trace_to_http

log = logging.getLogger("tritonflow.serving")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Request:
    params: dict[str, str]  # from the URL: model, version
    headers: dict[bytes, bytes]  # lower-case names
    body: bytes


class Response(NamedTuple):
    status: int
    body: bytes
    headers: Headers


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode(), [JSON_TYPE])


EMPTY = Response(200, b"", [])


# A JSON part larger than this is decoded off the loop (1-row requests are ~1 KB, 1,024 rows of 30 ~600 KB).
OFFLOAD_JSON_BYTES = 64 * 1024


# -- handlers -------------------------------------------------------------------------------------
async def infer(plane: DataPlane, req: Request) -> Response:
    length = req.headers.get(b"inference-header-content-length")
    try:
        header_length = int(length) if length is not None else None
    except ValueError:
        raise MalformedRequest(f"Inference-Header-Content-Length {length!r} is not a number") from None
    json_bytes = len(req.body) if header_length is None else header_length
    if json_bytes > OFFLOAD_JSON_BYTES:
        # NOTE: a big JSON body takes ~10 ms per MB to decode; in a thread the loop can answer other
        # requests between its steps (orjson's parse itself holds the GIL throughout).
        request = await asyncio.to_thread(
            codec.decode_request, req.body, header_length, plane.shared_memory.read
        )
    else:
        request = codec.decode_request(req.body, header_length, plane.shared_memory.read)
    response = await plane.infer(req.params["model"], req.params.get("version"), request)
    body, json_length = codec.encode_response(response, request)
    headers = [(b"x-deployment-id", response.stamp["deployment_id"].encode())]
    if json_length is None:
        headers.append(JSON_TYPE)
    else:
        headers.append((b"content-type", b"application/octet-stream"))
        headers.append((b"inference-header-content-length", str(json_length).encode()))
    return Response(200, body, headers)


async def live(plane: DataPlane, req: Request) -> Response:
    return EMPTY


async def ready(plane: DataPlane, req: Request) -> Response:
    await plane.node_ready()
    return EMPTY


async def server_metadata(plane: DataPlane, req: Request) -> Response:
    return json_response(plane.server_metadata())


async def model_metadata(plane: DataPlane, req: Request) -> Response:
    return json_response(plane.model_metadata(req.params["model"], req.params.get("version")))


async def model_ready(plane: DataPlane, req: Request) -> Response:
    plane.model_ready(req.params["model"], req.params.get("version"))
    return EMPTY


async def model_config(plane: DataPlane, req: Request) -> Response:
    return json_response(plane.model_config(req.params["model"], req.params.get("version")))


async def model_stats(plane: DataPlane, req: Request) -> Response:
    return json_response(await plane.node_stats(req.params.get("model"), req.params.get("version")))


async def lineage(plane: DataPlane, req: Request) -> Response:
    return json_response(await plane.lineage(req.params["model"], req.params["version"]))


async def metrics(plane: DataPlane, req: Request) -> Response:
    return Response(200, await plane.node_metrics(), [(b"content-type", CONTENT_TYPE_LATEST.encode())])


async def repository_index(plane: DataPlane, req: Request) -> Response:
    options = _json_body(req)
    return json_response(plane.repository_index(options.get("ready") is True))


async def load(plane: DataPlane, req: Request) -> Response:
    parameters = _json_body(req).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedRequest("parameters must be a JSON object")
    if any(key == "config" or key.startswith("file:") for key in parameters):
        raise MalformedRequest("load with a config or files override is not supported: publish them")
    await plane.load(req.params["model"])
    return EMPTY


async def unload(plane: DataPlane, req: Request) -> Response:
    await plane.unload(req.params["model"])
    return EMPTY


async def log_settings(plane: DataPlane, req: Request) -> Response:
    return json_response(plane.log_settings(_json_body(req)))


async def trace_settings(plane: DataPlane, req: Request) -> Response:
    update = trace_from_http(_json_body(req))
    return json_response(trace_to_http(plane.trace_settings(req.params.get("model"), update)))


async def shm_status(plane: DataPlane, req: Request) -> Response:
    return json_response(plane.shared_memory.status(req.params.get("region")))


async def shm_register(plane: DataPlane, req: Request) -> Response:
    body = _json_body(req)
    key, offset, byte_size = body.get("key"), body.get("offset", 0), body.get("byte_size")
    if not isinstance(key, str) or not all(type(n) is int for n in (offset, byte_size)):
        raise MalformedRequest('register takes {"key": string, "offset": integer, "byte_size": integer}')
    plane.shared_memory.register(req.params["region"], key, offset, byte_size)
    return EMPTY


async def shm_unregister(plane: DataPlane, req: Request) -> Response:
    plane.shared_memory.unregister(req.params.get("region"))
    return EMPTY


async def cuda_status(plane: DataPlane, req: Request) -> Response:
    return json_response(plane.shared_memory.cuda_status(req.params.get("region")))


async def cuda_register(plane: DataPlane, req: Request) -> Response:
    plane.shared_memory.cuda_register(req.params["region"])
    return EMPTY


async def cuda_unregister(plane: DataPlane, req: Request) -> Response:
    return EMPTY  # NOTE: no CUDA region can be registered here, so none is left to unregister


def _json_body(req: Request) -> dict[str, Any]:
    """The optional JSON object of a repository or settings request."""
    if not req.body.strip():
        return {}
    try:
        data = json.loads(req.body)
    except ValueError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedRequest("the body must be a JSON object")
    return data


Handler = Callable[[DataPlane, Request], Awaitable[Response]]

# Every URL, with its API group (serving/access.py). Inference first: the router tries them in order.
ROUTES: list[tuple[str, str, str, Handler]] = [
    ("POST", "/v2/models/{model}/infer", "inference", infer),
    ("POST", "/v2/models/{model}/versions/{version}/infer", "inference", infer),
    ("GET", "/v2/health/live", "health", live),
    ("GET", "/v2/health/ready", "health", ready),
    ("GET", "/v2", "metadata", server_metadata),
    ("GET", "/metrics", "statistics", metrics),
    ("GET", "/v2/models/stats", "statistics", model_stats),
    ("GET", "/v2/models/{model}", "metadata", model_metadata),
    ("GET", "/v2/models/{model}/versions/{version}", "metadata", model_metadata),
    ("GET", "/v2/models/{model}/ready", "health", model_ready),
    ("GET", "/v2/models/{model}/versions/{version}/ready", "health", model_ready),
    ("GET", "/v2/models/{model}/config", "model-config", model_config),
    ("GET", "/v2/models/{model}/versions/{version}/config", "model-config", model_config),
    ("GET", "/v2/models/{model}/stats", "statistics", model_stats),
    ("GET", "/v2/models/{model}/versions/{version}/stats", "statistics", model_stats),
    ("GET", "/v2/models/{model}/versions/{version}/lineage", "lineage", lineage),
    ("POST", "/v2/repository/index", "model-repository", repository_index),
    ("POST", "/v2/repository/models/{model}/load", "model-repository", load),
    ("POST", "/v2/repository/models/{model}/unload", "model-repository", unload),
    ("GET", "/v2/systemsharedmemory/status", "shared-memory", shm_status),
    ("GET", "/v2/systemsharedmemory/region/{region}/status", "shared-memory", shm_status),
    ("POST", "/v2/systemsharedmemory/region/{region}/register", "shared-memory", shm_register),
    ("POST", "/v2/systemsharedmemory/unregister", "shared-memory", shm_unregister),
    ("POST", "/v2/systemsharedmemory/region/{region}/unregister", "shared-memory", shm_unregister),
    ("GET", "/v2/cudasharedmemory/status", "shared-memory", cuda_status),
    ("GET", "/v2/cudasharedmemory/region/{region}/status", "shared-memory", cuda_status),
    ("POST", "/v2/cudasharedmemory/region/{region}/register", "shared-memory", cuda_register),
    ("POST", "/v2/cudasharedmemory/unregister", "shared-memory", cuda_unregister),
    ("POST", "/v2/cudasharedmemory/region/{region}/unregister", "shared-memory", cuda_unregister),
    ("GET", "/v2/logging", "logging", log_settings),
    ("POST", "/v2/logging", "logging", log_settings),
    ("GET", "/v2/trace/setting", "trace", trace_settings),
    ("POST", "/v2/trace/setting", "trace", trace_settings),
    ("GET", "/v2/models/{model}/trace/setting", "trace", trace_settings),
    ("POST", "/v2/models/{model}/trace/setting", "trace", trace_settings),
]


def check_params(params: dict[str, str]) -> None:
    """Model names and versions from the URL, checked before anything reads a store."""
    model = params.get("model")
    if model is not None:
        try:
            check_model_name(model)
        except TritonflowError as exc:
            raise InvalidModelName(str(exc)) from None
    version = params.get("version")
    if version and layout.parse_version(version) is None:
        raise InvalidVersion(version)


def _compile(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "/?")


# -- the ASGI app --------------------------------------------------------------------------------
class Router:
    """Matches a URL to its handler, reads the body, and turns every error into a response."""

    def __init__(
        self,
        plane: DataPlane,
        max_request_bytes: int,
        traffic: Traffic,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        metrics_port: int = 0,
    ) -> None:
        self.plane = plane
        self.max_request_bytes = max_request_bytes
        self.traffic = traffic
        self.inflight = InflightBytes(max_inflight_bytes, max_request_bytes)
        self._routes = [(m, _compile(template), group, handler) for m, template, group, handler in ROUTES]
        self.metrics_port = metrics_port  # NOTE: its listener answers GET /metrics only, as Triton's

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.traffic.active += 1
        headers = dict(scope["headers"])
        # NOTE: the body is received through its claim on the in-flight budget, given back once answered
        claim = self.inflight.claim(headers, receive)
        try:
            response = await self._respond(scope, headers, claim.receive)
            if response is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status,
                        "headers": [(b"content-length", str(len(response.body)).encode()), *response.headers],
                    }
                )
                await send({"type": "http.response.body", "body": response.body})
        finally:
            claim.release()
            self.traffic.active -= 1

    async def _respond(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive) -> Response | None:
        """The response to send; None when the client went away before sending its body."""
        method, path = scope["method"], scope["path"]
        try:
            if self.metrics_port and scope["server"][1] == self.metrics_port and path != "/metrics":
                raise RouteNotFound(method, path)
            group, handler, params = self._match(method, path)
            self.plane.access.check(group, headers)
            check_params(params)
            body = await self._body(headers, receive)
            if body is None:
                return None
            return await handler(self.plane, Request(params, headers, body))
        except ServingError as exc:
            return Response(*render(exc))
        except Exception:
            log.exception("unexpected error in %s %s", method, path)
            return Response(*render(InternalError()))

    def _match(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]]:
        allowed = []
        for route_method, pattern, group, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is not None:
                if route_method == method:
                    return group, handler, match.groupdict()
                allowed.append(route_method)
        if allowed:
            raise MethodNotAllowed(method, path, sorted(set(allowed)))
        raise RouteNotFound(method, path)

    async def _body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
        """The request body, refused past the limit (Content-Length first, then as it streams)."""
        limit = self.max_request_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(int(declared), limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(size, limit)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)  # NOTE: a single chunk comes back as is, not copied
        encoding = headers.get(b"content-encoding")
        if encoding is not None and is_encoded(encoding):
            body = codec.decompress(body, encoding.decode("latin-1").strip().lower(), limit)
        return body
