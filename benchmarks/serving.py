"""Serving side by side, in one run: tritonflow's node vs the starter pack's FastAPI server vs real Triton.

    python benchmarks/serving.py                    # every measure, ~9 minutes on 2 cores
    python benchmarks/serving.py --quick            # a smoke check in under a minute
    python benchmarks/serving.py --no-triton --no-load-generator   # fewer contenders / measures
    python benchmarks/serving.py --build-triton-env # build Triton's environment first if missing

The reference users know (Outerbounds' triton-metaflow-starter-pack, 30 features, random forest
of 50 trees of depth 2, sequential client): Triton with FIL 0.44 ms per single-row request,
FastAPI + uvicorn 5.15 ms. Here every contender serves the same model files and the same rows
on this machine, measured by the same client:

- tritonflow's node (`python -m tritonflow serve`), once per forest engine (nvForest on CPU,
  Treelite GTIL) and once on the ONNX export of the same model (ONNX Runtime backend);
- the starter pack's FastAPI server, rebuilt in benchmarks/fastapi_baseline.py;
- real Triton 24.10 with our Python-based `fil` backend, when its environment exists
  (tests/triton/triton_env.py's, cached under ~/.cache/tritonflow/triton-env/; this checkout's
  tritonflow is reinstalled there first, so Triton runs the `fil` backend under test).

Measures, with contenders alternating within each round so drift shows: single-row latency from
one keep-alive http.client loop (KServe v2 JSON POST, or the baseline's GET /predict?data=);
throughput and p99 at 8 and 64 connections with wrk; rows/s for 1,000- and 65,536-row requests
(binary tensors through tritonclient); peak RSS; dynamic batching on vs off at 64 connections.
Writes serving.md, serving.json and serving_latency.png under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import http.client
import importlib.metadata
import importlib.util
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from machine import RESULTS, machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Processes are started and stopped with the tests' own helpers: tests/servers.py, tests/triton/triton_env.py.
sys.path[1:1] = [str(ROOT / "tests"), str(ROOT / "tests" / "triton")]
import triton_env  # noqa: E402
from servers import free_port, stop_process  # noqa: E402

N_FEATURES = 30
BATCH_ROWS = (1_000, 65_536)
GPU_BATCH_ROWS = (1, 16, 256, 1_024, 16_384, 65_536)  # as benchmarks/engines.py
CONNECTIONS = (8, 64)
REFERENCE_MS = {"Triton FIL (starter pack)": 0.44, "FastAPI + uvicorn (starter pack)": 5.15}
FASTAPI, TRITON = "fastapi (starter pack)", "triton (python fil)"  # contender labels
HOW = (
    "tritonflow: `python -m tritonflow serve REPO --engine E --model-control-mode none`, every model "
    "deployed by `tritonflow.plugin.publish.deploy` (max_batch_size 65536, max_queue_delay_us 100).",
    "batching off: the same checkpoint deployed as `<name>-nobatch`, its config.pbtxt then edited to drop "
    "`dynamic_batching` (@deploy always writes it).",
    "fastapi: benchmarks/fastapi_baseline.py on uvicorn's defaults (access log on), the model pickled as the "
    "starter pack does (RandomForest n_jobs=None), `GET /predict?data=<json>` per row.",
    "triton: Triton 24.10 (nvidia-pytriton) with `tritonflow triton-backends`: its `fil` backend is "
    "tritonflow's Python adapter on the python backend (engine in the tables), not NVIDIA's native FIL.",
)


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


def ensure_wrk() -> str | None:
    """wrk's path, installed from Debian's packages if missing; None (and why, printed) if it cannot be."""
    if not shutil.which("wrk") and shutil.which("apt-get") and os.geteuid() == 0:
        print("installing wrk: apt-get install -y wrk", flush=True)
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(command, capture_output=True, check=False)
    found = shutil.which("wrk")
    if found is None:
        print(
            "load tests skipped: wrk is not installed and could not be (run `sudo apt-get install -y wrk`, "
            "or pass --no-load-generator)",
            flush=True,
        )
    return found


# -- models and repositories -----------------------------------------------------------------------
@dataclass(frozen=True)
class BenchModel:
    name: str
    title: str
    estimator: Any
    rows: np.ndarray  # request rows, float32, never seen in training


def train(name: str, quick: bool) -> BenchModel:
    """The starter pack's model (random data, 50 trees of depth 2), or a production-size XGBoost."""
    rng = np.random.default_rng(0)
    if name == "starter-rf":
        from sklearn.ensemble import RandomForestClassifier

        n = 20_000 if quick else 100_000  # the starter pack trains on 100,000 random rows, random labels
        X, y = rng.random((n, N_FEATURES)), rng.integers(0, 2, n)
        rf = RandomForestClassifier(n_estimators=50, max_depth=2, random_state=0, n_jobs=-1).fit(X, y)
        # NOTE: n_jobs as the starter pack pickles it; -1 makes each 1-row predict ~10 ms of joblib hand-offs
        rf.set_params(n_jobs=None)
        rows = rng.random((max(BATCH_ROWS), N_FEATURES)).astype(np.float32)
        return BenchModel(name, "RandomForest, 50 trees, depth 2 (the starter pack's)", rf, rows)
    import xgboost
    from sklearn.datasets import make_classification

    n = 20_000
    X, y = make_classification(n + max(BATCH_ROWS), N_FEATURES, n_informative=12, random_state=0)
    booster = xgboost.XGBClassifier(n_estimators=500, max_depth=8, random_state=0).fit(X[:n], y[:n])
    return BenchModel(name, "XGBoost, 500 rounds, depth 8", booster, X[n:].astype(np.float32))


