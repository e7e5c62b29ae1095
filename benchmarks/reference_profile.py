"""How long @deploy's reference profile takes on a large sample (the features only: the prediction part
runs the model on at most 100,000 rows and costs what the model's predict costs).

    python benchmarks/reference_profile.py [--rows 1000000] [--features 30] [--repeats 5]

Prints the median and writes benchmarks/results/reference_profile.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from machine import RESULTS, write_result

from tritonflow.plugin.reference import profile, profile_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(args.rows, args.features)).astype(np.float32)
    rows[rng.random(rows.shape) < 0.01] = np.nan  # 1% missing, as real data has
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        size = len(profile_bytes(profile(rows, None)))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"reference profile of {args.rows} rows x {args.features} features: median {median:.3f} s")
    print(f"  (max {max(times):.3f} s over {args.repeats} runs; reference.json {size} bytes)")
    result = {
        "rows": args.rows,
        "features": args.features,
        "repeats": args.repeats,
        "median_s": round(median, 4),
        "max_s": round(max(times), 4),
        "reference_json_bytes": size,
    }
    print(f"wrote {write_result('reference_profile', result, args.out)}")


if __name__ == "__main__":
    main()
