"""Load a new model version in a child process first, so that a broken file costs a child, not the node.

A file can match its record's sha256 and still be broken (published broken, or an engine bug): a
one-bit flip in a Treelite checkpoint segfaults the engine or makes it allocate without end. The
probe loads the version with the backend and engine the node would use, runs one prediction on
generated rows, checks the outputs against the config and unloads; the parent watches the child's
resident memory and the clock and kills it past the limits. Only a version that passes is loaded in
the serving process.

Children start from a fork server, a single-threaded process that has only imported the backends
(a probe of the starter model: ~40-70 ms on 2 busy cores, benchmarks/load_isolation.py), and not by
forking the node, whose event loop, engine threads and OpenMP pools may hold locks a forked child
would inherit held. GPU configs use spawn (a fresh interpreter: ~0.8-1.5 s of imports): CUDA cannot
be used in a process forked after CUDA was initialized, and a fork server that imported nvForest's
CUDA libraries is not a state CUDA promises to survive a fork.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from tritonflow.lineage import layout
from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving import datatypes
from tritonflow.serving.backends import BACKENDS, RefusedValues, load_backend
from tritonflow.serving.model_config import ModelConfig, instance_kind, signature

log = logging.getLogger("tritonflow.serving")

# NOTE: a probe child starts at ~165 MiB (the engines it shares with the fork server) and grows by
# ~5x its checkpoint (a 300-tree depth-12 RF, 4 MiB: 186 MiB peak); 4 GiB leaves room for checkpoints
# of several hundred MiB, and stops a runaway load (~1 GB/s) in about 4 s.
DEFAULT_MEMORY_BYTES = 4 << 30
# NOTE: a GPU probe spends ~1-2 s on imports and about as long creating a CUDA context; a minute
# leaves room for models far bigger than those benchmarked (0.1 s), and bounds how long a hanging file
# holds back its version.
DEFAULT_TIMEOUT_S = 60.0
SAMPLE_ROWS = 4  # rows of the test prediction, when the config has a batch dimension
POLL_S = 0.02  # how often the parent reads the child's resident memory
EXIT_GRACE_S = 5.0  # how long a child that reported may take to exit before it is killed
# Imported once by the fork server, so each child starts with the engines in memory (nvForest, the
# forest backend's default engine, takes ~1.5 s to import). NOTE: multiprocessing runs a main *script*
# again in each child ("__main__" in this list does not help in Python 3.11), but not the main module
# of `python -m tritonflow serve`.
PRELOAD = sorted({path.rsplit(".", 1)[0] for path in BACKENDS.values()} | {"nvforest"})
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProbeLimits:
    """What one probe child may take: resident memory (bytes) and wall time (seconds)."""

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0 or self.timeout_s <= 0:
            raise TritonflowError(
                f"probe limits must be positive, got memory_bytes={self.memory_bytes}, "
                f"timeout_s={self.timeout_s}"
            )


@dataclass(frozen=True)
class ProbeReport:
    """A version that loaded, answered and unloaded in a child, with what that took."""

    engine: str  # what ran it, as the backend names it ("nvforest-cpu", "onnxruntime-cpu", ...)
    method: str  # how the child was started: "forkserver" or "spawn"
    load_s: float
    predict_s: float
    peak_rss_bytes: int  # the child's high-water resident memory (VmHWM), imported engines included
    wall_s: float  # from asking for a child to its report, process start included
    # the shape of each output; None: the model refused the generated strings, nothing to check
    outputs: dict[str, tuple[int, ...]] | None


class ProbeFailed(TritonflowError):
    """The version crashed, hung, flooded memory, raised or answered wrongly in its probe child."""

    def __init__(self, message: str, cause: str, pid: int | None = None) -> None:
        super().__init__(message)
        # "crash" | "memory" | "timeout" | "refused" (the backend's own error) | "error" | "outputs"
        self.cause = cause
        self.pid = pid  # the child's process id (gone by the time this is raised)


def probe_version(
    version_dir: Path,
    config: ModelConfig,
    engine: str,
    limits: ProbeLimits | None = None,
    *,
    method: str | None = None,
) -> ProbeReport:
    """Load `version_dir` under `config` with `engine` in a child, predict once, check, unload.

    Raises ProbeFailed with the reason; blocks the calling thread (the node calls it in a worker
    thread). `method` overrides the start method ("forkserver" or "spawn"; benchmarks and tests).
    """
    limits = limits or ProbeLimits()
    method = method or start_method(config)
    files = _files(Path(version_dir))
    started = time.perf_counter()
    context = _context(method)
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child,
        args=(sender, str(version_dir), config.SerializeToString(), engine, os.getpid()),
        name=f"tritonflow-probe {files}",
        daemon=True,  # NOTE: multiprocessing kills daemon children when the node exits normally
    )
    try:
        child.start()
    except (EOFError, ConnectionError) as exc:
        sender.close()
        receiver.close()
        if method != "forkserver":
            raise
        # NOTE: the fork server dies if a preloaded import raises OSError (a CUDA wheel that cannot
        # load its libraries); the node itself only falls back to Treelite then, so probes go on.
        log.warning("the probe fork server did not start (%r): probing with spawn from now on", exc)
        _fork_server_broken.set()
        return probe_version(version_dir, config, engine, limits, method="spawn")
    sender.close()
    try:
        report = _watch(child, receiver, config, limits, files, started)
    finally:
        _reap(child)
        receiver.close()
    return ProbeReport(
        engine=report["engine"],
        method=method,
        load_s=report["load_s"],
        predict_s=report["predict_s"],
        peak_rss_bytes=report["peak_rss_bytes"],
        wall_s=time.perf_counter() - started,
        outputs=None
        if report["outputs"] is None
        else {name: shape for name, (shape, _) in report["outputs"].items()},
    )


def start_method(config: ModelConfig) -> str:
    """spawn for GPU configs (CUDA and fork do not mix), else the fork server (fast)."""
    if instance_kind(config) == "gpu" or _fork_server_broken.is_set():
        return "spawn"
    return "forkserver"


def sample_inputs(
    config: ModelConfig, fixed: dict[str, tuple[int, ...]] | None = None
) -> dict[str, np.ndarray]:
    """Deterministic rows of every config input: SAMPLE_ROWS of them when the config batches,
    variable dims (-1) as 1 unless the model fixes them (`fixed`: Backend.input_dims), values
    spread over each datatype's small range."""
    batch = (min(SAMPLE_ROWS, config.max_batch_size),) if config.max_batch_size > 0 else ()
    inputs = {}
    for tensor in signature(config)["inputs"]:
        dtype = datatypes.TENSOR.get(tensor["datatype"])
        if dtype is None:
            raise ProbeFailed(
                f"input {tensor['name']!r} has datatype {tensor['datatype']}, which is not served: "
                f"use one of {', '.join(datatypes.TENSOR)} in config.pbtxt",
                "refused",
            )
        dims = (fixed or {}).get(tensor["name"], tensor["dims"])
        shape = (*batch, *(1 if d < 0 else d for d in dims))
        size = int(np.prod(shape))
        values: np.ndarray
        if dtype == datatypes.BYTES:  # NOTE: short texts, as a string column holds
            values = np.array([str(i % 5).encode() for i in range(size)], object)
        elif dtype.kind == "f":
            values = np.linspace(-1.0, 1.0, size)
        else:  # NOTE: small non-negative integers fit every integer type, and % 2 gives both booleans
            values = np.arange(size) % (2 if dtype.kind == "b" else 5)
        inputs[tensor["name"]] = values.astype(dtype).reshape(shape)
    return inputs


