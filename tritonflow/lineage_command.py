"""`tritonflow lineage`: from a deployment ID, a saved response or a run, back to everything behind it.

It sits above the layers it joins: the repository and Metaflow (lineage) and the version
policy's reading of config.pbtxt (serving), so it lives with the command line.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from tritonflow.lineage.errors import NotFound, TritonflowError
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.releases import read_state
from tritonflow.lineage.report import lineage_document, render_text
from tritonflow.lineage.repository import ModelRepository, default_repository
from tritonflow.lineage.runs import live_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "deployment_id",
        nargs="?",
        help="model:version@Flow/run_id (the stamp) or model:version (what stock Triton returns)",
    )
    parser.add_argument(
        "--repository", help="local path or s3://...; default $TRITONFLOW_REPOSITORY, else ./model_repository"
    )
    parser.add_argument(
        "--response", type=Path, metavar="FILE", help="a saved inference response body (JSON or binary)"
    )
    parser.add_argument("--run", metavar="FLOW/RUN_ID", help="list the deployments this run made")
    parser.add_argument(
        "--json", action="store_true", help="print the documented JSON (schema tritonflow.lineage/v1)"
    )
    parser.add_argument(
        "--no-metaflow", action="store_true", help="record only: skip the live Metaflow lookup"
    )


def main(args: argparse.Namespace) -> int:
    given = [x for x in (args.deployment_id, args.response, args.run) if x]
    if len(given) != 1:
        raise TritonflowError("give exactly one of: a deployment ID, --response FILE, or --run FLOW/RUN_ID")
    repository = ModelRepository(default_repository(args.repository))
    try:
        if args.run:
            records = _run_records(repository, args.run)
        else:
            deployment_id = args.deployment_id or id_from_response(args.response)
            records = [repository.resolve(deployment_id)]
    except NotFound:
        repository.check_layout(_asked(args))  # NOTE: a model folder given as the repository says so
        raise
    docs = [describe(repository, record, live=not args.no_metaflow) for record in records]
    if args.json:
        print(json.dumps(docs if args.run else docs[0], indent=2, sort_keys=True, default=str))
    else:
        print("\n\n".join(render_text(doc) for doc in docs))
    return 0


def describe(repository: ModelRepository, record: DeploymentRecord, live: bool = True) -> dict[str, Any]:
    """The lineage document of one record: the same JSON as `--json` and the node's /lineage."""
    from tritonflow.serving import model_config

    try:
        config = model_config.parse_config(repository.read_config(record.model_name))
        served = model_config.served_versions(config, repository.versions(record.model_name))
    except TritonflowError:
        served = None
    try:
        state = read_state(repository, record.model_name)
    except TritonflowError:  # NOTE: a broken release log must not hide the lineage; releases says why
        state = None
    return lineage_document(record, live_run(record) if live else None, served, state)


def id_from_response(path: Path) -> str:
    """The stamp of a saved response; stock Triton's `model_name`/`model_version` otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TritonflowError(f"cannot read --response {path}: {exc.strerror}") from None
    try:
        # A binary-extension body starts with its JSON header; raw_decode stops where JSON ends.
        body, _ = json.JSONDecoder().raw_decode(raw.decode("utf-8", errors="replace").lstrip())
    except ValueError:
        raise TritonflowError(f"{path} is not an inference response: it does not start with JSON") from None
    stamp = (body.get("parameters") or {}).get("deployment_id") if isinstance(body, dict) else None
    if stamp:
        return str(stamp)
    if isinstance(body, dict) and body.get("model_name") and body.get("model_version"):
        return f"{body['model_name']}:{body['model_version']}"
    raise TritonflowError(
        f"{path} has neither parameters.deployment_id nor model_name and model_version: "
        "save the whole response body"
    )


def _asked(args: argparse.Namespace) -> str:
    """This lookup as a command on another repository ('{}'), for a suggestion."""
    if args.run:
        asked = ["--run", args.run]
    elif args.response:
        asked = ["--response", str(args.response)]
    else:
        asked = [args.deployment_id]
    return shlex.join(["tritonflow", "lineage", *asked]) + " --repository {}"


def _run_records(repository: ModelRepository, run: str) -> list[DeploymentRecord]:
    flow, _, run_id = run.partition("/")
    if not flow or not run_id or "/" in run_id:
        raise TritonflowError(
            f"--run {run!r} is not a run pathspec: use FLOW/RUN_ID, e.g. FraudFlow/1795314379884117"
        )
    records = repository.deployments_of_run(flow, run_id)
    if not records:
        runs = repository.closest_runs(run)
        raise NotFound(
            f"no deployment in {repository.uri} came from run {run}"
            + (f"; its runs, closest first: {', '.join(runs)}" if runs else ": it has no deployments")
        )
    return records
