"""Connections that cannot hold the node: a deadline for each phase of a request, a cap on open
connections that fits the file-descriptor limit, and a deadline for stalled requests at shutdown.

uvicorn's httptools protocol waits forever for a request's headers and body, arms its keep-alive
timer only after a first response (a connection that never sends a byte stays open), accepts until
the process runs out of file descriptors, and at shutdown waits as long as a stalled client does.
GuardedHttpProtocol adds, per connection:

- idle (`--keep-alive-timeout`, uvicorn's own timer, now armed at the opening too): no request
  begun since the opening or the last response: closed without a word (clients reopen idle ones);
- headers (`--header-timeout`): from a request's first byte to its last header: 408, closed;
- body (`--body-timeout`): from the headers to the body's last byte, for the whole body (bytes
  dribbled between pauses do not extend it): 408, closed. A client that stops reading its response
  for as long is dropped too;
- the cap (`--max-connections`): a connection beyond it is answered 503 once its headers are in,
  then closed; past the descriptors kept for serving and refusing, one is closed at once;
- shutdown (`--shutdown-timeout`): a request still arriving or being answered at the deadline is
  answered 503 if nothing was sent yet, and its connection closed.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.errors import RequestTimeout, ServingError, ShuttingDown, TooManyConnections, render

log = logging.getLogger("tritonflow.serving")

DEFAULT_HEADER_TIMEOUT = 5.0  # seconds
DEFAULT_BODY_TIMEOUT = 30.0  # seconds: 64 MB (the default --max-request-bytes) needs ~2 MB/s
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0  # seconds
DEFAULT_SHUTDOWN_TIMEOUT = 5.0  # seconds
DEFAULT_MAX_CONNECTIONS = 4096
# Descriptors kept for everything but client connections: model files, S3 sockets, the log, the
# listening socket, the event loop's own, worker threads' pipes.
RESERVED_FDS = 256


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may take; the keep-alive timeout is uvicorn's own setting."""

    max_connections: int
    fd_ceiling: int  # open connections (admitted or refused) past which a new one is closed at once
    header_timeout: float  # seconds, as the other two
    body_timeout: float
    shutdown_timeout: float


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (every connection is a descriptor); the soft
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # NOTE: an unlimited hard limit is refused on Linux and macOS
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_limits(
    requested: int | None, fd_limit: int, header_timeout: float, body_timeout: float, shutdown_timeout: float
) -> ConnectionLimits:
    """The limits for `--max-connections requested` (None: the default, fitted under `fd_limit`).

    A cap the descriptors cannot hold is refused: past it, accept() would fail and every client,
    not only the extra ones, would be turned away. The default leaves half the descriptors past the
    reserve for answering the connections beyond the cap.
    """
    usable = fd_limit - RESERVED_FDS
    if usable < 2:
        raise TritonflowError(
            f"the open-file limit of {fd_limit} leaves no descriptors for connections "
            f"(the server keeps {RESERVED_FDS}): raise it (ulimit -n) to at least {RESERVED_FDS * 2}"
        )
    if requested is None:
        cap = min(DEFAULT_MAX_CONNECTIONS, usable // 2)
    elif requested > usable:
        raise TritonflowError(
            f"--max-connections {requested} does not fit the open-file limit of {fd_limit} descriptors "
            f"({RESERVED_FDS} of them kept for files and sockets): use at most {usable}, or raise the "
            "hard limit (ulimit -Hn, systemd LimitNOFILE=, docker --ulimit nofile=)"
        )
    else:
        cap = requested
    return ConnectionLimits(cap, usable, header_timeout, body_timeout, shutdown_timeout)


class Gate:
    """The connections one server has admitted (the others are being refused)."""

    __slots__ = ("admitted",)

    def __init__(self) -> None:
        self.admitted = 0


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """The protocol class for one server (uvicorn's `http=`): its limits and its own gate."""
    bound = type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits, "gate": Gate()})
    return cast(type[GuardedHttpProtocol], bound)


