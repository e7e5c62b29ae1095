"""The wire, side by side in one run: the node's gRPC vs its own HTTP vs Triton 24.10's gRPC, and
shared memory vs binary tensors for 65,536-row requests.

    python benchmarks/wire.py              # every measure, ~4 minutes on 2 cores
    python benchmarks/wire.py --quick      # a smoke check in well under a minute
    python benchmarks/wire.py --no-triton  # the node only

Every endpoint serves the same model files (the starter pack's forest, deployed by tritonflow) and
gets the same rows from the same client library, tritonclient, as a Triton user calls it:

- single row, one request at a time: the sync clients (`tritonclient.http`, binary tensors, and
  `tritonclient.grpc`), endpoints alternating within each round; beside it ServerLive, the same
  round trip without a model or tensors: the protocol's floor on this machine;
- 64 requests in flight: the asyncio clients (`tritonclient.http.aio`, `tritonclient.grpc.aio`),
  64 tasks on one client, for a fixed time; requests/s and latency percentiles;
- 65,536 rows per request: binary HTTP, gRPC raw contents, and system shared memory (inputs and
  outputs in regions registered once, `tritonclient.utils.shared_memory`) over HTTP and gRPC.

The client runs in this process, beside the servers, on the same cores: figures are for
comparing endpoints within one run, not absolute capacities. Writes wire.md and wire.json under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import RESULTS, machine, say, write_result
from serving_client import latency_summary
from serving_contenders import (
    TRITON,
    Contender,
    free_port,
    running,
    triton_env,
    triton_or_skip,
    tritonflow_contender,
)
from serving_models import BenchModel, publish, train

MODEL = "starter-rf"
BIG_ROWS = 65_536


@dataclass(frozen=True)
class Plan:
    rounds: int
    requests: int  # single-row requests per endpoint per round
    load_s: float  # seconds of 64-in-flight load per endpoint per round
    big_calls: int  # 65,536-row requests per transport


FULL = Plan(rounds=3, requests=2_000, load_s=5.0, big_calls=20)
QUICK = Plan(rounds=1, requests=200, load_s=1.0, big_calls=3)
IN_FLIGHT = 64


@dataclass(frozen=True)
class Endpoint:
    """One server's listener under one protocol."""

    label: str
    server: str  # "tritonflow" or "triton"
    protocol: str  # "http" or "grpc"
    url: str


# -- servers -----------------------------------------------------------------------------------------
def node(repository: Path, workdir: Path) -> tuple[Contender, list[Endpoint]]:
    grpc_port = free_port()
    contender = tritonflow_contender("tritonflow", repository, MODEL, "auto", workdir=workdir)
    contender.command[contender.command.index("--grpc-port") + 1] = str(grpc_port)
    return contender, [
        Endpoint("tritonflow http", "tritonflow", "http", contender.url()),
        Endpoint("tritonflow grpc", "tritonflow", "grpc", f"127.0.0.1:{grpc_port}"),
    ]


def triton(launch: triton_env.Backends, repository: Path, workdir: Path) -> tuple[Contender, list[Endpoint]]:
    grpc_port = free_port()
    command = launch.command(repository, "{port}", grpc_port, free_port())
    contender = Contender(TRITON, "kserve", MODEL, command, workdir / "triton.log")
    contender.env = launch.environ()
    return contender, [
        Endpoint("triton grpc", "triton", "grpc", f"127.0.0.1:{grpc_port}"),
        Endpoint("triton http", "triton", "http", contender.url()),
    ]


# -- clients -----------------------------------------------------------------------------------------
def client_module(protocol: str, aio: bool = False) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as grpcaio

        return grpcaio if aio else grpcclient
    import tritonclient.http as httpclient
    import tritonclient.http.aio as httpaio

    return httpaio if aio else httpclient


