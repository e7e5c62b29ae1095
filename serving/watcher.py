"""Polls the repository and hands each change to the registry: new, changed or removed models.

A change is a new fingerprint of config.pbtxt or of a file beside it (its labels file), a new event
in its release log (`.releases/`: its file names are enough, events are never rewritten), or a new list
of published versions (folders with their deployment.json; unfinished publishes are not versions
yet). The repository API's load request makes the same registry call.

A store can glitch (one empty or short listing), so a model or version that leaves the listing is
only unloaded once the next poll confirms it. A refused version is tried again once its folder
changes (a copy that was still under way, a file put back), or at every poll when the store
itself failed. Outages and recoveries of the store are logged once each, not at every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from tritonflow.lineage import layout
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.branches import BranchFilter
from tritonflow.serving.loading import Token, files_token
from tritonflow.serving.registry import Registry

log = logging.getLogger("tritonflow.serving")

# model -> (fingerprints of config.pbtxt, the files beside it and the release log, published versions)
State = dict[str, tuple[str | None, tuple[int, ...]]]
# model -> {refused version: its folder's token when refused, None: retry at every poll}
Refused = dict[str, dict[int, Token | None]]


def scan(
    repository: ModelRepository,
    seen: State,
    refused: Refused,
    keeps: Callable[[str, tuple[int, ...]], bool] | None = None,
) -> tuple[State, dict[str, list[int]]]:
    """Cheap listing of the repository (blocking), and the refused versions whose folder changed.
    A version seen published stays published, so only new folders are checked for their record.
    `keeps(model, published versions)` False: the node does not serve that model (--branch)."""
    found: State = {}
    for name, entries in repository.model_folders().items():
        known = set(seen[name][1]) if name in seen else set()
        published = tuple(
            v
            for v in layout.version_numbers(entries)
            if v in known or repository.store.fingerprint(layout.record_key(name, v)) is not None
        )
        if keeps is not None and not keeps(name, published):
            continue
        # NOTE: the files beside config.pbtxt (its labels files) are part of it: a change to one is a change
        beside = [e for e in entries if not e.startswith(".") and layout.parse_version(e) is None]
        config = ",".join(f"{e}:{repository.store.fingerprint(f'{name}/{e}')}" for e in beside)
        if layout.RELEASES in entries:
            config += ";" + ",".join(repository.store.list(layout.releases_prefix(name)))
        found[name] = (config, published)
    retry = {
        name: changed
        for name, versions in refused.items()
        if name in found
        and (
            changed := [
                v
                for v, token in versions.items()
                if v in found[name][1] and (token is None or files_token(repository, name, v) != token)
            ]
        )
    }
    return found, retry


class Watcher:
    def __init__(self, registry: Registry, interval: float, branches: BranchFilter | None = None) -> None:
        self.registry = registry
        self.interval = interval
        self.branches = branches
        self._seen: State = {}
        self._doubted: dict[str, tuple[str | None, tuple[int, ...]] | None] = {}  # removals seen once
        self._task: asyncio.Task[None] | None = None
        self._outage: tuple[float, int] | None = None  # (since, failed polls) while the store fails

    async def sync(self, source: ModelRepository | None = None) -> None:
        """One poll: scan, load what changed, drop what left (confirmed). A failed model is retried
        next poll. `source`: scan another repository (the mirror, while the repository is down)."""
        repository = source or self.registry.repository
        refused = {
            name: {v: r.token for v, r in model.refused.items()}
            for name, model in self.registry.models.items()
            if model.refused
        }
        branches = self.branches
        keeps = None if branches is None else lambda name, v: branches.keeps(repository, name, v)
        found, retry = await asyncio.to_thread(scan, repository, self._seen, refused, keeps)
        self._confirm_removals(found, repository.uri)
        for name in self.registry.models.keys() - found.keys():
            log.warning("unloading %s: it left %s", name, repository.uri)
            await self.registry.drop(name)
        seen = dict(found)
        for name, state in found.items():
            if self._seen.get(name) == state and name not in retry:
                continue
            try:
                await self.registry.load(name, state[1], retry=retry.get(name, ()), source=source)
            except TritonflowError as exc:
                log.error("loading %s failed, retrying at the next poll: %s", name, exc)
                del seen[name]
            except Exception:
                log.exception("loading %s failed, retrying at the next poll", name)
                del seen[name]
        self._seen = seen

    def _confirm_removals(self, found: State, uri: str) -> None:
        """Hold back, for one poll, every model or version that left the listing (in `found`)."""
        doubted = {}
        for name, before in self._seen.items():
            now = found.get(name)
            gone = sorted(set(before[1]) - set(now[1] if now else ()))
            if not gone or self._doubted.get(name, False) == now:
                continue  # nothing left, or the same removal seen twice in a row: confirmed
            doubted[name] = now
            found[name] = before
            what = f"model {name!r}" if now is None else f"versions {gone} of {name!r}"
            log.warning(
                "the listing of %s no longer shows %s: unloading only if the next poll confirms it", uri, what
            )
        self._doubted = doubted

    def start(self) -> None:
        """Poll every `interval` seconds from now on."""
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def failed(self, exc: Exception) -> None:
        """Note a poll that failed: the first of an outage is logged, the rest only counted."""
        if self._outage is None:
            self._outage = (time.monotonic(), 0)
            log.warning(
                "cannot read %s, serving what is loaded until it answers: %s",
                self.registry.repository.uri,
                exc,
            )
        self._outage = (self._outage[0], self._outage[1] + 1)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sync()
            except Exception as exc:  # a store that is down for a while must not stop the polling
                self.failed(exc)
                continue
            if self._outage is not None:
                since, failures = self._outage
                self._outage = None
                log.warning(
                    "%s answers again after %.0f s (%d failed polls)",
                    self.registry.repository.uri,
                    time.monotonic() - since,
                    failures,
                )
