"""A real `tritonflow serve` in a subprocess, for tests of any layer that talk to the node.

Imported by the conftests (tests/ is on sys.path while they load); `serve` and `serve_module`
are the fixtures built on it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tritonclient.http as httpclient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m tritonflow serve` in a subprocess, on free HTTP, gRPC and metrics ports (`url`,
    `grpc_url`, `metrics_port`); stopped with SIGTERM, log kept for assertions.
    `tls`: the client's context for a node started with --tls-cert: `request` speaks HTTPS then (`client`
    stays plain HTTP: a test of TLS makes its own)."""

    def __init__(
        self, repository: str | Path, workdir: Path, *args: str, tls: ssl.SSLContext | None = None
    ) -> None:
        self.tls = tls
        self.port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.log = workdir / f"server-{self.port}.log"
        command = [
            *(sys.executable, "-m", "tritonflow", "serve", str(repository)),
            *("--port", str(self.port), "--poll-interval", "0.2", "--cache-dir", str(workdir / "cache")),
            # NOTE: before *args, so a test's own --grpc-port or --metrics-port wins (argparse keeps the last)
            *("--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port)),
            *args,
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy()
            )
        self.client = httpclient.InferenceServerClient(self.url)
        self._wait_started()

    def _wait_started(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                # NOTE: live, not ready: uvicorn accepts only once start-up has loaded the repository,
                # and a strict node with a model that cannot load is up yet never ready
                if self.request("GET", "/v2/health/live")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not started within {timeout} s:\n{self.log_text()}")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One raw HTTP request on a fresh connection: status, headers (lower-case), body."""
        conn = (
            http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=self.tls)
            if self.tls
            else http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, _, raw = self.request(method, path, None if body is None else json.dumps(body).encode())
        assert status == 200, raw
        return json.loads(raw) if raw else None

    def index(self) -> list[dict[str, str]]:
        return self.json("POST", "/v2/repository/index")

    def index_row(self, model: str, version: int) -> dict[str, str]:
        """The repository index's row of one version; {} when it is not listed."""
        rows = [r for r in self.index() if (r["name"], r["version"]) == (model, str(version))]
        return rows[0] if rows else {}

    def wait_for_state(self, model: str, version: int, state: str) -> dict[str, str]:
        """Wait until the index lists the version in `state`; that row (not a later reading)."""

        def row() -> dict[str, str] | None:
            found = self.index_row(model, version)
            return found if found.get("state") == state else None

        return wait_for(row, what=f"{model}:{version} {state}")

    def metric(self, name: str, model: str, version: int | str) -> float:
        """A loaded version's sample; a missing series fails (a loaded version has all of them)."""
        return self.sample(name, model=model, version=str(version))

    def sample(self, name: str, **labels: str) -> float:
        """One /metrics sample by its exact labels; a missing series fails."""
        text = self.request("GET", "/metrics")[2].decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        match = re.search(rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$", text, re.M)
        assert match, f"no {name}{{{wanted}}} in /metrics:\n{text}"
        return float(match.group(1))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        code = stop_process(self.process)
        self.client.close()
        return code


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM, a graceful wait, then SIGKILL; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; its value, or a failure after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def servers(workdir: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(repository: str | Path, *args: str, **options: Any) -> Server:
        started.append(Server(repository, workdir, *args, **options))
        return started[-1]

    yield start
    for server in started:
        code = server.stop()
        log = server.log_text()
        assert "Traceback" not in log, log
        assert code == 0 and "Application shutdown complete" in log, log
