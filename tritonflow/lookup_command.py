"""`tritonflow lookup --request-id ID --captures ROOT`: one prediction's captured rows (inputs,
outputs, stamp, role, time) and the lineage of the deployment that made it: the prediction-level end
of lineage. It lives with the command line, beside `tritonflow lineage`, whose document it reuses."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tritonflow.api import describe_deployment
from tritonflow.lineage import capture_layout as cl
from tritonflow.lineage.captures import CaptureError, nothing_found, open_captures, skipped_note
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.records import iso_utc
from tritonflow.lineage.report import render_text
from tritonflow.lineage.repository import ModelRepository, default_repository


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--request-id", required=True, metavar="ID", help="the request's id (its `id` field)")
    parser.add_argument(
        "--captures", required=True, metavar="ROOT", help="the captures root (folder or s3://)"
    )
    parser.add_argument(
        "--repository", help="local path or s3://...; default $TRITONFLOW_REPOSITORY, else ./model_repository"
    )
    parser.add_argument("--model", help="look only in this model's captures (faster)")
    parser.add_argument("--json", action="store_true", help="print JSON: the rows and the lineage document")
    parser.add_argument(
        "--no-metaflow", action="store_true", help="record only: skip the live Metaflow lookup"
    )


def main(args: argparse.Namespace) -> int:
    captures = open_captures(args.captures, model=args.model)
    if not captures.keys:
        raise nothing_found(captures, f"model {args.model!r}" if args.model else "any model")
    found = captures.find(args.request_id)
    if note := skipped_note(captures):
        print(f"tritonflow lookup: {note}", file=sys.stderr)
    if found is None:
        raise CaptureError(
            f"no captured request with id {args.request_id!r} in {len(captures.keys)} capture file(s) under "
            f"{captures.root}: check the id (the request's `id` field, echoed in the response) and that "
            "the node captured it (--capture-sample below 1.0 keeps only a share)"
        )
    rows = [_row(row) for row in found.sort_by(cl.ROW).to_pylist()]
    repository = ModelRepository(default_repository(args.repository))
    lineages: dict[str, dict[str, Any]] = {}
    for stamp in sorted({row[cl.DEPLOYMENT_ID] for row in rows}):
        try:
            lineages[stamp] = describe_deployment(
                repository, repository.resolve(stamp), live=not args.no_metaflow
            )
        except TritonflowError as exc:
            lineages[stamp] = {"error": str(exc)}
    if args.json:
        print(
            json.dumps(
                {"request_id": args.request_id, "rows": rows, "lineage": lineages}, indent=2, default=str
            )
        )
        return 0
    for row in rows:
        print(
            f"request {args.request_id} row {row[cl.ROW]}: {row[cl.DEPLOYMENT_ID]} ({row[cl.ROLE]}) "
            f"at {row[cl.TIME]}, {row[cl.LATENCY_US]} us"
        )
        for name, values in row.items():
            if name.startswith((cl.INPUT, cl.OUTPUT)):
                print(f"  {name}: {values}")
    for stamp, doc in lineages.items():
        print()
        print(f"lineage of {stamp}: {doc['error']}" if "error" in doc else render_text(doc))
    return 0


def _row(row: dict[str, Any]) -> dict[str, Any]:
    when = row.get(cl.TIME)
    return {**row, cl.TIME: iso_utc(when) if when is not None else None}
