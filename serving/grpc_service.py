"""Triton's `inference.GRPCInferenceService` over the same DataPlane as HTTP: every RPC in one flat list.

Each RPC translates its message, makes one data plane call and translates the answer back, as the
HTTP handlers do; errors are the ServingError's text with the gRPC code Triton uses (grpc_errors.py).
How a call runs around its handler (access, the in-flight budget, errors, streams): grpc_calls.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.json_format import ParseDict
from tritonclient.grpc import service_pb2 as pb

from tritonflow.serving import grpc_tensors
from tritonflow.serving.dataplane import DataPlane
from tritonflow.serving.errors import (
    MalformedRequest,
    ModelNotFound,
    RepositoryNameUnsupported,
    ServerNotReady,
)
from tritonflow.serving.http import check_params

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler = Callable[[DataPlane, Any, Context], Awaitable[Any]]


def target(name: str, version: str) -> tuple[str, str | None]:
    """The model and version named by a message, checked as HTTP checks its URL."""
    check_params({"model": name, "version": version})
    return name, version or None


def _one_repository(request: Any) -> None:
    """As Triton: a repository RPC naming a repository is refused (the node, as Triton, serves one)."""
    if request.repository_name:
        raise RepositoryNameUnsupported(request.repository_name)


def _stamped(context: Context, stamp: dict[str, str]) -> None:
    context.set_trailing_metadata((("x-deployment-id", stamp["deployment_id"]),))


# -- handlers -------------------------------------------------------------------------------------
async def model_infer(
    plane: DataPlane, request: pb.ModelInferRequest, context: Context
) -> pb.ModelInferResponse:
    decoded = grpc_tensors.decode_request(request, plane.shared_memory.read)
    response = await plane.infer(*target(request.model_name, request.model_version), decoded)
    _stamped(context, response.stamp)
    return grpc_tensors.encode_response(response, decoded)


async def server_live(plane: DataPlane, request: Any, context: Context) -> pb.ServerLiveResponse:
    return pb.ServerLiveResponse(live=True)


async def server_ready(plane: DataPlane, request: Any, context: Context) -> pb.ServerReadyResponse:
    try:
        await plane.node_ready()
    except ServerNotReady:
        return pb.ServerReadyResponse(ready=False)  # NOTE: Triton's gRPC answers not ready, not an error
    return pb.ServerReadyResponse(ready=True)


async def model_ready(
    plane: DataPlane, request: pb.ModelReadyRequest, context: Context
) -> pb.ModelReadyResponse:
    try:
        plane.model_ready(*target(request.name, request.version))
    except ModelNotFound:
        return pb.ModelReadyResponse(ready=False)  # NOTE: as Triton: an unknown model is not ready
    return pb.ModelReadyResponse(ready=True)


async def server_metadata(plane: DataPlane, request: Any, context: Context) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(**plane.server_metadata())


async def model_metadata(
    plane: DataPlane, request: pb.ModelMetadataRequest, context: Context
) -> pb.ModelMetadataResponse:
    found = plane.model_metadata(*target(request.name, request.version))
    # NOTE: our extra keys (engine, deployment_id, the classes) have no field in Triton's message
    return ParseDict(found, pb.ModelMetadataResponse(), ignore_unknown_fields=True)


async def model_config(
    plane: DataPlane, request: pb.ModelConfigRequest, context: Context
) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=plane.served_config(*target(request.name, request.version)))


async def model_statistics(
    plane: DataPlane, request: pb.ModelStatisticsRequest, context: Context
) -> pb.ModelStatisticsResponse:
    name, version = target(request.name, request.version) if request.name else (None, None)
    return ParseDict(await plane.node_stats(name, version), pb.ModelStatisticsResponse())


async def repository_index(
    plane: DataPlane, request: pb.RepositoryIndexRequest, context: Context
) -> pb.RepositoryIndexResponse:
    _one_repository(request)
    return ParseDict({"models": plane.repository_index(request.ready)}, pb.RepositoryIndexResponse())


async def repository_load(plane: DataPlane, request: pb.RepositoryModelLoadRequest, context: Context) -> Any:
    _one_repository(request)
    if any(key == "config" or key.startswith("file:") for key in request.parameters):
        raise MalformedRequest("load with a config or files override is not supported: publish them")
    await plane.load(target(request.model_name, "")[0])
    return pb.RepositoryModelLoadResponse()


async def repository_unload(
    plane: DataPlane, request: pb.RepositoryModelUnloadRequest, context: Context
) -> Any:
    _one_repository(request)
    await plane.unload(target(request.model_name, "")[0])
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
    model = target(request.model_name, "")[0] if request.model_name else None
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
