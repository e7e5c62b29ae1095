"""What makes `--workers N` one server to the outside: each worker's channel to the others.

Every worker listens on a Unix socket in the supervisor's run folder (`worker-<i>.sock`) and answers
the others' questions from its own App: its /metrics text, its statistics, its readiness and the
versions it serves, or a load/unload to apply. The worker that a client's request reaches answers
it first as a single node would (access rules, 404s and all), then, for the few requests that
concern the whole node, asks the others:

- `/metrics` and the statistics endpoints: the sum over every worker that answers
  (serving/worker_sums.py), plus per-worker samples (which worker served how many, its memory);
- `/v2/health/ready`: ready only when every worker is ready and they all serve the same versions;
- repository load/unload (mode explicit, over HTTP or gRPC): applied by every worker, answered once;
  the intent is kept in the run folder, so a restarted worker applies it before it takes requests.

Over gRPC, statistics and readiness are the reached worker's own (the sums above are HTTP's).
Nothing here runs per inference request: the wrapper passes every other request straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.app import App
from tritonflow.serving.errors import JSON_TYPE, ServerNotReady, ServingError, render
from tritonflow.serving.http import Receive, Scope, Send
from tritonflow.serving.worker_sums import family_total, sum_expositions, sum_statistics

log = logging.getLogger("tritonflow.serving")

# NOTE: a peer answers between its requests; a busy one may take a while for its counts, but one
# that cannot say it is ready within a probe's time is not
PEER_TIMEOUT_S = {"metrics": 10.0, "stats": 10.0, "control": 60.0, "state": 2.0}
STATS_PATH = re.compile(r"/v2/models(?:/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?)?/stats/?")
WORKER_METRICS = (
    ("tritonflow_worker_resident_memory_bytes", "gauge", "Resident memory of each worker process"),
    ("tritonflow_worker_requests", "counter", "Inference requests each worker answered, all its models"),
)


def socket_path(run_dir: Path, index: int) -> Path:
    return run_dir / f"worker-{index}.sock"


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident memory (Linux /proc; 0 where it cannot be read, e.g. it has exited)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


class Intent:
    """The loads and unloads asked of the node (mode explicit), in order, kept in the run folder for
    workers that start later; a lock file orders two workers' writes."""

    def __init__(self, run_dir: Path) -> None:
        self._path = run_dir / "control.json"
        self._lock = run_dir / "control.lock"

    def record(self, model: str, action: str) -> None:
        with self._locked():
            actions = self.read()
            actions.pop(model, None)  # NOTE: the latest action last, so a replay ends where the node is
            actions[model] = action
            temporary = self._path.with_suffix(".tmp")
            temporary.write_text(json.dumps(actions))
            temporary.replace(self._path)

    def read(self) -> dict[str, str]:
        try:
            return dict(json.loads(self._path.read_text()))
        except FileNotFoundError:
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


class PeerRefused(ServingError):
    """A load or unload this worker made that another worker could not: its error, with its status."""

    def __init__(self, worker: int, message: str, status: int) -> None:
        super().__init__(f"worker {worker}: {message}")
        self.status = status