# -- the parent ---------------------------------------------------------------------------------
_fork_server_broken = threading.Event()  # set once the fork server failed to start: spawn from then on


@functools.cache
def _context(method: str) -> Any:
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    return context


def _watch(
    child: BaseProcess,
    receiver: Connection,
    config: ModelConfig,
    limits: ProbeLimits,
    files: str,
    started: float,
) -> dict[str, Any]:
    """Follow the child until it reports; kill it past the limits. The report's fields, or raises."""
    phase: str | None = None  # what the child announced it is doing; None: not started yet
    deadline = time.monotonic() + limits.timeout_s
    while True:
        ready = wait([receiver, child.sentinel], timeout=POLL_S)
        if receiver in ready:
            try:
                kind, value = receiver.recv()
            except EOFError:  # the child is gone without a word: its exit status says why
                raise _died(child, phase, files) from None
            if kind == "phase":
                phase = f"{value} {files}"
            elif kind == "done":
                if value["outputs"] is None:
                    log.warning(
                        "%s: the test prediction on generated strings was refused (%s); serving it with its "
                        "outputs unchecked (a model that refuses values it was not trained on, such "
                        "as OneHotEncoder(handle_unknown='error'), refuses requests holding them too)",
                        files,
                        value["refused_strings"],
                    )
                    return value
                problem = _output_problem(value["outputs"], config)
                if problem:
                    raise ProbeFailed(
                        f"the test prediction of {files} on generated rows {problem}: the model does "
                        "not match its config.pbtxt; fix the config or re-export the model",
                        "outputs",
                        child.pid,
                    )
                return value
            elif kind == "refused":  # the backend's own message, as the node would give it
                raise ProbeFailed(value, kind, child.pid)
            else:  # another exception: the engine's own type and message
                raise ProbeFailed(
                    f"{phase} raised {value} in a probe process: the file is corrupt or the engine "
                    "cannot run it; republish the version from a good export",
                    "error",
                    child.pid,
                )
        elif child.sentinel in ready:
            child.join()
            if not receiver.poll():  # NOTE: a last message may still be in the pipe: read it first
                raise _died(child, phase, files)
        doing = phase or f"starting a probe of {files}"
        rss = _status_bytes(child.pid, "VmRSS")
        if rss > limits.memory_bytes:
            child.kill()
            raise ProbeFailed(
                f"{doing} took more than {_size(limits.memory_bytes)} of memory ({_size(rss)} resident "
                f"after {time.perf_counter() - started:.1f} s) and was stopped: the file is corrupt (a "
                "count read as a huge number) or the model needs more memory than the server's probe "
                "limit allows; republish a good export, or raise the limit",
                "memory",
                child.pid,
            )
        if time.monotonic() > deadline:
            child.kill()
            raise ProbeFailed(
                f"{doing} did not finish within {limits.timeout_s:g} s and was stopped: the engine "
                "hangs on this model, or its file cannot be read to the end (a stalled mount); "
                "republish the version, or raise the server's probe timeout if the model is just slow",
                "timeout",
                child.pid,
            )


