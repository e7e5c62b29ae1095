"""Serving side by side, in one run: tritonflow's node vs the starter pack's FastAPI server vs real Triton.

    python benchmarks/serving.py                    # every measure, ~11 minutes on 2 cores
    python benchmarks/serving.py --quick            # a smoke check, about a minute
    python benchmarks/serving.py --no-triton --no-load-generator   # fewer contenders / measures
    python benchmarks/serving.py --build-triton-env # build Triton's environment first if missing

The reference users know (Outerbounds' triton-metaflow-starter-pack, 30 features, random forest
of 50 trees of depth 2, sequential client): Triton with FIL 0.44 ms per single-row request,
FastAPI + uvicorn 5.15 ms. Here every contender serves the same model files and the same rows
on this machine, measured by the same client:

- tritonflow's node (`python -m tritonflow serve`), once per forest engine (nvForest on CPU,
  Treelite GTIL) and once on the ONNX export of the same model (ONNX Runtime backend); the first
  engine again with `--workers 2` and `--workers auto` (one per CPU; not run twice where that is 2);
- the starter pack's FastAPI server, rebuilt in benchmarks/fastapi_baseline.py;
- the peers users would pick instead (`--peers`, all by default, none with --quick): MLServer,
  KServe's model server, BentoML and `mlflow models serve`, each in its own environment made by
  benchmarks/peers/ and checked against predict_proba before timing (benchmarks/peers/__init__.py);
- real Triton 24.10 with our Python-based `fil` backend, when its environment exists
  (tests/triton/triton_env.py's, cached under ~/.cache/tritonflow/triton-env/; this checkout's
  tritonflow is reinstalled there first, so Triton runs the `fil` backend under test).

Measures, with contenders alternating within each round so drift shows: single-row latency from
one keep-alive http.client loop (KServe v2 JSON POST, or the baseline's GET /predict?data=);
throughput and p99 at 8 and 64 connections with wrk; rows/s for 1,000- and 65,536-row requests
(binary tensors through tritonclient); peak RSS; dynamic batching on vs off at 64 connections.
The parts: serving_models.py (train, deploy), serving_contenders.py (the server processes),
serving_client.py (the measures), serving_targets.py and serving_report.py (the outputs).
Writes serving.md, serving.json and serving_latency.png under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import RESULTS, load_average, machine, say
from peers import environment as peer_environment
from peers import parse as parse_peers
from peers.contenders import environments, left_out, peer_contenders
from peers.forms import v2_json
from serving_client import batch_scoring, ensure_wrk, latency_summary, sequential, single_row, wrk, wrk_script
from serving_contenders import (
    Contender,
    contenders_for,
    model_engine,
    node_engines,
    rotated,
    running,
    server_facts,
    triton_env,
    triton_or_skip,
    workers_compared,
)
from serving_models import BATCH_ROWS, BenchModel, publish, train
from serving_report import REFERENCE_MS, versions, write_outputs
from serving_targets import targets

ROOT = Path(__file__).resolve().parents[1]
GPU_BATCH_ROWS = (1, 16, 256, 1_024, 16_384, 65_536)  # as benchmarks/engines.py
CONNECTIONS = (8, 64)


@dataclass(frozen=True)
class Plan:
    """How much of everything to do: `--quick` shrinks it to a smoke check."""

    models: tuple[str, ...]
    rounds: int
    requests: int  # sequential requests per contender per round
    load_s: int  # wrk measuring seconds per run (whole: wrk takes no fractions), after a 1 s warm-up
    batch_rows: tuple[int, ...]
    batch_s: float  # time budget per batch size (3 calls at least)


FULL = Plan(
    ("starter-rf", "xgb-500x8"), rounds=3, requests=2_000, load_s=5, batch_rows=BATCH_ROWS, batch_s=2.0
)
QUICK = Plan(("starter-rf",), rounds=1, requests=300, load_s=2, batch_rows=BATCH_ROWS[:1], batch_s=0.3)


# -- set-up -----------------------------------------------------------------------------------------
def ensure_bench_extra() -> None:
    """Install the `bench` extra's packages (fastapi, matplotlib, psutil, ...) when any is missing."""
    if all(importlib.util.find_spec(m) for m in ("fastapi", "matplotlib", "psutil")):
        return
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    print(f"installing the bench extra: {' '.join(wanted)}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)


@dataclass
class Options:
    plan: Plan
    wrk: str | None
    triton: triton_env.Backends | None
    gpu: bool
    workdir: Path
    peers: dict[str, Path]  # peer -> the Python of its environment (benchmarks/peers/)
    skipped: dict[str, str]


def bench_model(model: BenchModel, options: Options) -> dict[str, Any]:
    """Every measure on one model, all its servers running at once (idle while others are measured)."""
    plan = options.plan
    folder = options.workdir / model.name
    folder.mkdir(parents=True)
    repositories = publish(model, folder / "repositories", options.gpu)
    contenders = contenders_for(model, repositories, folder, options.triton)
    pickled = repositories["fil"].parent / "model.pkl"
    contenders += peer_contenders(options.peers, model, pickled, folder, options.skipped)
    latencies: dict[str, list[np.ndarray]] = {}
    load: list[dict[str, Any]] = []
    round_loads: list[list[float]] = []
    with running(contenders):
        dropped = left_out(contenders, model)  # NOTE: a peer that did not start or answers wrong is not timed
        contenders = [c for c in contenders if c not in dropped]
        timed = [c for c in contenders if "sequential" in c.measures]
        # NOTE: built once, before timing: every round sends each contender the same 1,000 rows
        requests = {c.label: [single_row(c, row) for row in model.rows[:1_000]] for c in timed}
        for contender in contenders:
            contender.engine = model_engine(contender)
        for round_no in range(plan.rounds):
            round_loads.append(load_average())
            say(f"{model.name} round {round_no + 1}: load average {' '.join(map(str, round_loads[-1]))}")
            for contender in rotated(timed, round_no):
                times = sequential(contender, requests[contender.label], plan.requests)
                latencies.setdefault(contender.label, []).append(times)
                p50 = np.median(times) * 1e3
                say(f"{model.name} round {round_no + 1} {contender.label}: p50 {p50:.3f} ms")
            if options.wrk:
                load += load_round(model, contenders, options.wrk, plan.load_s, round_no)
        batch = [row for c in contenders if "batch" in c.measures for row in batch_rows(c, model, options)]
        servers = [server_facts(c) for c in contenders]
    return {
        "model": model.name,
        "title": model.title,
        "servers": servers,
        "peer_problems": {c.label: c.problem for c in dropped},
        "workers": workers_compared(node_engines()[0]),
        "round_load_average": round_loads,
        "sequential": [
            {
                "contender": k,
                **latency_summary(np.concatenate(v)),
                "round_p50_ms": [np.median(r) * 1e3 for r in v],
            }
            for k, v in latencies.items()
        ],
        "load": load,
        "batch": batch,
        "latencies_ms": {k: np.concatenate(v) * 1e3 for k, v in latencies.items()},  # for the plot only
    }


def load_round(
    model: BenchModel, contenders: list[Contender], wrk_path: str, seconds: int, round_no: int
) -> list[dict[str, Any]]:
    """One wrk run per contender and connection count; batching off joins at 64 connections only."""
    rows = []
    for connections in CONNECTIONS:
        for contender in rotated(contenders, round_no):
            if not ("load" in contender.measures or ("batching" in contender.measures and connections == 64)):
                continue
            script = wrk_script(single_row(contender, model.rows[0]), contender.log.with_suffix(".lua"))
            stats = wrk(wrk_path, contender, script, connections, seconds)
            rows.append(
                {"contender": contender.label, "connections": connections, "round": round_no + 1, **stats}
            )
            rate = f"{stats['requests_per_s']:,.0f} req/s, p99 {stats['p99_ms']:.2f} ms"
            say(f"{model.name} round {round_no + 1} c{connections} {contender.label}: {rate}")
    return rows


def batch_rows(contender: Contender, model: BenchModel, options: Options) -> list[dict[str, Any]]:
    """Batch scoring at each size; with --gpu, nvForest (GPU and CPU) over 1..65,536 rows."""
    sizes = GPU_BATCH_ROWS if options.gpu and "nvforest" in contender.label else options.plan.batch_rows
    forms = {contender.label: None}
    if "batch-json" in contender.measures:  # NOTE: the same node, sent v2 JSON bodies as well
        forms[f"{contender.label} (JSON)"] = v2_json(contender.model)
    rows = []
    for n_rows in sizes:
        for label, form in forms.items():
            scored = batch_scoring(contender, model, n_rows, options.plan.batch_s, form)
            rows.append({"contender": label, **scored})
            say(f"{model.name} batch {n_rows} rows {label}: {scored['rows_per_s']:,.0f} rows/s")
    return rows


# -- main ------------------------------------------------------------------------------------------------
def engine_level_gpu(out: Path) -> None:
    """`--gpu`: benchmarks/engines.py's engine-level rows/s, GPU beside CPU, without duplicating it."""
    import engines  # NOTE: a sibling module: benchmarks/ is on sys.path, as for `machine` above

    engines.main(["--out", str(out / "serving_gpu_engines.json")])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke check, under a minute: starter model, 1 round"
    )
    parser.add_argument("--rounds", type=int, help="rounds of alternating contenders (default 3; --quick 1)")
    parser.add_argument("--no-triton", action="store_true", help="leave real Triton out")
    parser.add_argument(
        "--triton-env", type=Path, metavar="PATH", help="a virtualenv holding nvidia-pytriton and tritonflow"
    )
    parser.add_argument(
        "--build-triton-env",
        action="store_true",
        help="build the cached Triton environment (tests/triton/triton_env.py) if missing",
    )
    parser.add_argument(
        "--peers",
        metavar="all|none|NAME,...",
        help="the servers users would pick instead, each in its own environment (benchmarks/peers/): "
        "all (the default), none (--quick's default), or some of mlserver,kserve,bentoml,mlflow",
    )
    parser.add_argument("--no-load-generator", action="store_true", help="skip the wrk throughput runs")
    parser.add_argument(
        "--gpu", action="store_true", help="batch scoring with nvForest on GPU beside CPU, 1..65,536 rows"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_bench_extra()
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    skipped: dict[str, str] = {}
    peers = parse_peers(args.peers or ("none" if args.quick else "all"))
    wrk_path = None if args.no_load_generator else ensure_wrk()
    if wrk_path is None:
        skipped["load tests (wrk)"] = "--no-load-generator" if args.no_load_generator else "no wrk"
    started = machine()
    with tempfile.TemporaryDirectory(prefix="tritonflow-serving-") as tmp:
        workdir = Path(tmp)
        triton = triton_or_skip(args, workdir, skipped)
        gpu = args.gpu and _gpu_or_skip(skipped)
        options = Options(plan, wrk_path, triton, gpu, workdir, environments(peers, skipped), skipped)
        results = []
        for name in plan.models:
            print(f"{name}: training and deploying", flush=True)
            results.append(bench_model(train(name, args.quick), options))
    if gpu:
        engine_level_gpu(args.out)
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "plan": dataclasses.asdict(plan),
        "machine": started,
        "load_average_end": load_average(),
        "workers_auto": os.cpu_count(),
        "versions": versions(wrk_path),
        "reference_ms": REFERENCE_MS,
        "skipped": skipped,
        "peer_environments": {name: peer_environment.facts(name) for name in peers},
        "models": results,
        "targets": [row for result in results for row in targets(result)],
    }
    write_outputs(report, args.out)
    return 0


def _gpu_or_skip(skipped: dict[str, str]) -> bool:
    from tritonflow.serving.backends.forest import cuda_device_count, nvforest_or_reason

    reason = nvforest_or_reason()
    if isinstance(reason, str):
        skipped["GPU"] = f"nvForest cannot be imported ({reason})"
    elif cuda_device_count() == 0:
        skipped["GPU"] = "no CUDA GPU is visible"
    else:
        return True
    print(f"GPU skipped: {skipped['GPU']}", flush=True)
    return False


if __name__ == "__main__":
    raise SystemExit(main())
