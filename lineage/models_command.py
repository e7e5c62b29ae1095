"""`tritonflow models REPOSITORY`: every model version with its deployment ID and run."""

from __future__ import annotations

import argparse
import json

from tritonflow.lineage.listing import models
from tritonflow.lineage.repository import ModelRepository


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", help="local path or s3://bucket/prefix")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    repository = ModelRepository(args.repository)
    rows = models(repository)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no models in {repository.uri}")
    else:
        header = {k: k.upper().replace("_", " ") for k in rows[0]}
        widths = {k: max(len(str(r[k])) for r in [header, *rows]) for k in header}
        for row in [header, *rows]:
            print("  ".join(str(row[k]).ljust(widths[k]) for k in header).rstrip())
    return 0
