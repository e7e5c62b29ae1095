"""Fairness: what a client sending 8,192-row requests does to another client's 1-row requests.

    python benchmarks/fairness.py --base DIR   # this checkout, and the tritonflow source tree at DIR
    python benchmarks/fairness.py --quick      # a smoke check in about a minute

The node (`python -m tritonflow serve`) serves the starter pack's forest (50 trees of depth 2, 30
features), once per forest engine. A foreground client sends 1-row KServe v2 JSON requests one at
a time on a keep-alive connection while background clients, each its own process, send 8,192-row
requests back to back: binary tensors, and separately JSON (5 MB bodies, decoded on the node).
Measured per node and engine: p50/p90/p99 of the small requests with no background, with binary
and with JSON background; the rows/s the background got meanwhile, and alone (the cost of sharing).

`--base DIR` adds a node run from another source tree (the code before a change: e.g. a copy of
this checkout with the changed files taken from `git show HEAD:<path>`) on this interpreter and
its packages; rounds alternate the nodes so that drift shows. Then, in-process, the chunk size:
this checkout's Batcher on each engine with CHUNK_NS set per measure, 8,192-row requests alone
(rows/s) and the engine calls they took. Writes fairness.json and fairness.md under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import RESULTS, machine, say
from serving_client import latency_summary
from serving_contenders import Contender, running
from serving_models import BenchModel, train

LARGE_ROWS = 8_192
# Imports tritonflow from the source tree named by argv[1] (its pyproject's flat layout: tritonflow/,
# serving/, lineage/, ... each a `tritonflow.<name>` package), then runs the CLI on the rest.
BASE_LAUNCHER = """\
import runpy, sys
from importlib.machinery import PathFinder
base = sys.argv.pop(1)
class SourceTree:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "tritonflow" or (name.startswith("tritonflow.") and name.count(".") == 1):
            return PathFinder.find_spec(name, [base])
        return None
sys.meta_path.insert(0, SourceTree)
runpy.run_module("tritonflow", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Plan:
    rounds: int
    small_requests: int  # foreground requests per measure, at most
    small_s: float  # ... or this many seconds, whichever ends first
    alone_s: float  # seconds of background alone, for its rows/s
    sweep_s: float  # seconds per measure of each chunk size in the engine-level sweep


FULL = Plan(rounds=3, small_requests=1_000, small_s=20.0, alone_s=4.0, sweep_s=2.0)
QUICK = Plan(rounds=1, small_requests=100, small_s=3.0, alone_s=1.0, sweep_s=0.5)


# -- requests ---------------------------------------------------------------------------------------
def json_body(rows: np.ndarray) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "input__0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}
    return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}