def _died(child: BaseProcess, phase: str | None, files: str) -> ProbeFailed:
    child.join()
    code = child.exitcode or 0
    if phase is None:  # the probe itself failed, not the engine
        how = signal.Signals(-code).name if code < 0 else f"exit status {code}"
        return ProbeFailed(
            f"the probe process ended ({how}) before it could load {files}; see the server log (a "
            "main script without `if __name__ == '__main__':` cannot start probe processes)",
            "error",
            child.pid,
        )
    if code < 0:
        name = signal.Signals(-code).name
        # NOTE: the probe kills with SIGKILL only past its limits, and says so; another SIGKILL is
        # most likely the kernel's OOM killer (the machine, not the probe, ran out of memory)
        name += ", most likely the kernel's out-of-memory killer" if name == "SIGKILL" else ""
        return ProbeFailed(
            f"the engine crashed ({name}) {phase} in a probe process (the serving process was not "
            "affected): the file is corrupt or the engine cannot read it; republish the version "
            "from a good export",
            "crash",
            child.pid,
        )
    return ProbeFailed(
        f"the probe process exited with status {code} while {phase}, without a result: the engine "
        "gave up on the file (see the server log); republish the version from a good export",
        "crash",
        child.pid,
    )


def _reap(child: BaseProcess) -> None:
    """The child is gone and waited for when the probe returns, whatever happened."""
    child.join(EXIT_GRACE_S)
    if child.is_alive():
        child.kill()
        child.join()
    child.close()


