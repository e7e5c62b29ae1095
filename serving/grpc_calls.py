"""How each gRPC call runs around its handler (serving/grpc_service.py): access, the request bytes
budget, errors as status codes, and ModelStreamInfer.

A request message counts against --max-inflight-bytes (shared with HTTP bodies) from its parsing
until it is answered. ModelStreamInfer answers each request of a stream in its own message (several
run at once, answered as they finish), an error as `error_message`, and the stream stays open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, NamedTuple

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from tritonflow.serving import grpc_tensors
from tritonflow.serving.dataplane import DataPlane
from tritonflow.serving.errors import InternalError, MalformedRequest, ServingError
from tritonflow.serving.grpc_errors import status_code, trailing_metadata
from tritonflow.serving.grpc_service import RPCS, Context, Handler, target
from tritonflow.serving.limits import InflightBytes

log = logging.getLogger("tritonflow.serving")

SERVICE = "inference.GRPCInferenceService"
STREAM_IN_FLIGHT = 64  # requests of one stream answered at once


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


def _message(request: Received | ServingError) -> Any:
    """The parsed message, or the error its parsing or budget raised."""
    if isinstance(request, ServingError):
        raise request
    return request.message


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
            response = await self.plane.infer(*target(request.model_name, request.model_version), decoded)
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