def publish(model: BenchModel, root: Path, gpu: bool) -> dict[str, Path]:
    """variant -> repository, each deployed by tritonflow's own code and holding one model.

    fil: the Treelite checkpoint (tritonflow's forest engines and Triton); onnx: the ONNX export,
    under `<name>-onnx`; nobatch: the checkpoint again, under `<name>-nobatch`, its config
    edited to drop `dynamic_batching` (@deploy always writes it); gpu: KIND_GPU, for `--gpu`.
    Plus model.pkl, the pickle the FastAPI baseline loads.
    """
    from tritonflow.plugin.options import parse_options
    from tritonflow.plugin.publish import Provenance, deploy

    variants = {
        "fil": ("treelite", "cpu", ""),
        "onnx": ("onnx", "cpu", "-onnx"),
        "nobatch": ("treelite", "cpu", "-nobatch"),
    }
    if gpu:
        variants["gpu"] = ("treelite", "gpu", "-gpu")
    repositories = {}
    for variant, (fmt, kind, suffix) in variants.items():
        repository = root / variant
        attributes = {
            "name": model.name + suffix,
            "repository": str(repository),
            "format": fmt,
            "instance_kind": kind,
            "max_batch_size": max(BATCH_ROWS),
            "max_queue_delay_us": 100,
        }
        options = parse_options(attributes, "BenchFlow", is_join=False)
        metaflow = {"flow": "BenchFlow", "run_id": "1", "task": f"BenchFlow/1/train/{variant}"}
        deploy(model.estimator, options, sample=model.rows[:1_000], provenance=Provenance(metaflow=metaflow))
        repositories[variant] = repository
    _drop_dynamic_batching(repositories["nobatch"] / f"{model.name}-nobatch" / "config.pbtxt")
    (root / "model.pkl").write_bytes(pickle.dumps(model.estimator))
    return repositories


def _drop_dynamic_batching(path: Path) -> None:
    from tritonflow.serving import model_config

    config = model_config.parse_config(path.read_text())
    config.ClearField("dynamic_batching")
    text = model_config.render(config)
    model_config.check_config(text, where=str(path))
    path.write_text(text)


# -- servers ------------------------------------------------------------------------------------------
@dataclass
class Contender:
    """One server process under test; `protocol` decides the request form ("kserve" or "fastapi")."""

    label: str
    protocol: str
    model: str
    command: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    measures: frozenset[str] = frozenset({"sequential", "load", "batch"})
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    rss_ready_mb: float = 0.0
    engine: str = ""

    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


