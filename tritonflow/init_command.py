"""`tritonflow init DIR`: copy the starter pack (a flow, a client, data, a README) to start from."""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import shutil
from pathlib import Path

from tritonflow.lineage.errors import TritonflowError
from tritonflow.starter import FILES, HERE

# Where Metaflow looks for a user name, in its order (metaflow.util.get_username); "root" is refused.
_METAFLOW_USER_SOURCES = ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")


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
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, target in zip(FILES, targets, strict=True):
            shutil.copyfile(HERE / name, target)
    except OSError as exc:
        where = exc.filename or directory
        raise TritonflowError(
            f"cannot write the starter pack to {where}: {exc.strerror}: choose a new folder"
        ) from None
    return targets


def metaflow_user_export() -> str | None:
    """`export METAFLOW_USER=<name>` when Metaflow would find no user name and refuse to run ("Unknown
    user": as root with none set, the usual case in containers), else None."""
    if any(os.environ.get(source) not in (None, "", "root") for source in _METAFLOW_USER_SOURCES):
        return None
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # NOTE: a user id with no passwd entry (containers) has no name
        login = "root"
    return f"export METAFLOW_USER={login if login != 'root' else 'you'}"


def main(args: argparse.Namespace) -> int:
    copy_starter(args.directory, args.force)
    print(f"starter pack in {args.directory}:")
    for name in FILES:
        print(f"  {name}")
    user = metaflow_user_export()
    steps = [
        (f"cd {shlex.quote(str(args.directory))}", ""),
        *([(user, "Metaflow runs as root only with a user name (any but root)")] if user else []),
        ("python flow.py run", "train three candidates, deploy the best to model_repository/"),
        ("tritonflow serve model_repository", "Triton's HTTP protocol on 127.0.0.1:8000; taken? --port 8080"),
        ("python client.py", "in another shell: score, trace the answer (--url 127.0.0.1:8080 with --port)"),
    ]
    width = max(len(command) for command, _ in steps)
    print("\nnext:")
    for command, why in steps:
        print(f"  {command.ljust(width)}  # {why}" if why else f"  {command}")
    return 0
