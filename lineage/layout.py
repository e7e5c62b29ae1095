"""Triton's model repository layout as pure key functions ('/'-separated, relative to the root).

`<model>/config.pbtxt`, `<model>/<version>/<model file>`, `<model>/<version>/deployment.json`.
Version claims live in `<model>/.versions/<version>`: Triton ignores non-numeric folders.
"""

CONFIG = "config.pbtxt"
RECORD = "deployment.json"
CLAIMS = ".versions"


def config_key(model: str) -> str:
    return f"{model}/{CONFIG}"


def version_key(model: str, version: int) -> str:
    return f"{model}/{version}"


def record_key(model: str, version: int) -> str:
    return f"{model}/{version}/{RECORD}"


def claim_key(model: str, version: int) -> str:
    return f"{model}/{CLAIMS}/{version}"


def parse_version(name: str) -> int | None:
    """A version folder's number, or None for anything Triton would not treat as a version."""
    return int(name) if name.isdigit() and int(name) > 0 else None
