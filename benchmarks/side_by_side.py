"""Two nodes measured side by side with wrk: what benchmarks/capture.py and shadow.py share.

Each round runs wrk on every node in turn (the node that goes first rotating) at each connection
count; the figures are medians over the rounds, so both nodes see the same machine noise.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import RESULTS, say
from serving_client import ensure_wrk, single_row, wrk, wrk_script
from serving_contenders import rotated

FIGURES = ("requests_per_s", "p50_ms", "p99_ms")


def arguments(doc: str) -> tuple[argparse.Namespace, str, int, int]:
    """--quick and --out, wrk's path, and the rounds and seconds per measure they imply."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    wrk_path = ensure_wrk()
    if wrk_path is None:
        raise SystemExit("wrk is needed: `sudo apt-get install -y wrk`")
    rounds, seconds = (2, 3) if args.quick else (5, 8)
    return args, wrk_path, rounds, seconds


def measure(
    nodes: list[Any],
    wrk_path: str,
    rounds: int,
    seconds: int,
    connections: tuple[int, ...],
    features: int,
    settle_s: float = 0.0,
) -> list[dict[str, Any]]:
    """wrk with 1-row JSON requests at each connection count on each node, `rounds` times; `settle_s`
    of quiet after each measure, for work a node does after its load (the next node's measure must
    not pay for it)."""
    row = np.random.default_rng(0).random(features).astype(np.float32)
    rows = []
    for round_no in range(rounds):
        for node in rotated(nodes, round_no):
            script = wrk_script(single_row(node, row), node.log.with_suffix(".lua"))
            for count in connections:
                stats = wrk(wrk_path, node, script, count, seconds)
                time.sleep(settle_s)
                rows.append({"contender": node.label, "connections": count, "round": round_no + 1, **stats})
                say(
                    f"round {round_no + 1} c{count} {node.label}: {stats['requests_per_s']:,.0f} req/s, "
                    f"p50 {stats['p50_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms"
                )
    return rows


def medians(
    rows: list[dict[str, Any]], nodes: tuple[str, ...], connections: tuple[int, ...]
) -> list[dict[str, Any]]:
    """Per connection count and node: the medians over rounds of requests/s, p50 and p99."""
    out = []
    for count in connections:
        for node in nodes:
            mine = [r for r in rows if r["contender"] == node and r["connections"] == count]
            figures = {k: statistics.median(r[k] for r in mine) for k in FIGURES}
            out.append({"node": node, "connections": count, "rounds": len(mine), **figures})
    return out


def round_ratios(rows: list[dict[str, Any]], node: str, base: str, count: int) -> dict[str, float]:
    """Per figure, the median over rounds of `node`'s figure over `base`'s in the same round: the two
    measures of a round saw the same machine, so noise between rounds cancels."""
    by_round = {(r["contender"], r["round"]): r for r in rows if r["connections"] == count}
    pairs = [
        (by_round[node, n], by_round[base, n]) for c, n in by_round if c == node and (base, n) in by_round
    ]
    return {k: statistics.median(mine[k] / theirs[k] for mine, theirs in pairs) for k in FIGURES}


def metrics_text(port: int) -> str:
    """A node's /metrics page (its counters say what the feature under test did)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return text
