"""What loading a version through the probe (serving/probe.py) costs: per version and at start-up.

    python benchmarks/load_isolation.py            # ~5 minutes on 2 CPU cores
    python benchmarks/load_isolation.py --quick    # ~1 minute: smaller models, fewer repeats

Models, exported by @deploy's exporters as Treelite checkpoints and served by the default engine
(nvForest on CPU here, else Treelite): the starter pack's random forest (tritonflow/starter: 50 trees,
depth 6, on its synthetic fraud data) and bigger forests (XGBoost 500 rounds depth 8, a random forest
300 trees depth 12).

1. Per version, in this process (engines imported, fork server running): the median of N loads as
   the node does them (load_backend + one prediction), against a probe followed by the same load.
2. Start methods: the probe's wall time from the fork server (backends preloaded) and by spawn.
3. Start-up: 1, 4 and 8 versions, each run in a fresh process (imports and the fork server's start
   included): loads only; a probe then a load per version, one after another; all at once on threads.
4. Memory: the fork server's resident (RSS) and proportional (PSS) memory, and each probe's peak.

Prints tables; writes benchmarks/results/load_isolation.json and load_isolation.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from machine import RESULTS, write_report

from tritonflow.plugin.exporters import config_spec, export_model
from tritonflow.serving.model_config import build_config, render
from tritonflow.serving.triton_releases import NEWEST_TRITON

ENGINE = "auto"  # what `tritonflow serve` uses unless told otherwise

# NOTE: the probes run in `python -c` processes, as in the node (`python -m tritonflow serve`):
# multiprocessing re-imports a main *script* in every child, which would time this file's imports.
MEASURE = r"""
import json, statistics, sys, time
from pathlib import Path
import psutil
from tritonflow.serving.backends import load_backend
from tritonflow.serving.model_config import parse_config
from tritonflow.serving.probe import probe_version, sample_inputs

versions, repeats, method_repeats = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def median_s(action, times):
    seconds = []
    for _ in range(times):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)

def load_once(folder, config):  # what the node does with a version it accepts (and here lets go)
    backend = load_backend(folder, config, "auto")
    backend.predict(sample_inputs(config))
    backend.unload()

def probe_then_load(folder, config, reports):
    reports.append(probe_version(folder, config, "auto"))
    load_once(folder, config)

rows = []
for label, folder, config_file in versions:
    folder, config = Path(folder), parse_config(Path(config_file).read_text())
    probe_then_load(folder, config, [])  # NOTE: warm-up: imports, and the fork server's start
    reports = []
    in_process = median_s(lambda: load_once(folder, config), repeats)
    with_probe = median_s(lambda: probe_then_load(folder, config, reports), repeats)
    rows.append({
        "model": label,
        "checkpoint_bytes": sum(p.stat().st_size for p in folder.iterdir()),
        "engine": reports[-1].engine,
        "repeats": repeats,
        "load_in_process_s": round(in_process, 4),
        "probe_then_load_s": round(with_probe, 4),
        "added_s": round(with_probe - in_process, 4),
        "probe_wall_s": round(statistics.median(r.wall_s for r in reports), 4),
        "probe_load_s": round(statistics.median(r.load_s for r in reports), 4),
        "probe_peak_rss_mib": round(max(r.peak_rss_bytes for r in reports) / 2**20, 1),
    })
folder, config = Path(versions[0][1]), parse_config(Path(versions[0][2]).read_text())
methods = []
for method, times in (("forkserver", method_repeats * 3), ("spawn", method_repeats)):
    reports = [probe_version(folder, config, "auto", method=method) for _ in range(times)]
    methods.append({
        "method": method,
        "probes": times,
        "median_wall_s": round(statistics.median(r.wall_s for r in reports), 4),
        "peak_rss_mib": round(max(r.peak_rss_bytes for r in reports) / 2**20, 1),
    })
memory = {}
for child in psutil.Process().children():  # the fork server: RSS, and PSS (shared pages split)
    if "forkserver import main" in " ".join(child.cmdline()):
        info = child.memory_full_info()
        memory = {"rss_mib": round(info.rss / 2**20, 1), "pss_mib": round(info.pss / 2**20, 1)}
print(json.dumps({"per_version": rows, "start_methods": methods, "fork_server_memory": memory}))
"""

# A fresh node stand-in: opens the versions given as (folder, config file) pairs, with or without
# probes, and prints the seconds from the first to the last.
STARTUP = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tritonflow.serving.backends import load_backend
from tritonflow.serving.model_config import parse_config
from tritonflow.serving.probe import probe_version

mode, jobs = sys.argv[1], json.loads(sys.argv[2])
configs = [parse_config(Path(config).read_text()) for _, config in jobs]

def open_version(i):
    if mode != "loads only":
        probe_version(Path(jobs[i][0]), configs[i], "auto")
    return load_backend(Path(jobs[i][0]), configs[i], "auto")

start = time.perf_counter()
if mode == "probes at once":
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(open_version, range(len(jobs))))
else:
    [open_version(i) for i in range(len(jobs))]
print(json.dumps({"seconds": time.perf_counter() - start}))
"""
STARTUP_MODES = ("loads only", "probes one by one", "probes at once")
STARTER = "starter rf 50x6"


