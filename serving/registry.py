"""The loaded models, `{name: {version: ModelVersion}}`, and how they change: load new, swap, retire old.

Never on the hot path except `resolve`, a pair of dict lookups. Changes run on the event loop
(blocking reads and engine loads go to threads), so a swap is atomic for requests: each request
resolves and acquires its version with no await in between, and finishes on it; a version that
leaves the table is unloaded once its last in-flight request is done. A version that fails to
load is refused with its reason and never replaces one that serves.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tritonflow.lineage import layout
from tritonflow.lineage.errors import NotFound, RepositoryError, TritonflowError
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving import datatypes
from tritonflow.serving.backends import Backend, backend_name, load_backend
from tritonflow.serving.batcher import Batcher, BatchPolicy, Traffic
from tritonflow.serving.errors import InvalidVersion, LoadFailed, ModelNotFound
from tritonflow.serving.metrics import VersionStats
from tritonflow.serving.model_config import ModelConfig, check_config, served_versions, signature

log = logging.getLogger("tritonflow.serving")


class Tensor(NamedTuple):
    name: str
    datatype: str  # protocol datatype, e.g. "FP32"
    dtype: np.dtype
    dims: tuple[int, ...]  # without the batch dimension; -1: any size


def _tensors(specs: list[dict[str, Any]]) -> dict[str, Tensor]:
    """The inputs or outputs of a config's `signature`, by name."""
    return {
        t["name"]: Tensor(t["name"], t["datatype"], datatypes.NUMPY[t["datatype"]], tuple(t["dims"]))
        for t in specs
    }