def binary_body(rows: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The binary tensor data extension, as tritonclient sends it (outputs asked for in binary too)."""
    tensor = {"name": "input__0", "shape": list(rows.shape), "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": rows.nbytes}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    length = str(len(header))
    return header + rows.tobytes(), {"Inference-Header-Content-Length": length}


def post(connection: http.client.HTTPConnection, path: str, body: tuple[bytes, dict[str, str]]) -> None:
    """One request on a keep-alive connection; any answer but 200 stops the benchmark."""
    connection.request("POST", path, *body)
    response = connection.getresponse()
    answer = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status} from {path}: {answer[:300]!r}")


def background(port: int, path: str, body: tuple[bytes, dict[str, str]], stop: Any, done: Any) -> None:
    """A client process: the same large request back to back; `done` counts answered requests."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    while not stop.is_set():
        post(connection, path, body)
        with done.get_lock():
            done.value += 1


class Background:
    """`clients` background processes sending one body; counts what was answered, and when."""

    def __init__(self, contender: Contender, body: tuple[bytes, dict[str, str]], clients: int) -> None:
        context = multiprocessing.get_context("spawn")  # NOTE: no fork of a process with OpenMP threads
        self._stop = context.Event()
        self.done = context.Value("q", 0)
        path = f"/v2/models/{contender.model}/infer"
        self._processes = [
            context.Process(target=background, args=(contender.port, path, body, self._stop, self.done))
            for _ in range(clients)
        ]

    def __enter__(self) -> Background:
        for process in self._processes:
            process.start()
        deadline = time.monotonic() + 60
        while self.answered() < len(self._processes):  # every client connected and answered once
            if time.monotonic() > deadline or any(p.exitcode for p in self._processes):
                raise RuntimeError("background clients failed to get answers")
            time.sleep(0.01)
        return self

    def answered(self) -> int:
        with self.done.get_lock():
            return int(self.done.value)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(120)
            if process.exitcode is None:
                process.kill()
        failed = [p.exitcode for p in self._processes if p.exitcode]
        if failed and not exc[0]:
            raise RuntimeError(f"background clients exited with {failed}")


def small_requests(contender: Contender, model: BenchModel, plan: Plan) -> np.ndarray:
    """Seconds per 1-row request, one keep-alive connection, one at a time, bounded in count and time."""
    connection = contender.connect(timeout=600)
    path = f"/v2/models/{contender.model}/infer"
    bodies = [json_body(model.rows[i : i + 1]) for i in range(200)]
    times: list[float] = []
    deadline = time.perf_counter() + plan.small_s
    for i in range(-20, plan.small_requests):
        started = time.perf_counter()
        post(connection, path, bodies[i % len(bodies)])
        if i >= 0:
            times.append(time.perf_counter() - started)
            if started > deadline:
                break
    connection.close()
    return np.asarray(times)


# -- one node -----------------------------------------------------------------------------------------
BODIES = {"binary": binary_body, "json": json_body}


def warm_up(contender: Contender, rows: np.ndarray, count: int = 10) -> None:
    """A few large requests first: caches warm, and the node's chunk size learnt, before any figure."""
    connection, body = contender.connect(timeout=600), binary_body(rows)
    for _ in range(count):
        post(connection, f"/v2/models/{contender.model}/infer", body)
    connection.close()


def measure(
    contender: Contender, model: BenchModel, plan: Plan, kinds: list[str], clients: int, round_no: int
) -> list[dict[str, Any]]:
    """Small-request latency alone and beside each kind of background; the background's rows/s."""
    rows = model.rows[:LARGE_ROWS]
    warm_up(contender, rows)
    base = {"node": contender.label, "round": round_no + 1}
    found = [{**base, "background": "none", **latency_summary(small_requests(contender, model, plan))}]
    for kind in kinds:
        with Background(contender, BODIES[kind](rows), clients) as load:
            first, started = load.answered(), time.perf_counter()
            time.sleep(plan.alone_s)
            alone = (load.answered() - first) * LARGE_ROWS / (time.perf_counter() - started)
            first, started = load.answered(), time.perf_counter()
            small = small_requests(contender, model, plan)
            shared = (load.answered() - first) * LARGE_ROWS / (time.perf_counter() - started)
        row = {**base, "background": kind, **latency_summary(small)}
        found.append({**row, "large_rows_per_s_alone": alone, "large_rows_per_s_shared": shared})
    for row in found:
        large = row.get("large_rows_per_s_alone")
        say(
            f"round {round_no + 1} {row['node']} background {row['background']}: "
            f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms (n={row['n']})"
            + (f", large {large:,.0f} rows/s alone" if large else "")
        )
    return found


def contenders(
    repository: Path, model: str, engines: list[str], base: Path | None, workdir: Path
) -> list[Contender]:
    """One node per engine, and with `base` one more per engine run from that source tree."""
    found = []
    for engine in engines:
        # NOTE: nothing is published while it runs: a poll an hour apart, an option every version takes.
        options = ["serve", str(repository), "--port", "{port}", "--engine", engine]
        options += ["--poll-interval", "3600"]
        # NOTE: HTTP only (a source tree from before gRPC has no such flags): nodes side by side
        # must not all claim gRPC's 8001 and metrics' 8002
        trees = [("this checkout", ["-m", "tritonflow"], ["--grpc-port", "0", "--metrics-port", "0"])]
        if base is not None:
            trees.append(("base", ["-c", BASE_LAUNCHER, str(base.resolve())], []))
        for tree, launch, listeners in trees:
            label = f"{tree}, {engine}"
            log = workdir / f"{label.replace(', ', '-').replace(' ', '_')}.log"
            command = [sys.executable, *launch, *options, *listeners]
            found.append(Contender(label, "kserve", model, command, log))
    return found


def publish(model: BenchModel, root: Path) -> Path:
    """The forest as @deploy publishes it (dynamic batching, 100 us delay)."""
    from tritonflow.plugin.options import parse_options
    from tritonflow.plugin.publish import Provenance, deploy

    attributes = {"name": model.name, "repository": str(root), "max_batch_size": 65_536}
    attributes["max_queue_delay_us"] = 100
    options = parse_options(attributes, "BenchFlow", is_join=False)
    metaflow = {"flow": "BenchFlow", "run_id": "1", "task": "BenchFlow/1/train/1"}
    deploy(model.estimator, options, sample=model.rows[:1_000], provenance=Provenance(metaflow=metaflow))
    return root


# -- the chunk size, engine level -------------------------------------------------------------------------
SWEEP_CHUNK_MS = (0.5, 1.0, 2.0, 4.0, 1_000.0)  # the last: chunks as large as any request (no chunking)


async def _sweep_point(predict: Any, rows: np.ndarray, seconds: float) -> dict[str, Any]:
    """One Batcher on the real engine, 8,192-row requests one after another: rows/s, and its engine
    calls (rows, engine time: what a small request can wait behind, and on nvForest the loop too)."""
    from tritonflow.serving.batcher import Batcher, BatchPolicy, Execution, Traffic

    calls: list[Execution] = []
    policy = BatchPolicy(65_536, frozenset(), 100_000)
    batcher = Batcher("sweep:1", predict, policy, calls.append, Traffic(), asyncio.get_running_loop())
    large = {"input__0": rows[:LARGE_ROWS]}
    for _ in range(5):  # the chunk size is learnt from these
        await batcher.submit(large, LARGE_ROWS)
    calls.clear()
    started, count = time.perf_counter(), 0
    while count < 3 or time.perf_counter() - started < seconds:
        await batcher.submit(large, LARGE_ROWS)
        count += 1
    rate = count * LARGE_ROWS / (time.perf_counter() - started)
    batcher.close(then=lambda: None)
    batcher.join(10)
    engine_ms = [(c.infer_ns - c.input_ns) / 1e6 for c in calls]
    return {
        "chunk_rows": statistics.median(c.rows for c in calls),
        "calls_per_request": len(calls) / count,
        "engine_ms_p50": statistics.median(engine_ms),
        "engine_ms_max": max(engine_ms),
        "large_rows_per_s_alone": rate,
    }


def chunk_sweep(
    repository: Path, model: BenchModel, engines: list[str], rounds: int, seconds: float
) -> list[dict[str, Any]]:
    """What a chunk's engine time (CHUNK_NS) costs on this checkout's Batcher, in-process on each
    engine: rows/s of 8,192-row requests alone, against the chunk's engine time. Rounds alternate the
    sizes; medians over them."""
    from tritonflow.serving import batcher
    from tritonflow.serving.backends import load_backend
    from tritonflow.serving.model_config import parse_config

    folder = repository / model.name
    config = parse_config((folder / "config.pbtxt").read_text())
    default = batcher.CHUNK_NS
    found = []
    for engine in engines:
        backend = load_backend(folder / "1", config, engine)
        points: dict[float, list[dict[str, Any]]] = {ms: [] for ms in SWEEP_CHUNK_MS}
        for round_no in range(rounds):
            for chunk_ms in SWEEP_CHUNK_MS[:: 1 if round_no % 2 == 0 else -1]:
                batcher.CHUNK_NS = int(chunk_ms * 1e6)  # NOTE: the design constant under study, per point
                try:
                    points[chunk_ms].append(asyncio.run(_sweep_point(backend.predict, model.rows, seconds)))
                finally:
                    batcher.CHUNK_NS = default
        backend.unload()
        for chunk_ms, measured in points.items():
            row = {k: statistics.median(m[k] for m in measured) for k in measured[0]}
            found.append({"engine": backend.engine, "chunk_ms": chunk_ms, **row})
            say(
                f"sweep {backend.engine} chunk {chunk_ms} ms: {row['chunk_rows']:.0f} rows, engine "
                f"{row['engine_ms_p50']:.2f} ms a call, {row['large_rows_per_s_alone']:,.0f} rows/s"
            )
    return found


# -- report -------------------------------------------------------------------------------------------
def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over rounds, per node and background."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["node"], row["background"]), []).append(row)
    keys = ("p50_ms", "p90_ms", "p99_ms", "large_rows_per_s_alone", "large_rows_per_s_shared")
    return [
        {
            "node": node,
            "background": background,
            **{k: statistics.median(r[k] for r in group) for k in keys if k in group[0]},
            "n": sum(r["n"] for r in group),
        }
        for (node, background), group in grouped.items()
    ]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Fairness: 1-row requests beside a client sending 8,192-row requests",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; load average "
        f"{m['load_average']} at the start, {report['load_average_end']} at the end. "
        f"Run {report['created_at']}: `{report['command']}`.",
        "",
        f"Model: {report['model']}. Foreground: 1-row JSON requests, one at a time on a keep-alive "
        f"connection. Background: {report['clients']} client process(es) sending {LARGE_ROWS:,}-row "
        "requests back to back (binary tensors, or JSON). Large rows/s: alone (no foreground) and "
        "shared (while the foreground ran). Medians over "
        f"{report['plan']['rounds']} round(s); nodes alternate within each round.",
        "",
        "| node | background | small p50 ms | p90 ms | p99 ms | n | large rows/s alone | large rows/s shared"
        " |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["summary"]:
        alone = f"{row['large_rows_per_s_alone']:,.0f}" if "large_rows_per_s_alone" in row else ""
        shared = f"{row['large_rows_per_s_shared']:,.0f}" if "large_rows_per_s_shared" in row else ""
        lines.append(
            f"| {row['node']} | {row['background']} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['n']} | {alone} | {shared} |"
        )
    lines += [
        "",
        "## The chunk size (engine level)",
        "",
        "This checkout's Batcher in-process on each engine, its CHUNK_NS (the engine time a chunk aims at) "
        f"set per row, {LARGE_ROWS:,}-row requests one after another: rows/s, and the engine calls they "
        "took (median rows, median and longest engine time: what a small request can wait behind one, "
        "and on nvForest, which holds the GIL, the event loop too). No HTTP or decoding. "
        f"{report['plan']['sweep_s']} s per measure, medians over {report['plan']['rounds']} round(s).",
        "",
        "| engine | CHUNK_NS ms | chunk rows | calls per request | engine ms p50 | engine ms max | rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["chunk_sweep"]:
        lines.append(
            f"| {row['engine']} | {row['chunk_ms']:g} | {row['chunk_rows']:,.0f} | "
            f"{row['calls_per_request']:.1f} | {row['engine_ms_p50']:.2f} | {row['engine_ms_max']:.2f} | "
            f"{row['large_rows_per_s_alone']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from tritonflow.serving.backends.forest import nvforest_or_reason

    engines = ["treelite"] if isinstance(nvforest_or_reason(), str) else ["nvforest", "treelite"]
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", type=Path, help="a tritonflow source tree to run beside this checkout")
    parser.add_argument("--engines", nargs="+", default=engines, help=f"forest engines (default {engines})")
    parser.add_argument("--clients", type=int, default=1, help="background client processes (default 1)")
    parser.add_argument(
        "--backgrounds", nargs="+", choices=BODIES, default=list(BODIES), help="kinds of large requests"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 2; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke check")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    started = machine()
    model = train("starter-rf", args.quick)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tritonflow-fairness-") as tmp:
        workdir = Path(tmp)
        repository = publish(model, workdir / "repo")
        nodes = contenders(repository, model.name, args.engines, args.base, workdir)
        with running(nodes):
            for round_no in range(plan.rounds):
                for contender in nodes[round_no % len(nodes) :] + nodes[: round_no % len(nodes)]:
                    rows += measure(contender, model, plan, args.backgrounds, args.clients, round_no)
        # NOTE: after the nodes have stopped: nothing else runs beside the in-process engines
        sweep = chunk_sweep(repository, model, args.engines, plan.rounds, plan.sweep_s)
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "benchmarks/fairness.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": started,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "model": model.title,
        "clients": args.clients,
        "plan": dataclasses.asdict(plan),
        "summary": summary(rows),
        "chunk_sweep": sweep,
        "rounds": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fairness.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "fairness.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'fairness.json'} and fairness.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
