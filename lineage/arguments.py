"""argparse `type=` functions for every command's numbers: a bad value is argparse's own one-line
error (`tritonflow serve: error: argument --port: '99999' is not ...`, exit 2) before anything runs,
never a wrapped-around port or a negative timeout found after the models have loaded."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

Number = TypeVar("Number", int, float, timedelta)


def argument_type(
    convert: Callable[[str], Number], accept: Callable[[Number], bool], wanted: str
) -> Callable[[str], Number]:
    """`convert`, then `accept`; else "'<text>' is not <wanted>", which argparse prefixes with the flag."""

    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value

    return parse


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number in [low, high] (no upper bound when `high` is None)."""
    span = f">= {low}" if high is None else f"in {low}-{high}"
    return argument_type(int, lambda v: v >= low and (high is None or v <= high), f"a whole number {span}")


count = whole_number(1)
port = argument_type(int, lambda v: 0 <= v <= 65535, "a port number in 0-65535 (0: any free port)")
# NOTE: `< math.inf` also refuses 'nan' (every comparison with it is false) and 'inf'
positive = argument_type(float, lambda v: 0 < v < math.inf, "a number > 0")
seconds = argument_type(float, lambda v: 0 <= v < math.inf, "a number of seconds >= 0")


def _duration(text: str) -> timedelta:
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1:])
    if unit is None:
        raise ValueError(text)
    return timedelta(seconds=float(text[:-1]) * unit)


duration = argument_type(
    _duration, lambda v: timedelta(0) < v < timedelta.max, "a duration such as 30m, 24h or 7d"
)
