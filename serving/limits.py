"""The bytes of request bodies the node holds at once, across all connections (`--max-inflight-bytes`).

A body is held whole (joined, then decoded), so concurrent uploads add up: 16 uploads of 60 MB
took the node to 1.2 GB. A request claims its Content-Length before the first byte of its body is
read and is refused with 503 (Retry-After) when that does not fit, so a refused body is never
buffered (uvicorn discards it as it arrives). A body without a Content-Length (chunked) is counted
as it streams; a compressed one also claims --max-request-bytes, the most it may expand to. A claim
is given back once the response is sent or the client has gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.errors import InflightBytesExceeded

DEFAULT_MAX_INFLIGHT_BYTES = 128 * 1024 * 1024  # two bodies of the largest size (--max-request-bytes)
# After a claim this large is given back, freed heap pages go back to the system (see trim_heap).
TRIM_BYTES = 16 * 1024 * 1024

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]


def is_encoded(encoding: bytes) -> bool:
    """Whether a Content-Encoding value means the body must be decompressed."""
    return encoding.strip().lower() not in (b"", b"identity")


class InflightBytes:
    """The budget shared by all requests; `held` bytes are claimed now."""

    def __init__(self, limit: int, max_request_bytes: int) -> None:
        if limit < max_request_bytes:
            raise TritonflowError(
                f"--max-inflight-bytes {limit} is below --max-request-bytes {max_request_bytes}: a request "
                "of the largest size allowed could never be served; raise the first or lower the second"
            )
        self.limit = limit
        self.max_request_bytes = max_request_bytes
        self.held = 0

    def claim(self, headers: Mapping[bytes, bytes], receive: Receive) -> Claim:
        """One request's claim (`headers`: lower-case names); its body is received through `Claim.receive`."""
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        encoding = headers.get(b"content-encoding")
        extra = self.max_request_bytes if encoding is not None and is_encoded(encoding) else 0
        return Claim(self, receive, declared, extra)

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise InflightBytesExceeded(size, self.held, self.limit)
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
        if size >= TRIM_BYTES:
            trim_heap()


class Claim:
    """A request's share of the budget. A declared body is claimed whole at once: if it fits, it is
    received as is (the parser holds it to its Content-Length); if not, its first receive raises, so
    the body is never read and route errors (404, 405, 413) still come first. A body without one is
    counted as it streams."""

    __slots__ = ("_budget", "_receive", "held", "receive")

    def __init__(self, budget: InflightBytes, receive: Receive, declared: int | None, extra: int) -> None:
        self._budget = budget
        self._receive = receive
        self.held = 0
        self.receive: Receive = self._counted if declared is None else receive
        try:
            budget.take((declared or 0) + extra)
            self.held = (declared or 0) + extra
        except InflightBytesExceeded as exc:
            self.receive = refusing(exc)

    async def _counted(self) -> Message:
        message = await self._receive()
        if message.get("body"):
            size = len(message["body"])
            self._budget.take(size)
            self.held += size
        return message

    def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            self._budget.give(held)


def refusing(error: Exception) -> Receive:
    """A `receive` that raises `error` instead of reading the body."""

    async def receive() -> Message:
        raise error

    return receive


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # NOTE: not glibc (musl, macOS): nothing to trim
        return None


_TRIM = _malloc_trim()


def trim_heap() -> None:
    """Give freed heap pages back to the system: glibc keeps the memory of large bodies (in chunks
    of the sizes they streamed in) and their decoded JSON in its arenas, out of reach of others."""
    if _TRIM is not None:
        _TRIM(0)
