"""Real Triton (24.10, the server binary inside the nvidia-pytriton wheel) on our repositories.

That wheel pins numpy<2 while the project's environment has nvForest (numpy>=2), so Triton gets
its own virtual environment: built once, cached outside the checkout under
~/.cache/tritonflow/triton-env/<hash of its requirements>, reused while they are unchanged.
The checkout's tritonflow is installed into it (--no-deps) at the start of every session, so the
`fil` backend Triton runs is the code under test, packaged as users get it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servers import free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = (
    "nvidia-pytriton==0.7.0",  # Triton 24.10 (server 2.51.0); its backends folder has the python backend only
    "numpy<2",  # pytriton's pin; Triton 24.10's python backend also returns no outputs under numpy 2
    "treelite>=4.7,<4.8",  # what the checkpoints were written with
    "protobuf>=4.25,<7",
    "tritonclient[grpc]>=2.50",  # the config schema ForestBackend reads
    "setuptools>=69",  # installs the checkout without network access (--no-build-isolation)
    "wheel",
)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tritonflow" / "triton-env"
COMPLETE = ".complete"  # written last: a folder without it is a build that died halfway


@dataclass(frozen=True)
class Backends:
    """What `tritonflow triton-backends DIR --json` printed: how to start Triton with DIR."""

    directory: Path
    tritonserver: Path
    environment: dict[str, str]

    @property
    def home(self) -> Path:
        """The Triton installation: bin/tritonserver, backends/, python_backend_stubs/."""
        return self.tritonserver.parent.parent


def _progress(request: pytest.FixtureRequest, message: str) -> None:
    """Shown even under pytest's capture: the first build makes a ~500 MB environment."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[triton-env] {message}", flush=True)


def _run(command: list[str], log: Path, **kwargs: Any) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(command[:4])}... failed ({done.returncode}); log {log}:\n{tail}")


def _build(env: Path, request: pytest.FixtureRequest) -> None:
    if env.exists():
        shutil.rmtree(env)
    log = env.parent / f"{env.name}.log"
    log.write_text("")
    started = time.monotonic()
    _progress(request, f"building {env} (nvidia-pytriton ~55 MB; once per requirements change)")
    _run([sys.executable, "-m", "venv", str(env)], log)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    _run([*pip, *REQUIREMENTS], log)
    (env / COMPLETE).write_text(json.dumps(REQUIREMENTS))
    _progress(request, f"built in {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="session")
def triton_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached environment's python, with this checkout's tritonflow installed."""
    libc, version = platform.libc_ver()
    glibc = tuple(int(p) for p in version.split(".")[:2]) if libc == "glibc" and version else (0, 0)
    if sys.platform != "linux" or platform.machine() != "x86_64" or glibc < (2, 35):
        pytest.skip(
            f"the tritonserver in nvidia-pytriton runs on Linux x86_64 with glibc >= 2.35; "
            f"this is {sys.platform} {platform.machine()} {libc} {version}"
        )
    key = hashlib.sha256(json.dumps([REQUIREMENTS, sys.version_info[:2]]).encode()).hexdigest()[:16]
    env = CACHE / key
    python = env / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # NOTE: two sessions at once: one builds, the other waits
        if not (env / COMPLETE).is_file() or not python.exists():  # half-built, or its base Python is gone
            _build(env, request)
        started = time.monotonic()
        _run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            + ["--no-deps", "--no-build-isolation", "--force-reinstall", str(ROOT)],
            tmp_path_factory.mktemp("triton-env") / "install.log",
        )
        _progress(request, f"{env}: tritonflow reinstalled from {ROOT} in {time.monotonic() - started:.1f} s")
    return python


@pytest.fixture(scope="session")
def triton_backends(triton_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Backends:
    """The backend directory as users write it: `tritonflow triton-backends` in Triton's environment,
    finding the server in its nvidia-pytriton; skips where that server cannot run at all."""
    directory = tmp_path_factory.mktemp("triton") / "backends"
    done = subprocess.run(
        [str(triton_env), "-m", "tritonflow", "triton-backends", str(directory), "--json"],
        cwd=directory.parent,  # NOTE: not the checkout, whose tritonflow/ folder `-m` would import first
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    launch = json.loads(done.stdout)
    backends = Backends(
        Path(launch["backend_directory"]), Path(launch["tritonserver"]), launch["environment"]
    )
    usage = subprocess.run([str(backends.tritonserver), "--help"], capture_output=True, text=True)
    if "Usage: tritonserver" not in usage.stdout + usage.stderr:  # NOTE: --help exits 1 even when it works
        pytest.skip(f"{backends.tritonserver} cannot run here: {(usage.stderr or usage.stdout)[-500:]}")
    return backends


class Triton:
    """`tritonserver` on one repository, on free loopback ports, polling it every second."""

    POLL_SECS = 1

    def __init__(self, backends: Backends, repository: Path, workdir: Path) -> None:
        self.http_port, self.grpc_port, metrics_port = free_port(), free_port(), free_port()
        self.log = workdir / f"tritonserver-{self.http_port}.log"
        env = dict(os.environ)
        for name, prefix in backends.environment.items():
            env[name] = os.pathsep.join(p for p in (prefix, env.get(name)) if p)
        command = [
            str(backends.tritonserver),
            *("--model-repository", str(repository), "--backend-directory", str(backends.directory)),
            *("--model-control-mode", "poll", "--repository-poll-secs", str(self.POLL_SECS)),
            # NOTE: FIL configs are complete; Triton must serve them as written, with nothing filled in.
            "--disable-auto-complete-config",
            *("--http-address", "127.0.0.1", "--http-port", str(self.http_port)),
            *("--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port)),
            *("--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port)),
            "--exit-timeout-secs=5",
        ]
        with self.log.open("wb") as out:
            # NOTE: the stubs import from their working directory first: never the checkout's tritonflow/
            self.process = subprocess.Popen(
                command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        self.http = httpclient.InferenceServerClient(f"127.0.0.1:{self.http_port}", concurrency=8)
        self.grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        wait_for(self._live, timeout=60, what=f"tritonserver live on port {self.http_port}")

    def _live(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{self.log_text()}")
        try:
            return bool(self.http.is_server_live())
        except Exception:  # not listening yet: geventhttpclient raises plain socket errors
            return False

    def wait_ready(self, model: str, version: int, timeout: float = 30) -> None:
        try:
            wait_for(lambda: self.http.is_model_ready(model, str(version)), timeout, f"{model}:{version}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc} to be READY in Triton; its log:\n{self.log_text()[-4000:]}"
            ) from None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        code = stop_process(self.process)
        self.http.close()
        self.grpc.close()
        return code


@pytest.fixture(scope="module")
def start_triton(
    triton_backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[Path], Triton]]:
    """start_triton(repository) -> a live Triton; stopped after the module's tests."""
    started: list[Triton] = []

    def start(repository: Path) -> Triton:
        started.append(Triton(triton_backends, repository, tmp_path_factory.mktemp("tritonserver")))
        return started[-1]

    yield start
    for server in started:
        server.stop()
