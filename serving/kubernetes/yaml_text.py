"""Manifests as YAML text (PyYAML): keys in the order built, multi-line strings (configs, scripts)
as literal blocks, so they stay readable in the file."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """SafeDumper with literal blocks for text of several lines."""


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text.rstrip("\n") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _string)


def dump(documents: list[Any]) -> str:
    """Documents separated by '---', each ending with a newline."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