class Peers:
    """This worker's answers to the others, and its questions to them."""

    def __init__(self, app: App, index: int, count: int, run_dir: Path) -> None:
        self.app = app
        self.index = index
        self.others = [i for i in range(count) if i != index]
        self.run_dir = run_dir
        self.intent = Intent(run_dir)
        self._server: asyncio.AbstractServer | None = None
        plane = app.plane
        self._own = {"load": plane.load, "unload": plane.unload}
        # NOTE: every transport's load and unload go through the plane: there they reach every worker
        plane.load = functools.partial(self.everywhere, "load")
        plane.unload = functools.partial(self.everywhere, "unload")

    async def start(self) -> None:
        """Apply the node's load/unload intent, then answer the others (from then on this worker counts)."""
        if self.app.settings.model_control == "explicit":
            for model, action in self.intent.read().items():
                try:
                    await self.apply(action, model)
                except TritonflowError as exc:
                    log.error("cannot %s %s as the other workers did: %s", action, model, exc)
        path = socket_path(self.run_dir, self.index)
        path.unlink(missing_ok=True)  # NOTE: left by the worker this one replaces
        self._server = await asyncio.start_unix_server(self._answer, str(path))
        log.info(
            "worker %d (pid %d) serving; resident memory %.0f MiB",
            self.index,
            os.getpid(),
            resident_bytes() / 2**20,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            socket_path(self.run_dir, self.index).unlink(missing_ok=True)

    async def apply(self, action: str, model: str) -> None:
        """This worker's own load or unload."""
        await self._own[action](model)

    async def everywhere(self, action: str, model: str) -> None:
        """A client's load or unload: this worker's, then (once it succeeded) every other's."""
        await self.apply(action, model)
        self.intent.record(model, action)
        for answer in await self.ask({"op": "control", "model": model, "action": action}):
            if answer is not None and "error" in answer:
                raise PeerRefused(answer["worker"], answer["error"], answer["status"])

    def own(self, question: dict[str, Any]) -> dict[str, Any]:
        """This worker's answer to a question (those needing no wait; `control` is answered by _answer)."""
        plane = self.app.plane
        answer: dict[str, Any] = {"worker": self.index, "pid": os.getpid(), "rss": resident_bytes()}
        try:
            if question["op"] == "metrics":
                answer["text"] = plane.metrics().decode()
            elif question["op"] == "stats":
                answer["stats"] = plane.model_stats(question["model"], question["version"])
            elif question["op"] == "state":
                plane.server_ready()
                answer["serving"] = sorted(mv.label for mv in plane.registry.serving())
        except ServingError as exc:
            answer["error"] = str(exc)
        return answer

    async def ask(self, question: dict[str, Any]) -> list[dict[str, Any] | None]:
        """Every other worker's answer; None from one that cannot answer now (restarting)."""
        return list(await asyncio.gather(*(self._ask(i, question) for i in self.others)))

    async def _ask(self, index: int, question: dict[str, Any]) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(PEER_TIMEOUT_S[question["op"]]):
                reader, writer = await asyncio.open_unix_connection(str(socket_path(self.run_dir, index)))
                try:
                    _write(writer, question)
                    return await _read(reader)
                finally:
                    writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            if question["op"] != "state":  # NOTE: readiness says so itself, to every probe
                reason = str(exc) or f"no answer within {PEER_TIMEOUT_S[question['op']]:g} s"
                log.warning("worker %d did not answer %s, left out: %s", index, question["op"], reason)
            return None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            question = await _read(reader)
            if question["op"] == "control":
                answer: dict[str, Any] = {"worker": self.index}
                try:
                    await self.apply(question["action"], question["model"])
                except TritonflowError as exc:
                    answer["error"], answer["status"] = str(exc), getattr(exc, "status", 500)
            else:
                answer = self.own(question)
            _write(writer, answer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # NOTE: the asking worker gave up (its timeout) or stopped
        finally:
            writer.close()


def _write(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    writer.write(struct.pack("!I", len(data)) + data)


async def _read(reader: asyncio.StreamReader) -> Any:
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    return json.loads(await reader.readexactly(length))


class WorkerApp:
    """The worker's ASGI app: its App, with the node-wide requests answered for every worker."""

    def __init__(self, app: App, peers: Peers) -> None:
        self.app = app
        self.peers = peers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if self._node_wide_request(scope):
            await self._node_wide(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        async def forward(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.peers.start()  # NOTE: before uvicorn accepts: a restarted worker joins in step
            elif message["type"] == "lifespan.shutdown.complete":
                await self.peers.stop()
            await send(message)

        return forward

    @staticmethod
    def _node_wide_request(scope: Scope) -> bool:
        path = scope["path"]
        return scope["method"] == "GET" and (
            path in ("/metrics", "/v2/health/ready") or STATS_PATH.fullmatch(path) is not None
        )

    async def _node_wide(self, scope: Scope, receive: Receive, send: Send) -> None:
        """This worker's answer first (every check a single node makes); when it succeeds, the node's."""
        status, headers, body = await _respond(self.app, scope, receive)
        if status == 200:
            status, body = await self._node_answer(scope, body)
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _node_answer(self, scope: Scope, own: bytes) -> tuple[int, bytes]:
        path = scope["path"]
        if path == "/metrics":
            answers = [self.peers.own({"op": "metrics"}), *await self.peers.ask({"op": "metrics"})]
            return 200, _metrics(a for a in answers if a is not None).encode()
        if path == "/v2/health/ready":
            return self._readiness(self.peers.own({"op": "state"}), await self.peers.ask({"op": "state"}))
        stats = STATS_PATH.fullmatch(path)
        assert stats is not None
        others = await self.peers.ask({"op": "stats", **stats.groupdict()})
        answers = [json.loads(own), *(a["stats"] for a in others if a is not None and "stats" in a)]
        return 200, json.dumps(sum_statistics(answers)).encode()

    def _readiness(self, own: dict[str, Any], others: list[dict[str, Any] | None]) -> tuple[int, bytes]:
        for index, answer in zip(self.peers.others, others, strict=True):
            if answer is None:
                return _not_ready(f"worker {index} is not answering (starting or restarting)")
            if "error" in answer:
                return _not_ready(f"worker {index}: {answer['error']}")
            if answer["serving"] != own["serving"]:
                mine, theirs = (", ".join(a["serving"]) or "none" for a in (own, answer))
                return _not_ready(
                    f"the workers serve different versions: worker {self.peers.index} {mine}, "
                    f"worker {index} {theirs}"
                )
        return 200, b""


def _not_ready(reason: str) -> tuple[int, bytes]:
    status, body, _ = render(ServerNotReady(reason))
    return status, body


def _metrics(answers: Any) -> str:
    """The workers' /metrics summed, then each worker's own samples (labelled by worker)."""
    answers = sorted(answers, key=lambda a: a["worker"])
    lines = []
    for (name, kind, doc), read in zip(
        WORKER_METRICS,
        (lambda a: a["rss"], lambda a: family_total(a["text"], "nv_inference_request_success")),
        strict=True,
    ):
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{pid="{a["pid"]}",worker="{a["worker"]}"}} {int(read(a))}' for a in answers]
    return sum_expositions(a["text"] for a in answers) + "\n".join(lines) + "\n"


async def _respond(app: App, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The App's own response to a request, held instead of sent."""
    held: dict[str, Any] = {"status": 500, "headers": [JSON_TYPE], "body": b""}

    async def hold(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            held["status"], held["headers"] = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            held["body"] += message.get("body", b"")

    await app(scope, receive, hold)
    return held["status"], held["headers"], held["body"]
