"""`tritonflow init DIR`: copy the starter pack (a flow, a client, data, a README) to start from."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tritonflow.lineage.errors import TritonflowError
from tritonflow.starter import FILES, HERE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="where to put the starter pack (created if needed)")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist")


def copy_starter(directory: Path, force: bool = False) -> list[Path]:
    """Copy the starter files; refuse to overwrite anything unless `force`."""
    targets = [directory / name for name in FILES]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise TritonflowError(
            f"{', '.join(map(str, existing))} already exist: choose another folder or pass --force"
        )
    directory.mkdir(parents=True, exist_ok=True)
    for name, target in zip(FILES, targets, strict=True):
        shutil.copyfile(HERE / name, target)
    return targets


def main(args: argparse.Namespace) -> int:
    copy_starter(args.directory, args.force)
    print(f"starter pack in {args.directory}:")
    for name in FILES:
        print(f"  {name}")
    print(f"\nnext:  cd {args.directory} && python flow.py run")
    return 0