def tritonflow_contender(
    label: str, repository: Path, model: str, engine: str, *, workdir: Path
) -> Contender:
    command = [sys.executable, "-m", "tritonflow", "serve", str(repository), "--port", "{port}"]
    command += ["--engine", engine, "--model-control-mode", "none"]
    command += ["--grpc-port", "0", "--metrics-port", "0"]  # NOTE: HTTP only: nodes run side by side here
    return Contender(label, "kserve", model, command, workdir / f"{label.replace(' ', '_')}.log")


def fastapi_contender(model: BenchModel, model_pickle: Path, workdir: Path) -> Contender:
    # NOTE: uvicorn's defaults, as the starter pack runs it: access log on, one worker, auto loop/http.
    command = [sys.executable, "-m", "uvicorn", "fastapi_baseline:app", "--app-dir", str(HERE)]
    command += ["--port", "{port}"]
    env = {"BASELINE_MODEL": str(model_pickle)}
    contender = Contender(FASTAPI, "fastapi", "", command, workdir / "fastapi.log", env)
    contender.engine = f"{type(model.estimator).__name__}.predict (pickle)"
    return contender


def start(contender: Contender) -> None:
    command = [part.replace("{port}", str(contender.port)) for part in contender.command]
    with contender.log.open("wb") as out:
        contender.process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **contender.env},
            cwd=contender.log.parent,  # not the checkout: its tritonflow/ folder would shadow installs
        )


def wait_ready(contender: Contender, timeout: float = 120.0) -> None:
    """Until the server answers its health URL; the RSS at that moment is its footprint at rest."""
    path = "/v2/health/ready" if contender.protocol == "kserve" else "/openapi.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert contender.process is not None
        if contender.process.poll() is not None:
            raise RuntimeError(
                f"{contender.label} exited:\n{contender.log.read_text(errors='replace')[-3000:]}"
            )
        connection = contender.connect(timeout=2)
        try:
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                contender.rss_ready_mb = rss_mb(contender.process.pid, "VmRSS")
                return
        except OSError:  # not listening yet
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(
        f"{contender.label} not ready in {timeout} s:\n{contender.log.read_text(errors='replace')}"
    )


def stop(contender: Contender) -> None:
    if contender.process is not None:
        stop_process(contender.process, timeout=20)


@contextmanager
def running(contenders: list[Contender]) -> Iterator[list[Contender]]:
    """Every contender started at once (startups overlap), stopped whatever happens."""
    with ExitStack() as stack:
        for contender in contenders:
            start(contender)
            stack.callback(stop, contender)
        for contender in contenders:
            wait_ready(contender)
        yield contenders


def rss_mb(pid: int, field_name: str = "VmHWM") -> float:
    """A process tree's memory from /proc: Triton's python backend runs each model in a child process.

    VmHWM is the kernel's peak resident set of each process; the tree's figure is their sum.
    """
    import psutil

    root = psutil.Process(pid)
    total_kb = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            continue
        line = next(ln for ln in status.splitlines() if ln.startswith(field_name + ":"))
        total_kb += int(line.split()[1])
    return total_kb / 1024


def maps_nvforest(pid: int) -> bool:
    """Whether the process mapped nvForest's library: the treelite engine must not import it."""
    try:
        return "nvforest" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def model_engine(contender: Contender) -> str:
    """The engine the node says it runs (GET /v2/models/<name>); Triton's from its log line."""
    if contender.engine:
        return contender.engine
    if contender.label == TRITON:
        for line in contender.log.read_text(errors="replace").splitlines():
            if "tritonflow fil:" in line and "runs on" in line:
                return line.split("runs on ")[1].split(" ")[0] + " (python backend)"
        return "python backend"
    connection = contender.connect(timeout=10)
    try:
        connection.request("GET", f"/v2/models/{contender.model}")
        return str(json.loads(connection.getresponse().read()).get("engine", ""))
    finally:
        connection.close()


# -- requests -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


def single_row(contender: Contender, row: np.ndarray) -> Request:
    """The contender's native single-row request: KServe v2 JSON, or the starter pack's GET."""
    values = row.tolist()
    if contender.protocol == "fastapi":
        return Request("GET", "/predict?data=" + quote(json.dumps(values)), None, {})
    tensor = {"name": "input__0", "shape": [1, len(values)], "datatype": "FP32", "data": values}
    body = json.dumps({"inputs": [tensor]}).encode()
    return Request("POST", f"/v2/models/{contender.model}/infer", body, {"Content-Type": "application/json"})


