"""A JSON tensor's `data` -> a flat ndarray, refusing every value its datatype would not hold as sent.

numpy alone converts too much: "1.5" and true into FP32, 1.5 into INT32 as 1, 1e39 into FP32 as inf.
Here a value must be a JSON number (true/false only, and only, for BOOL), an integer written as
one for the integer datatypes, inside the datatype's range. orjson has already refused NaN,
Infinity and numbers that overflow a double (1e400), and turned integers past 64 bits into floats.

Few values are checked one by one (their types) and numpy converts them. Many go through
`array.array`, whose C conversion is the strict one: a C double takes only ints and floats, a C
integer only ints in its range. Its one leak is bool, an int subclass, so booleans are looked for
among the values that converted to 0 or 1. Only errors walk the values in Python, to name one.
"""

from __future__ import annotations

import array
import json
import math
from dataclasses import dataclass
from functools import reduce
from operator import iadd
from typing import Any

import numpy as np

from tritonflow.serving.datatypes import NUMPY
from tritonflow.serving.errors import BadTensorData

_SCAN = 256  # NOTE: up to this many values a look at each type costs less than numpy's calls (measured)


@dataclass(frozen=True, slots=True)
class _Rule:
    """What one datatype takes: values of these Python types with `low < value < high`."""

    dtype: np.dtype
    takes: frozenset[type]  # the Python types (exactly) that orjson gives for the values it takes
    typecode: str  # the array.array C type that converts to it ("d" for floats, then cast); "" for BOOL
    low: float
    high: float
    remedy: str

    @classmethod
    def of(cls, dtype: np.dtype) -> _Rule:
        if dtype.kind == "b":
            # NOTE: anything converts to a bool, so the values' types are the whole check
            return cls(dtype, frozenset({bool}), "", -math.inf, math.inf, "send true or false")
        if dtype.kind == "f":
            info = np.finfo(dtype)
            limit = math.inf  # NOTE: orjson gives finite doubles only: all of them are FP64
            if dtype.itemsize < 8:
                # NOTE: a double rounds to a finite value below max + half an ulp (the tie rounds up, to inf)
                limit = math.ldexp(2 - 2.0 ** -(info.nmant + 1), info.maxexp - 1)
            remedy = f"send JSON numbers within ±{float(info.max)} (no strings, booleans or null)"
            return cls(dtype, frozenset({int, float}), "d", -limit, limit, remedy)
        ints = np.iinfo(dtype)
        code = next(c for c in "bBhHiIlLqQ" if np.dtype(c) == dtype)
        remedy = f"send integers from {ints.min} to {ints.max}, written without a fraction or exponent"
        return cls(dtype, frozenset({int}), code, ints.min - 1, ints.max + 1, remedy)

    def holds(self, value: Any) -> bool:
        """Whether the datatype takes this value, by the conversion's own checks."""
        if type(value) not in self.takes:
            return False
        # NOTE: to a float datatype an int goes through a double (rounded), as the bounds are
        return self.low < (float(value) if self.dtype.kind == "f" else value) < self.high


RULES = {datatype: _Rule.of(dtype) for datatype, dtype in NUMPY.items()}
_LIST = {list}


def to_array(name: str, datatype: str, data: Any) -> np.ndarray:
    """The values of `data` (a flat or shape-nested list), row-major, as a flat array of `datatype`."""
    rule = RULES[datatype]
    if type(data) is not list:
        raise BadTensorData(
            name, datatype, f"data is {_show(data)}", "send a list, flat or nested as the shape"
        )
    values, nesting = _flatten(name, datatype, data)
    try:
        return _convert(values, rule)
    except (TypeError, OverflowError, FloatingPointError):
        pass  # NOTE: some value is refused: the first one is named below
    i = next(i for i, value in enumerate(values) if not rule.holds(value))
    raise BadTensorData(name, datatype, f"{_position(i, nesting)} is {_show(values[i])}", rule.remedy)


@np.errstate(over="raise")  # NOTE: a float past the datatype's range (1e39 as FP32) raises, not becomes inf
def _convert(values: list[Any], rule: _Rule) -> np.ndarray:
    """The values as the rule's dtype; TypeError, OverflowError or FloatingPointError if one is refused."""
    if len(values) > _SCAN and rule.typecode:
        code = rule.typecode
        converted = np.frombuffer(array.array(code, values), code).astype(rule.dtype, copy=False)
        # NOTE: array.array took true and false as 1 and 0: only those values can have been booleans
        ones_zeros = np.flatnonzero((converted == 0) | (converted == 1))
        suspects = values
        if len(ones_zeros) * 2 < len(values):  # NOTE: else fetching them costs more than a look at all
            suspects = list(map(values.__getitem__, ones_zeros.tolist()))
        if bool in set(map(type, suspects)):
            raise TypeError("booleans are only for BOOL")
        return converted
    if not set(map(type, values)) <= rule.takes:
        raise TypeError(f"{rule.dtype} takes {rule.takes}")
    # NOTE: numpy raises OverflowError for an int out of the datatype's range
    return np.asarray(values, rule.dtype)


def _flatten(name: str, datatype: str, data: list[Any]) -> tuple[list[Any], list[int]]:
    """The leaves of nested lists in row-major order, and the nesting's shape; refused unless even."""
    nesting, level = [len(data)], data
    # NOTE: one flat list of the leaves converts faster than the nested lists it comes from.
    while level and type(level[0]) is list:
        width = len(level[0])
        single = len(level) == 1  # NOTE: one list is even by itself (a one-row request)
        if not single and (set(map(type, level)) != _LIST or set(map(len, level)) != {width}):
            i, item = next((i, x) for i, x in enumerate(level) if type(x) is not list or len(x) != width)
            here, first = _position(i, nesting), _position(0, nesting)
            problem = (
                f"{here} has length {len(item)} where {first} has length {width}"
                if type(item) is list
                else f"{here} is {_show(item)} where {first} is a list"
            )
            raise BadTensorData(
                name, datatype, problem, "nest the lists evenly, as the shape does, or send one flat list"
            )
        nesting.append(width)
        # NOTE: extending one list row by row (in C) is twice as fast as list(chain.from_iterable(...))
        level = level[0] if single else reduce(iadd, level, [])
    return level, nesting


def _position(index: int, nesting: list[int]) -> str:
    """Where the index-th item of a nesting level is in `data`, e.g. data[2][7]."""
    at = []
    for width in reversed(nesting):
        index, i = divmod(index, width)
        at.append(f"[{i}]")
    return "data" + "".join(reversed(at))


def _show(value: Any) -> str:
    """A value as the client wrote it in JSON; containers by their kind only (they may be huge)."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
