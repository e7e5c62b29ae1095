"""`tritonflow lineage`: from a deployment ID, a saved response or a run, back to everything behind it.

The lookups are tritonflow.api's `lineage_of` and `deployments_of_run`; this parses and prints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tritonflow import api
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.report import render_text


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
    live = not args.no_metaflow
    if args.run:
        docs = [d.to_dict() for d in api.deployments_of_run(args.run, args.repository, live=live)]
    else:
        docs = [api.lineage_of(given[0], args.repository, live=live).to_dict()]
    if args.json:
        print(json.dumps(docs if args.run else docs[0], indent=2, sort_keys=True, default=str))
    else:
        print("\n\n".join(render_text(doc) for doc in docs))
    return 0
