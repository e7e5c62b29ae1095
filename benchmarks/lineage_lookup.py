"""How long `tritonflow lineage <id>` takes for a local run, as a user runs it (a new process).

    python benchmarks/lineage_lookup.py [--repeats 7]

Runs the example flow once into a temporary Metaflow root and repository, then times the whole
command (interpreter start, imports, record read, live Metaflow lookup) with and without the
live part. Prints medians and writes benchmarks/results/lineage_lookup.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], env: dict[str, str], cwd: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
        env.update(
            METAFLOW_USER=os.environ.get("METAFLOW_USER", "bench"),
            METAFLOW_DATASTORE_SYSROOT_LOCAL=tmp,
            TRITONFLOW_REPOSITORY=f"{tmp}/repo",
        )
        flow = [sys.executable, str(ROOT / "flows" / "fraud_flow.py"), "--no-pylint", "run", "--rows", "4000"]
        subprocess.run(flow, env=env, cwd=tmp, check=True, capture_output=True)
        lookup = [sys.executable, "-m", "tritonflow", "lineage", "fraud-classifier:1"]
        results = {
            "with Metaflow lookup": timed(lookup, env, tmp, args.repeats),
            "record only (--no-metaflow)": timed([*lookup, "--no-metaflow"], env, tmp, args.repeats),
            "python -c pass (interpreter floor)": timed(
                [sys.executable, "-c", "pass"], env, tmp, args.repeats
            ),
        }
    rows = {
        name: {"median_s": round(statistics.median(t), 3), "max_s": round(max(t), 3)}
        for name, t in results.items()
    }
    for name, row in rows.items():
        print(f"{name:38s} median {row['median_s']:.3f} s   max {row['max_s']:.3f} s")
    path = write_result("lineage_lookup", {"repeats": args.repeats, "results": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
