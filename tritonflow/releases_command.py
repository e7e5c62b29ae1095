"""`tritonflow releases | promote | rollback | canary | shadow`: read and change a model's release state.

It joins the release log (lineage/releases.py) with config.pbtxt's version_policy (serving), so it
lives with the command line, like `tritonflow lineage`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tritonflow.lineage import releases as release_log
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.ids import DeploymentId
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.repository import ModelRepository
from tritonflow.lineage.runs import live_run
from tritonflow.serving.loading import published_backend
from tritonflow.serving.model_config import parse_config, served_versions
from tritonflow.serving.release_policy import champion_config

JSON_SCHEMA = "tritonflow.releases/v1"
COLUMNS = ("version", "role", "deployment_id", "run", "run_status")


@dataclass(frozen=True)
class Command:
    """One subcommand's parser setup and body, for the dispatcher's "module:object" entries."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]


def _repository_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", help="local path or s3://bucket/prefix")


# -- tritonflow releases -----------------------------------------------------------------------------
def _releases_arguments(parser: argparse.ArgumentParser) -> None:
    _repository_argument(parser)
    parser.add_argument("model", help="the model's name")
    parser.add_argument(
        "--json", action="store_true", help=f"print the documented JSON (schema {JSON_SCHEMA})"
    )
    parser.add_argument(
        "--no-metaflow", action="store_true", help="skip the runs' status (read from Metaflow's metadata)"
    )


def _releases(args: argparse.Namespace) -> int:
    repository = _open(args.repository, f"tritonflow releases {{}} {args.model}")
    document = describe(repository, args.model, live=not args.no_metaflow)
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
        return 0
    rows = [{k: str(v.get(k) or "") for k in COLUMNS} for v in document["versions"]]
    for row in rows:
        if row["role"] == "canary":
            row["role"] = f"canary {document['canary']['percent']:g}%"
    header = {k: k.upper().replace("_", " ") for k in COLUMNS}
    widths = {k: max(len(r[k]) for r in [header, *rows]) for k in header}
    for row in [header, *rows]:
        print("  ".join(row[k].ljust(widths[k]) for k in header).rstrip())
    for warning in filter(None, (document["config_drift"], document["champion_run"])):
        print(f"warning: {warning}")
    print("history:" if document["history"] else "history: no release decisions yet (version_policy decides)")
    for e in document["history"]:
        evaluation = f"  evaluation {json.dumps(e['evaluation'])}" if e["evaluation"] else ""
        reason = f"  {e['reason']!r}" if e["reason"] else ""
        change = release_log.ReleaseEvent(**e).change()
        print(f"  {e['seq']:>4}  {e['when']}  {change}  by {e['who']}{reason}{evaluation}")
    return 0


def describe(repository: ModelRepository, model: str, live: bool = True) -> dict[str, Any]:
    """The model's versions with their role and their run's status, the champion, canary, shadow and
    the history: `releases --json`. `live`: ask Metaflow for each run's status ("unknown" otherwise)."""
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
        "schema": JSON_SCHEMA,
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


def _run_status(record: DeploymentRecord, known: dict[str, str]) -> str:
    """successful, failed, running or unknown (not in the metadata Metaflow reaches), once per run."""
    run = record.run_pathspec or ""
    if run not in known:
        known[run] = live_run(record).run.get("status", "unknown")
    return known[run]


# -- tritonflow promote / rollback -------------------------------------------------------------------
def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    _repository_argument(parser)
    parser.add_argument("target", metavar="MODEL:VERSION", help="the version to make champion")
    parser.add_argument("--reason", required=True, help="why: kept in the history, shown by releases/lineage")


def _promote(args: argparse.Namespace) -> int:
    did = DeploymentId.parse(args.target)
    if not did.is_short:
        raise TritonflowError(f"give MODEL:VERSION, not a full deployment ID: {did.short}")
    repository = _open(args.repository, f"tritonflow promote {{}} {args.target} --reason ...")
    check_loads(repository, did.model, did.version, "champion")
    state, event = release_log.promote(
        repository, did.model, did.version, _policy(repository), reason=args.reason
    )
    if event is None:
        print(f"{did.short} is already the champion in {repository.uri}; config.pbtxt serves it")
    else:
        print(f"{did.short} is now the champion in {repository.uri} (was {_version(event.previous)})")
    return 0


