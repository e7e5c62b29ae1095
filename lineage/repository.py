"""A Triton model repository over a store: list, claim versions race-free, publish, read records."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from tritonflow.lineage import layout
from tritonflow.lineage.errors import NotFound, RepositoryError
from tritonflow.lineage.ids import DeploymentId, check_model_name
from tritonflow.lineage.records import DeploymentRecord, utc_now
from tritonflow.lineage.store import Store, open_store

DEFAULT_REPOSITORY = "model_repository"
REPOSITORY_ENV = "TRITONFLOW_REPOSITORY"

# Bounded so a store that never grants a claim fails loudly instead of spinning.
_MAX_CLAIM_ATTEMPTS = 1000


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

    def read_record(self, model: str, version: int) -> DeploymentRecord:
        record = self._record(model, version)
        if record is None:
            self.store.list("")  # a missing repository says so, rather than "no such version"
            raise NotFound(
                f"no deployment {model}:{version} in {self.uri} "
                f"(known versions of {model!r}: {self.versions(model) or 'none'})"
            )
        return record

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
            raise NotFound(
                f"{did} names run {did.flow}/{did.run_id}, but {did.short} in {self.uri} "
                f"is {record.deployment_id}: the ID comes from another repository"
            )
        return record

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
    ) -> DeploymentRecord:
        """Claim a version, index it under its Metaflow task and run, write the config if it changed, then
        the files, the record last. `check_current` sees the model's config.pbtxt, if it has one,
        before anything is written, and raises to stop the publish."""
        key = layout.config_key(model)
        try:
            current: bytes | None = self.store.read(key)
        except NotFound:
            current = None
        if current is not None and check_current is not None:
            check_current(current.decode())
        version = self.claim_version(model, owner)
        record = make_record(version)
        for index, value in ((layout.TASKS, record.task_pathspec), (layout.RUNS, record.run_pathspec)):
            if value:
                self.store.write(layout.index_key(model, index, value, version), b"")
        config = config_text.encode()
        if current != config:
            self.store.write(key, config)
        self.store.publish(
            layout.version_key(model, version),
            {**files, layout.RECORD: record.to_json()},
            last=layout.RECORD,
        )
        return record
