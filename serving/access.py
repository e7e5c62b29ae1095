"""Who may call what, as Triton decides it: model control modes and restricted API groups.

Every endpoint belongs to one of Triton's API groups (plus `lineage`, ours). `--restrict
GROUPS:HEADER=VALUE` makes a group answer 403 unless the request carries that header with that
value, like Triton's `--http-restricted-api`. The model control mode says who changes what is
loaded: the repository (`poll`), nobody after start-up (`none`), or load/unload requests
(`explicit`, the only mode in which they are accepted).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.errors import Forbidden

API_GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
    "lineage",
)
MODEL_CONTROL_MODES = ("none", "poll", "explicit")


class AccessError(TritonflowError):
    """A --restrict value the server cannot use."""


@dataclass(frozen=True)
class Restriction:
    groups: frozenset[str]
    header: str  # lower-case, as ASGI gives header names
    value: str

    @classmethod
    def parse(cls, text: str) -> Restriction:
        """`GROUP[,GROUP...]:HEADER=VALUE`, e.g. `model-repository:x-admin-key=s3cret`."""
        groups, sep, rule = text.partition(":")
        header, eq, value = rule.partition("=")
        wanted = frozenset(g.strip() for g in groups.split(",") if g.strip())
        if not sep or not eq or not wanted or not header.strip() or not value:
            raise AccessError(
                f"--restrict {text!r}: expected GROUP[,GROUP...]:HEADER=VALUE, "
                "e.g. model-repository:x-admin-key=s3cret"
            )
        unknown = sorted(wanted - set(API_GROUPS))
        if unknown:
            raise AccessError(
                f"--restrict {text!r}: unknown API group {unknown[0]!r}: use {', '.join(API_GROUPS)}"
            )
        return cls(wanted, header.strip().lower(), value)


class Access:
    """The restriction of each API group; a group is restricted by one rule at most."""

    def __init__(self, restrictions: Iterable[Restriction] = ()) -> None:
        self._rules: dict[str, Restriction] = {}
        for rule in restrictions:
            for group in sorted(rule.groups):
                if group in self._rules:
                    raise AccessError(f"API group {group!r} is restricted twice: give it one --restrict")
                self._rules[group] = rule

    def check(self, group: str, headers: Mapping[bytes, bytes]) -> None:
        rule = self._rules.get(group)
        if rule is None:
            return
        sent = headers.get(rule.header.encode("latin-1"))
        # NOTE: compared in constant time: the answer's timing must not tell how much of a guess is right
        if sent is None or not hmac.compare_digest(sent, rule.value.encode()):
            raise Forbidden(group, rule.header)
