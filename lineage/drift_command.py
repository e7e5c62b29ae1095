"""`tritonflow drift MODEL:VERSION --captures ROOT`: the version's captured traffic against the training
data profiled at deploy time; exit 1 when a feature or the prediction drifted, so CI or cron can act."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc

from tritonflow.lineage import capture_layout as cl
from tritonflow.lineage.arguments import duration, positive
from tritonflow.lineage.captures import CaptureError, nothing_found, open_captures, skipped_note
from tritonflow.lineage.drift import Thresholds, drift_document, render_text
from tritonflow.lineage.errors import NotFound
from tritonflow.lineage.reference import read_reference
from tritonflow.lineage.repository import ModelRepository, default_repository


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="MODEL:VERSION", help="the version whose traffic to check")
    parser.add_argument(
        "--captures", required=True, metavar="ROOT", help="the captures root (folder or s3://)"
    )
    parser.add_argument(
        "--repository", help="local path or s3://...; default $TRITONFLOW_REPOSITORY, else ./model_repository"
    )
    parser.add_argument("--since", type=duration, metavar="AGE", help="only rows this recent: 30m, 24h, 7d")
    parser.add_argument(
        "--psi-threshold",
        type=positive,
        default=Thresholds.psi,
        metavar="X",
        help="PSI above X is drift (0.2)",
    )
    parser.add_argument(
        "--ks-threshold", type=positive, default=Thresholds.ks, metavar="X", help="KS above X is drift (0.2)"
    )
    parser.add_argument("--json", action="store_true", help="print the drift document as JSON")
    parser.add_argument("--html", type=Path, metavar="FILE", help="also write a report with a plot per drift")


def main(args: argparse.Namespace) -> int:
    repository = ModelRepository(default_repository(args.repository))
    try:
        record = repository.resolve(args.target)
    except NotFound:
        repository.check_layout(f"tritonflow drift {args.target} --repository {{}}")
        raise
    profile = read_reference(repository.store, record)
    captures = open_captures(args.captures, record.model_name, record.version, args.since)
    table = captures.read()
    if table is not None and args.since is not None:
        cutoff = datetime.now(UTC) - args.since
        table = table.filter(pc.greater_equal(table[cl.TIME], cutoff))
    if table is None:
        raise nothing_found(captures, f"{record.model_name}:{record.version}")
    if note := skipped_note(captures):
        print(f"tritonflow drift: {note}", file=sys.stderr)
    if table.num_rows == 0:
        raise CaptureError(
            f"no rows of {record.model_name}:{record.version} captured in the last {args.since} under "
            f"{captures.root}: widen --since"
        )
    doc = drift_document(
        record.deployment_id,
        profile,
        record.signature,
        table,
        Thresholds(args.psi_threshold, args.ks_threshold),
    )
    if args.html:
        from tritonflow.lineage.drift_html import write_html

        write_html(doc, args.html)
    print(json.dumps(doc, indent=2) if args.json else render_text(doc))
    return 1 if doc["drift"] else 0