class ModelVersion:
    """One loaded version, with what the hot path needs computed once, at load."""

    def __init__(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        record: DeploymentRecord,
        backend: Backend,
        traffic: Traffic,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.version = version
        self.label = f"{name}:{version}"
        self.config = config
        self.record = record
        self.backend = backend
        self.stamp = {
            "model_name": name,
            "model_version": str(version),
            "deployment_id": record.deployment_id,
        }
        tensors = signature(config)
        self.inputs = _tensors(tensors["inputs"])
        self.outputs = _tensors(tensors["outputs"])
        self.max_batch_size = config.max_batch_size
        self.stats = VersionStats()
        self.batcher = Batcher(
            self.label,
            backend.predict,
            BatchPolicy.from_config(config),
            self.stats.record_execution,
            traffic,
            loop,
        )
        self.inflight = 0
        self.retired = False

    def acquire(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        if self.retired and not self.inflight:
            self._close()

    def retire(self) -> None:
        """Take no new requests; unload once the in-flight ones have finished."""
        if self.retired:
            return
        self.retired = True
        if not self.inflight:
            self._close()

    def _close(self) -> None:
        self.batcher.close(then=self._unload)

    def _unload(self) -> None:
        self.backend.unload()
        log.info("unloaded %s (%s)", self.label, self.record.deployment_id)


@dataclass
class Model:
    """What the server knows of one model name: its serving versions and why others do not serve."""

    name: str
    config: ModelConfig | None = None  # the config the serving versions were loaded under
    seen_config: str | None = None  # the config.pbtxt text last examined, valid or not
    config_error: str | None = None  # why that text was refused, while it stays as it is
    versions: dict[int, ModelVersion] = field(default_factory=dict)  # replaced whole, never mutated
    latest: ModelVersion | None = None
    published: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    loading: set[int] = field(default_factory=set)
    unloaded: bool = False  # by a repository API request; the watcher leaves it until a load request

    def why_not(self, version: int) -> str:
        """Why a published version is not serving."""
        if self.unloaded:
            return "unloaded by request"
        if version in self.loading:
            return "loading"
        if version in self.refused:
            return self.refused[version]
        if self.config is None and self.config_error:
            return self.config_error
        return "not selected by the config's version_policy"

    def why_none(self) -> str:
        """Why no version serves."""
        if self.unloaded:
            return "unloaded by request"
        if self.config_error and self.config is None:
            return self.config_error
        reasons = [f"version {v}: {self.why_not(v)}" for v in self.published]
        return "; ".join(reasons) or "no published version (a version folder needs its deployment.json)"


class Registry:
    def __init__(self, repository: ModelRepository, engine: str, cache_dir: Path, traffic: Traffic) -> None:
        self.repository = repository
        self.engine = engine
        self.cache_dir = cache_dir
        self.traffic = traffic
        self.models: dict[str, Model] = {}
        self._lock = asyncio.Lock()

    # -- the hot path ----------------------------------------------------------------------
    def resolve(self, name: str, version: str | None) -> ModelVersion:
        """The serving version asked for; no version: the highest one serving."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(name)
        if not version:
            if model.latest is None:
                raise ModelNotFound(name, None, model.why_none())
            return model.latest
        number = layout.parse_version(version)
        if number is None:
            raise InvalidVersion(version)
        found = model.versions.get(number)
        if found is None:
            reason = model.why_not(number) if number in model.published else None
            raise ModelNotFound(name, number, reason)
        return found

    def serving(self) -> list[ModelVersion]:
        return [mv for model in self.models.values() for mv in model.versions.values()]

    # -- changes -----------------------------------------------------------------------------
    async def load(
        self, name: str, published: Sequence[int] | None = None, *, requested: bool = False
    ) -> None:
        """Bring `name` in line with the repository: check a changed config, load what the
        version_policy selects, swap it in, retire the rest. `published`: the versions a scan of
        the repository just found (the watcher's); None: list them here. `requested`: a load
        request, which also retries refused versions and undoes an unload request; it raises if
        nothing serves.
        """
        async with self._lock:
            model = self.models.get(name)
            if model is None:
                model = self.models[name] = Model(name)
            if requested:
                model.unloaded = False
                model.seen_config = None  # re-check the config and reload every version
            elif model.unloaded:
                return
            try:
                text, versions = await asyncio.to_thread(self._read, name, published)
            except NotFound:
                self._drop(name)
                if requested:
                    raise ModelNotFound(name, None, f"it is not in {self.repository.uri}") from None
                return
            model.published = versions
            await self._apply(model, text)
            if requested and (model.config_error or not model.versions):
                raise LoadFailed(name, model.config_error or model.why_none())

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name` until a load request (an unload request)."""
        async with self._lock:
            model = self.models.get(name)
            if model is None:
                raise ModelNotFound(name)
            model.unloaded = True
            self._swap(model, {})

    async def drop(self, name: str) -> None:
        """Forget a model that left the repository."""
        async with self._lock:
            self._drop(name)

    async def close(self) -> None:
        """Retire every version and wait for the engines to stop (server shutdown)."""
        async with self._lock:
            serving = self.serving()
            for name in list(self.models):
                self._drop(name)
        for mv in serving:
            await asyncio.to_thread(mv.batcher.join, 10)

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index, refused and unselected versions included with their reason."""
        rows = []
        for name in sorted(self.models):
            model = self.models[name]
            if not model.published and model.config_error:
                rows.append(_row(name, "", "UNAVAILABLE", model.config_error))
            for version in model.published:
                if version in model.versions:
                    note = model.config_error and f"serving the previous config: {model.config_error}"
                    rows.append(_row(name, str(version), "READY", note or ""))
                elif version in model.loading:
                    rows.append(_row(name, str(version), "LOADING", ""))
                else:
                    rows.append(_row(name, str(version), "UNAVAILABLE", model.why_not(version)))
        return rows

    # -- internals -----------------------------------------------------------------------------
    def _read(self, name: str, published: Sequence[int] | None) -> tuple[str, list[int]]:
        text = self.repository.read_config(name)
        return text, self.repository.versions(name) if published is None else list(published)

    async def _apply(self, model: Model, text: str) -> None:
        config, fresh = model.config, False
        if text != model.seen_config:
            model.seen_config = text
            try:
                config = check_config(
                    text, f"{self.repository.uri}/{layout.config_key(model.name)}", model.name
                )
            except TritonflowError as exc:
                model.config_error = str(exc)
                log.error("refused the config of %s: %s", model.name, exc)
                return
            fresh = True
        if config is None:
            return
        # A new config reloads (re-validates) every version; until it serves, the old ones do.
        refused = {} if fresh else model.refused
        loaded = {} if fresh else dict(model.versions)
        candidates = [v for v in model.published if v not in refused]
        while True:
            targets = served_versions(config, candidates)
            missing = [v for v in targets if v not in loaded]
            if not missing:
                break
            for version in missing:
                model.loading.add(version)
                try:
                    loaded[version] = await self._load_version(model.name, version, config)
                except Exception as exc:
                    refused[version] = _reason(exc)
                    candidates.remove(version)
                    log.error("refused %s:%d: %s", model.name, version, refused[version])
                finally:
                    model.loading.discard(version)
        serving = {v: loaded[v] for v in targets}
        if fresh and model.versions and not serving and refused:
            model.config_error = "no version loads under the new config.pbtxt: " + "; ".join(
                f"version {v}: {refused[v]}" for v in sorted(refused)
            )
            log.error("kept the previous config of %s: %s", model.name, model.config_error)
            for mv in loaded.values():
                mv.retire()
            return
        model.config, model.refused = config, refused
        if fresh:  # only accepting a new text clears the error of a refused one
            model.config_error = None
        for mv in set(loaded.values()) - set(serving.values()):
            mv.retire()
        self._swap(model, serving)

    async def _load_version(self, name: str, version: int, config: ModelConfig) -> ModelVersion:
        record, backend = await asyncio.to_thread(self._open_version, name, version, config)
        try:
            mv = ModelVersion(
                name, version, config, record, backend, self.traffic, asyncio.get_running_loop()
            )
        except Exception:
            backend.unload()
            raise
        log.info("loaded %s (%s) engine=%s", mv.label, record.deployment_id, backend.engine)
        return mv

    def _open_version(self, name: str, version: int, config: ModelConfig) -> tuple[DeploymentRecord, Backend]:
        """Read the record, fetch the files, start the engine (blocking: runs in a thread)."""
        record = self.repository.read_record(name, version)
        if record.id.short != f"{name}:{version}":
            raise RepositoryError(f"its deployment.json is the record of {record.deployment_id}")
        folder = self.repository.store.local_dir(layout.version_key(name, version), self.cache_dir)
        # NOTE: --engine picks the forest engine; other backends choose their own.
        engine = self.engine if backend_name(config) == "fil" else "auto"
        return record, load_backend(folder, config, engine)

    def _swap(self, model: Model, serving: dict[int, ModelVersion]) -> None:
        old = model.versions
        model.versions = serving
        model.latest = serving[max(serving)] if serving else None
        for mv in set(old.values()) - set(serving.values()):
            mv.retire()
        if set(serving.values()) - set(old.values()):
            _settle_heap()

    def _drop(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is not None:
            self._swap(model, {})


def _settle_heap() -> None:
    """Keep what the loads left alive (engines, their modules) out of the garbage collector's walks.

    NOTE: a full collection walks every tracked object, ~60k once nvForest is imported: 14 ms in
    which the loop answers nothing. Under load that was the p99 (16 ms against a 2 ms p90 at 64
    connections). Frozen objects are skipped; unfreezing first lets retired versions' cycles go.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _row(name: str, version: str, state: str, reason: str) -> dict[str, str]:
    return {"name": name, "version": version, "state": state, "reason": reason}


def _reason(exc: Exception) -> str:
    """A refusal's reason: the message of errors users can act on, the type too for anything else."""
    return str(exc) if isinstance(exc, TritonflowError) else f"{type(exc).__name__}: {exc}"
