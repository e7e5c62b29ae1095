"""Triton's model repository layout as pure key functions ('/'-separated, relative to the root).

`<model>/config.pbtxt`, `<model>/<version>/<model file>`, `<model>/<version>/deployment.json`.
Version claims live in `<model>/.versions/<version>`, and the versions each Metaflow task
published in `<model>/.tasks/<digest of its pathspec>/<version>`: Triton ignores non-numeric folders.
"""

import hashlib
import re
from collections.abc import Iterable

CONFIG = "config.pbtxt"
RECORD = "deployment.json"
CLAIMS = ".versions"
TASKS = ".tasks"
_VERSION_RE = re.compile(r"[1-9][0-9]*")


def config_key(model: str) -> str:
    return f"{model}/{CONFIG}"


def version_key(model: str, version: int) -> str:
    return f"{model}/{version}"


def record_key(model: str, version: int) -> str:
    return f"{model}/{version}/{RECORD}"


def claim_key(model: str, version: int) -> str:
    return f"{model}/{CLAIMS}/{version}"


def task_prefix(model: str, task: str) -> str:
    """Where the versions published by Metaflow task `task` (a pathspec) are indexed."""
    return f"{model}/{TASKS}/{hashlib.sha256(task.encode()).hexdigest()[:32]}"


def task_key(model: str, task: str, version: int) -> str:
    return f"{task_prefix(model, task)}/{version}"


def version_numbers(names: Iterable[str]) -> list[int]:
    """The version numbers among a model folder's entries, ascending."""
    return sorted(v for v in map(parse_version, names) if v is not None)


def parse_version(name: str) -> int | None:
    """A version folder's number, or None for anything else.

    Only the canonical spelling counts: `str.isdigit` accepts '²' (which `int` refuses), and '01'
    would map to version 1 whose key is `<model>/1`, another folder.
    """
    return int(name) if _VERSION_RE.fullmatch(name) else None