def _output_problem(got: dict[str, tuple[tuple[int, ...], str]], config: ModelConfig) -> str | None:
    """What is wrong with the outputs (shape and numpy dtype by name), or None."""
    tensors = signature(config)["outputs"]
    rows = (min(SAMPLE_ROWS, config.max_batch_size),) if config.max_batch_size > 0 else ()
    names = [t["name"] for t in tensors]
    if sorted(got) != sorted(names):
        return f"answered outputs {sorted(got)}, the config lists {sorted(names)}"
    for tensor in tensors:
        shape, dtype = got[tensor["name"]]
        want = (*rows, *tensor["dims"])
        fits = len(shape) == len(want) and all(w < 0 or s == w for s, w in zip(shape, want, strict=True))
        if not fits:
            return f"answered {tensor['name']!r} with shape {list(shape)}, the config says {list(want)}"
        if datatypes.DATATYPE.get(np.dtype(dtype)) != tensor["datatype"]:
            return f"answered {tensor['name']!r} as {dtype}, the config says {tensor['datatype']}"
    return None


def _files(version_dir: Path) -> str:
    """The version's model files, to name in messages ("checkpoint.tl")."""
    try:
        names = sorted(p.name for p in version_dir.iterdir() if p.name != layout.RECORD)
    except OSError:
        names = []
    return ", ".join(names) or str(version_dir)


def _status_bytes(pid: int | None, key: str) -> int:
    """A memory figure ("VmRSS", "VmHWM") of a live process from /proc; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


# -- the child ----------------------------------------------------------------------------------
def _child(sender: Connection, folder: str, config_bytes: bytes, engine: str, node_pid: int) -> None:
    """Load, predict, unload, then report; each step announced first, so a crash names it."""
    die_with_parent(node_pid)
    config = ModelConfig.FromString(config_bytes)
    try:
        sender.send(("phase", "loading"))
        start = time.perf_counter()
        backend = load_backend(Path(folder), config, engine)
        load_s = time.perf_counter() - start
        sender.send(("phase", "running a test prediction on"))
        inputs = sample_inputs(config, backend.input_dims())
        start = time.perf_counter()
        shapes, refused = _predicted(backend, inputs)
        predict_s = time.perf_counter() - start
        sender.send(("phase", "unloading"))
        backend.unload()
    except TritonflowError as exc:  # BackendError: the message the node would give, passed as is
        sender.send(("refused", str(exc)))
        return
    except Exception as exc:  # an engine's own error type: name it, it is the only clue
        sender.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    report = {
        "engine": backend.engine,
        "load_s": load_s,
        "predict_s": predict_s,
        "peak_rss_bytes": _status_bytes(os.getpid(), "VmHWM"),
        "outputs": shapes,
        "refused_strings": refused,
    }
    sender.send(("done", report))


def _predicted(backend: Any, inputs: dict[str, np.ndarray]) -> tuple[dict[str, Any] | None, str | None]:
    """(output -> (shape, dtype), None), or (None, why) when the model refused the generated values:
    they are strings it never saw, and refusing those is no defect of the file."""
    try:
        outputs = backend.predict(inputs)
    except RefusedValues as exc:
        return None, str(exc)
    return {name: (tuple(np.shape(v)), np.asarray(v).dtype.str) for name, v in outputs.items()}, None


def die_with_parent(node_pid: int) -> None:
    """The kernel kills this child when its parent goes: the node (spawn), or the fork server, which
    exits once the node is gone; so a probe never outlives the node, even one killed with SIGKILL."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        # NOTE: a fork server child inherits the node's end of the server's "alive" pipe (to start
        # processes of its own, which a probe never does). Held here, it keeps the server, this
        # child's parent, running after the node dies; closed (after prctl: the server cannot exit
        # before), node -> server -> probe fall in turn.
        os.close(alive)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    try:
        os.kill(node_pid, 0)  # NOTE: the node may have died before prctl took effect
    except ProcessLookupError:
        os._exit(1)