def sequential(contender: Contender, requests: list[Request], count: int, warmup: int = 50) -> np.ndarray:
    """Seconds per request, one keep-alive connection, one request at a time: the same loop for all."""
    connection = contender.connect(timeout=60)
    times = np.empty(count)
    for i in range(-warmup, count):
        request = requests[i % len(requests)]
        started = time.perf_counter()
        connection.request(request.method, request.path, request.body, request.headers)
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{contender.label}: HTTP {response.status}: {body[:300]!r}")
        if i >= 0:
            times[i] = elapsed
    connection.close()
    return times


def latency_summary(seconds: np.ndarray) -> dict[str, float]:
    ms = seconds * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(ms.mean()), "n": int(ms.size)}


# -- load: wrk -----------------------------------------------------------------------------------------
WRK_SCRIPT = """\
wrk.method = "{method}"
wrk.path = [==[{path}]==]
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk_script(request: Request, path: Path) -> Path:
    """wrk sends GETs without a script; a POST body needs one (Lua long brackets keep the JSON as is)."""
    body = f"[==[{request.body.decode()}]==]" if request.body else "nil"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in request.headers.items())
    path.write_text(WRK_SCRIPT.format(method=request.method, path=request.path, body=body, headers=headers))
    return path


def wrk(
    wrk_path: str, contender: Contender, script: Path, connections: int, seconds: int
) -> dict[str, float]:
    """Requests/s and latency at a fixed number of connections, after an unrecorded warm-up run."""
    base = [wrk_path, f"-t{min(2, connections)}", f"-c{connections}", "--timeout", "10s", "-s", str(script)]
    url = f"http://{contender.url()}"
    subprocess.run([*base, "-d1s", url], capture_output=True, check=True)
    out = subprocess.run([*base, f"-d{seconds}s", url], capture_output=True, text=True, check=True).stdout
    stats = json.loads(next(ln for ln in out.splitlines() if ln.startswith("WRK_JSON "))[len("WRK_JSON ") :])
    if stats["status_errors"]:  # a wrong URL or body answers fast: its req/s would mean nothing
        raise RuntimeError(f"{contender.label}: {stats['status_errors']} non-2xx answers under wrk")
    return {
        "requests_per_s": stats["requests"] / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1e3,
        "p99_ms": stats["p99_us"] / 1e3,
        "mean_ms": stats["mean_us"] / 1e3,
        "errors": stats["socket_errors"],
        "requests": stats["requests"],
    }


# -- batch scoring -------------------------------------------------------------------------------------
def batch_call(contender: Contender, rows: np.ndarray) -> Callable[[], np.ndarray]:
    """A function sending one request of `rows` and returning the predicted classes.

    KServe contenders get binary tensors through tritonclient.http; the baseline gets the
    labelled JSON POST variant (its GET cannot carry thousands of rows), body built once.
    """
    if contender.protocol == "fastapi":
        body = json.dumps(rows.tolist()).encode()
        connection = contender.connect(timeout=600)

        def post() -> np.ndarray:
            connection.request("POST", "/predict_batch", body, {"Content-Type": "application/json"})
            return np.asarray(json.loads(connection.getresponse().read())["predictions"])

        return post
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(contender.url(), connection_timeout=600, network_timeout=600)
    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("output__0", binary_data=True)]

    def infer() -> np.ndarray:
        return client.infer(contender.model, [tensor], outputs=wanted).as_numpy("output__0").argmax(axis=1)

    return infer


def batch_scoring(contender: Contender, model: BenchModel, n_rows: int, budget_s: float) -> dict[str, Any]:
    """Rows/s of `n_rows`-row requests (median call), and agreement with the native model's classes."""
    rows = model.rows[:n_rows]
    call = batch_call(contender, rows)
    agreement = float(np.mean(call() == model.estimator.predict(rows)))
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 1_000):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "rows": n_rows,
        "median_ms": median * 1e3,
        "rows_per_s": n_rows / median,
        "calls": len(times),
        "agreement": agreement,
    }


