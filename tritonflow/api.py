"""The Python API: each `tritonflow` lookup and release command as a function, for notebooks and tools.

The commands are thin wrappers over these (they parse arguments and print); the errors are the
commands' own TritonflowError messages. `repository` is a local path, `s3://bucket/prefix` or an
open ModelRepository; None means $TRITONFLOW_REPOSITORY, else ./model_repository. The serving layer
(config.pbtxt's version_policy, loading a version as the node does) is imported on first use, so that
`tritonflow.models()` costs what the repository listing costs.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict
from typing import Any, TypeAlias

from tritonflow.documents import Lineage, Releases
from tritonflow.lineage import listing
from tritonflow.lineage import releases as release_log
from tritonflow.lineage.errors import NotFound, TritonflowError
from tritonflow.lineage.ids import DeploymentId
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.releases import ReleaseEvent
from tritonflow.lineage.report import lineage_document
from tritonflow.lineage.repository import ModelRepository, default_repository
from tritonflow.lineage.runs import live_run
from tritonflow.responses import Response, deployment_id_of

RELEASES_SCHEMA = "tritonflow.releases/v1"
Repository: TypeAlias = str | os.PathLike[str] | ModelRepository | None


# -- lookups -----------------------------------------------------------------------------------------
def lineage_of(id_or_response: Response, repository: Repository = None, *, live: bool = True) -> Lineage:
    """Everything behind one deployment: `tritonflow lineage --json` (schema tritonflow.lineage/v1).

    `id_or_response`: a deployment ID (full, or the short `model:version` stock Triton answers with),
    a saved response file (a pathlib.Path), its bytes, the JSON body as a dict, the response headers,
    or a tritonclient InferResult (HTTP or gRPC). `live`: ask Metaflow for the run's status and
    artifacts (False: the record only, as `--no-metaflow`)."""
    repo = _repository(repository)
    deployment_id = deployment_id_of(id_or_response)
    try:
        record = repo.resolve(deployment_id)
    except NotFound:
        path = isinstance(id_or_response, os.PathLike)
        repo.check_layout(_lineage_command(["--response", str(id_or_response)] if path else [deployment_id]))
        raise
    return Lineage(describe_deployment(repo, record, live))


def deployments_of_run(run: str, repository: Repository = None, *, live: bool = True) -> list[Lineage]:
    """The lineage of every deployment the run `FLOW/RUN_ID` made, by model and version:
    `tritonflow lineage --run FLOW/RUN_ID --json`. A run that deployed nothing is NotFound."""
    repo = _repository(repository)
    flow, _, run_id = run.partition("/")
    if not flow or not run_id or "/" in run_id:
        raise TritonflowError(
            f"--run {run!r} is not a run pathspec: use FLOW/RUN_ID, e.g. FraudFlow/1795314379884117"
        )
    try:
        records = repo.deployments_of_run(flow, run_id)
        if not records:
            runs = repo.closest_runs(run)
            raise NotFound(
                f"no deployment in {repo.uri} came from run {run}"
                + (f"; its runs, closest first: {', '.join(runs)}" if runs else ": it has no deployments")
            )
    except NotFound:
        repo.check_layout(_lineage_command(["--run", run]))
        raise
    return [Lineage(describe_deployment(repo, record, live)) for record in records]


def models(repository: Repository = None) -> list[dict[str, Any]]:
    """One row per version folder (model, version, state, deployment_id, run, created_at):
    `tritonflow models --json`; a list of dicts, so `pandas.DataFrame(tritonflow.models(...))` works."""
    return listing.models(_repository(repository))


def describe_deployment(
    repository: ModelRepository, record: DeploymentRecord, live: bool = True
) -> dict[str, Any]:
    """The lineage document of one record: the same JSON as `--json` and the node's /lineage."""
    from tritonflow.serving import model_config

    try:
        config = model_config.parse_config(repository.read_config(record.model_name))
        served = model_config.served_versions(config, repository.versions(record.model_name))
    except TritonflowError:
        served = None
    try:
        state = release_log.read_state(repository, record.model_name)
    except TritonflowError:  # NOTE: a broken release log must not hide the lineage; releases says why
        state = None
    return lineage_document(record, live_run(record) if live else None, served, state)


# -- releases ----------------------------------------------------------------------------------------
def releases(model: str, repository: Repository = None, *, live: bool = True) -> Releases:
    """The model's versions with their role and run status, the champion, canary, shadow and the
    history of release decisions: `tritonflow releases --json` (schema tritonflow.releases/v1).
    `live`: ask Metaflow for each run's status ("unknown" otherwise)."""
    return Releases(describe_releases(_opened(repository, f"tritonflow releases {{}} {model}"), model, live))


def promote(target: str, repository: Repository = None, *, reason: str) -> ReleaseEvent | None:
    """Make MODEL:VERSION the champion, for `reason` (kept in the history); config.pbtxt then serves
    only it, in `tritonflow serve` and stock Triton alike. None: it already was (the config is repaired).
    A version that does not load as the node loads it is refused before anything is written."""
    did = _short(target)
    repo = _opened(repository, f"tritonflow promote {{}} {target} --reason ...")
    check_loads(repo, did.model, did.version, "champion")
    return release_log.promote(repo, did.model, did.version, _policy(repo), reason=reason)[1]


def rollback(model: str, repository: Repository = None, *, reason: str = "") -> ReleaseEvent:
    """Make the previous champion champion again (twice: two decisions back)."""
    repo = _opened(repository, f"tritonflow rollback {{}} {model}")
    champions = release_log.read_state(repo, model).champions
    if len(champions) > 1:  # NOTE: fewer: rollback's own error says there is nothing to go back to
        check_loads(repo, model, champions[-2], "champion again")
    return release_log.rollback(repo, model, _policy(repo), reason=reason)[1]


