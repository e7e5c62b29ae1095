"""What prediction capture costs the clients: throughput and latency at 64 connections, capture off and on.

    python benchmarks/capture.py            # ~3 minutes on 2 CPU cores
    python benchmarks/capture.py --quick    # a smoke check in about a minute

Two nodes (`python -m tritonflow serve`) run side by side on the same repository (benchmarks/shadow.py's:
v1 the champion, a random forest of 100 trees of depth 8 over 30 features, deployed by @deploy's code);
one captures every row of every request (`--capture <tmp> --capture-sample 1 --capture-window-s 5`,
inputs too). wrk sends 1-row KServe v2 JSON requests at 64 connections to each node in turn, rounds
alternating which node goes first, with 6 s of quiet after each measure (the capture node writes what
it still holds a window later: not during the other node's measure). The figures are medians over
the rounds, and the median of the rounds' own ratios. The capture node's
counters (rows written, dropped: its queue was full, files) say what the capture kept.

Writes benchmarks/results/capture.json and capture.md.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from machine import preamble, write_report
from serving_contenders import running, tritonflow_contender
from shadow import MODEL, N_FEATURES, deploy
from side_by_side import arguments, measure, medians, metrics_text, round_ratios

CONNECTIONS = (64,)
NODES = ("capture off", "capture on")
WINDOW_S = 5  # --capture-window-s (default 60): files are written during the measures, their cost counted
TITLE = "Capture: throughput and latency with and without prediction capture"


def capture_counts(port: int) -> dict[str, float]:
    """The capture node's tritonflow_capture_*_total samples: rows, dropped, files, failures."""
    found = re.findall(r"^tritonflow_capture_(\w+)_total (\S+)$", metrics_text(port), re.M)
    return {name: float(value) for name, value in found}


def markdown(report: dict[str, Any]) -> str:
    off, on = report["medians"]
    counts, ratios = report["capture_counts"], report["round_ratios"]
    return "\n".join(
        [
            *preamble(
                "Capture: throughput and latency with and without prediction capture", "capture.py", report
            ),
            "Two nodes side by side, the same v1 champion (RandomForest 100 trees, depth 8, 30 features, "
            "engine `auto`); one captures every row (`--capture-sample 1 --capture-window-s 5`, inputs too, "
            f"a local folder). wrk, 1-row JSON requests, {CONNECTIONS[0]} connections; {report['seconds']} s "
            f"per measure, medians over {report['rounds']} rounds, nodes alternating.",
            "",
            "| node | requests/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|",
            *(
                f"| {r['node']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
                for r in report["medians"]
            ),
            "",
            "Capture on against off, medians: "
            f"throughput {on['requests_per_s'] / off['requests_per_s'] - 1:+.1%}, "
            f"p99 {on['p99_ms'] / off['p99_ms'] - 1:+.1%}; within a round (the median of the rounds' "
            f"ratios): throughput {ratios['requests_per_s'] - 1:+.1%}, p99 {ratios['p99_ms'] - 1:+.1%}. "
            "Over the whole run the capture node wrote "
            f"{counts.get('rows', 0):,.0f} rows in {counts.get('files', 0):,.0f} files, dropped "
            f"{counts.get('dropped', 0):,.0f} (queue full), {counts.get('failures', 0):,.0f} failed writes.",
            "",
        ]
    )


def main() -> None:
    args, wrk_path, rounds, seconds = arguments(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repository = deploy(root / "repo", with_shadow=False)
        nodes = [tritonflow_contender(label, repository, MODEL, "auto", workdir=root) for label in NODES]
        nodes[1].command += ["--capture", str(root / "captures"), "--capture-sample", "1"]
        nodes[1].command += ["--capture-window-s", str(WINDOW_S)]
        with running(nodes):
            # NOTE: the capture node writes what it holds a window after its measure: not in the other's
            rows = measure(nodes, wrk_path, rounds, seconds, CONNECTIONS, N_FEATURES, settle_s=WINDOW_S + 1)
            counts = capture_counts(nodes[1].port)
    report = {
        "quick": args.quick,
        "rounds": rounds,
        "seconds": seconds,
        "medians": medians(rows, NODES, CONNECTIONS),
        "round_ratios": round_ratios(rows, NODES[1], NODES[0], CONNECTIONS[0]),
        "capture_counts": counts,
        "runs": rows,
    }
    write_report("capture", report, args.out, markdown)


if __name__ == "__main__":
    main()
