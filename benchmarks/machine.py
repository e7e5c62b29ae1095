"""What every benchmark result records about where it ran: numbers mean little without it."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages, rounded: printed before each round, recorded with each result."""
    return [round(x, 2) for x in os.getloadavg()]


def say(*parts: object) -> None:
    """A progress line, flushed: a long benchmark's log shows where it is."""
    print(" ", *parts, flush=True)


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, platform and load average (other work on the machine skews timings)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else "MemTotal: 0 kB"
    mem_kb = int(next(ln for ln in meminfo.splitlines() if ln.startswith("MemTotal")).split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def write_result(name: str, payload: dict[str, Any], folder: Path = RESULTS) -> Path:
    """`<folder>/<name>.json` with the machine recorded beside the figures."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def write_report(
    name: str, report: dict[str, Any], out: Path, markdown: Callable[[dict[str, Any]], str]
) -> None:
    """`<name>.json` and `<name>.md` in `out`, the machine recorded in both."""
    path = write_result(name, report, out)
    (out / f"{name}.md").write_text(markdown({**report, "machine": machine()}))
    print(f"wrote {path} and {name}.md")


def preamble(title: str, script: str, report: dict[str, Any]) -> list[str]:
    """The report's heading and the machine it ran on."""
    m = report["machine"]
    return [
        f"# {title}",
        "",
        f"{m['cpu']}, {m['cores']} cores, load average {m['load_average']} at the end (other work on the "
        f"machine skews timings); `python benchmarks/{script}{' --quick' if report['quick'] else ''}`.",
        "",
    ]
