"""What prediction capture costs the clients: throughput and latency at 64 connections, capture off and on.

    python benchmarks/capture.py            # ~2 minutes on 2 CPU cores
    python benchmarks/capture.py --quick    # a smoke check in under a minute

Two nodes (`python -m tritonflow serve`) run side by side on the same repository (benchmarks/shadow.py's:
v1 the champion, a random forest of 100 trees of depth 8 over 30 features, deployed by @deploy's code);
one captures every row of every request (`--capture <tmp> --capture-sample 1 --capture-window-s 5`,
inputs too). wrk sends 1-row KServe v2 JSON requests at 64 connections to each node in turn, rounds
alternating which node goes first; the figures are medians over the rounds. The capture node's
counters (rows written, dropped: its queue was full, files) say what the capture kept.

Writes benchmarks/results/capture.json and capture.md.
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from machine import RESULTS, machine, write_result
from shadow import MODEL, N_FEATURES, deploy

from serving import ensure_wrk, rotated, running, say, single_row, tritonflow_contender, wrk, wrk_script

CONNECTIONS = 64
NODES = ("capture off", "capture on")


def measure(nodes: list[Any], wrk_path: str, rounds: int, seconds: int) -> list[dict[str, Any]]:
    """wrk on each node, `rounds` times, the node that goes first rotating."""
    row = np.random.default_rng(0).random(N_FEATURES).astype(np.float32)
    rows = []
    for round_no in range(rounds):
        for node in rotated(nodes, round_no):
            script = wrk_script(single_row(node, row), node.log.with_suffix(".lua"))
            stats = wrk(wrk_path, node, script, CONNECTIONS, seconds)
            rows.append({"contender": node.label, "round": round_no + 1, **stats})
            p50, p99, rps = stats["p50_ms"], stats["p99_ms"], stats["requests_per_s"]
            say(f"round {round_no + 1} {node.label}: {rps:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return rows


def capture_counts(port: int) -> dict[str, float]:
    """The capture node's tritonflow_capture_*_total samples: rows, dropped, files, failures."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return {
        name: float(value)
        for name, value in re.findall(r"^tritonflow_capture_(\w+)_total (\S+)$", text, re.M)
    }


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per node: the medians over rounds of requests/s, p50 and p99."""
    out = []
    for node in NODES:
        mine = [r for r in rows if r["contender"] == node]
        keys = ("requests_per_s", "p50_ms", "p99_ms")
        out.append(
            {"node": node, "rounds": len(mine), **{k: statistics.median(r[k] for r in mine) for k in keys}}
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    off, on = report["medians"]
    table = [
        "| node | requests/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['node']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
            for r in report["medians"]
        ),
    ]
    counts = report["capture_counts"]
    return "\n".join(
        [
            "# Capture: throughput and latency with and without prediction capture",
            "",
            f"{m['cpu']}, {m['cores']} cores, load average {m['load_average']} at the end (other work on the "
            f"machine skews timings); `python benchmarks/capture.py{' --quick' if report['quick'] else ''}`.",
            "",
            "Two nodes side by side, the same v1 champion (RandomForest 100 trees, depth 8, 30 features, "
            "engine `auto`); one captures every row (`--capture-sample 1 --capture-window-s 5`, inputs too, "
            "a local folder). wrk, "
            f"1-row JSON requests, {CONNECTIONS} connections; {report['seconds']} s per measure, medians "
            f"over {report['rounds']} rounds, nodes alternating.",
            "",
            *table,
            "",
            f"Capture on against off: throughput {on['requests_per_s'] / off['requests_per_s'] - 1:+.1%}, "
            f"p99 {on['p99_ms'] / off['p99_ms'] - 1:+.1%}. Over the whole run the capture node wrote "
            f"{counts.get('rows', 0):,.0f} rows in {counts.get('files', 0):,.0f} files, dropped "
            f"{counts.get('dropped', 0):,.0f} (queue full), {counts.get('failures', 0):,.0f} failed writes.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    wrk_path = ensure_wrk()
    if wrk_path is None:
        raise SystemExit("wrk is needed: `sudo apt-get install -y wrk`")
    rounds, seconds = (2, 3) if args.quick else (5, 8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repository = deploy(root / "repo", with_shadow=False)
        nodes = [tritonflow_contender(label, repository, MODEL, "auto", workdir=root) for label in NODES]
        # NOTE: a 5 s window (default 60 s): files are written during the measures, their cost counted
        nodes[1].command += ["--capture", str(root / "captures"), "--capture-sample", "1"]
        nodes[1].command += ["--capture-window-s", "5"]
        with running(nodes):
            rows = measure(nodes, wrk_path, rounds, seconds)
            counts = capture_counts(nodes[1].port)
    report = {
        "quick": args.quick,
        "rounds": rounds,
        "seconds": seconds,
        "connections": CONNECTIONS,
        "medians": medians(rows),
        "capture_counts": counts,
        "runs": rows,
    }
    path = write_result("capture", report, args.out)
    report["machine"] = machine()
    (args.out / "capture.md").write_text(markdown(report))
    print(f"wrote {path} and capture.md")


if __name__ == "__main__":
    main()
