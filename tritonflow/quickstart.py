"""`tritonflow quickstart [DIR]`: the whole loop in about a minute, step by step.

Starter flow -> @deploy -> repository -> `tritonflow serve` -> requests -> lineage, all local in
DIR, then the commands to do each step by hand. Whatever it started, it stops, also on failure.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tritonflow.init_command import copy_starter
from tritonflow.lineage.errors import TritonflowError

STEPS = 5
MODEL = "fraud-classifier"


class QuickstartError(TritonflowError):
    """A step failed; the message says which and shows the end of its output."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory", nargs="?", type=Path, help="a new folder (default ./tritonflow-quickstart)"
    )
    parser.add_argument("--rows", type=int, default=5, help="transactions to score")


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    directory = (args.directory or _new_folder(Path.cwd() / "tritonflow-quickstart")).resolve()
    repository = directory / "model_repository"
    env = _environment(directory, repository)

    _step(1, f"Copying the starter pack to {directory}")
    copy_starter(directory)

    _step(2, "Training three candidates and deploying the best (python flow.py run)")
    _run_flow(directory, env)

    port = _free_port()
    _step(3, f"Starting the serving node on 127.0.0.1:{port} (tritonflow serve model_repository)")
    with _serving(repository, port, directory, env):
        _step(4, f"Scoring {args.rows} transactions with tritonclient.http")
        deployment_id = _score(directory, port, args.rows)
        _step(5, f"Tracing {deployment_id} back to its run (tritonflow lineage)")
        _lineage(repository, deployment_id)
    print(f"\nDone in {time.monotonic() - started:.0f} s; the serving node is stopped. By hand:\n")
    print(f"  cd {directory}")
    print("  python flow.py run                          # train, select, deploy (a new version)")
    print("  tritonflow serve model_repository           # Triton's HTTP protocol on 127.0.0.1:8000")
    print("  python client.py                            # score, then trace the answer")
    print(f"  tritonflow lineage {deployment_id} --repository model_repository")
    return 0


def _step(number: int, text: str) -> None:
    print(f"\n[{number}/{STEPS}] {text}", flush=True)


def _new_folder(base: Path) -> Path:
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _environment(directory: Path, repository: Path) -> dict[str, str]:
    """Local Metaflow metadata and datastore in DIR, whatever the user's Metaflow config says."""
    return {
        **os.environ,
        # NOTE: Metaflow refuses to run as root without a user name ("root" itself is refused).
        "METAFLOW_USER": os.environ.get("METAFLOW_USER") or _user(),
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(directory),
        "TRITONFLOW_REPOSITORY": str(repository),
    }


def _user() -> str:
    name = getpass.getuser()
    return name if name != "root" else "quickstart"


def _run_flow(directory: Path, env: dict[str, str]) -> None:
    command = [sys.executable, "flow.py", "--no-pylint", "run"]
    process = subprocess.Popen(
        command, cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        tail = [*tail[-30:], line.rstrip()]
        # Show what a user cares about: scores, the deploy, and failures.
        if any(word in line for word in ("val_auc=", "@deploy", "deployed", "rror", "failed")):
            print(f"      {line.rstrip().split('] ', 1)[-1]}", flush=True)
    if process.wait() != 0:
        raise QuickstartError("the starter flow failed:\n" + "\n".join(tail))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(repository: Path, port: int, directory: Path, env: dict[str, str]) -> Iterator[None]:
    log = directory / "serve.log"
    command = [sys.executable, "-m", "tritonflow", "serve", str(repository), "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, process, log)
        print(f"      ready: {MODEL} loaded (log: {log})", flush=True)
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise QuickstartError(f"the serving node exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise QuickstartError(f"the serving node was not ready in {timeout:.0f} s; see {log}")


def _score(directory: Path, port: int, rows: int) -> str:
    # The starter's own client, as copied: what the user will run next.
    sys.path.insert(0, str(directory))
    try:
        client = importlib.import_module("client")
        fraud_data = importlib.import_module("fraud_data")
    finally:
        sys.path.pop(0)
    predict = client.predict
    X = fraud_data.synthetic_transactions(200, seed=42).drop(columns=["Class"]).to_numpy()[:rows]
    scores, deployment_id = predict(f"127.0.0.1:{port}", MODEL, X)
    for i, p in enumerate(scores):
        print(f"      transaction {i}: P(fraud) = {p[-1]:.4f}")
    print(f"      every response is stamped: x-deployment-id: {deployment_id}", flush=True)
    return deployment_id


def _lineage(repository: Path, deployment_id: str) -> None:
    from tritonflow.lineage.report import render_text
    from tritonflow.lineage.repository import ModelRepository
    from tritonflow.lineage_command import describe

    repo = ModelRepository(repository)
    text = render_text(describe(repo, repo.resolve(deployment_id)))
    print("\n".join(f"      {line}" for line in text.splitlines()), flush=True)
