"""What makes `--workers N` one server to the outside: each worker's channel to the others.

Every worker listens on a Unix socket in the supervisor's run folder (`worker-<i>.sock`) and answers
the others' questions from its own App: its /metrics text, its statistics, its readiness and the
versions it serves, or a load/unload to apply. The few data plane calls that concern the whole node
are replaced by the node's, so HTTP and gRPC answer them alike; the worker a request reaches checks
it first as a single node would (access rules, 404s and all), then asks the others:

- metrics and statistics: the sum over every worker that answers (serving/worker_sums.py), plus
  per-worker samples in /metrics (which worker served how many, its memory);
- server readiness: ready only when every worker is ready and they all serve the same versions;
- repository load/unload (mode explicit): applied by every worker, answered once; the intent is
  kept in the run folder, so a restarted worker applies it before it takes requests.

Nothing here runs per inference request.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.app import App
from tritonflow.serving.errors import ServerNotReady, ServingError
from tritonflow.serving.http import Receive, Scope, Send
from tritonflow.serving.worker_sums import family_total, sum_expositions, sum_statistics

log = logging.getLogger("tritonflow.serving")

# NOTE: a peer answers between its requests; a busy one may take a while for its counts, but one
# that cannot say it is ready within a probe's time is not
PEER_TIMEOUT_S = {"metrics": 10.0, "stats": 10.0, "control": 60.0, "state": 2.0}
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
        # NOTE: every transport goes through the plane: there these reach every worker
        plane.load = functools.partial(self.everywhere, "load")
        plane.unload = functools.partial(self.everywhere, "unload")
        plane.node_ready = self.node_ready
        plane.node_stats = self.node_stats
        plane.node_metrics = self.node_metrics

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

    async def node_ready(self) -> None:
        """Ready only when this worker is, and every other one is and serves the same versions."""
        own = self.own({"op": "state"})
        if "error" in own:
            raise ServerNotReady(own["error"])
        for index, answer in zip(self.others, await self.ask({"op": "state"}), strict=True):
            if answer is None:
                raise ServerNotReady(f"worker {index} is not answering (starting or restarting)")
            if "error" in answer:
                raise ServerNotReady(f"worker {index}: {answer['error']}")
            if answer["serving"] != own["serving"]:
                mine, theirs = (", ".join(a["serving"]) or "none" for a in (own, answer))
                raise ServerNotReady(
                    f"the workers serve different versions: worker {self.index} {mine}, "
                    f"worker {index} {theirs}"
                )

    async def node_stats(self, model: str | None, version: str | None) -> dict[str, Any]:
        """The statistics summed over the workers; this worker's checks (an unknown model) first."""
        own = self.app.plane.model_stats(model, version)
        others = await self.ask({"op": "stats", "model": model, "version": version})
        return sum_statistics([own, *(a["stats"] for a in others if a is not None and "stats" in a)])

    async def node_metrics(self) -> bytes:
        answers = [self.own({"op": "metrics"}), *await self.ask({"op": "metrics"})]
        return _metrics(a for a in answers if a is not None).encode()

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
    """The worker's ASGI app: its App, joining the other workers once started and leaving them at stop."""

    def __init__(self, app: App, peers: Peers) -> None:
        self.app = app
        self.peers = peers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, self._lifespan_send(send) if scope["type"] == "lifespan" else send)

    def _lifespan_send(self, send: Send) -> Send:
        async def forward(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.peers.start()  # NOTE: before uvicorn accepts: a restarted worker joins in step
            elif message["type"] == "lifespan.shutdown.complete":
                await self.peers.stop()
            await send(message)

        return forward


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
