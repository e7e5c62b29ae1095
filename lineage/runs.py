"""Live facts about a deployment's run from the Metaflow Client, when its metadata is reachable.

The record alone is enough for lineage; this adds what only Metaflow knows now (run status,
finish time, tags added later, artifacts still present). Metaflow is imported here, lazily,
and only when asked: its import costs about half a second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tritonflow.lineage.records import DeploymentRecord, iso_utc


@dataclass
class LiveRun:
    """What Metaflow says now; `notice` explains, in one line, why something is missing."""

    available: bool
    notice: str | None = None
    run: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> sha, as the Client sees them


def _point_metaflow_at(record: DeploymentRecord) -> None:
    # NOTE: must run before metaflow is imported: its config is read once, at import.
    meta = record.metaflow
    root = meta.get("datastore_root")
    if meta.get("datastore") == "local" and root and "METAFLOW_DATASTORE_SYSROOT_LOCAL" not in os.environ:
        os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = os.path.dirname(root.rstrip("/"))


def _status(run: Any) -> str:
    """successful, failed or running. NOTE: Metaflow calls a run whose task failed "not finished",
    like one still going; the failed task's metadata (attempt_ok False) in its latest step tells."""
    if run.finished:
        return "successful" if run.successful else "failed"
    try:
        latest = next(iter(run), None)
        if latest is not None and any(t.metadata_dict.get("attempt_ok") == "False" for t in latest):
            return "failed"
    except Exception:  # noqa: BLE001 - a step that cannot be read leaves the run "running"
        pass
    return "running"


def live_run(record: DeploymentRecord) -> LiveRun:
    """Look the record's run up; never raises for an unreachable or deleted run."""
    meta = record.metaflow
    if not meta.get("flow") or not meta.get("run_id"):
        return LiveRun(False, "the record names no Metaflow run")
    pathspec = f"{meta['flow']}/{meta['run_id']}"
    _point_metaflow_at(record)
    try:
        from metaflow import Run, Task, namespace
        from metaflow.exception import MetaflowNotFound
    except Exception as exc:  # noqa: BLE001 - a broken Metaflow install is a notice, never a crash
        return LiveRun(
            False,
            f"Metaflow cannot be imported ({type(exc).__name__}: {exc}): showing the deployment record only",
        )
    try:
        namespace(None)
        run = Run(pathspec)
    except MetaflowNotFound:
        return LiveRun(
            False,
            f"run {pathspec} is not in the Metaflow metadata (deleted, or another "
            "metadata service): showing the deployment record only",
        )
    except Exception as exc:  # noqa: BLE001 - any client failure means "not reachable", never a crash
        return LiveRun(
            False,
            f"Metaflow metadata not reachable ({type(exc).__name__}: {exc}): "
            "showing the deployment record only",
        )
    info: dict[str, Any] = {
        "status": _status(run),
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
        "user_tags": sorted(run.user_tags),
        "system_tags": sorted(run.system_tags),
    }
    artifacts: dict[str, str] = {}
    for item in record.data:
        try:
            artifacts[item["name"]] = Task(item["task"])[item["name"]].sha
        except Exception:  # noqa: BLE001 - a missing artifact shows as absent, not as an error
            continue
    return LiveRun(True, None, info, artifacts)


def _iso(value: datetime | None) -> str | None:
    return iso_utc(value) if value is not None else None
