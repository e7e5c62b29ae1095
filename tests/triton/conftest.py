"""Real Triton (24.10, the server binary inside the nvidia-pytriton wheel) on our repositories.

The environment it runs in, and how it is started, are in triton_env.py (the serving benchmark
uses them too).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servers import free_port, stop_process, wait_for
from triton_env import Backends, prepare, unsupported, write_backends


def _progress(request: pytest.FixtureRequest, message: str) -> None:
    """Shown even under pytest's capture: the first build makes a ~500 MB environment."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[triton-env] {message}", flush=True)


@pytest.fixture(scope="session")
def triton_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached environment's python, with this checkout's tritonflow installed."""
    reason = unsupported()
    if reason:
        pytest.skip(reason)
    return prepare(lambda message: _progress(request, message), tmp_path_factory.mktemp("triton-env"))


@pytest.fixture(scope="session")
def triton_backends(triton_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Backends:
    """The backend directory as users write it: `tritonflow triton-backends` in Triton's environment,
    finding the server in its nvidia-pytriton; skips where that server cannot run at all."""
    backends = write_backends(triton_env, tmp_path_factory.mktemp("triton") / "backends")
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
        command = [
            *backends.command(repository, self.http_port, self.grpc_port, metrics_port),
            *("--model-control-mode", "poll", "--repository-poll-secs", str(self.POLL_SECS)),
        ]
        with self.log.open("wb") as out:
            # NOTE: the stubs import from their working directory first: never the checkout's tritonflow/
            self.process = subprocess.Popen(
                command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=backends.environ()
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
