"""`tritonflow check-config PATH...`: Triton's schema, the FIL rules and labels files, with line numbers."""

from __future__ import annotations

import argparse
from pathlib import Path

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.store import open_store
from tritonflow.serving.labels import folder_reader
from tritonflow.serving.model_config import problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="a config.pbtxt, a model folder or a repository"
    )


def config_files(raw: str) -> list[Path]:
    path = Path(raw)
    if path.is_file():
        return [path]
    if (path / "config.pbtxt").is_file():
        return [path / "config.pbtxt"]
    found = sorted(path.glob("*/config.pbtxt")) if path.is_dir() else []
    if not found:
        raise TritonflowError(f"{raw}: no config.pbtxt there (give a file, a model folder or a repository)")
    return found


def main(args: argparse.Namespace) -> int:
    """Exit 0 when every config is valid, 1 when any has an error (warnings do not fail)."""
    failed = False
    for file in [f for raw in args.paths for f in config_files(raw)]:
        model = file.parent.name if file.name == "config.pbtxt" else None
        folder = file.resolve().parent  # NOTE: Triton reads labels files relative to the model folder
        labels = folder_reader(open_store(folder.parent), folder.name)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:  # a folder by that name, a binary file, no access
            print(f"{file}:1: error: cannot be read as a UTF-8 text file ({exc.__class__.__name__})")
            failed = True
            continue
        found = problems(text, model_name=model, read_file=labels)
        for p in found:
            print(f"{file}:{p.line or 1}: {p.severity}: {p.message}")
        errors = any(p.severity == "error" for p in found)
        failed |= errors
        if not errors:
            print(f"{file}: ok")
    return 1 if failed else 0
