"""Every version folder of every model with its deployment ID and run: `tritonflow models` and
`tritonflow.models()`."""

from __future__ import annotations

from typing import Any

from tritonflow.lineage.repository import ModelRepository


def models(repository: ModelRepository) -> list[dict[str, Any]]:
    """One row per version folder, by model and version; an unfinished publish is listed as such."""
    repository.check_layout("tritonflow models {}")  # NOTE: a model folder given as the repository says so
    return [
        {
            "model": e.model,
            "version": e.version,
            "state": "published" if e.record else "unfinished (no deployment.json)",
            "deployment_id": e.record.deployment_id if e.record else "",
            "run": (e.record.task_pathspec or "") if e.record else "",
            "created_at": e.record.created_at if e.record else "",
        }
        for e in repository.entries()
    ]