def closing_response(error: ServingError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of `error`'s response on a connection that is then closed."""
    status, body, headers = render(error)
    return status, [(b"content-length", str(len(body)).encode()), (b"connection", b"close"), *headers], body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and the cap described above."""

    limits: ClassVar[ConnectionLimits]
    gate: ClassVar[Gate]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.admitted = False
        self.due: float | None = None  # when the request being read must be in: headers, then body
        self.late: Callable[[], None] = self._headers_late  # what is done when it is not
        self.deadline: asyncio.TimerHandle | None = None  # follows `due`, lazily
        self.deadline_at = 0.0
        self.stall: asyncio.TimerHandle | None = None  # the client stopped reading the response
        self.cut: asyncio.TimerHandle | None = None  # the shutdown deadline
        # NOTE: pipelined, the request answered is not self.cycle (the last one parsed): all are kept
        self.cycles: list[RequestResponseCycle] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.fd_ceiling:
            # NOTE: no descriptors left to answer it: closing at once keeps accept() working
            transport.abort()
            return
        if self.gate.admitted < self.limits.max_connections:
            self.gate.admitted += 1
            self.admitted = True
        else:
            self.app = self._refuse
        # NOTE: uvicorn arms its keep-alive timer only after a response: a silent client would stay
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        super().connection_lost(exc)
        for timer in (self.deadline, self.stall, self.cut, self.timeout_keep_alive_task):
            if timer is not None:
                timer.cancel()
        self.deadline = self.stall = self.cut = self.timeout_keep_alive_task = None
        if self.admitted:
            self.admitted = False
            self.gate.admitted -= 1

    def data_received(self, data: bytes) -> None:
        idle = self.timeout_keep_alive_task
        super().data_received(data)
        # NOTE: uvicorn disarms the idle timer on any bytes; ones that begin no request (blank lines)
        # must not keep an idle connection open, so it is armed again for the time it had left.
        between = self.cycle is None or self.cycle.response_complete
        if between and self.due is None and self.timeout_keep_alive_task is None:
            when = idle.when() if idle is not None else self.loop.time() + self.timeout_keep_alive
            self.timeout_keep_alive_task = self.loop.call_at(when, self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._expect(self.limits.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.cycles = [cycle for cycle in self.cycles if not cycle.response_complete]
        self.cycles.append(self.cycle)
        self._expect(self.limits.body_timeout, self._body_late)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.due = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.stall is None:
            self.stall = self.loop.call_later(self.limits.body_timeout, self._abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def shutdown(self) -> None:
        super().shutdown()
        if not self.transport.is_closing():
            # NOTE: uvicorn would wait for this request however long its client stalls
            self.cut = self.loop.call_later(self.limits.shutdown_timeout, self._shutdown_deadline)

    def _expect(self, seconds: float, late: Callable[[], None]) -> None:
        self.due, self.late = self.loop.time() + seconds, late
        # NOTE: a timer armed for no later is kept: it fires, sees the deadline moved and re-arms,
        # so back-to-back requests on a connection cost no timer each (3 us apiece on uvloop)
        if self.deadline is None or self.deadline_at > self.due:
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline, self.deadline_at = self.loop.call_at(self.due, self._check_due), self.due

    def _check_due(self) -> None:
        self.deadline = None
        if self.due is None:
            return
        if self.loop.time() + 0.001 >= self.due:  # NOTE: a timer may fire up to a clock tick early
            self.late()
        else:
            self.deadline, self.deadline_at = self.loop.call_at(self.due, self._check_due), self.due

    def _headers_late(self) -> None:
        self._close(RequestTimeout("headers", self.limits.header_timeout, "--header-timeout"))

    def _body_late(self) -> None:
        self._close(RequestTimeout("body", self.limits.body_timeout, "--body-timeout"), self._unanswered())

    def _shutdown_deadline(self) -> None:
        log.warning(
            "closing the connection of %s: its request was still in progress at the shutdown deadline "
            "(--shutdown-timeout %g s)",
            "{}:{}".format(*self.client) if self.client else "a client",
            self.limits.shutdown_timeout,
        )
        self._close(ShuttingDown(self.limits.shutdown_timeout), self._unanswered())

    def _unanswered(self) -> bool:
        """Whether the request in progress has no response begun yet (one may be answered)."""
        return self.cycle is None or not self.cycle.response_started

    def _close(self, error: ServingError, answer: bool = True) -> None:
        """Close the connection, first answering `error` when `answer`."""
        self.due = None
        if self.transport.is_closing():
            return
        if answer and not self.flow.write_paused:
            status, headers, body = closing_response(error)
            head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
            head += [name + b": " + value for name, value in headers]
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        if self.flow.write_paused:
            self._abort()  # NOTE: close() would wait to flush to a client that does not read
        else:
            self.transport.close()

    def _abort(self) -> None:
        """Drop the connection now, its requests told at once (not once the loop reports the loss)."""
        self._gone()
        self.transport.abort()

    def _gone(self) -> None:
        """Tell every request of the connection that the client is gone. uvicorn tells the last one
        parsed only: a pipelined one waiting to write would write to a closed transport, which
        uvloop refuses with an exception."""
        for cycle in self.cycles:
            cycle.disconnected = True
            cycle.message_event.set()

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        """The app of a connection beyond the cap: 503, then the connection is closed."""
        status, headers, body = closing_response(TooManyConnections(self.limits.max_connections))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
