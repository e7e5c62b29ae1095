"""Triton's `inference.GRPCInferenceService` over the same DataPlane as HTTP: every RPC in one flat list.

Each RPC translates its message, makes one data plane call and translates the answer back, as the
HTTP handlers do; errors are the ServingError's text with the gRPC code Triton uses (grpc_errors.py).
A request past --max-request-bytes is refused before it is parsed. ModelStreamInfer answers each
request of a stream in its own message, an error as `error_message`, and the stream stays open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, NamedTuple, TypeAlias

import grpc
from google.protobuf.json_format import ParseDict
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from tritonflow.serving import grpc_tensors
from tritonflow.serving.dataplane import DataPlane
from tritonflow.serving.errors import (
    InternalError,
    MalformedRequest,
    ModelNotFound,
    ServerNotReady,
    ServingError,
)
from tritonflow.serving.grpc_errors import status_code, trailing_metadata
from tritonflow.serving.http import check_params
from tritonflow.serving.limits import InflightBytes

log = logging.getLogger("tritonflow.serving")

SERVICE = "inference.GRPCInferenceService"
STREAM_IN_FLIGHT = 64  # requests of one stream answered at once
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler = Callable[[DataPlane, Any, Context], Awaitable[Any]]


def _target(name: str, version: str) -> tuple[str, str | None]:
    """The model and version named by a message, checked as HTTP checks its URL."""
    check_params({"model": name, "version": version})
    return name, version or None


def _message(request: Received | ServingError) -> Any:
    """The parsed message, or the error its parsing or budget raised."""
    if isinstance(request, ServingError):
        raise request
    return request.message


def _stamped(context: Context, stamp: dict[str, str]) -> None:
    context.set_trailing_metadata((("x-deployment-id", stamp["deployment_id"]),))


# -- handlers -------------------------------------------------------------------------------------
async def model_infer(
    plane: DataPlane, request: pb.ModelInferRequest, context: Context
) -> pb.ModelInferResponse:
    decoded = grpc_tensors.decode_request(request, plane.shared_memory.read)
    response = await plane.infer(*_target(request.model_name, request.model_version), decoded)
    _stamped(context, response.stamp)
    return grpc_tensors.encode_response(response, decoded)


async def server_live(plane: DataPlane, request: Any, context: Context) -> pb.ServerLiveResponse:
    return pb.ServerLiveResponse(live=True)


async def server_ready(plane: DataPlane, request: Any, context: Context) -> pb.ServerReadyResponse:
    try:
        plane.server_ready()
    except ServerNotReady:
        return pb.ServerReadyResponse(ready=False)  # NOTE: Triton's gRPC answers not ready, not an error
    return pb.ServerReadyResponse(ready=True)


async def model_ready(
    plane: DataPlane, request: pb.ModelReadyRequest, context: Context
) -> pb.ModelReadyResponse:
    try:
        plane.model_ready(*_target(request.name, request.version))
    except ModelNotFound:
        return pb.ModelReadyResponse(ready=False)  # NOTE: as Triton: an unknown model is not ready
    return pb.ModelReadyResponse(ready=True)


async def server_metadata(plane: DataPlane, request: Any, context: Context) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(**plane.server_metadata())


async def model_metadata(
    plane: DataPlane, request: pb.ModelMetadataRequest, context: Context
) -> pb.ModelMetadataResponse:
    found = plane.model_metadata(*_target(request.name, request.version))
    # NOTE: our extra keys (engine, deployment_id, the classes) have no field in Triton's message
    return ParseDict(found, pb.ModelMetadataResponse(), ignore_unknown_fields=True)


async def model_config(
    plane: DataPlane, request: pb.ModelConfigRequest, context: Context
) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=plane.served_config(*_target(request.name, request.version)))


async def model_statistics(
    plane: DataPlane, request: pb.ModelStatisticsRequest, context: Context
) -> pb.ModelStatisticsResponse:
    name, version = _target(request.name, request.version) if request.name else (None, None)
    return ParseDict(plane.model_stats(name, version), pb.ModelStatisticsResponse())


async def repository_index(
    plane: DataPlane, request: pb.RepositoryIndexRequest, context: Context
) -> pb.RepositoryIndexResponse:
    return ParseDict({"models": plane.repository_index(request.ready)}, pb.RepositoryIndexResponse())


async def repository_load(plane: DataPlane, request: pb.RepositoryModelLoadRequest, context: Context) -> Any:
    if any(key == "config" or key.startswith("file:") for key in request.parameters):
        raise MalformedRequest("load with a config or files override is not supported: publish them")
    await plane.load(_target(request.model_name, "")[0])
    return pb.RepositoryModelLoadResponse()


async def repository_unload(
    plane: DataPlane, request: pb.RepositoryModelUnloadRequest, context: Context
) -> Any:
    await plane.unload(_target(request.model_name, "")[0])
    return pb.RepositoryModelUnloadResponse()


async def system_shm_status(plane: DataPlane, request: Any, context: Context) -> Any:
    response = pb.SystemSharedMemoryStatusResponse()
    for entry in plane.shared_memory.status(request.name or None):
        response.regions[entry["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**entry))
    return response


async def system_shm_register(plane: DataPlane, request: Any, context: Context) -> Any:
    plane.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
    return pb.SystemSharedMemoryRegisterResponse()


async def system_shm_unregister(plane: DataPlane, request: Any, context: Context) -> Any:
    plane.shared_memory.unregister(request.name or None)
    return pb.SystemSharedMemoryUnregisterResponse()


async def cuda_shm_status(plane: DataPlane, request: Any, context: Context) -> Any:
    plane.shared_memory.cuda_status(request.name or None)  # NOTE: no GPU here: no region, or an error
    return pb.CudaSharedMemoryStatusResponse()


async def cuda_shm_register(plane: DataPlane, request: Any, context: Context) -> Any:
    plane.shared_memory.cuda_register(request.name)
    return pb.CudaSharedMemoryRegisterResponse()


async def cuda_shm_unregister(plane: DataPlane, request: Any, context: Context) -> Any:
    return pb.CudaSharedMemoryUnregisterResponse()  # NOTE: nothing can be registered on a node without GPUs


async def trace_setting(plane: DataPlane, request: pb.TraceSettingRequest, context: Context) -> Any:
    model = _target(request.model_name, "")[0] if request.model_name else None
    # NOTE: as Triton's: a setting sent with no value goes back to its default
    update = {key: list(setting.value) or None for key, setting in request.settings.items()}
    response = pb.TraceSettingResponse()
    for key, values in plane.trace_settings(model, update or None).items():
        response.settings[key].value.extend(values)
    return response


async def log_settings(plane: DataPlane, request: pb.LogSettingsRequest, context: Context) -> Any:
    update = {
        key: getattr(s, s.WhichOneof("parameter_choice") or "string_param")
        for key, s in request.settings.items()
    }
    response = pb.LogSettingsResponse()
    for key, value in plane.log_settings(update or None).items():
        setting = response.settings[key]
        if isinstance(value, bool):
            setting.bool_param = value
        elif isinstance(value, int):
            setting.uint32_param = value
        else:
            setting.string_param = value
    return response


# Every RPC but ModelStreamInfer: name, API group (serving/access.py), handler, request and response types.
RPCS: list[tuple[str, str, Handler, Any, Any]] = [
    ("ModelInfer", "inference", model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
    ("ServerLive", "health", server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
    ("ServerReady", "health", server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
    ("ModelReady", "health", model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
    ("ServerMetadata", "metadata", server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    ("ModelMetadata", "metadata", model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    ("ModelConfig", "model-config", model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
    (
        "ModelStatistics",
        "statistics",
        model_statistics,
        pb.ModelStatisticsRequest,
        pb.ModelStatisticsResponse,
    ),
    (
        "RepositoryIndex",
        "model-repository",
        repository_index,
        pb.RepositoryIndexRequest,
        pb.RepositoryIndexResponse,
    ),
    (
        "RepositoryModelLoad",
        "model-repository",
        repository_load,
        pb.RepositoryModelLoadRequest,
        pb.RepositoryModelLoadResponse,
    ),
    (
        "RepositoryModelUnload",
        "model-repository",
        repository_unload,
        pb.RepositoryModelUnloadRequest,
        pb.RepositoryModelUnloadResponse,
    ),
    (
        "SystemSharedMemoryStatus",
        "shared-memory",
        system_shm_status,
        pb.SystemSharedMemoryStatusRequest,
        pb.SystemSharedMemoryStatusResponse,
    ),
    (
        "SystemSharedMemoryRegister",
        "shared-memory",
        system_shm_register,
        pb.SystemSharedMemoryRegisterRequest,
        pb.SystemSharedMemoryRegisterResponse,
    ),
    (
        "SystemSharedMemoryUnregister",
        "shared-memory",
        system_shm_unregister,
        pb.SystemSharedMemoryUnregisterRequest,
        pb.SystemSharedMemoryUnregisterResponse,
    ),
    (
        "CudaSharedMemoryStatus",
        "shared-memory",
        cuda_shm_status,
        pb.CudaSharedMemoryStatusRequest,
        pb.CudaSharedMemoryStatusResponse,
    ),
    (
        "CudaSharedMemoryRegister",
        "shared-memory",
        cuda_shm_register,
        pb.CudaSharedMemoryRegisterRequest,
        pb.CudaSharedMemoryRegisterResponse,
    ),
    (
        "CudaSharedMemoryUnregister",
        "shared-memory",
        cuda_shm_unregister,
        pb.CudaSharedMemoryUnregisterRequest,
        pb.CudaSharedMemoryUnregisterResponse,
    ),
    ("TraceSetting", "trace", trace_setting, pb.TraceSettingRequest, pb.TraceSettingResponse),
    ("LogSettings", "logging", log_settings, pb.LogSettingsRequest, pb.LogSettingsResponse),
]


# -- the service ----------------------------------------------------------------------------------
class Metadata(Mapping[bytes, bytes]):
    """A call's invocation metadata as Access reads headers (lower-case names, bytes), built only
    when a restricted group looks: unrestricted calls do not pay for it."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._headers: dict[bytes, bytes] | None = None

    def _all(self) -> dict[bytes, bytes]:
        if self._headers is None:
            self._headers = {
                m.key.encode(): m.value if isinstance(m.value, bytes) else m.value.encode()
                for m in self._context.invocation_metadata() or ()
            }
        return self._headers

    def __getitem__(self, key: bytes) -> bytes:
        return self._all()[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class Received(NamedTuple):
    """A parsed request and the bytes it holds of the in-flight budget until it is answered."""

    message: Any
    size: int


class Service:
    """The generic handler of the service: checks access, budgets request bytes, runs the handler,
    maps errors. The budget is HTTP's (--max-inflight-bytes): request messages held while they wait
    or run count against the same limit, whichever transport they came by (gRPC itself refuses a
    message past --max-request-bytes before buffering it: serving/grpc_server.py)."""

    def __init__(self, plane: DataPlane, inflight: InflightBytes) -> None:
        self.plane = plane
        self.inflight = inflight

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            name: grpc.unary_unary_rpc_method_handler(
                self._unary(name, group, handler),
                request_deserializer=self._parser(request),
                response_serializer=response.SerializeToString,
            )
            for name, group, handler, request, response in RPCS
        }
        methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self._stream,
            request_deserializer=self._parser(pb.ModelInferRequest),
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _parser(self, message: Any) -> Callable[[bytes], Received | ServingError]:
        inflight = self.inflight

        def parse(data: bytes) -> Received | ServingError:
            # NOTE: errors returned, not raised: one raised here reaches the client as a bare INTERNAL
            try:
                inflight.take(len(data))
            except ServingError as exc:
                return exc
            try:
                return Received(message.FromString(data), len(data))
            except DecodeError:
                inflight.give(len(data))
                return MalformedRequest(f"the message is not a valid {message.DESCRIPTOR.name}")

        return parse

    def _access(self, group: str, context: Context) -> None:
        self.plane.access.check(group, Metadata(context))

    def _release(self, request: Received | ServingError) -> None:
        if isinstance(request, Received):
            self.inflight.give(request.size)

    def _unary(self, name: str, group: str, handler: Handler) -> Callable[[Any, Context], Awaitable[Any]]:
        plane = self.plane

        async def call(request: Received | ServingError, context: Context) -> Any:
            try:
                self._access(group, context)
                return await handler(plane, _message(request), context)
            except ServingError as exc:
                await context.abort(status_code(exc), str(exc), trailing_metadata(exc))
            except Exception:
                log.exception("unexpected error in gRPC %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, str(InternalError()))
            finally:
                self._release(request)

        return call

    async def _stream(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request answered as soon as it is done (several run at once); clients match them by id."""
        try:
            self._access("inference", context)
        except ServingError as exc:
            await context.abort(status_code(exc), str(exc))
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        # NOTE: the stream is read no further while this many run: gRPC's flow control holds the client
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def answer(request: Received | ServingError) -> None:
            try:
                await answers.put(await self._stream_answer(request))
            finally:
                self._release(request)
                slots.release()

        async def read() -> None:
            try:
                async with asyncio.TaskGroup() as tasks:
                    async for request in requests:
                        await slots.acquire()
                        tasks.create_task(answer(request))
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (message := await answers.get()) is not None:
                yield message
        finally:
            reader.cancel()

    async def _stream_answer(self, received: Received | ServingError) -> pb.ModelStreamInferResponse:
        request = None
        try:
            request = _message(received)
            decoded = grpc_tensors.decode_request(request, self.plane.shared_memory.read)
            response = await self.plane.infer(*_target(request.model_name, request.model_version), decoded)
            return pb.ModelStreamInferResponse(infer_response=grpc_tensors.encode_response(response, decoded))
        except ServingError as exc:
            error = str(exc)
            stamp = exc.stamp
        except Exception:
            log.exception("unexpected error in gRPC ModelStreamInfer")
            error, stamp = str(InternalError()), None
        failed = pb.ModelInferResponse(id=getattr(request, "id", ""))
        if stamp is not None:
            failed.model_name, failed.model_version = stamp["model_name"], stamp["model_version"]
            failed.parameters["deployment_id"].string_param = stamp["deployment_id"]
        return pb.ModelStreamInferResponse(error_message=error, infer_response=failed)
