"""The issues' targets as ratios within one run of benchmarks/serving.py: each row measured, required, met."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from typing import Any

from serving_contenders import FASTAPI, TRITON

# issue 18: at 64 connections, --workers 2 against Triton, per model
WORKERS_VS_TRITON = {"starter-rf": ("> 1x", lambda x: x > 1), "xgb-500x8": (">= 1.5x", lambda x: x >= 1.5)}


def load_medians(result: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """(contender, connections) -> median over rounds of req/s and p99, with each round's req/s."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in result["load"]:
        grouped.setdefault((row["contender"], row["connections"]), []).append(row)
    return {
        key: {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in rows),
            "p99_ms": statistics.median(r["p99_ms"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "round_requests_per_s": [r["requests_per_s"] for r in rows],
        }
        for key, rows in grouped.items()
    }


def _target(
    model: str, target: str, contender: str, value: float | None, required: str, ok: Callable[[float], bool]
) -> dict[str, Any]:
    """One target row; `met` is None where a contender was not measured (skipped)."""
    met = None if value is None else bool(ok(value))  # NOTE: numpy's bool would reach the JSON as 1.0
    return {
        "model": model,
        "target": target,
        "contender": contender,
        "value": value,
        "required": required,
        "met": met,
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, for every engine of the node, as ratios within this run."""
    target = functools.partial(_target, result["model"])
    p50 = {row["contender"]: row["p50_ms"] for row in result["sequential"]}
    rps = {key: value["requests_per_s"] for key, value in load_medians(result).items()}
    facts = {row["contender"]: row for row in result["servers"]}
    rows = []
    single = (label for label in p50 if label.startswith("tritonflow") and facts[label]["workers"] == "1")
    for node in single:
        vs_fastapi = _ratio(p50.get(FASTAPI), p50[node])
        vs_triton = _ratio(p50.get(TRITON), p50[node])
        throughput = _ratio(rps.get((node, 64)), rps.get((FASTAPI, 64)))
        rows.append(target("p50 at c1: FastAPI / node", node, vs_fastapi, ">= 20x", lambda x: x >= 20))
        rows.append(target("p50 at c1: Triton / node", node, vs_triton, ">= 2x", lambda x: x >= 2))
        rows.append(target("req/s at c64: node / FastAPI", node, throughput, ">= 10x", lambda x: x >= 10))
    for off in (label for label in facts if label.endswith(" batching off")):
        on = off.removesuffix(" batching off")
        ratio = _ratio(rps.get((on, 64)), rps.get((off, 64)))
        rows.append(target("req/s at c64: batching on / off", on, ratio, "> 1x", lambda x: x > 1))
    treelite = "tritonflow treelite"
    if treelite in facts:
        peak, mapped = facts[treelite]["rss_peak_mb"], float(facts[treelite]["nvforest_mapped"])
        rows.append(target("peak RSS MB, --engine treelite", treelite, peak, "< 400", lambda x: x < 400))
        rows.append(
            target("nvForest mapped by --engine treelite", treelite, mapped, "0 (no)", lambda x: x == 0)
        )
    return rows + workers_targets(result, p50, rps) + json_batch_targets(result)


def json_batch_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 18's: at the largest batch, the node's v2 JSON against the baseline's JSON batch endpoint."""
    target = functools.partial(_target, result["model"])
    largest = max((row["rows"] for row in result["batch"]), default=0)
    rates = {row["contender"]: row["rows_per_s"] for row in result["batch"] if row["rows"] == largest}
    return [
        target(
            f"rows/s at {largest:,} rows, JSON: node / FastAPI",
            label,
            _ratio(rate, rates.get(FASTAPI)),
            ">= 1x",
            lambda x: x >= 1,
        )  # fmt: skip
        for label, rate in rates.items()
        if label.startswith("tritonflow") and label.endswith(" (JSON)")
    ]


def workers_targets(
    result: dict[str, Any], p50: dict[str, float], rps: dict[tuple[str, int], float]
) -> list[dict[str, Any]]:
    """Issue 18's: --workers 2 against Triton at 64 connections; its single-row p50 against one worker."""
    target = functools.partial(_target, result["model"])
    one, two = result["workers"]["1"], result["workers"]["2"]
    rows = []
    if result["model"] in WORKERS_VS_TRITON:
        required, ok = WORKERS_VS_TRITON[result["model"]]
        ratio = _ratio(rps.get((two, 64)), rps.get((TRITON, 64)))
        rows.append(target("req/s at c64: --workers 2 / Triton", two, ratio, required, ok))
    ratio = _ratio(p50.get(two), p50.get(one))
    rows.append(target("p50 at c1: --workers 2 / --workers 1", two, ratio, "<= 1.0x", lambda x: x <= 1))
    return rows
