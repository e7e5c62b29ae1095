"""What the store's key checks cost per call, and how long `tritonflow gc` takes on a large repository.

    python benchmarks/store_keys_gc.py [--quick]

Times `check_key` alone and the local store's calls that the serving node's watcher makes at each
poll (`list`, `fingerprint`: the spelling check plus a realpath per call), then builds a local
repository of many published versions with a killed deploy's leftovers beside each model, and
times `gc.plan` (one recursive listing) and `gc.apply`. Prints medians and writes
benchmarks/results/store_keys_gc.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from machine import RESULTS, write_result

from tritonflow.lineage import gc, layout
from tritonflow.lineage.repository import ModelRepository
from tritonflow.lineage.store import check_key
from tritonflow.lineage.store.local import LocalStore


def per_call_us(statement: Callable[[], object], number: int, repeats: int = 7) -> float:
    """Median microseconds per call of a no-argument callable."""
    runs = timeit.repeat(statement, number=number, repeat=repeats)
    return statistics.median(runs) / number * 1e6


def build(root: Path, models: int, versions: int) -> int:
    """`models` models of `versions` published versions each, plus one killed deploy's leftovers
    per model (claim, two index entries, a staging folder), all backdated by two hours."""
    store = LocalStore(str(root))
    for m in range(models):
        model = f"model-{m}"
        store.write(layout.config_key(model), b"config")
        for v in range(1, versions + 1):
            store.create(layout.claim_key(model, v), b"{}")
            store.write(layout.index_key(model, layout.RUNS, f"F/{v}", v), b"")
            store.publish(
                layout.version_key(model, v),
                {"checkpoint.tl": b"x" * 1024, "deployment.json": b"{}"},
                "deployment.json",
            )
        dead = versions + 1
        store.create(layout.claim_key(model, dead), b"{}")
        store.create(layout.claim_key(model, dead + 1), b"{}")  # the highest claim: kept
        for index in (layout.TASKS, layout.RUNS):
            store.write(layout.index_key(model, index, f"F/{dead}", dead), b"")
        staged = root / model / f".staging-{dead}-0123abcd"
        staged.mkdir()
        (staged / "checkpoint.tl").write_bytes(b"x" * 1024)
    old = time.time() - 7200
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(Path(folder, name), (old, old))
    return models * 4  # removals expected: staging folder, two index entries, one claim per model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small repository, fewer repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = parser.parse_args()
    models, versions = (5, 10) if args.quick else (50, 40)
    number = 2000 if args.quick else 20000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        expected = build(root, models, versions)
        store = LocalStore(str(root))
        key = layout.record_key("model-0", 1)
        calls = {
            "check_key (a record key)": lambda: check_key(key),
            "LocalStore.fingerprint (a record key)": lambda: store.fingerprint(key),
            "LocalStore.list (a model folder)": lambda: store.list("model-0"),
            "Path.stat: fingerprint's work before the checks": lambda: (root / key).stat(),
        }
        per_call = {name: round(per_call_us(call, number), 2) for name, call in calls.items()}
        repository = ModelRepository(root)
        start = time.perf_counter()
        findings = gc.plan(repository)
        plan_s = time.perf_counter() - start
        removals = [f for f in findings if f.remove]
        start = time.perf_counter()
        gc.apply(repository, findings)
        apply_s = time.perf_counter() - start
        assert len(removals) == expected, (len(removals), expected)
        files = sum(1 for _ in root.rglob("*"))
        figures = {
            "models": models,
            "published_versions": models * versions,
            "files_after": files,
            "removals": len(removals),
            "plan_s": round(plan_s, 3),
            "apply_s": round(apply_s, 3),
        }
    for name, us in per_call.items():
        print(f"{name:45s} {us:8.2f} us")
    print(
        f"gc over {figures['published_versions']} published versions of {models} models: "
        f"plan {figures['plan_s']:.3f} s, apply {figures['apply_s']:.3f} s for {figures['removals']} removals"
    )
    path = write_result(
        "store_keys_gc", {"quick": args.quick, "per_call_us": per_call, "gc": figures}, args.out
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