def request_parts(module: Any, rows: np.ndarray) -> tuple[list[Any], list[Any]]:
    """Inputs and outputs, binary on HTTP (tritonclient's default for inputs, asked for outputs)."""
    tensor = module.InferInput("input__0", list(rows.shape), "FP32")
    wanted = module.InferRequestedOutput("output__0")
    if module.__name__.startswith("tritonclient.http"):
        tensor.set_data_from_numpy(rows, binary_data=True)
        wanted = module.InferRequestedOutput("output__0", binary_data=True)
    else:
        tensor.set_data_from_numpy(rows)
    return [tensor], [wanted]


def one_at_a_time(
    endpoint: Endpoint, rows: np.ndarray, count: int, warmup: int = 50
) -> dict[str, np.ndarray]:
    """Seconds per call, one call at a time on one client: a single-row infer, and ServerLive (the
    protocol's and the server's floor: no model, no tensors)."""
    module = client_module(endpoint.protocol)
    client = module.InferenceServerClient(endpoint.url)
    parts = [request_parts(module, rows[i : i + 1]) for i in range(min(len(rows), 1_000))]
    try:
        return {
            "infer": _timed_calls(lambda i: _infer(client, *parts[i % len(parts)]), count, warmup),
            "live": _timed_calls(lambda i: client.is_server_live(), count, warmup),
        }
    finally:
        client.close()


def _infer(client: Any, inputs: list[Any], outputs: list[Any]) -> Any:
    return client.infer(MODEL, inputs, outputs=outputs)


def _timed_calls(call: Callable[[int], Any], count: int, warmup: int) -> np.ndarray:
    times = np.empty(count)
    for i in range(-warmup, count):
        started = time.perf_counter()
        call(i)
        if i >= 0:
            times[i] = time.perf_counter() - started
    return times


async def _in_flight(endpoint: Endpoint, rows: np.ndarray, seconds: float) -> dict[str, Any]:
    module = client_module(endpoint.protocol, aio=True)
    client = module.InferenceServerClient(endpoint.url)
    inputs, outputs = request_parts(module, rows[:1])
    latencies: list[float] = []

    async def worker(until: float) -> None:
        while time.perf_counter() < until:
            started = time.perf_counter()
            await client.infer(MODEL, inputs, outputs=outputs)
            latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(worker(time.perf_counter() + 1.0) for _ in range(IN_FLIGHT)))  # warm-up
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds) for _ in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    ms = np.asarray(latencies) * 1e3
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests": len(latencies),
    }


def in_flight(endpoint: Endpoint, rows: np.ndarray, seconds: float) -> dict[str, Any]:
    """Requests/s and latency with IN_FLIGHT single-row requests always outstanding."""
    return asyncio.run(_in_flight(endpoint, rows, seconds))


@contextlib.contextmanager
def shared_regions(client: Any, rows: np.ndarray, classes: int) -> Iterator[tuple[list[Any], list[Any], Any]]:
    """Input and output regions, registered once: the request then carries only their names."""
    import tritonclient.utils.shared_memory as shm

    tag = f"bench{free_port()}"
    in_bytes, out_bytes = rows.nbytes, len(rows) * classes * 4
    regions = [
        (f"{tag}_in", f"/{tag}_in", shm.create_shared_memory_region(f"{tag}_in", f"/{tag}_in", in_bytes)),
        (
            f"{tag}_out",
            f"/{tag}_out",
            shm.create_shared_memory_region(f"{tag}_out", f"/{tag}_out", out_bytes),
        ),
    ]
    shm.set_shared_memory_region(regions[0][2], [rows])
    try:
        for (name, key, _), size in zip(regions, (in_bytes, out_bytes), strict=True):
            client.register_system_shared_memory(name, key, size)
        module = client_module("grpc" if "grpc" in type(client).__module__ else "http")
        tensor = module.InferInput("input__0", list(rows.shape), "FP32")
        tensor.set_shared_memory(regions[0][0], in_bytes)
        wanted = module.InferRequestedOutput("output__0")
        wanted.set_shared_memory(regions[1][0], out_bytes)
        yield [tensor], [wanted], regions[1][2]
    finally:
        _unregister(client)
        for _, _, handle in regions:
            shm.destroy_shared_memory_region(handle)


