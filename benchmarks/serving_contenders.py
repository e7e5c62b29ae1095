"""The server processes benchmarks/serving.py measures: how each is started, waited on, stopped, weighed.

Every contender serves the same model files: tritonflow's node (once per engine, on the ONNX export,
with batching off, and with `--workers N`), the starter pack's FastAPI server, and real Triton.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers.forms import Form
from serving_models import BenchModel

HERE = Path(__file__).resolve().parent
# Processes are started and stopped with the tests' own helpers: tests/servers.py, tests/triton/triton_env.py.
sys.path[1:1] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "triton")]
import triton_env  # noqa: E402
from servers import free_port, stop_process  # noqa: E402

FASTAPI, TRITON = "fastapi (starter pack)", "triton (python fil)"  # contender labels
WORKERS = ("2", "auto")  # `--workers` values run beside the single-process node


@dataclass
class Contender:
    """One server process under test; `protocol` decides the request form ("kserve", "fastapi", or
    "peer": the peer's own `form`, benchmarks/peers/)."""

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
    workers: str = "1"  # tritonflow's `--workers`: a count or "auto"
    form: Form | None = None  # a peer's request and answer
    ready_path: str = ""  # a peer's health URL; else the protocol's
    problem: str = ""  # why a peer is not timed: it did not start, or answered wrong

    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


def tritonflow_contender(
    label: str, repository: Path, model: str, engine: str, *, workdir: Path, workers: str = "1"
) -> Contender:
    command = [sys.executable, "-m", "tritonflow", "serve", str(repository), "--port", "{port}"]
    command += ["--engine", engine, "--model-control-mode", "none"]
    if workers != "1":
        command += ["--workers", workers]
    command += ["--grpc-port", "0", "--metrics-port", "0"]  # NOTE: HTTP only: nodes run side by side here
    contender = Contender(label, "kserve", model, command, workdir / f"{label.replace(' ', '_')}.log")
    contender.workers = workers
    return contender


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
    path = contender.ready_path or ("/v2/health/ready" if contender.protocol == "kserve" else "/openapi.json")
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
    """Every contender started in turn, each once the one before is ready, and stopped whatever happens.

    NOTE: not all at once: `--engine auto` times its engines at load, and with a dozen servers starting
    beside it the node chose ONNX Runtime for the starter model's large batches, where nvForest alone
    ran 1.47x faster on a quiet machine. A node in production loads on its own machine."""
    with ExitStack() as stack:
        for contender in contenders:
            start(contender)
            stack.callback(stop, contender)
            try:
                wait_ready(contender)
            except RuntimeError as exc:
                if contender.protocol != "peer":
                    raise
                contender.problem = f"did not start: {exc}"  # NOTE: reported, not fatal: not ours to fix
                stop(contender)
        yield contenders


def process_tree(pid: int) -> list[int]:
    """The pids of a server and its descendants: Triton's python backend stubs, the node's workers."""
    import psutil

    root = psutil.Process(pid)
    return [root.pid, *(child.pid for child in root.children(recursive=True))]


def rss_mb(pid: int, field_name: str = "VmHWM") -> float:
    """A process tree's memory from /proc: Triton's python backend runs each model in a child process.

    VmHWM is the kernel's peak resident set of each process; the tree's figure is their sum.
    """
    total_kb = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        line = next(ln for ln in status.splitlines() if ln.startswith(field_name + ":"))
        total_kb += int(line.split()[1])
    return total_kb / 1024


def serving_pids(contender: Contender) -> list[int]:
    """The processes that answer requests: the node itself, or with --workers the supervisor's children.

    Not the whole tree: each node's probe fork server preloads nvForest whatever the engine.
    """
    assert contender.process is not None
    if contender.workers == "1":
        return [contender.process.pid]
    import psutil

    return [child.pid for child in psutil.Process(contender.process.pid).children()]


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


def triton_or_skip(
    args: argparse.Namespace, workdir: Path, skipped: dict[str, str]
) -> triton_env.Backends | None:
    """Triton's launch as the flags ask (--no-triton, --triton-env, --build-triton-env); or why not."""
    if args.no_triton:
        skipped["Triton"] = "--no-triton"
        return None
    found = triton_launch(args.triton_env, args.build_triton_env, workdir)
    if isinstance(found, str):
        skipped["Triton"] = found
        print(f"Triton skipped: {found}", flush=True)
        return None
    return found


# -- one model, every contender ------------------------------------------------------------------------
def node_engines() -> list[str]:
    """The node's forest engines here, the first one also run with --workers: nvForest where installed."""
    from tritonflow.serving.backends.forest import nvforest_or_reason

    return ["treelite"] if isinstance(nvforest_or_reason(), str) else ["nvforest", "treelite"]


def workers_compared(engine: str) -> dict[str, str]:
    """`--workers` value -> the contender's label; auto is left out where it means 2 (or 1) here."""
    labels = {"1": f"tritonflow {engine}"}
    for value in WORKERS:
        if value != "auto" or (os.cpu_count() or 1) > 2:
            labels[value] = f"tritonflow {engine} --workers {value}"
    return labels


def contenders_for(
    model: BenchModel, repositories: dict[str, Path], folder: Path, triton: triton_env.Backends | None
) -> list[Contender]:
    """Every contender on this model: the node per engine and per --workers, ONNX, batching off,
    FastAPI, Triton, GPU."""
    engines = node_engines()
    node = functools.partial(tritonflow_contender, workdir=folder)
    found = [node(f"tritonflow {e}", repositories["fil"], model.name, e) for e in engines]
    for value, label in list(workers_compared(engines[0]).items())[1:]:
        workers = node(label, repositories["fil"], model.name, engines[0], workers=value)
        workers.measures = frozenset({"sequential", "load"})
        found.append(workers)
    found.append(node("tritonflow onnxruntime", repositories["onnx"], f"{model.name}-onnx", "auto"))
    # NOTE: the checkpoint with its batch engine file, as `--engine auto` chooses per batch size
    chosen = node("tritonflow auto", repositories["fil"], model.name, "auto")
    chosen.measures = frozenset({"sequential", "batch", "batch-json"})
    found.append(chosen)
    off = node(
        f"tritonflow {engines[0]} batching off", repositories["nobatch"], f"{model.name}-nobatch", engines[0]
    )
    off.measures = frozenset({"batching"})
    found += [off, fastapi_contender(model, repositories["fil"].parent / "model.pkl", folder)]
    if triton is not None:
        found.append(triton_contender(triton, repositories["fil"], model.name, folder))
    if "gpu" in repositories:
        gpu = node("tritonflow nvforest gpu", repositories["gpu"], f"{model.name}-gpu", "nvforest")
        gpu.measures = frozenset({"batch"})
        found.append(gpu)
    return found


def rotated(items: list[Contender], by: int) -> list[Contender]:
    """Round r starts with contender r: no contender always runs first (or right after the slowest)."""
    by %= len(items) or 1
    return items[by:] + items[:by]


def server_facts(contender: Contender) -> dict[str, Any]:
    """What the report says of a server once measured: engine, memory (its whole process tree), command."""
    assert contender.process is not None
    pid = contender.process.pid
    return {
        "contender": contender.label,
        "engine": contender.engine,
        "workers": contender.workers,
        "processes": len(process_tree(pid)),
        "rss_ready_mb": contender.rss_ready_mb,
        "rss_peak_mb": rss_mb(pid),
        "nvforest_mapped": any(maps_nvforest(serving) for serving in serving_pids(contender)),
        "command": " ".join(contender.command),
    }
