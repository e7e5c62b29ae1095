"""Where a step runs when it is not this machine: a remote decorator, or a production scheduler.

A flow deployed with `argo-workflows create` or `step-functions create` runs each task in a
pod or a Batch job, where a local repository would be written to a disk that disappears. The
check has to fire twice with the same words: when the flow is deployed (the scheduler's
decorators are not attached yet, so the command tells) and in the task (the scheduler's own
decorator is on the step then).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.repository import REPOSITORY_ENV

# scheduler -> (its `create` command's group, the decorator it puts on every step of a task)
SCHEDULERS = {
    "Argo Workflows": ("argo-workflows", "argo_workflows_internal"),
    "AWS Step Functions": ("step-functions", "step_functions_internal"),
    "Airflow": ("airflow", "airflow_internal"),
}
REMOTE_DECORATORS = ("kubernetes", "batch")


def where_it_runs(decorator_names: Iterable[str], command: list[str] | None) -> str | None:
    """A phrase naming where the step runs ("Argo Workflows", "@kubernetes"), None if here.

    `command` is the Metaflow subcommand with its arguments (`["argo-workflows", "create", ...]`).
    """
    names = set(decorator_names)
    for scheduler, (group, decorator) in SCHEDULERS.items():
        if decorator in names or (command or [])[:2] == [group, "create"]:
            return scheduler
    return next((f"@{name}" for name in REMOTE_DECORATORS if name in names), None)


def metaflow_command() -> list[str] | None:
    """The subcommand this Metaflow process was started with, as its CLI parsed it."""
    from metaflow._vendor import click

    context = click.get_current_context(silent=True)
    # NOTE: Metaflow's top-level group saves the subcommand's arguments as `saved_args`, and
    # decides by them itself which hooks run; it is set while step_init runs.
    while context is not None and not hasattr(context, "saved_args"):
        context = context.parent
    return list(context.saved_args) if context is not None else None


def check_repository_travels(attributes: Mapping[str, Any], decorators: Iterable[Any], remote: str) -> None:
    """Refuse a repository that only this shell knows: the tasks on `remote` start in a fresh
    environment, where $TRITONFLOW_REPOSITORY is unset unless @environment passes it on."""
    if attributes.get("repository") or not os.environ.get(REPOSITORY_ENV):
        return
    passed = {
        name for d in decorators if d.name == "environment" for name in (d.attributes.get("vars") or {})
    }
    if REPOSITORY_ENV not in passed:
        raise TritonflowError(
            f"this step runs on {remote}, whose tasks do not see ${REPOSITORY_ENV} "
            f"({os.environ[REPOSITORY_ENV]!r}) from this shell: pass @deploy(repository=...), or add "
            f"@environment(vars={{'{REPOSITORY_ENV}': ...}}) to the step"
        )