def canary(
    target: str,
    repository: Repository = None,
    *,
    percent: float | None = None,
    stop: bool = False,
    reason: str = "",
) -> ReleaseEvent:
    """Send `percent` (0-100) of the model's unversioned requests to MODEL:VERSION; `stop=True` with
    the model's name ends the canary. `tritonflow serve` follows it; stock Triton serves the champion."""
    return _traffic("canary", target, repository, percent, stop, reason)


def shadow(
    target: str, repository: Repository = None, *, stop: bool = False, reason: str = ""
) -> ReleaseEvent:
    """Run a copy of the champion's traffic on MODEL:VERSION, off the response path; `stop=True` with
    the model's name ends it (`tritonflow serve` only)."""
    return _traffic("shadow", target, repository, None, stop, reason)


def describe_releases(repository: ModelRepository, model: str, live: bool = True) -> dict[str, Any]:
    """The `releases --json` document of `model` in an open repository."""
    from tritonflow.serving.model_config import parse_config, served_versions

    state = release_log.read_state(repository, model)
    config = parse_config(repository.read_config(model))
    entries = {e.version: e for e in repository.entries() if e.model == model}
    served = served_versions(config, [v for v, e in entries.items() if e.record])
    versions = []
    statuses: dict[str, str] = {}
    for version, entry in sorted(entries.items()):
        if entry.record is None:
            role = "unfinished"
        elif state.champion is not None:
            role = state.role(version) or (
                "pending" if (entry.record.release or {}).get("pending") else "challenger"
            )
        else:  # NOTE: no decision yet: config.pbtxt's version_policy (latest 1 as @deploy writes it) serves
            role = "serving" if version in served else "challenger"
        record = entry.record
        versions.append(
            {
                "version": version,
                "role": role,
                "deployment_id": record.deployment_id if record else None,
                "run": record.run_pathspec if record else None,
                "run_status": _run_status(record, statuses) if record and live else "unknown",
                "created_at": record.created_at if record else None,
            }
        )
    champion = next((v for v in versions if v["version"] == state.champion), None)
    champion_run = None
    if champion and champion["run_status"] in ("failed", "running"):
        champion_run = (
            f"v{state.champion} is champion but its run {champion['run']} is {champion['run_status']}: "
            f"`tritonflow rollback {repository.given} {model}` if it should not serve"
        )
    config_drift = None
    if state.champion is not None and served != [state.champion]:
        config_drift = (
            f"config.pbtxt serves {served or 'nothing'}, not the champion v{state.champion} (a command was "
            f"interrupted): `tritonflow promote {repository.given} {model}:{state.champion}` repairs it"
        )
    return {
        "schema": RELEASES_SCHEMA,
        "repository": repository.uri,
        "model": model,
        "champion": state.champion,
        "canary": {"version": state.canary, "percent": state.percent} if state.canary else None,
        "shadow": state.shadow,
        "versions": versions,
        "history": [asdict(event) for event in state.events],
        "config_drift": config_drift,
        "champion_run": champion_run,
    }


def check_loads(repository: ModelRepository, model: str, version: int, role: str) -> None:
    """Refuse, before anything is written, a version that the node would refuse to serve."""
    from tritonflow.serving.loading import published_backend

    release_log.check_published(repository, model, version, role)
    try:
        with published_backend(repository, model, version):
            pass
    except TritonflowError as exc:
        raise TritonflowError(
            f"cannot make {model}:{version} {role}: it does not load as `tritonflow serve` loads it ({exc}); "
            "nothing was changed"
        ) from None


def _traffic(
    role: str, target: str, repository: Repository, percent: float | None, stop: bool, reason: str
) -> ReleaseEvent:
    repo = _opened(repository, f"tritonflow {role} {{}} {target}")
    version: int | None
    if stop:
        model, version = target, None
        if ":" in model:
            raise TritonflowError(f"--stop takes the model's name, not {model}")
    else:
        did = _short(target)
        model, version = did.model, did.version
        check_loads(repo, model, version, role)
    policy = _policy(repo)
    if role == "canary":
        if version is not None and percent is None:
            raise TritonflowError("give the canary's share: --percent P (0-100)")
        return release_log.set_canary(repo, model, version, percent or 0.0, policy, reason=reason)[1]
    return release_log.set_shadow(repo, model, version, policy, reason=reason)[1]


def _run_status(record: DeploymentRecord, known: dict[str, str]) -> str:
    """successful, failed, running or unknown (not in the metadata Metaflow reaches), once per run."""
    run = record.run_pathspec or ""
    if run not in known:
        known[run] = live_run(record).run.get("status", "unknown")
    return known[run]


def _short(target: str) -> DeploymentId:
    did = DeploymentId.parse(target)
    if not did.is_short:
        raise TritonflowError(f"give MODEL:VERSION, not a full deployment ID: {did.short}")
    return did


def _repository(repository: Repository) -> ModelRepository:
    if isinstance(repository, ModelRepository):
        return repository
    return ModelRepository(default_repository(os.fspath(repository) if repository is not None else None))


def _opened(repository: Repository, command: str) -> ModelRepository:
    """The repository, refused if it is a model or version folder (suggesting `command` on the right one)."""
    repo = _repository(repository)
    repo.check_layout(command)
    return repo


def _policy(repository: ModelRepository) -> release_log.ConfigPolicy:
    from tritonflow.serving.release_policy import champion_config

    return lambda text, champion, **steps: champion_config(
        text, champion, f"{repository.uri} config.pbtxt", **steps
    )


def _lineage_command(asked: list[str]) -> str:
    """This lookup as a command on another repository ('{}'), for a suggestion."""
    return shlex.join(["tritonflow", "lineage", *asked]) + " --repository {}"
