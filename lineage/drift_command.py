"""`tritonflow drift MODEL:VERSION --captures ROOT`: the version's captured traffic against the training
data profiled at deploy time (a tabular ensemble's per column, string columns by their values' shares);
exit 1 when a feature or the prediction drifted, so CI or cron can act."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tritonflow.lineage.arguments import duration, positive
from tritonflow.lineage.drift import Thresholds, render_text
from tritonflow.lineage.drift_check import check_drift


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
        "--ks-threshold",
        type=positive,
        default=Thresholds.ks,
        metavar="X",
        help="KS above X is drift (0.2); numeric columns only: string columns are compared by PSI alone",
    )
    parser.add_argument("--json", action="store_true", help="print the drift document as JSON")
    parser.add_argument("--html", type=Path, metavar="FILE", help="also write a report with a plot per drift")


def main(args: argparse.Namespace) -> int:
    doc = check_drift(
        args.target,
        args.captures,
        args.repository,
        args.since,
        Thresholds(args.psi_threshold, args.ks_threshold),
    )
    if doc["skipped"]:
        print(f"tritonflow drift: {doc['skipped']}", file=sys.stderr)
    if args.html:
        from tritonflow.lineage.drift_html import write_html

        write_html(doc, args.html)
    print(json.dumps(doc, indent=2) if args.json else render_text(doc))
    return 1 if doc["drift"] else 0
