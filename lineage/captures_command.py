"""`tritonflow captures ROOT`: what was captured, in files and rows per model, version and hour."""

from __future__ import annotations

import argparse
import json
import sys

from tritonflow.lineage.captures import nothing_found, open_captures, skipped_note


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "root", help="the captures root given to tritonflow serve --capture (folder or s3://)"
    )
    parser.add_argument("--model", help="only this model's captures")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    captures = open_captures(args.root, model=args.model)
    groups: dict[tuple[str, int, str], dict[str, int]] = {}
    for key in captures.keys:
        rows = captures.rows(key)
        if rows is not None:
            group = groups.setdefault((key.model, key.version, key.hour), {"files": 0, "rows": 0})
            group["files"] += 1
            group["rows"] += rows
    if not groups and captures.skipped:
        raise nothing_found(captures, f"model {args.model!r}" if args.model else "any model")
    if note := skipped_note(captures):
        print(f"tritonflow captures: {note}", file=sys.stderr)
    table: list[dict[str, object]] = [
        {"model": m, "version": v, "hour": h, **counts} for (m, v, h), counts in sorted(groups.items())
    ]
    if args.json:
        print(json.dumps({"root": captures.root, "captures": table, "skipped": captures.skipped}, indent=2))
    elif not table:
        print(f"no captures in {captures.root}" + (f" for model {args.model!r}" if args.model else ""))
    else:
        header: dict[str, object] = {k: k.upper() for k in table[0]}
        widths = {k: max(len(str(r[k])) for r in [header, *table]) for k in header}
        for row in [header, *table]:
            print("  ".join(str(row[k]).ljust(widths[k]) for k in header).rstrip())
    return 0