# -- real Triton ---------------------------------------------------------------------------------------
def triton_launch(explicit: Path | None, build: bool, workdir: Path) -> triton_env.Backends | str:
    """How to start Triton with our `fil` backend (the Triton tests' environment); or why it cannot be."""
    if explicit is not None:
        python = explicit / "bin" / "python"
        if not python.is_file():
            return f"no Python at {python}: --triton-env names a virtualenv with nvidia-pytriton, tritonflow"
    elif build or triton_env.is_built(triton_env.env_dir()):
        reason = triton_env.unsupported()
        if reason:
            return reason
        # NOTE: with this checkout's tritonflow over it: Triton runs the `fil` backend under test
        python = triton_env.prepare(lambda message: print(message, flush=True), workdir / "triton-env")
    else:
        return (
            f"no Triton environment at {triton_env.env_dir()} yet "
            "(build it with --build-triton-env, or pass --triton-env PATH)"
        )
    try:
        return triton_env.write_backends(python, workdir / "triton-backends")
    except RuntimeError as exc:
        return str(exc)


def triton_contender(launch: triton_env.Backends, repository: Path, model: str, workdir: Path) -> Contender:
    command = launch.command(repository, "{port}", free_port(), free_port())
    contender = Contender(TRITON, "kserve", model, command, workdir / "triton.log")
    contender.env = launch.environ()
    return contender


# -- one model, every contender ------------------------------------------------------------------------
@dataclass
class Options:
    plan: Plan
    wrk: str | None
    triton: triton_env.Backends | None
    gpu: bool
    workdir: Path


def contenders_for(model: BenchModel, repositories: dict[str, Path], options: Options) -> list[Contender]:
    """Every contender on this model: the node per engine, ONNX, batching off, FastAPI, Triton, GPU."""
    from tritonflow.serving.backends.forest import nvforest_or_reason

    folder = options.workdir / model.name
    engines = ["treelite"] if isinstance(nvforest_or_reason(), str) else ["nvforest", "treelite"]
    node = functools.partial(tritonflow_contender, workdir=folder)
    found = [node(f"tritonflow {e}", repositories["fil"], model.name, e) for e in engines]
    found.append(node("tritonflow onnxruntime", repositories["onnx"], f"{model.name}-onnx", "auto"))
    off = node(
        f"tritonflow {engines[0]} batching off", repositories["nobatch"], f"{model.name}-nobatch", engines[0]
    )
    off.measures = frozenset({"batching"})
    found += [off, fastapi_contender(model, repositories["fil"].parent / "model.pkl", folder)]
    if options.triton is not None:
        found.append(triton_contender(options.triton, repositories["fil"], model.name, folder))
    if "gpu" in repositories:
        gpu = node("tritonflow nvforest gpu", repositories["gpu"], f"{model.name}-gpu", "nvforest")
        gpu.measures = frozenset({"batch"})
        found.append(gpu)
    return found


def rotated(items: list[Contender], by: int) -> list[Contender]:
    """Round r starts with contender r: no contender always runs first (or right after the slowest)."""
    by %= len(items) or 1
    return items[by:] + items[:by]


def say(*parts: object) -> None:
    print(" ", *parts, flush=True)


def bench_model(model: BenchModel, options: Options) -> dict[str, Any]:
    """Every measure on one model, all its servers running at once (idle while others are measured)."""
    plan = options.plan
    folder = options.workdir / model.name
    folder.mkdir(parents=True)
    contenders = contenders_for(model, publish(model, folder / "repositories", options.gpu), options)
    timed = [c for c in contenders if "sequential" in c.measures]
    # NOTE: built once, before timing: every round sends each contender the same 1,000 rows
    requests = {c.label: [single_row(c, row) for row in model.rows[:1_000]] for c in timed}
    latencies: dict[str, list[np.ndarray]] = {}
    load: list[dict[str, Any]] = []
    with running(contenders):
        for contender in contenders:
            contender.engine = model_engine(contender)
        for round_no in range(plan.rounds):
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
    rows = []
    for n_rows in sizes:
        rows.append(
            {"contender": contender.label, **batch_scoring(contender, model, n_rows, options.plan.batch_s)}
        )
        say(f"{model.name} batch {n_rows} rows {contender.label}: {rows[-1]['rows_per_s']:,.0f} rows/s")
    return rows