def _unregister(client: Any, tries: int = 20) -> None:
    """Triton refuses (INTERNAL) to unregister a region its last response still holds: retried."""
    from tritonclient.utils import InferenceServerException

    for attempt in range(tries):
        try:
            client.unregister_system_shared_memory()
            return
        except InferenceServerException:
            if attempt == tries - 1:
                raise
            time.sleep(0.1)


def big_requests(endpoint: Endpoint, model: BenchModel, calls: int, shared: bool) -> dict[str, Any]:
    """Rows/s of BIG_ROWS-row requests (median call), checked against the native model's classes."""
    import tritonclient.utils.shared_memory as shm

    module = client_module(endpoint.protocol)
    client = module.InferenceServerClient(
        endpoint.url, **({"network_timeout": 600} if endpoint.protocol == "http" else {})
    )
    rows = model.rows[:BIG_ROWS]
    classes = 2
    with contextlib.ExitStack() as stack:
        if shared:
            inputs, outputs, out_handle = stack.enter_context(shared_regions(client, rows, classes))

            def answer() -> np.ndarray:
                client.infer(MODEL, inputs, outputs=outputs)
                return shm.get_contents_as_numpy(out_handle, np.float32, [len(rows), classes])
        else:
            inputs, outputs = request_parts(module, rows)

            def answer() -> np.ndarray:
                return client.infer(MODEL, inputs, outputs=outputs).as_numpy("output__0")

        agreement = float(np.mean(answer().argmax(axis=1) == model.estimator.predict(rows)))
        times = [_timed(answer) for _ in range(calls)]
    client.close()
    median = statistics.median(times)
    return {
        "median_ms": median * 1e3,
        "rows_per_s": BIG_ROWS / median,
        "calls": calls,
        "agreement": agreement,
    }


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# -- the run -----------------------------------------------------------------------------------------
def run(plan: Plan, launch: triton_env.Backends | None, workdir: Path) -> dict[str, Any]:
    model = train(MODEL, quick=plan is QUICK)
    repository = publish(model, workdir / "repositories", gpu=False)["fil"]
    contenders, endpoints = [], []
    for contender, found in [node(repository, workdir)] + (
        [triton(launch, repository, workdir)] if launch else []
    ):
        contenders.append(contender)
        endpoints += found
    latencies: dict[str, dict[str, list[np.ndarray]]] = {}
    load: dict[str, list[dict[str, Any]]] = {}
    with running(contenders):
        for round_no in range(plan.rounds):
            order = endpoints[round_no % len(endpoints) :] + endpoints[: round_no % len(endpoints)]
            for endpoint in order:
                for call, times in one_at_a_time(endpoint, model.rows, plan.requests).items():
                    latencies.setdefault(endpoint.label, {}).setdefault(call, []).append(times)
                    p50 = f"{np.median(times) * 1e3:.3f} ms"
                    say(f"round {round_no + 1} {endpoint.label}: {call} p50 {p50}")
            for endpoint in order:
                stats = in_flight(endpoint, model.rows, plan.load_s)
                load.setdefault(endpoint.label, []).append(stats)
                rate = f"{stats['requests_per_s']:,.0f} req/s"
                say(f"round {round_no + 1} {endpoint.label}: {IN_FLIGHT} in flight {rate}")
        big = []
        for endpoint in endpoints:
            for shared in (False, True):
                row = {
                    "endpoint": endpoint.label,
                    "shared_memory": shared,
                    **big_requests(endpoint, model, plan.big_calls, shared),
                }
                big.append(row)
                how = " shared memory" if shared else ""
                say(f"{BIG_ROWS} rows {endpoint.label}{how}: {row['rows_per_s']:,.0f} rows/s")
    single = {
        label: {
            **latency_summary(np.concatenate(calls["infer"])),
            "round_p50_ms": [float(np.median(r)) * 1e3 for r in calls["infer"]],
            "live_p50_ms": float(np.median(np.concatenate(calls["live"]))) * 1e3,
        }
        for label, calls in latencies.items()
    }
    concurrent = {
        label: {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in rows),
            "p50_ms": statistics.median(r["p50_ms"] for r in rows),
            "p99_ms": statistics.median(r["p99_ms"] for r in rows),
            "round_requests_per_s": [r["requests_per_s"] for r in rows],
        }
        for label, rows in load.items()
    }
    return {"single_row": single, "in_flight": concurrent, "big": big, "targets": targets(single, big)}


