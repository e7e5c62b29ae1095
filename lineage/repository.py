"""A Triton model repository over a store: list, claim versions race-free, publish, read records."""

from __future__ import annotations

import difflib
import json
import os
import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from tritonflow.lineage import layout
from tritonflow.lineage.errors import NotFound, RepositoryError, TritonflowError
from tritonflow.lineage.ids import DeploymentId, check_model_name
from tritonflow.lineage.records import DeploymentRecord, utc_now
from tritonflow.lineage.store import Store, open_store
from tritonflow.lineage.store.local import LocalStore

DEFAULT_REPOSITORY = "model_repository"
REPOSITORY_ENV = "TRITONFLOW_REPOSITORY"

# Bounded so a store that never grants a claim fails loudly instead of spinning.
_MAX_CLAIM_ATTEMPTS = 1000
# A mistyped run is answered with the runs of each model's newest versions (one read each), closest first.
_RUNS_READ_PER_MODEL = 100
_SUGGESTED = 5
_NAMES_LISTED = 20


class NotARepository(TritonflowError):
    """A folder given as the repository is a model or version folder, or holds the repository below."""


def default_repository(explicit: str | None = None) -> str:
    """Explicit, else $TRITONFLOW_REPOSITORY, else ./model_repository: for commands and deploys."""
    return explicit or os.environ.get(REPOSITORY_ENV) or DEFAULT_REPOSITORY


@dataclass(frozen=True)
class VersionEntry:
    model: str
    version: int
    record: DeploymentRecord | None  # None: files without a record, an unfinished publish