def server_facts(contender: Contender) -> dict[str, Any]:
    assert contender.process is not None
    pid = contender.process.pid
    return {
        "contender": contender.label,
        "engine": contender.engine,
        "rss_ready_mb": contender.rss_ready_mb,
        "rss_peak_mb": rss_mb(pid),
        "nvforest_mapped": maps_nvforest(pid),
        "command": " ".join(contender.command),
    }


# -- targets ---------------------------------------------------------------------------------------------
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
    for node in (label for label in p50 if label.startswith("tritonflow")):
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
    return rows


# -- outputs -------------------------------------------------------------------------------------------
def versions(wrk_path: str | None) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in (
        "tritonflow",
        "fastapi",
        "uvicorn",
        "scikit-learn",
        "xgboost",
        "treelite",
        "onnxruntime",
        "nvforest-cu12",
        "numpy",
    ):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    if wrk_path:
        found["wrk"] = (
            subprocess.run([wrk_path, "-v"], capture_output=True, text=True).stdout.split(" [")[0].strip()
        )
    return found


def _table(header: str, rows: list[list[str]]) -> list[str]:
    """A markdown table: `header` is "name|>number|...", `>` right-aligning a column."""
    names = [h.lstrip(">") for h in header.split("|")]
    rules = ["---:" if h.startswith(">") else "---" for h in header.split("|")]
    return [
        "| " + " | ".join(names) + " |",
        "|" + "|".join(rules) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def markdown(report: dict[str, Any]) -> str:
    m, plan = report["machine"], report["plan"]
    loads = [" ".join(map(str, x)) for x in (m["load_average"], report["load_average_end"])]
    lines = [
        "# Serving benchmark: tritonflow vs the starter pack's FastAPI server vs Triton",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}.",
        f"Load average {loads[0]} at the start, {loads[1]} at the end; client, wrk, servers share the cores.",
        f"Run {report['created_at']}: `python benchmarks/serving.py{' --quick' if report['quick'] else ''}`.",
        "",
        "Reference (the starter pack, its machine, mean of a sequential client): "
        + ", ".join(f"{k} {v} ms" for k, v in REFERENCE_MS.items())
        + ". Every figure below comes from this one run: same machine, model files, rows and client.",
        "",
        *(f"- {line}" for line in HOW),
        *(f"- {what} skipped: {why}" for what, why in report["skipped"].items()),
        "",
    ]
    for result in report["models"]:
        lines += _model_tables(result, plan)
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    rows = [
        [
            r["model"],
            r["target"],
            r["contender"],
            "" if r["value"] is None else f"{r['value']:,.1f}",
            r["required"],
            verdict[r["met"]],
        ]
        for r in report["targets"]
    ]
    lines += [
        "## Targets",
        "",
        "The issue's targets are set on the starter pack's model; the XGBoost rows show how they "
        "carry over to a production-size forest.",
        "",
    ]
    lines += [*_table("model|target|contender|>measured|required|met", rows), ""]
    lines += ["![single-row latency at concurrency 1](serving_latency.png)", ""]
    return "\n".join(
        [*lines, "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    )


def _model_tables(result: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    engines = {row["contender"]: row["engine"] for row in result["servers"]}
    sequential = [
        [
            r["contender"],
            engines[r["contender"]],
            *(f"{r[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")),
            " / ".join(f"{x:.3f}" for x in r["round_p50_ms"]),
        ]
        for r in sorted(result["sequential"], key=lambda r: r["p50_ms"])
    ]
    load = [
        [
            label,
            str(connections),
            f"{r['requests_per_s']:,.0f}",
            " / ".join(f"{x:,.0f}" for x in r["round_requests_per_s"]),
            f"{r['p99_ms']:.2f}",
            str(r["errors"]),
        ]
        for (label, connections), r in sorted(
            load_medians(result).items(), key=lambda kv: (kv[0][1], -kv[1]["requests_per_s"])
        )
    ]
    batch = [
        [
            r["contender"] + (", POST JSON variant" if r["contender"] == FASTAPI else ""),
            f"{r['rows']:,}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['median_ms']:.2f}",
            f"{r['agreement']:.1%}",
        ]
        for r in result["batch"]
    ]
    memory = [
        [
            r["contender"],
            f"{r['rss_ready_mb']:.0f}",
            f"{r['rss_peak_mb']:.0f}",
            "yes" if r["nvforest_mapped"] else "no",
        ]
        for r in result["servers"]
    ]
    lines = [f"## {result['title']} (`{result['model']}`)", ""]
    lines += [
        f"Single-row latency at concurrency 1: one keep-alive http.client loop, {plan['requests']:,} "
        f"requests x {plan['rounds']} round(s) per contender, rounds alternating the contenders.",
        "",
    ]
    lines += [*_table("contender|engine|>p50 ms|>p90 ms|>p99 ms|>mean ms|>p50 per round", sequential), ""]
    if load:
        lines += [
            f"Throughput: wrk, 1-row requests, {plan['load_s']} s per run after 1 s of warm-up; "
            "median of the rounds.",
            "",
        ]
        lines += [*_table("contender|>connections|>req/s|>req/s per round|>p99 ms|>socket errors", load), ""]
    lines += [
        "Batch scoring: binary tensors through tritonclient.http; FastAPI: a JSON POST variant (the starter "
        "pack's GET cannot carry the rows). Agreement: predicted class vs the native model's `predict`.",
        "",
    ]
    lines += [*_table("contender|>rows per request|>rows/s|>median ms|>agrees", batch), ""]
    lines += [
        "Memory: the server's process tree (Triton: with its python backend stubs); VmRSS once ready, "
        "VmHWM (peak) at the end.",
        "",
    ]
    return [*lines, *_table("contender|>RSS ready MB|>peak RSS MB|nvForest mapped", memory), ""]


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Box plots of single-row latency at concurrency 1, one panel per model (whiskers: p1..p99).

    The starter model's panel also draws the starter pack's published means, for orientation only:
    they were measured on another machine with another client.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5.2), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        ordered = sorted(result["latencies_ms"].items(), key=lambda kv: float(np.median(kv[1])))
        ax.boxplot([v for _, v in ordered], whis=(1, 99), showfliers=False)
        labels = [k.replace(" (", "\n(").replace("tritonflow ", "tritonflow\n") for k, _ in ordered]
        ax.set_xticks(range(1, len(ordered) + 1), labels, fontsize=8)
        if result["model"] == "starter-rf":
            for (name, ms), style in zip(REFERENCE_MS.items(), (":", "--"), strict=True):
                ax.axhline(ms, color="grey", linestyle=style, linewidth=1, label=f"{name}: {ms} ms (mean)")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel("ms per single-row request")
        ax.set_title(result["title"], fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.suptitle(
        "Single-row latency, sequential keep-alive client (box p25-p75, whiskers p1-p99)", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    wrk_path = None if args.no_load_generator else ensure_wrk()
    if wrk_path is None:
        skipped["load tests (wrk)"] = "--no-load-generator" if args.no_load_generator else "no wrk"
    started = machine()
    with tempfile.TemporaryDirectory(prefix="tritonflow-serving-") as tmp:
        workdir = Path(tmp)
        triton = triton_or_skip(args, workdir, skipped)
        gpu = args.gpu and _gpu_or_skip(skipped)
        options = Options(plan, wrk_path, triton, gpu, workdir)
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
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(wrk_path),
        "reference_ms": REFERENCE_MS,
        "skipped": skipped,
        "models": results,
        "targets": [row for result in results for row in targets(result)],
    }
    write_outputs(report, args.out)
    return 0


def triton_or_skip(
    args: argparse.Namespace, workdir: Path, skipped: dict[str, str]
) -> triton_env.Backends | None:
    if args.no_triton:
        skipped["Triton"] = "--no-triton"
        return None
    found = triton_launch(args.triton_env, args.build_triton_env, workdir)
    if isinstance(found, str):
        skipped["Triton"] = found
        print(f"Triton skipped: {found}", flush=True)
        return None
    return found


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


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot(report["models"], out / "serving_latency.png")
    for result in report["models"]:
        result.pop("latencies_ms")  # raw samples: the plot has them; the JSON keeps the percentiles
    (out / "serving.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    text = markdown(report)
    (out / "serving.md").write_text(text)
    print(text)
    print(f"wrote {out / 'serving.md'}, {out / 'serving.json'}, {out / 'serving_latency.png'}")


if __name__ == "__main__":
    raise SystemExit(main())
