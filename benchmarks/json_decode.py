"""What strict JSON tensor decoding costs: the v2 JSON decode of 1 x 30 and 1024 x 30 FP32 requests.

    python benchmarks/json_decode.py [--repeats 101]

Features are uniform in [0, 1) ("dense"), or half of them 0 or 1 ("one-hot"): the strict path
looks at the Python type of each value that converted to 0 or 1, so that is its dearer case.

Side by side in one process, each round timing every variant in turn (so load on the machine
skews them alike): orjson's parse of the body alone, `decode_request` with the strict
conversion (serving/strict_json.py), and `decode_request` with the lenient `np.asarray(data,
dtype)` it replaced. Prints medians in microseconds and writes benchmarks/results/json_decode.json.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from machine import RESULTS, write_result

from tritonflow.serving import codec, strict_json
from tritonflow.serving.datatypes import NUMPY

FEATURES = 30


def lenient(name: str, datatype: str, data: Any) -> np.ndarray:
    """The conversion before strict decoding: numpy takes "1.5", true, 1.5 for INT32, 1e39 as inf."""
    return np.asarray(data, NUMPY[datatype]).ravel()


CASES = [(1, "nested", "dense"), (1, "flat", "dense")] + [
    (1024, layout, values) for values in ("dense", "one-hot") for layout in ("nested", "flat")
]


def request(rows: int, layout: str, values: str) -> bytes:
    rng = np.random.default_rng(0)
    X = rng.random((rows, FEATURES), dtype=np.float32)
    if values == "one-hot":
        X[:, ::2] = rng.integers(0, 2, (rows, FEATURES // 2))
    nested = layout == "nested"
    data = X.tolist() if nested else X.ravel().tolist()
    tensor = {"name": "input__0", "shape": [rows, FEATURES], "datatype": "FP32", "data": data}
    return orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})


STRICT = strict_json.to_array
CONVERSIONS: dict[str, Callable[[str, str, Any], np.ndarray]] = {
    "decode, lenient (before)": lenient,
    "decode, strict (after)": STRICT,
}
PARSE = "parse only (orjson.loads)"


def measure(body: bytes, repeats: int) -> dict[str, float]:
    """Median microseconds per call of each variant, the variants interleaved round by round."""
    number = max(1, 200_000 // len(body))
    times: dict[str, list[float]] = {name: [] for name in (PARSE, *CONVERSIONS)}
    for _ in range(repeats):
        times[PARSE].append(timeit.timeit(lambda: orjson.loads(body), number=number) / number * 1e6)
        for name, convert in CONVERSIONS.items():
            # NOTE: the codec looks the conversion up per call: the same codec runs either path
            strict_json.to_array = convert
            try:
                seconds = timeit.timeit(lambda: codec.decode_request(body, None), number=number)
            finally:
                strict_json.to_array = STRICT
            times[name].append(seconds / number * 1e6)
    return {name: round(statistics.median(t), 2) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=101)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = parser.parse_args()
    results = []
    for rows, layout, values in CASES:
        us = measure(request(rows, layout, values), args.repeats)
        added = us["decode, strict (after)"] - us["decode, lenient (before)"]
        share = added / us[PARSE]
        results.append(
            {"rows": rows, "features": FEATURES, "data": layout, "values": values, **us}
            | {"added_us": round(added, 2), "added_vs_parse": round(share, 3)}
        )
        timings = ", ".join(f"{k} {v:.1f} us" for k, v in us.items())
        case = f"{rows:5} x {FEATURES} {layout:6} {values:7}"
        print(f"{case}: {timings}; added {added:.1f} us ({share:.0%} of the parse)")
    path = write_result("json_decode", {"repeats": args.repeats, "results": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