class ModelRepository:
    def __init__(self, uri: str | os.PathLike[str]) -> None:
        self.store: Store = open_store(os.fspath(uri))
        self.uri = self.store.uri
        self.given = os.fspath(uri)  # as the user wrote it: what a suggested command must say

    # -- reading -----------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Models with a config.pbtxt, by name."""
        return list(self.model_folders())

    def model_folders(self) -> dict[str, list[str]]:
        """Each model's folder entries, for models with a config.pbtxt: one listing per model."""
        names = [n for n in self.store.list("") if not n.startswith(".")]
        listings = {n: self.store.list(n) for n in names}
        return {n: entries for n, entries in listings.items() if layout.CONFIG in entries}

    def version_numbers(self, model: str) -> list[int]:
        """Every numeric version folder, finished or not, ascending."""
        return layout.version_numbers(self.store.list(model))

    def versions(self, model: str) -> list[int]:
        """Published versions (those with a deployment record), ascending."""
        return [
            v
            for v in self.version_numbers(model)
            if layout.RECORD in self.store.list(layout.version_key(model, v))
        ]

    def read_config(self, model: str) -> str:
        try:
            return self.store.read(layout.config_key(model)).decode()
        except NotFound:
            raise NotFound(f"model {model!r} has no config.pbtxt in {self.uri}") from None

    def check_layout(self, command: str) -> bool:
        """Whether the folder has a model, once it is known to be a repository. A model folder, a
        version folder, or (local only: one listing per entry) a folder with a repository one level
        down, such as `serve .`, raise NotARepository, suggesting `command` with the right folder in
        place of its last '{}'. False: no model yet, a new repository. Lists until a model is found."""
        if self._has_model(""):
            return True
        top = self.store.list("")
        if layout.CONFIG in top:
            raise NotARepository(
                f"{self.given} is a model folder (it has {layout.CONFIG}): use its parent, "
                f"`{_suggest(command, self.given, '..')}`"
            )
        if layout.RECORD in top:
            raise NotARepository(
                f"{self.given} is a version folder (it has {layout.RECORD}): use the repository two levels "
                f"up, `{_suggest(command, self.given, '..', '..')}`"
            )
        below = next((name for name in top if self._holds_repository(name)), None)
        if below is not None:
            raise NotARepository(
                f"{self.given} has no models, but {os.path.join(self.given, below)} below has: "
                f"`{_suggest(command, self.given, below)}`"
            )
        return False

    def _has_model(self, folder: str) -> bool:
        """Whether an entry of `folder` ('': the top) has a config.pbtxt; lists until one does."""
        below = f"{folder}/" if folder else ""
        names = [n for n in self.store.list(folder) if not n.startswith(".")]
        return any(layout.CONFIG in self.store.list(below + name) for name in names)

    def _holds_repository(self, name: str) -> bool:
        """Whether the local folder `name` is a repository with a model (a hidden name is not)."""
        if name.startswith(".") or not isinstance(self.store, LocalStore):
            return False
        try:
            return self._has_model(name)
        except RepositoryError:  # NOTE: an unreadable folder is no repository, and no reason to fail
            return False

    def read_record(self, model: str, version: int) -> DeploymentRecord:
        record = self._record(model, version)
        if record is None:
            raise self._no_deployment(model, version)
        return record

    def _no_deployment(self, model: str, version: int) -> NotFound:
        """Why model:version is not here, with what is: the model's versions, or the closest models."""
        models = self.models()  # NOTE: a missing repository says so, rather than "no such version"
        if model in models:
            return NotFound(
                f"no deployment {model}:{version} in {self.uri} "
                f"(known versions of {model!r}: {self.versions(model) or 'none'})"
            )
        close = difflib.get_close_matches(model, models, n=1)
        return NotFound(
            f"no deployment {model}:{version} in {self.uri}: it has no model {model!r}"
            + (f"; did you mean {close[0]!r}?" if close else "")
            + f" (its models: {_listed(models)})"
        )

    def _record(self, model: str, version: int) -> DeploymentRecord | None:
        """The version's record, or None for an unfinished (or absent) version: one read."""
        key = layout.record_key(model, version)
        try:
            raw = self.store.read(key)
        except NotFound:
            return None
        return DeploymentRecord.from_json(raw, where=f"{self.uri}/{key}")

    def resolve(self, deployment_id: str | DeploymentId) -> DeploymentRecord:
        """The record of a full or short (`model:version`) deployment ID."""
        did = deployment_id if isinstance(deployment_id, DeploymentId) else DeploymentId.parse(deployment_id)
        record = self.read_record(did.model, did.version)
        if not did.is_short and record.deployment_id != str(did):
            raise self._other_run(did, record)
        return record

    def _other_run(self, did: DeploymentId, record: DeploymentRecord) -> NotFound:
        """A full ID whose run did not make that version here: a mistyped version, run, or repository."""
        run = f"{did.flow}/{did.run_id}"
        made = [r.deployment_id for r in self._indexed(did.model, layout.RUNS, run) if r.run_pathspec == run]
        if made:
            return NotFound(
                f"no deployment {did} in {self.uri}: run {run} made {', '.join(made)} there, "
                f"and {did.short} is {record.deployment_id}: check the version"
            )
        runs = self.closest_runs(run, did.model)
        return NotFound(
            f"no deployment {did} in {self.uri}: no version of {did.model!r} there came from run {run} "
            f"({did.short} is {record.deployment_id}); the runs that deployed it, closest first: "
            f"{', '.join(runs) or 'none readable'}. Check the run ID, or the ID comes from another repository"
        )

    def closest_runs(self, run: str, model: str | None = None) -> list[str]:
        """Runs with deployments here, closest to `run` ("flow/run_id") first, each with what it made
        ('FraudFlow/1795314379884117 (fraud-classifier:3)'): for a mistyped run. Reads the records of
        the newest versions of `model` (default: every model)."""
        made: dict[str, list[str]] = {}
        for name in [model] if model else self.models():
            for version in self.version_numbers(name)[-_RUNS_READ_PER_MODEL:]:
                try:
                    record = self._record(name, version)
                except RepositoryError:  # NOTE: a damaged record has its own error elsewhere
                    continue
                if record is not None and record.run_pathspec:
                    made.setdefault(record.run_pathspec, []).append(f"{name}:{version}")
        closest = difflib.get_close_matches(run, list(made), n=_SUGGESTED, cutoff=0)
        return [f"{r} ({', '.join(made[r])})" for r in closest]

    def entries(self) -> list[VersionEntry]:
        """Every version folder of every model, with its record when it has one."""
        return [
            VersionEntry(model, v, self._record(model, v))
            for model in self.models()
            for v in self.version_numbers(model)
        ]

    def deployments_of_run(self, flow: str, run_id: str) -> list[DeploymentRecord]:
        """What a Metaflow run published, by model and version: one index listing per model."""
        run = f"{flow}/{run_id}"
        return [
            record
            for model in self.models()
            for record in self._indexed(model, layout.RUNS, run)
            if record.run_pathspec == run
        ]

    def find_task_deployment(self, model: str, task: str, sha256s: set[str]) -> DeploymentRecord | None:
        """A version this task already published with the same files (idempotent retries)."""
        for record in reversed(self._indexed(model, layout.TASKS, task)):
            if record.task_pathspec == task and {f["sha256"] for f in record.files} == sha256s:
                return record
        return None

    def _indexed(self, model: str, index: str, value: str) -> list[DeploymentRecord]:
        """The published versions an index lists under `value`, ascending: a listing plus a read
        per version listed, however many versions the model has."""
        listed = layout.version_numbers(self.store.list(layout.index_prefix(model, index, value)))
        return [record for v in listed if (record := self._record(model, v)) is not None]

    # -- writing -----------------------------------------------------------------------------
    def claim_version(self, model: str, owner: dict[str, str]) -> int:
        """Allocate the next version: strictly increasing, never reused, one winner per number.

        A claim is an exclusive create (O_EXCL locally, If-None-Match on S3) of
        `<model>/.versions/<n>`; losers of a race move on to n + 1.
        """
        check_model_name(model)
        claimed = [layout.parse_version(n) for n in self.store.list(f"{model}/{layout.CLAIMS}")]
        start = max([v for v in claimed if v] + self.version_numbers(model) + [0]) + 1
        body = json.dumps({**owner, "claimed_at": utc_now()}, sort_keys=True).encode()
        for version in range(start, start + _MAX_CLAIM_ATTEMPTS):
            if self.store.create(layout.claim_key(model, version), body):
                return version
        raise RepositoryError(f"could not claim a version of {model!r} in {self.uri}")

    def publish(
        self,
        model: str,
        config_text: str,
        files: dict[str, bytes],
        make_record: Callable[[int], DeploymentRecord],
        owner: dict[str, str],
        check_current: Callable[[str], None] | None = None,
        model_files: dict[str, bytes] | None = None,
    ) -> DeploymentRecord:
        """Claim a version, index it under its Metaflow task and run, write the config if it changed, then
        the files, the record last. `check_current` sees the model's config.pbtxt, if it has one,
        before anything is written, and raises to stop the publish. `model_files` (a labels file) go
        beside config.pbtxt, before it: a config never names a file that is not there yet."""
        key = layout.config_key(model)
        current = self._read_or_none(key)
        if current is not None and check_current is not None:
            check_current(current.decode())
        version = self.claim_version(model, owner)
        record = make_record(version)
        for index, value in ((layout.TASKS, record.task_pathspec), (layout.RUNS, record.run_pathspec)):
            if value:
                self.store.write(layout.index_key(model, index, value, version), b"")
        for name, data in (model_files or {}).items():
            # NOTE: rewritten only when it changed: a rewrite is a change to every node that watches it
            if self._read_or_none(f"{model}/{name}") != data:
                self.store.write(f"{model}/{name}", data)
        config = config_text.encode()
        if current != config:
            self.store.write(key, config)
        self.store.publish(
            layout.version_key(model, version),
            {**files, layout.RECORD: record.to_json()},
            last=layout.RECORD,
        )
        return record

    def _read_or_none(self, key: str) -> bytes | None:
        try:
            return self.store.read(key)
        except NotFound:
            return None


def _suggest(command: str, given: str, *parts: str) -> str:
    """`command` with its last '{}' replaced by `given` joined with `parts` ('..': up), as a user types it."""
    scheme, sep, path = given.rpartition("://")
    if sep:
        folder = f"{scheme}{sep}{posixpath.normpath(posixpath.join(path, *parts))}"
    else:
        folder = os.path.normpath(os.path.join(given, *parts))
    head, _, tail = command.rpartition("{}")
    return head + shlex.quote(folder) + tail


def _listed(names: list[str]) -> str:
    more = len(names) - _NAMES_LISTED
    return (", ".join(names[:_NAMES_LISTED]) + (f" and {more} more" if more > 0 else "")) or "none"
