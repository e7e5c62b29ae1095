"""@deploy(promote="on_success"): the run's versions become champion once the whole run succeeded.

@deploy publishes inside its step, before the run ends; a run that fails later must not leave its
version serving. So the version is published as a challenger with `release.pending` in its record,
and the process that ran `python flow.py run` promotes it when Metaflow reports the run finished
(StepDecorator.runtime_finished). The run's status is read back from Metaflow's metadata rather than
trusted from the hook: the hook also runs after a failure. Where no local runtime drives the run
(Argo Workflows, Step Functions), nothing promotes it: `tritonflow releases` shows it pending, with
its run's status, for `tritonflow promote`.
"""

from __future__ import annotations

from tritonflow.lineage import releases
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.repository import ModelRepository
from tritonflow.lineage.runs import live_run
from tritonflow.serving.release_policy import champion_config


def pending(record: DeploymentRecord) -> bool:
    """Whether the version waits for its run to succeed before it becomes champion."""
    return bool((record.release or {}).get("pending"))


def settle_run(repository_uri: str, model: str, flow: str, run_id: str) -> list[str]:
    """Promote the run's pending versions of `model` if the run succeeded; one log line each."""
    repository = ModelRepository(repository_uri)
    waiting = [r for r in repository.deployments_of_run(flow, run_id) if r.model_name == model and pending(r)]
    lines = []
    for record in waiting:
        status = live_run(record).run.get("status", "unknown")
        how = f"`tritonflow promote {repository.given} {record.model_name}:{record.version} --reason ...`"
        if status != "successful":
            lines.append(
                f"{record.deployment_id} stays a challenger: its run is {status} (promote it by hand: {how})"
            )
            continue
        try:
            _, event = releases.promote(
                repository,
                record.model_name,
                record.version,
                champion_config,
                reason=f"@deploy promote=on_success: run {flow}/{run_id} finished successfully",
                replacing=(record.release or {}).get("champion"),
            )
        except TritonflowError as exc:  # NOTE: a promotion since the deploy wins; the run stays successful
            lines.append(f"{record.deployment_id} stays a challenger: {exc}")
            continue
        done = "is now the champion" if event is not None else "was already the champion"
        lines.append(f"{record.deployment_id} {done}: its run finished successfully")
    return lines
