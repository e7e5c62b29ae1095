"""Polls the repository and hands each change to the registry: new, changed or removed models.

A change is a new config.pbtxt fingerprint or a new list of published versions (folders with
their deployment.json; unfinished publishes are not versions yet). The repository API's load
request makes the same registry call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tritonflow.lineage import layout
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.registry import Registry

log = logging.getLogger("tritonflow.serving")

# model -> (config.pbtxt fingerprint, published versions)
State = dict[str, tuple[str | None, tuple[int, ...]]]


def scan(repository: ModelRepository, seen: State) -> State:
    """Cheap listing of the repository (blocking). A version seen published stays published, so
    only new folders are checked for their record."""
    found: State = {}
    for name, entries in repository.model_folders().items():
        known = set(seen[name][1]) if name in seen else set()
        published = tuple(
            v
            for v in layout.version_numbers(entries)
            if v in known or repository.store.fingerprint(layout.record_key(name, v)) is not None
        )
        found[name] = (repository.store.fingerprint(layout.config_key(name)), published)
    return found


class Watcher:
    def __init__(self, registry: Registry, interval: float) -> None:
        self.registry = registry
        self.interval = interval
        self._seen: State = {}
        self._task: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        """One poll: scan, load what changed, drop what left. A failed model is retried next poll."""
        found = await asyncio.to_thread(scan, self.registry.repository, self._seen)
        for name in self.registry.models.keys() - found.keys():
            await self.registry.drop(name)
        seen = dict(found)
        for name, state in found.items():
            if self._seen.get(name) == state:
                continue
            try:
                await self.registry.load(name, state[1])
            except TritonflowError as exc:
                log.error("loading %s failed, retrying at the next poll: %s", name, exc)
                del seen[name]
            except Exception:
                log.exception("loading %s failed, retrying at the next poll", name)
                del seen[name]
        self._seen = seen

    def start(self) -> None:
        """Poll every `interval` seconds from now on; an interval of 0 turns polling off."""
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sync()
            except Exception as exc:  # a store that is down for a while must not stop the polling
                log.warning("polling %s failed: %s", self.registry.repository.uri, exc)
