"""The ASGI application: wires repository, registry, data plane, router and watcher.

Startup loads what the model control mode says before the server accepts requests; a repository
that cannot be read fails the start, unless it is remote and the node's mirror holds what it last
served. Shutdown comes after uvicorn has let in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from tritonflow.lineage.errors import RepositoryError, TritonflowError
from tritonflow.lineage.repository import ModelRepository
from tritonflow.lineage.store import open_store
from tritonflow.lineage.store.local import LocalStore
from tritonflow.serving import grpc_server
from tritonflow.serving.access import Access, Restriction
from tritonflow.serving.batcher import Traffic
from tritonflow.serving.branches import BranchFilter
from tritonflow.serving.capture import Capture, CaptureSettings
from tritonflow.serving.connections import DEFAULT_SHUTDOWN_TIMEOUT
from tritonflow.serving.dataplane import DataPlane
from tritonflow.serving.grpc_calls import Service
from tritonflow.serving.http import Receive, Router, Scope, Send
from tritonflow.serving.limits import DEFAULT_MAX_INFLIGHT_BYTES
from tritonflow.serving.loading import Loader, LoadSettings
from tritonflow.serving.mirror import Mirror
from tritonflow.serving.probe import ProbeLimits
from tritonflow.serving.registry import Registry
from tritonflow.serving.watcher import Watcher

if TYPE_CHECKING:  # NOTE: not a cycle: capture_writer imports pyarrow, imported only when capturing
    from tritonflow.serving.capture_writer import Writer

log = logging.getLogger("tritonflow.serving")

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_POLL_INTERVAL = 5.0  # seconds


@dataclass(frozen=True)
class Settings:
    repository: str
    engine: str = "auto"
    poll_interval: float = DEFAULT_POLL_INTERVAL  # seconds, in model control mode "poll"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    cache_dir: Path | None = None  # where S3 versions are downloaded; default: default_cache_dir()
    model_control: str = "poll"  # serving/access.py MODEL_CONTROL_MODES
    load_models: tuple[str, ...] = ()  # loaded at start-up in mode "explicit"; "*": every model
    restrictions: tuple[Restriction, ...] = ()
    strict_readiness: bool = True  # ready only while every model meant to serve has a version serving
    probe: ProbeLimits | None = ProbeLimits()  # None: new versions load without a child-process probe
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES  # request bodies held at once, all connections
    metrics_port: int = 0  # the port of the listener that answers only GET /metrics; 0: none
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT  # seconds gRPC calls in flight get to finish
    grpc_tls: grpc_server.TLS | None = None  # PEM key, certificate chain, client CAs
    capture: CaptureSettings | None = None  # --capture: what was asked and answered, kept as Parquet
    branch: str | None = None  # --branch: only the models @deploy published from this @project branch


def default_cache_dir() -> Path:
    """Kept across restarts: a version already downloaded (same listing) is not fetched again."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tritonflow" / "models"