def targets(single: dict[str, Any], big: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's three: gRPC p50 below Triton's gRPC, within 1.5x of the node's HTTP; shm faster."""
    p50 = {label: float(row["p50_ms"]) for label, row in single.items()}
    rate = {(row["endpoint"], row["shared_memory"]): row["rows_per_s"] for row in big}
    found = [
        {
            "target": "node gRPC 1-row p50 / node HTTP 1-row p50 <= 1.5",
            "ratio": p50["tritonflow grpc"] / p50["tritonflow http"],
            "met": bool(p50["tritonflow grpc"] <= 1.5 * p50["tritonflow http"]),
        },
        {
            "target": f"node {BIG_ROWS}-row rows/s, shared memory / binary HTTP > 1",
            "ratio": rate["tritonflow http", True] / rate["tritonflow http", False],
            "met": bool(rate["tritonflow http", True] > rate["tritonflow http", False]),
        },
    ]
    if "triton grpc" in p50:
        found.insert(
            0,
            {
                "target": "node gRPC 1-row p50 / Triton gRPC 1-row p50 < 1",
                "ratio": p50["tritonflow grpc"] / p50["triton grpc"],
                "met": bool(p50["tritonflow grpc"] < p50["triton grpc"]),
            },
        )
    return found


def markdown(report: dict[str, Any]) -> str:
    result = report["result"]
    lines = [
        "# The wire: gRPC, HTTP, shared memory",
        "",
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores; client in the same machine. "
        f"Model: the starter pack's forest ({MODEL}). Skipped: {report['skipped'] or 'nothing'}.",
        "",
        "| endpoint | 1 row p50 ms | p99 ms | rounds' p50 ms | ServerLive p50 ms | 64 in flight req/s "
        "| p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in result["single_row"].items():
        load = result["in_flight"][label]
        rounds = ", ".join(f"{v:.3f}" for v in row["round_p50_ms"])
        lines.append(
            f"| {label} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {rounds} | {row['live_p50_ms']:.3f} | "
            f"{load['requests_per_s']:,.0f} | {load['p50_ms']:.2f} | {load['p99_ms']:.2f} |"
        )
    lines += [
        "",
        f"| endpoint, {BIG_ROWS:,} rows | tensors | median ms | rows/s | agreement |",
        "|---|---|---|---|---|",
    ]
    for row in result["big"]:
        how = (
            "shared memory"
            if row["shared_memory"]
            else ("binary" if "http" in row["endpoint"] else "raw contents")
        )
        figures = f"{row['median_ms']:.1f} | {row['rows_per_s']:,.0f} | {row['agreement']:.4f}"
        lines.append(f"| {row['endpoint']} | {how} | {figures} |")
    lines += ["", "| target | ratio | met |", "|---|---|---|"]
    lines += [
        f"| {t['target']} | {t['ratio']:.2f} | {'yes' if t['met'] else 'NO'} |" for t in result["targets"]
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 round, few requests")
    parser.add_argument("--no-triton", action="store_true", help="leave real Triton out")
    parser.add_argument(
        "--triton-env", type=Path, metavar="PATH", help="a virtualenv holding nvidia-pytriton and tritonflow"
    )
    parser.add_argument(
        "--build-triton-env", action="store_true", help="build the cached Triton environment if missing"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tritonflow-wire-") as tmp:
        workdir = Path(tmp)
        # NOTE: serving.py's own choice of Triton (or why not), with the same flags
        result = run(plan, triton_or_skip(args, workdir, skipped), workdir)
    report = {"quick": args.quick, "plan": plan.__dict__, "skipped": skipped, "result": result}
    path = write_result("wire", report, args.out)
    text = markdown({**report, "machine": machine()})
    (args.out / "wire.md").write_text(text)
    print(text)
    print(f"wrote {path}, {args.out / 'wire.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
