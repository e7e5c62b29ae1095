"""The ASGI application: wires repository, registry, data plane, router and watcher.

Startup loads the repository before the server accepts requests (a repository that cannot be
read fails the start); shutdown comes after uvicorn has let in-flight requests finish.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.batcher import Traffic
from tritonflow.serving.dataplane import DataPlane
from tritonflow.serving.http import Receive, Router, Scope, Send
from tritonflow.serving.registry import Registry
from tritonflow.serving.watcher import Watcher

log = logging.getLogger("tritonflow.serving")

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_POLL_INTERVAL = 5.0  # seconds


@dataclass(frozen=True)
class Settings:
    repository: str
    engine: str = "auto"
    poll_interval: float = DEFAULT_POLL_INTERVAL  # seconds; 0 turns polling off
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    cache_dir: Path | None = None  # where S3 versions are downloaded; default: default_cache_dir()


def default_cache_dir() -> Path:
    """Kept across restarts: a version already downloaded (same listing) is not fetched again."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tritonflow" / "models"


class App:
    def __init__(self, settings: Settings) -> None:
        repository = ModelRepository(settings.repository)
        traffic = Traffic()
        cache_dir = settings.cache_dir or default_cache_dir()
        self.registry = Registry(repository, settings.engine, cache_dir, traffic)
        self.plane = DataPlane(self.registry)
        self.router = Router(self.plane, settings.max_request_bytes, traffic)
        self.watcher = Watcher(self.registry, settings.poll_interval)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.router(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self.watcher.sync()
        except Exception as exc:
            log.error("cannot load %s: %s", self.registry.repository.uri, exc)
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        self.watcher.start()
        self.plane.ready = True
        serving = ", ".join(sorted(mv.label for mv in self.registry.serving())) or "nothing yet"
        log.info("serving %s from %s", serving, self.registry.repository.uri)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self.plane.ready = False
        await self.watcher.stop()
        await self.registry.close()
        await send({"type": "lifespan.shutdown.complete"})


def create_app(settings: Settings) -> App:
    return App(settings)