class App:
    """`grpc_sockets`: listening sockets (SO_REUSEPORT) that hold the gRPC port until gRPC binds it."""

    def __init__(self, settings: Settings, grpc_sockets: Sequence[socket.socket] = ()) -> None:
        self.settings = settings
        self._grpc_sockets = list(grpc_sockets)
        self._grpc: grpc.aio.Server | None = None
        self._grpc_stopped: asyncio.Future[None] | None = None
        self._capture_writer: Writer | None = None
        repository = ModelRepository(settings.repository)
        traffic = Traffic()
        cache_dir = settings.cache_dir or default_cache_dir()
        # NOTE: a local repository is its own copy; a remote one is mirrored to start while it is down
        mirror = None if isinstance(repository.store, LocalStore) else Mirror(cache_dir, repository.uri)
        loader = Loader(LoadSettings(settings.engine, cache_dir, settings.probe), mirror)
        self.registry = Registry(repository, loader, traffic, mirror)
        access = Access(settings.restrictions)
        capture = Capture(settings.capture) if settings.capture else None
        self.plane = DataPlane(
            self.registry, access, settings.model_control, settings.strict_readiness, capture
        )
        limits = (settings.max_request_bytes, traffic, settings.max_inflight_bytes, settings.metrics_port)
        self.router = Router(self.plane, *limits)
        branches = BranchFilter(settings.branch) if settings.branch else None
        self.watcher = Watcher(self.registry, settings.poll_interval, branches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.router(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self._start()
        except Exception as exc:
            log.error("cannot load %s: %s", self.registry.repository.uri, exc)
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await self._start_capture()
        self.plane.ready = True
        serving = ", ".join(sorted(mv.label for mv in self.registry.serving())) or "nothing yet"
        log.info("serving %s from %s", serving, self.registry.repository.uri)
        await self._start_grpc()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.stop_grpc()
        self.plane.ready = False
        if self._capture_writer is not None:  # NOTE: no request can arrive now: every accepted row is written
            await asyncio.to_thread(self._capture_writer.close)
        await self.watcher.stop()
        await self.registry.close()
        self.plane.shared_memory.unregister(None)  # NOTE: unmaps every region the clients left registered
        await send({"type": "lifespan.shutdown.complete"})

    async def _start_capture(self) -> None:
        capture = self.plane.capture
        if capture is not None:
            # NOTE: imported here: pyarrow takes ~0.5 s to import, paid only by nodes that capture
            from tritonflow.serving.capture_writer import Writer

            self._capture_writer = Writer(capture, open_store(capture.settings.root))
            self._capture_writer.start()
            log.info("capturing predictions to %s", capture.settings.root)

    async def _start_grpc(self) -> None:
        """gRPC on the held port, on this event loop, over the same data plane as HTTP."""
        if self._grpc_sockets:
            handler = Service(self.plane, self.router.inflight).handler()
            settings = self.settings
            self._grpc = await grpc_server.start(
                handler, self._grpc_sockets, settings.grpc_tls, settings.max_request_bytes
            )
            self._grpc_sockets.clear()

    async def stop_grpc(self) -> None:
        """Stop accepting gRPC calls; those in flight get --shutdown-timeout to finish. Every caller
        waits for the same stop: the models unload only once gRPC has drained."""
        if self._grpc_stopped is None and self._grpc is not None:
            self._grpc_stopped = asyncio.ensure_future(self._drain_grpc(self._grpc))
        if self._grpc_stopped is not None:
            await self._grpc_stopped

    async def _drain_grpc(self, server: grpc.aio.Server) -> None:
        await server.stop(self.settings.shutdown_timeout)
        log.info("gRPC stopped")

    async def _start(self) -> None:
        """Load what the model control mode says; from the mirror if the repository is down."""
        mode = self.settings.model_control
        if mode == "explicit":
            await self._load_named(self.settings.load_models)
            return
        try:
            await self.watcher.sync()
        except RepositoryError as exc:
            mirror = self.registry.mirror.repository() if self.registry.mirror is not None else None
            if mirror is None:
                raise
            log.warning(
                "cannot read %s (%s): starting from the copy of what it last served, %s",
                self.registry.repository.uri,
                exc,
                mirror.uri,
            )
            await self.watcher.sync(source=mirror)
            self.watcher.failed(exc)
        if mode == "poll":
            self.watcher.start()

    async def _load_named(self, names: tuple[str, ...]) -> None:
        """Mode explicit: only the --load-model models (all for "*"); one that fails is logged."""
        if "*" in names:
            names = tuple(await asyncio.to_thread(self._every_model))
        for name in names:
            try:
                await self.registry.load(name, requested=True)
            except TritonflowError as exc:
                log.error("--load-model %s: %s", name, exc)

    def _every_model(self) -> list[str]:
        """`--load-model '*'`: every model, or with --branch those of that branch."""
        repository, branches = self.registry.repository, self.watcher.branches
        names = repository.models()
        if branches is None:
            return names
        return [n for n in names if branches.keeps(repository, n, tuple(repository.versions(n)))]


def create_app(settings: Settings, grpc_sockets: Sequence[socket.socket] = ()) -> App:
    return App(settings, grpc_sockets)
