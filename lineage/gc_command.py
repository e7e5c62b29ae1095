"""`tritonflow gc REPOSITORY`: remove what killed deploys and release commands left, one line per
leftover and why."""

from __future__ import annotations

import argparse
import json

from tritonflow.lineage import gc
from tritonflow.lineage.arguments import seconds
from tritonflow.lineage.repository import ModelRepository


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", help="local path or s3://bucket/prefix")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    parser.add_argument(
        "--min-age",
        type=seconds,
        default=gc.DEFAULT_MIN_AGE,
        metavar="SECONDS",
        help="leave alone anything younger: a deploy in progress (default 3600)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")


def main(args: argparse.Namespace) -> int:
    repository = ModelRepository(args.repository)
    repository.check_layout("tritonflow gc {}")  # NOTE: a model folder has no leftovers to find
    findings = gc.plan(repository, args.min_age)
    if not args.dry_run:
        findings = gc.apply(repository, findings)
    done = "would remove" if args.dry_run else "removed"
    gone = [f for f in findings if f.remove]
    summary = {
        "repository": repository.uri,
        "dry_run": args.dry_run,
        "min_age_s": args.min_age,
        "removed": len(gone),
        "files": sum(f.files for f in gone),
        "bytes": sum(f.size for f in gone),
        "kept": len(findings) - len(gone),
    }
    if args.json:
        rows = [
            {
                "action": done if f.remove else "kept",
                "key": f.key,
                "reason": f.reason,
                "files": f.files,
                "bytes": f.size,
            }
            for f in findings
        ]
        print(json.dumps({**summary, "findings": rows}, indent=2))
        return 0
    width = max((len(f.key) for f in findings), default=0)
    for f in findings:
        print(f"{done if f.remove else 'kept':12s}  {f.key.ljust(width)}  {f.reason}")
    plural = "" if len(gone) == 1 else "s"
    print(
        f"{done} {len(gone)} leftover{plural} ({summary['files']} files, {summary['bytes']} bytes) "
        f"in {repository.uri}; kept {summary['kept']}"
        + ("; nothing was removed (--dry-run)" if args.dry_run else "")
    )
    return 0