def _rollback_arguments(parser: argparse.ArgumentParser) -> None:
    _repository_argument(parser)
    parser.add_argument("model", help="the model's name")
    parser.add_argument("--reason", default="", help="why: kept in the history")


def _rollback(args: argparse.Namespace) -> int:
    repository = _open(args.repository, f"tritonflow rollback {{}} {args.model}")
    champions = release_log.read_state(repository, args.model).champions
    if len(champions) > 1:  # NOTE: fewer: rollback's own error says there is nothing to go back to
        check_loads(repository, args.model, champions[-2], "champion again")
    _, event = release_log.rollback(repository, args.model, _policy(repository), reason=args.reason)
    print(
        f"{args.model}:{event.version} is the champion again in {repository.uri} "
        f"(rolled back from {_version(event.previous)})"
    )
    return 0


# -- tritonflow canary / shadow ----------------------------------------------------------------------
def _traffic_arguments(role: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        _repository_argument(parser)
        parser.add_argument(
            "target", metavar="MODEL:VERSION", help=f"the version to make {role} (MODEL with --stop)"
        )
        if role == "canary":
            parser.add_argument(
                "--percent", type=float, help="the share of unversioned requests it answers, 0-100"
            )
        parser.add_argument("--stop", action="store_true", help=f"end the {role}")
        parser.add_argument("--reason", default="", help="why: kept in the history")

    return add


def _traffic(role: str) -> Callable[[argparse.Namespace], int]:
    def main(args: argparse.Namespace) -> int:
        repository = _open(args.repository, f"tritonflow {role} {{}} {args.target}")
        if args.stop:
            model, version = args.target, None
            if ":" in model:
                raise TritonflowError(f"--stop takes the model's name, not {model}")
        else:
            did = DeploymentId.parse(args.target)
            if not did.is_short:
                raise TritonflowError(f"give MODEL:VERSION, not a full deployment ID: {did.short}")
            model, version = did.model, did.version
        if version is not None:
            check_loads(repository, model, version, role)
        policy = _policy(repository)
        if role == "canary":
            if version is not None and args.percent is None:
                raise TritonflowError("give the canary's share: --percent P (0-100)")
            state, _ = release_log.set_canary(
                repository, model, version, args.percent or 0.0, policy, reason=args.reason
            )
        else:
            state, _ = release_log.set_shadow(repository, model, version, policy, reason=args.reason)
        if version is None:
            print(f"{model} has no {role} now in {repository.uri}; v{state.champion} answers as champion")
        elif role == "canary":
            print(
                f"{model}:{version} now answers {state.percent:g}% of unversioned requests of {model} in "
                f"{repository.uri} (champion v{state.champion}); `tritonflow serve` follows it, "
                "stock Triton serves only the champion"
            )
        else:
            print(
                f"{model}:{version} now sees a copy of the requests v{state.champion} answers in "
                f"{repository.uri}; `tritonflow serve` follows it, stock Triton serves only the champion"
            )
        return 0

    return main


def check_loads(repository: ModelRepository, model: str, version: int, role: str) -> None:
    """Refuse, before anything is written, a version that the node would refuse to serve."""
    release_log.check_published(repository, model, version, role)
    try:
        with published_backend(repository, model, version):
            pass
    except TritonflowError as exc:
        raise TritonflowError(
            f"cannot make {model}:{version} {role}: it does not load as `tritonflow serve` loads it ({exc}); "
            "nothing was changed"
        ) from None


def _open(uri: str, command: str) -> ModelRepository:
    repository = ModelRepository(uri)
    repository.check_layout(command)  # NOTE: a model folder given as the repository says so
    return repository


def _policy(repository: ModelRepository) -> release_log.ConfigPolicy:
    return lambda text, champion: champion_config(text, champion, f"{repository.uri} config.pbtxt")


def _version(version: int | None) -> str:
    return f"v{version}" if version is not None else "no champion"


releases = Command(_releases_arguments, _releases)
promote = Command(_promote_arguments, _promote)
rollback = Command(_rollback_arguments, _rollback)
canary = Command(_traffic_arguments("canary"), _traffic("canary"))
shadow = Command(_traffic_arguments("shadow"), _traffic("shadow"))
