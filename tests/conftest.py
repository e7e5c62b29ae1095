"""Fixtures shared by the whole suite: a real S3 API server (moto), fresh buckets and repositories,
deployment records, and environments for running Metaflow flows in subprocesses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import servers
from servers import Server

from tritonflow.lineage.records import DeploymentRecord, sha256_hex, utc_now

# Metaflow refuses to run as root without a user, and CI runs as root.
os.environ.setdefault("METAFLOW_USER", "tester")

AWS_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    """A running moto server: `endpoint` is its URL, `client` a boto3 S3 client for it."""

    endpoint: str
    pid: int

    @cached_property
    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint)


def _wait_until_up(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto server on port {port} did not listen within {timeout} s:\n{log.read_text()}")


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it)."""
    return servers.free_port()


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Dummy AWS credentials in os.environ for the session (subprocesses inherit them), cut off
    from the user's ~/.aws files, profiles, endpoints and the instance metadata service."""
    absent = str(tmp_path_factory.mktemp("aws") / "absent")
    env = {
        **AWS_CREDENTIALS,
        "AWS_CONFIG_FILE": absent,
        "AWS_SHARED_CREDENTIALS_FILE": absent,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield env


@pytest.fixture(scope="session")
def s3_server(aws_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone S3 server as a real process; TRITONFLOW_S3_ENDPOINT_URL points at it."""
    port = servers.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(port, proc, log)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRITONFLOW_S3_ENDPOINT_URL", endpoint)
            yield S3Server(endpoint, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the moto server, as the repository URI `s3://<bucket>/models`."""
    bucket = f"tf-{uuid.uuid4().hex[:12]}"
    s3_server.client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/models"


@pytest.fixture
def local_repo(tmp_path: Path) -> Path:
    """An empty local repository folder."""
    repo = tmp_path / "repo"
    repo.mkdir()
    return repo


@pytest.fixture
def make_record() -> Callable[..., DeploymentRecord]:
    """A factory of plausible deployment records: make_record(model, version, run_id=..., files=...)."""

    def make(
        model: str = "fraud-classifier",
        version: int = 1,
        *,
        flow: str = "TrainFlow",
        run_id: str = "1795314379884117",
        step: str = "deploy",
        task: str | None = None,
        files: dict[str, bytes] | None = None,
        repository: str = "",
    ) -> DeploymentRecord:
        files = {"checkpoint.tl": b"checkpoint"} if files is None else files
        return DeploymentRecord(
            deployment_id=f"{model}:{version}@{flow}/{run_id}",
            model_name=model,
            version=version,
            created_at=utc_now(),
            repository=repository,
            files=[
                {"path": f"{version}/{name}", "sha256": sha256_hex(data), "size": len(data)}
                for name, data in sorted(files.items())
            ],
            format="treelite",
            backend="fil",
            config={"max_batch_size": 1024},
            signature={"n_features": 4, "inputs": [], "outputs": []},
            triton_version="26.06",
            exporter={"treelite": "4.7.0"},
            metaflow={
                "flow": flow,
                "run_id": run_id,
                "step": step,
                "task": task or f"{flow}/{run_id}/{step}/1",
                "user": "tester",
            },
        )

    return make


def _metaflow_environment(root: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    return {
        **inherited,
        "METAFLOW_USER": "tester",
        "METAFLOW_HOME": str(root / "home"),  # no ~/.metaflowconfig
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root),
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
    }


@pytest.fixture
def metaflow_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `subprocess.run(..., env=metaflow_env)`: a Metaflow run with its own local
    datastore and metadata under tmp_path, untouched by the caller's METAFLOW_* settings."""
    root = tmp_path / "metaflow"
    root.mkdir()
    return _metaflow_environment(root)


@pytest.fixture(scope="module")
def metaflow_env_module(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`metaflow_env` shared by a module's tests (one flow run for all of them)."""
    return _metaflow_environment(tmp_path_factory.mktemp("metaflow"))


@pytest.fixture
def metaflow_s3_env(
    metaflow_env: dict[str, str], aws_env: dict[str, str], s3_server: S3Server, s3_bucket: str
) -> dict[str, str]:
    """`metaflow_env` with the S3 datastore in s3_bucket's bucket (`s3://<bucket>/mf`) on the moto server."""
    bucket = s3_bucket.removeprefix("s3://").split("/", 1)[0]
    return {
        **metaflow_env,
        **aws_env,
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{bucket}/mf",
        "METAFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        "TRITONFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
    }


# -- the serving node ------------------------------------------------------------------------------
@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """serve(repository, *args) -> a running Server; each is stopped after the test, which fails
    if the server logged a traceback (an unexpected 500) or did not stop cleanly."""
    yield from servers.servers(tmp_path)


@pytest.fixture(scope="module")
def serve_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """`serve` for servers shared by a module's tests."""
    yield from servers.servers(tmp_path_factory.mktemp("server"))
