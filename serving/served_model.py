"""One model name as the server knows it: what serves, how it routes, and why other versions do not.

State only, changed by the registry (serving/registry.py) under its lock. Kept apart so the reasons
it gives (the repository index, 404s, readiness) read from one place, and the registry holds only
the changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tritonflow.lineage.releases import ReleaseState
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.loading import Refusal
from tritonflow.serving.model_config import ModelConfig, served_versions
from tritonflow.serving.model_read import ModelFiles
from tritonflow.serving.model_version import ModelVersion
from tritonflow.serving.routing import Routing
from tritonflow.serving.shadow import Shadow

log = logging.getLogger("tritonflow.serving")


@dataclass
class Model:
    """What the server knows of one model name: its serving versions and why others do not serve."""

    name: str
    config: ModelConfig | None = None  # the config the serving versions were loaded under
    # the config.pbtxt text and the labels files it names (None: absent) last examined, valid or not
    seen_config: tuple[str, ModelFiles] | None = None
    config_error: str | None = None  # why that text was refused, while it stays as it is
    versions: dict[int, ModelVersion] = field(default_factory=dict)  # replaced whole, never mutated
    routing: Routing | None = None  # where unversioned requests go; None: no champion serves
    release: ReleaseState | None = None  # the release log as last read (None: no decision, or unread)
    release_error: str | None = None  # why the release log last failed to read
    published: list[int] = field(default_factory=list)
    refused: dict[int, Refusal] = field(default_factory=dict)
    loading: set[int] = field(default_factory=set)
    unloaded: bool = False  # by an unload request (mode explicit), until a load request
    source: ModelRepository | None = None  # where it was last read from when not the repository (the mirror)

    @property
    def shadow(self) -> Shadow | None:
        """The shadow runner of what serves now (None: none)."""
        return self.routing.shadow if self.routing is not None else None

    def targets(self, config: ModelConfig, candidates: list[int]) -> list[int]:
        """The versions to serve among `candidates`: what the config's version_policy selects and,
        beside them, the release state's canary and shadow."""
        targets = served_versions(config, candidates)
        state = self.release
        extra = [v for v in (state.canary, state.shadow) if v in candidates] if state else []
        return targets + [v for v in extra if v not in targets]

    def follow(self, release: ReleaseState | str | None) -> None:
        """Take the release log as read (a string: why it did not read; the last state read stays,
        or none: what config.pbtxt serves, served as before releases). Logged once per problem."""
        if not isinstance(release, str):
            if self.release_error is not None:
                log.warning("the release log of %s reads again", self.name)
            self.release, self.release_error = release, None
            return
        if release != self.release_error:
            log.error(
                "cannot follow the release log of %s, serving what config.pbtxt says: %s", self.name, release
            )
        self.release_error = release

    def why_not(self, version: int) -> str:
        """Why a published version is not serving."""
        if self.unloaded:
            return "unloaded by request"
        if version in self.loading:
            return "loading"
        if version in self.refused:
            return self.refused[version].reason
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

    def index_rows(self) -> list[dict[str, str]]:
        """Its rows of Triton's repository index, refused and unselected versions with their reason."""
        rows = []
        if not self.published and self.config_error:
            rows.append(_row(self.name, "", "UNAVAILABLE", self.config_error))
        for version in self.published:
            if version in self.versions:
                note = self.config_error and f"serving the previous config: {self.config_error}"
                rows.append(_row(self.name, str(version), "READY", note or ""))
            elif version in self.loading:
                rows.append(_row(self.name, str(version), "LOADING", ""))
            else:
                rows.append(_row(self.name, str(version), "UNAVAILABLE", self.why_not(version)))
        return rows


def _row(name: str, version: str, state: str, reason: str) -> dict[str, str]:
    return {"name": name, "version": version, "state": state, "reason": reason}
