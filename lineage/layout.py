"""Triton's model repository layout as pure key functions ('/'-separated, relative to the root).

`<model>/config.pbtxt`, `<model>/<version>/<model file>`, `<model>/<version>/deployment.json`.
Version claims live in `<model>/.versions/<version>`; indexes list the versions each Metaflow task
and run published, `<model>/.tasks/<digest of the task pathspec>/<version>` and
`<model>/.runs/<digest of flow/run_id>/<version>`. Release decisions (champion, history) are an
append-only log of events `<model>/.releases/<seq:08d>.json`. Triton ignores these non-numeric folders.
"""

import hashlib
import re
from collections.abc import Iterable

CONFIG = "config.pbtxt"
LABEL_FILE = "labels.txt"  # beside config.pbtxt: a classifier's classes, what label_filename names
RECORD = "deployment.json"
CLAIMS = ".versions"
TASKS = ".tasks"
RUNS = ".runs"
RELEASES = ".releases"
# Triton versions are int64: at most 19 digits (a longer one is no version, not a 500 from int()).
_VERSION_RE = re.compile(r"[1-9][0-9]{0,18}")
_MAX_VERSION = 2**63 - 1
_RELEASE_RE = re.compile(r"([0-9]{8,18})\.json")


def config_key(model: str) -> str:
    return f"{model}/{CONFIG}"


def version_key(model: str, version: int) -> str:
    return f"{model}/{version}"


def record_key(model: str, version: int) -> str:
    return f"{model}/{version}/{RECORD}"


def claim_key(model: str, version: int) -> str:
    return f"{model}/{CLAIMS}/{version}"


def releases_prefix(model: str) -> str:
    return f"{model}/{RELEASES}"


def release_key(model: str, seq: int) -> str:
    # NOTE: zero-padded so a listing sorts by sequence; a longer number still parses (parse_release)
    return f"{model}/{RELEASES}/{seq:08d}.json"


def parse_release(name: str) -> int | None:
    """A release event's sequence number from its file name, or None for anything else."""
    match = _RELEASE_RE.fullmatch(name)
    return int(match[1]) if match else None


def index_prefix(model: str, index: str, value: str) -> str:
    """Where index TASKS (value: a task pathspec) or RUNS (value: "flow/run_id") lists versions."""
    return f"{model}/{index}/{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def index_key(model: str, index: str, value: str, version: int) -> str:
    return f"{index_prefix(model, index, value)}/{version}"


def version_numbers(names: Iterable[str]) -> list[int]:
    """The version numbers among a model folder's entries, ascending."""
    return sorted(v for v in map(parse_version, names) if v is not None)


def parse_version(name: str) -> int | None:
    """A version folder's number, or None for anything else.

    Only the canonical spelling counts: `str.isdigit` accepts '²' (which `int` refuses), and '01'
    would map to version 1 whose key is `<model>/1`, another folder.
    """
    if not _VERSION_RE.fullmatch(name):
        return None
    version = int(name)
    return version if version <= _MAX_VERSION else None
