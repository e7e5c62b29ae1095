"""`tritonflow releases | promote | rollback | canary | shadow`: read and change a model's release state.

The work is tritonflow.api's `releases`, `promote`, `rollback`, `canary` and `shadow`; this parses
and prints.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

from tritonflow import api
from tritonflow.api import RELEASES_SCHEMA as JSON_SCHEMA
from tritonflow.lineage.releases import ReleaseEvent
from tritonflow.lineage.repository import ModelRepository

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
    document = api.releases(args.model, args.repository, live=not args.no_metaflow).to_dict()
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
        change = ReleaseEvent(**e).change()
        print(f"  {e['seq']:>4}  {e['when']}  {change}  by {e['who']}{reason}{evaluation}")
    return 0


# -- tritonflow promote / rollback -------------------------------------------------------------------
def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    _repository_argument(parser)
    parser.add_argument("target", metavar="MODEL:VERSION", help="the version to make champion")
    parser.add_argument("--reason", required=True, help="why: kept in the history, shown by releases/lineage")


def _promote(args: argparse.Namespace) -> int:
    repository = ModelRepository(args.repository)
    event = api.promote(args.target, repository, reason=args.reason)
    target = args.target.strip()
    if event is None:
        print(f"{target} is already the champion in {repository.uri}; config.pbtxt serves it")
    else:
        print(f"{target} is now the champion in {repository.uri} (was {_version(event.previous)})")
    return 0


def _rollback_arguments(parser: argparse.ArgumentParser) -> None:
    _repository_argument(parser)
    parser.add_argument("model", help="the model's name")
    parser.add_argument("--reason", default="", help="why: kept in the history")


def _rollback(args: argparse.Namespace) -> int:
    repository = ModelRepository(args.repository)
    event = api.rollback(args.model, repository, reason=args.reason)
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
        repository = ModelRepository(args.repository)
        if role == "canary":
            event = api.canary(
                args.target, repository, percent=args.percent, stop=args.stop, reason=args.reason
            )
        else:
            event = api.shadow(args.target, repository, stop=args.stop, reason=args.reason)
        target = args.target.strip()
        model = target.partition(":")[0]
        if args.stop:
            print(f"{model} has no {role} now in {repository.uri}; v{event.version} answers as champion")
        elif role == "canary":
            print(
                f"{target} now answers {event.percent:g}% of unversioned requests of {model} in "
                f"{repository.uri} (champion v{event.version}); `tritonflow serve` follows it, "
                "stock Triton serves only the champion"
            )
        else:
            print(
                f"{target} now sees a copy of the requests v{event.version} answers in "
                f"{repository.uri}; `tritonflow serve` follows it, stock Triton serves only the champion"
            )
        return 0

    return main


def _version(version: int | None) -> str:
    return f"v{version}" if version is not None else "no champion"


releases = Command(_releases_arguments, _releases)
promote = Command(_promote_arguments, _promote)
rollback = Command(_rollback_arguments, _rollback)
canary = Command(_traffic_arguments("canary"), _traffic("canary"))
shadow = Command(_traffic_arguments("shadow"), _traffic("shadow"))
