"""The loaded models, `{name: Model}` (served_model.py), and how they change: load new, swap, retire old.

Never on the hot path except `resolve` and `route`, a pair of dict lookups (and a hash for a canary).
What serves is what config.pbtxt selects, plus the release state's canary and shadow (read from the
model's release log, `lineage.releases`); each swap builds the model's Routing from them.
Changes run on the event loop (blocking reads and engine loads go to threads), so a swap is atomic
for requests: each request resolves and acquires its version with no await in between, and
finishes on it; a version that leaves the table is unloaded once its last in-flight request is
done. A version that fails to load is refused with its reason and never replaces one that serves.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from tritonflow.lineage import layout
from tritonflow.lineage.errors import NotFound, TritonflowError
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.batcher import Traffic
from tritonflow.serving.capture import Capture
from tritonflow.serving.ensemble import load_ensemble, rebound
from tritonflow.serving.ensemble_config import is_ensemble, step_models
from tritonflow.serving.errors import InvalidVersion, LoadFailed, ModelNotFound
from tritonflow.serving.heap import settle_heap
from tritonflow.serving.labels import label_files, read_labels
from tritonflow.serving.loading import Loader, Refusal, VersionRefused, refusal
from tritonflow.serving.mirror import Mirror
from tritonflow.serving.model_config import ModelConfig, check_config
from tritonflow.serving.model_read import ModelFiles, read_model
from tritonflow.serving.model_version import ModelVersion
from tritonflow.serving.routing import Routing, champion_of, routing
from tritonflow.serving.served_model import Model
from tritonflow.serving.shadow import Shadow

log = logging.getLogger("tritonflow.serving")


class Registry:
    def __init__(
        self, repository: ModelRepository, loader: Loader, traffic: Traffic, mirror: Mirror | None = None
    ) -> None:
        self.repository = repository
        self.loader = loader
        self.traffic = traffic
        self.mirror = mirror
        self.capture: Capture | None = None  # NOTE: set by the DataPlane: the shadows capture their answers
        self.models: dict[str, Model] = {}
        self.refusals: Counter[tuple[str, str]] = Counter()  # (model, Refusal.kind) -> versions refused
        self._lock = asyncio.Lock()

    # -- the hot path ----------------------------------------------------------------------
    def resolve(self, name: str, version: str | None) -> ModelVersion:
        """The serving version asked for; no version: the champion (never the canary: metadata,
        readiness and config questions get one stable answer)."""
        model = self._model(name)
        if not version:
            return self._routing(model).champion
        number = layout.parse_version(version)
        if number is None:
            raise InvalidVersion(version)
        found = model.versions.get(number)
        if found is None:
            reason = model.why_not(number) if number in model.published else None
            raise ModelNotFound(name, number, reason)
        return found

    def route(
        self, name: str, version: str | None, request_id: str | None
    ) -> tuple[ModelVersion, Shadow | None]:
        """The version that answers an inference request, and the shadow to copy it to (None: none).
        Unversioned: the champion or, for its share, the canary (by `request_id`, else at random);
        an explicit version is never redirected, nor copied to the shadow."""
        if version:
            return self.resolve(name, version), None
        routing = self._routing(self._model(name))
        target = routing.pick(request_id)
        return target, routing.shadow if target is routing.champion else None

    def role(self, mv: ModelVersion) -> str:
        """What a serving version does: champion, canary, shadow, or challenger."""
        model = self.models.get(mv.name)
        routing = model.routing if model is not None else None
        return routing.role(mv.version) if routing is not None else "challenger"

    def shadows(self) -> list[Shadow]:
        return [m.shadow for m in self.models.values() if m.shadow is not None]

    def _model(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    def _routing(self, model: Model) -> Routing:
        if model.routing is None:
            raise ModelNotFound(model.name, None, model.why_none())
        return model.routing

    def serving(self) -> list[ModelVersion]:
        return [mv for model in self.models.values() for mv in model.versions.values()]

    def unserved(self) -> dict[str, str]:
        """Models that have published versions and are meant to serve, yet serve none: why not."""
        return {
            name: model.why_none()
            for name, model in self.models.items()
            if model.published and not model.unloaded and model.routing is None
        }

    # -- changes -----------------------------------------------------------------------------
    async def load(
        self,
        name: str,
        published: Sequence[int] | None = None,
        *,
        requested: bool = False,
        retry: Sequence[int] = (),
        source: ModelRepository | None = None,
    ) -> None:
        """Bring `name` in line with the repository: check a changed config, load what the
        version_policy selects, swap it in, retire the rest. `published`: the versions a scan of
        the repository just found (the watcher's); None: list them here. `requested`: a load
        request, which also retries refused versions and undoes an unload request; it raises if
        nothing serves. `retry`: refused versions to try again (their files changed). `source`:
        where to read from instead of the repository (the mirror, while the repository is down).
        """
        repository = source or self.repository
        async with self._lock:
            model = self.models.get(name)
            if model is None:
                model = self.models[name] = Model(name)
            if requested:
                model.unloaded = False
                model.seen_config = None  # re-check the config and reload every version
            try:
                text, files, versions, release = await asyncio.to_thread(
                    read_model, repository, name, published
                )
            except NotFound:
                self._drop(name)
                if requested:
                    # NOTE: no server path in an answer to a client: the log has the repository
                    raise LoadFailed(name, "the repository has no such model (no config.pbtxt)") from None
                return
            except BaseException:
                if not model.published and not model.versions:  # never known: no entry left behind
                    self._drop(name)
                raise
            model.published, model.source = versions, source
            model.follow(release)
            await self._apply(model, text, files, repository, set(retry))
            if requested and (model.config_error or not model.versions):
                raise LoadFailed(name, model.config_error or model.why_none())

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name` until a load request (an unload request)."""
        async with self._lock:
            model = self._model(name)
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
                model = self.models.pop(name)
                if model.shadow is not None:
                    model.shadow.stop()
                for mv in model.versions.values():
                    mv.retire()  # NOTE: not _drop: the mirror keeps what served, for the next start
        for mv in serving:
            await asyncio.to_thread(mv.batcher.join, 10)

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index, refused and unselected versions included with their reason."""
        return [row for name in sorted(self.models) for row in self.models[name].index_rows()]

    # -- internals -----------------------------------------------------------------------------
    async def _apply(
        self, model: Model, text: str, files: ModelFiles, repository: ModelRepository, retry: set[int]
    ) -> None:
        config, fresh, seen = model.config, False, model.seen_config
        if (text, files) != model.seen_config:
            model.seen_config = (text, files)
            where = f"{repository.uri}/{layout.config_key(model.name)}"
            try:
                config = check_config(text, where, model.name, read_file=files.get)
            except TritonflowError as exc:
                model.config_error = str(exc)
                self.refusals[model.name, "config"] += 1
                log.error("refused the config of %s: %s", model.name, exc)
                return
            fresh = True
        if config is None:
            return
        # A new config reloads (re-validates) every version; until it serves, the old ones do.
        refused = {} if fresh else {v: r for v, r in model.refused.items() if v not in retry}
        loaded = {} if fresh else dict(model.versions)
        candidates = [v for v in model.published if v not in refused]
        labels = {
            o: found for o in label_files(config) if (found := read_labels(config, o, files.get)) is not None
        }
        while True:
            targets = model.targets(config, candidates)
            missing = [v for v in targets if v not in loaded]
            if not missing:
                break
            for version in missing:
                model.loading.add(version)
                try:
                    loaded[version] = await self._load_version(
                        repository, model.name, version, config, labels
                    )
                except Exception as exc:
                    # NOTE: the loader says why (VersionRefused); anything else failed past it, on the loop
                    found = exc.refusal if isinstance(exc, VersionRefused) else refusal(exc, ())
                    refused[version] = self._refuse(model, version, found)
                    candidates.remove(version)
                finally:
                    model.loading.discard(version)
        serving = {v: loaded[v] for v in targets}
        if fresh and model.versions and not serving and refused:
            for mv in loaded.values():
                mv.retire()
            if all(r.kind == "steps" for r in refused.values()):
                # NOTE: an ensemble's config read before its new steps serve (a deploy writes them first,
                # a poll may read them after): the previous config serves until they do, and this text
                # is tried again when a step swaps (_rebind) or at the next poll
                model.seen_config = seen
                model.refused.update(refused)
                return
            model.config_error = "no version loads under the new config.pbtxt: " + "; ".join(
                f"version {v}: {refused[v].reason}" for v in sorted(refused)
            )
            log.error("kept the previous config of %s: %s", model.name, model.config_error)
            return
        model.config, model.refused = config, refused
        if fresh:  # only accepting a new text clears the error of a refused one
            model.config_error = None
        for mv in set(loaded.values()) - set(serving.values()):
            mv.retire()
        served = bool(model.versions)
        self._swap(model, serving)
        # NOTE: after the swap, whose mirror follows a model serving nothing by dropping its config too
        # (an ensemble refused until its steps served, then retried with the same text)
        if serving and (fresh or not served) and model.config_error is None:
            self._mirror(lambda m: m.keep_config(model.name, text, files))

    def _refuse(self, model: Model, version: int, found: Refusal) -> Refusal:
        """Count and log a refusal; a retry refused again for the same reason only at debug level."""
        before = model.refused.get(version)
        if before is not None and before.reason == found.reason:  # a retry that changed nothing
            log.debug("still refusing %s:%d: %s", model.name, version, found.reason)
            return found
        self.refusals[model.name, found.kind] += 1
        if found.kind == "steps":
            log.warning("waiting for the steps of %s:%d: %s", model.name, version, found.reason)
        elif found.kind == "incomplete":
            log.warning(
                "waiting for %s:%d: %s; trying again when its files change", model.name, version, found.reason
            )
        else:
            log.error("refused %s:%d: %s", model.name, version, found.reason)
        return found

    async def _load_version(
        self,
        repository: ModelRepository,
        name: str,
        version: int,
        config: ModelConfig,
        labels: dict[str, list[str]],
    ) -> ModelVersion:
        if is_ensemble(config):
            ensemble = await load_ensemble(repository, name, version, config, self.resolve, self.traffic)
            # NOTE: its folder holds only the record: kept in the mirror, it serves while the store is down
            cache, record = self.loader.settings.cache_dir, ensemble.record
            self._mirror(lambda m: m.keep_version(name, version, Path(tempfile.mkdtemp(dir=cache)), record))
            return ensemble
        record, backend = await asyncio.to_thread(self.loader.open, repository, name, version, config)
        try:
            mv = ModelVersion(
                name, version, config, record, backend, self.traffic, asyncio.get_running_loop(), labels
            )
        except Exception:
            backend.unload()
            raise
        log.info("loaded %s (%s) engine=%s", mv.label, record.deployment_id, backend.engine)
        return mv

    def _rebind(self, step: str) -> None:
        """After `step`'s swap: the ensembles that call it rebound to what serves now, and their
        versions refused while a step did not serve tried again now (not at the next poll)."""
        for ensemble in list(self.models.values()):
            config = ensemble.config
            if config is None or not is_ensemble(config) or step not in step_models(config):
                continue
            waiting = [v for v, r in ensemble.refused.items() if r.kind == "steps"]
            if waiting:
                asyncio.get_running_loop().create_task(self._retry(ensemble.name, waiting, ensemble.source))
            serving = rebound(ensemble.versions, self.resolve, self.traffic)
            if serving != ensemble.versions:
                self._swap(ensemble, serving)

    async def _retry(self, name: str, versions: list[int], source: ModelRepository | None) -> None:
        try:
            await self.load(name, retry=versions, source=source)
        except Exception as exc:  # NOTE: the watcher's next poll tries again; a task must not fail unseen
            log.warning("retrying %s after its step changed failed: %s", name, exc)

    def _swap(self, model: Model, serving: dict[int, ModelVersion]) -> None:
        old = model.versions
        before = model.shadow
        shadow = _shadow(model, serving, self.repository.uri, self.loader.settings.engine, self.capture)
        if before is not None and before is not shadow:
            before.stop()
        # NOTE: both in one step, no await between: a request sees the old table and routing, or the new
        model.versions, model.routing = serving, routing(serving, model.release, shadow)
        for mv in set(old.values()) - set(serving.values()):
            mv.retire()
        if set(serving.values()) - set(old.values()):
            settle_heap()
        # NOTE: an ensemble waiting for its steps keeps its copy: they may load from the mirror next
        if serving or not any(r.kind == "steps" for r in model.refused.values()):
            self._mirror(lambda m: m.follow(model.name, set(serving)))
        if old != serving:
            self._rebind(model.name)

    def _drop(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is not None:
            model.refused = {}  # NOTE: gone, not waiting for steps: the mirror forgets it too
            self._swap(model, {})

    def _mirror(self, change: Callable[[Mirror], None]) -> None:
        """Keep the mirror in step with what serves; a mirror that cannot be written only warns."""
        if self.mirror is None:
            return
        try:
            change(self.mirror)
        except OSError as exc:
            log.warning("could not update the mirror %s: %s", self.mirror.root, exc)


def _shadow(
    model: Model, serving: dict[int, ModelVersion], repository: str, engine: str, capture: Capture | None
) -> Shadow | None:
    """The shadow runner for what will serve: the running one while its pair is unchanged; a new one
    loads the shadow version from `repository` with `engine` in its own process (and its answers go
    to `capture`, when given)."""
    state = model.release
    target = serving.get(state.shadow) if state is not None and state.shadow is not None else None
    champion = champion_of(serving, state)
    if target is None or champion is None or target is champion:
        return None
    running = model.shadow
    if running is not None and running.champion is champion and running.target is target:
        return running
    return Shadow(model.name, champion, target, repository, engine, capture)