def models(quick: bool) -> dict[str, Any]:
    """label -> fitted classifier over the starter's 30 features."""
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier

    from tritonflow.starter.fraud_data import synthetic_transactions

    frame = synthetic_transactions(6000, seed=0)  # the starter flow's default data
    X, y = frame.drop(columns=["Class"]).to_numpy("float32"), frame["Class"].to_numpy()
    rounds, depth = (100, 6) if quick else (500, 8)
    found = {
        # as tritonflow/starter/flow.py's candidate("random_forest")
        STARTER: RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0),
        f"xgboost {rounds}x{depth}": xgb.XGBClassifier(n_estimators=rounds, max_depth=depth, n_jobs=2),
    }
    if not quick:
        found["rf 300x12"] = RandomForestClassifier(n_estimators=300, max_depth=12, n_jobs=2, random_state=0)
    return {label: model.fit(X, y) for label, model in found.items()}


def publish(model: Any, folder: Path) -> list[str]:
    """A version folder with the model's checkpoint and its config.pbtxt beside it: [folder, config]."""
    export = export_model(model, "treelite", 30, NEWEST_TRITON)
    folder.mkdir(parents=True)
    for name, data in export.files.items():
        (folder / name).write_bytes(data)
    config = folder.parent / "config.pbtxt"
    config.write_text(render(build_config(config_spec(export, "bench"))))
    return [str(folder), str(config)]


def run_json(*args: str) -> dict[str, Any]:
    """What a `python -c` child prints last, as JSON."""
    done = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def startup(versions: list[list[str]], counts: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for count in counts:
        row: dict[str, Any] = {"versions": count}
        for mode in STARTUP_MODES:
            times = [run_json(STARTUP, mode, json.dumps(versions[:count]))["seconds"] for _ in range(repeats)]
            row[mode] = round(statistics.median(times), 3)
        rows.append(row)
        print(f"  {count} versions: " + "  ".join(f"{m} {row[m]:5.2f} s" for m in STARTUP_MODES), flush=True)
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(str(v) for v in row) + " |" for row in rows),
    ]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    ms = lambda seconds: f"{seconds * 1e3:.1f} ms"  # noqa: E731
    per_version = [
        [
            r["model"],
            f"{r['checkpoint_bytes'] / 2**20:.1f} MiB",
            r["engine"],
            ms(r["load_in_process_s"]),
            ms(r["probe_then_load_s"]),
            ms(r["added_s"]),
            f"{r['probe_peak_rss_mib']} MiB",
        ]
        for r in report["per_version"]
    ]
    methods = [
        [r["method"], r["probes"], ms(r["median_wall_s"]), f"{r['peak_rss_mib']} MiB"]
        for r in report["start_methods"]
    ]
    boot = [[r["versions"], *(f"{r[mode]:.2f} s" for mode in STARTUP_MODES)] for r in report["startup"]]
    memory = report["fork_server_memory"]
    return "\n".join(
        [
            "# Load isolation: what the probe costs",
            "",
            f"{m['cpu']}, {m['cores']} cores, load average {m['load_average']} (other work on the "
            f"machine skews timings); engine `{ENGINE}`; `python benchmarks/load_isolation.py`.",
            "",
            "## Per version (medians; engines imported, fork server running)",
            "",
            *_table(
                [
                    "model",
                    "checkpoint",
                    "engine",
                    "load in process",
                    "probe + load",
                    "added",
                    "probe peak RSS",
                ],
                per_version,
            ),
            "",
            "## Start methods (the starter model; probe wall time)",
            "",
            *_table(["method", "probes", "median", "peak RSS"], methods),
            "",
            f"The fork server holds {memory.get('rss_mib')} MiB resident ({memory.get('pss_mib')} MiB PSS).",
            "",
            "## Start-up (fresh process each time, copies of the starter model; medians)",
            "",
            *_table(["versions", *STARTUP_MODES], boot),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    repeats = 3 if args.quick else 11
    counts = (1, 4) if args.quick else (1, 4, 8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trained = models(args.quick)
        versions = [
            [label, *publish(model, root / f"m{i}" / "1")] for i, (label, model) in enumerate(trained.items())
        ]
        measured = run_json(MEASURE, json.dumps(versions), str(repeats), str(2 if args.quick else 5))
        print("per version (medians):")
        for r in measured["per_version"]:
            print(
                f"  {r['model']:18s} {r['engine']:14s} in process {r['load_in_process_s'] * 1e3:7.1f} ms  "
                f"probe + load {r['probe_then_load_s'] * 1e3:7.1f} ms  added {r['added_s'] * 1e3:7.1f} ms  "
                f"probe peak RSS {r['probe_peak_rss_mib']:6.1f} MiB"
            )
        for r in measured["start_methods"]:
            print(f"  {r['method']:10s} probe {r['median_wall_s'] * 1e3:7.0f} ms (median of {r['probes']})")
        print(f"  fork server memory: {measured['fork_server_memory']}")
        copies = [publish(trained[STARTER], root / f"starter{i}" / "1") for i in range(max(counts))]
        print("start-up (fresh process, medians):")
        boot = startup(copies, counts, 1 if args.quick else 3)
    report = {"quick": args.quick, "engine": ENGINE, **measured, "startup": boot}
    write_report("load_isolation", report, args.out, markdown)


if __name__ == "__main__":
    main()
