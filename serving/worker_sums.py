"""One node's numbers from several workers' own: `/metrics` texts and Triton statistics, summed.

Each worker counts the requests it answered (serving/metrics.py, plain integers on its own loop);
the worker that answers a scrape or a statistics request adds the others' counts to its own, read
at that moment, so N requests sent are N counted whichever workers served them. Counters, sums
and gauges of amounts add up; a few samples are not amounts and are not added (below).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.utils import floatToGoString

# Families whose samples say "this exists", not "how many": the same value from every worker.
NOT_ADDED = frozenset({"tritonflow_version_role"})
# Statistics fields that are a moment, not an amount: the latest one wins.
LATEST = frozenset({"last_inference"})

Family = tuple[list[str], dict[str, float]]  # its # HELP/# TYPE lines, then samples by name{labels}


def parse(text: str) -> dict[str, Family]:
    """A Prometheus text exposition, by family, in its order; a sample's family is the last one named."""
    families: dict[str, Family] = {}
    current: Family = families.setdefault("", ([], {}))
    for line in text.splitlines():
        if line.startswith("# "):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = families.setdefault(parts[2], ([], {}))
                if line not in current[0]:
                    current[0].append(line)
        elif line:
            key, _, value = line.rpartition(" ")
            current[1][key] = float(value)
    return families


def sum_expositions(texts: Iterable[str]) -> str:
    """Several workers' /metrics as one: each sample the sum of the workers' (NOT_ADDED: the largest),
    families and samples in the order the first worker that has them prints them."""
    total: dict[str, Family] = {}
    for text in texts:
        for name, (comments, samples) in parse(text).items():
            into = total.setdefault(name, ([], {}))
            into[0].extend(c for c in comments if c not in into[0])
            for key, value in samples.items():
                if key not in into[1]:
                    into[1][key] = value
                elif name in NOT_ADDED:
                    into[1][key] = max(into[1][key], value)
                else:
                    into[1][key] += value
    lines = []
    for comments, samples in total.values():
        lines += comments
        lines += [f"{key} {_number(value)}" for key, value in samples.items()]
    return "\n".join(lines) + "\n"


def family_total(text: str, name: str) -> float:
    """The sum of one family's samples in one worker's /metrics (0 when it has none)."""
    return sum(parse(text).get(name, ([], {}))[1].values())


def sum_statistics(answers: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' `{"model_stats": [...]}` as one: entries matched by model and version,
    their counts and durations added (batch_stats matched by batch size)."""
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for answer in answers:
        for entry in answer["model_stats"]:
            key = (entry["name"], entry["version"])
            entries[key] = _add(entries[key], entry) if key in entries else entry
    return {"model_stats": list(entries.values())}


def _add(a: Any, b: Any, field: str = "") -> Any:
    if field in LATEST:
        return max(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a[k], b[k], k) if k in a and k in b else a.get(k, b.get(k)) for k in a | b}
    if field == "batch_stats":
        sizes: dict[int, dict[str, Any]] = {}
        for batch in [*a, *b]:
            size = batch["batch_size"]
            sizes[size] = _add(sizes[size], batch) if size in sizes else batch
        return [sizes[size] for size in sorted(sizes)]
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and field != "batch_size":
        return a + b
    return a  # NOTE: names, versions, batch sizes: the same in every worker


def _number(value: float) -> str:
    """Integers as integers (Triton prints its counters so), other values as prometheus_client does."""
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else floatToGoString(value)
