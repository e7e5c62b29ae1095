"""`tritonflow quickstart [DIR]`: the whole loop in about a minute, step by step.

Starter flow -> @deploy -> repository -> `tritonflow serve` -> requests -> lineage, all local in
DIR, then the commands to do each step by hand. Whatever it started, it stops, also on failure.
Without DIR it makes a new folder, never inside a git checkout (see `default_folder`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tritonflow.init_command import copy_starter, metaflow_user_export
from tritonflow.lineage.arguments import whole_number
from tritonflow.lineage.errors import TritonflowError
from tritonflow.plugin.source_identity import work_tree
from tritonflow.starter import FILES

STEPS = 5
MODEL = "fraud-classifier"
FOLDER = "tritonflow-quickstart"


class QuickstartError(TritonflowError):
    """A step failed (the message says which and shows the end of its output), or cannot start."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory",
        nargs="?",
        type=Path,
        help=f"a new folder (default ./{FOLDER}, or ~/{FOLDER} when . is inside a git checkout)",
    )
    parser.add_argument(
        "--rows", type=whole_number(1, 200), default=5, help="transactions to score, 1-200 (default: 5)"
    )


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    directory, avoided = (args.directory, None) if args.directory else default_folder(Path.cwd())
    directory = directory.resolve()
    _check_new(directory)
    repository = directory / "model_repository"
    export = metaflow_user_export()  # NOTE: None where Metaflow finds a user name by itself
    env = _environment(directory, repository, export)

    _step(1, f"Copying the starter pack to {directory}")
    if avoided:
        print(
            f"      not in {Path.cwd()}: it is inside the git checkout {avoided}, where flow.py would be "
            "an untracked file that no commit holds (name a DIR to choose the folder)",
            flush=True,
        )
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
    by_hand = [(f"cd {shlex.quote(str(directory))}", "")]
    if export:
        by_hand.append((export, "as root: Metaflow needs a user name"))
    by_hand += [
        ("python flow.py run", "train, select, deploy (a new version)"),
        ("tritonflow serve model_repository &", "Triton's HTTP protocol on 127.0.0.1:8000 (--port N)"),
        ("python client.py", "score, then trace the answer (--url 127.0.0.1:N for another port)"),
        (f"tritonflow lineage {deployment_id} --repository model_repository", ""),
    ]
    for command, why in by_hand:
        print(f"  {command:<44}# {why}" if why else f"  {command}")
    return 0


def _step(number: int, text: str) -> None:
    print(f"\n[{number}/{STEPS}] {text}", flush=True)


def default_folder(cwd: Path) -> tuple[Path, Path | None]:
    """A new ./tritonflow-quickstart, and None; or, when `cwd` is inside a git checkout, a new one
    in the home folder (the temp folder if that is in a checkout too), and the checkout avoided.

    Inside a checkout the starter's flow.py would be an untracked file, and the lineage of what it
    deploys would name a commit that does not hold it.
    """
    checkout = work_tree(cwd)
    if checkout is None:
        return _new_folder(cwd / FOLDER), None
    temp = Path(tempfile.gettempdir())
    base = next((b for b in (Path.home(), temp) if work_tree(b) is None), temp)
    return _new_folder(base / FOLDER), checkout


def _new_folder(base: Path) -> Path:
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _check_new(directory: Path) -> None:
    """The quickstart copies a fresh starter pack: refuse a folder that holds one, before anything runs."""
    taken = [name for name in FILES if (directory / name).exists()]
    if taken:
        raise QuickstartError(
            f"{directory} already has {', '.join(taken)}: the quickstart needs a folder without a "
            f"starter pack: name a new DIR, or leave DIR out for a new folder; to run the pack that "
            f"is there: cd {shlex.quote(str(directory))} && python flow.py run"
        )


def _environment(directory: Path, repository: Path, export: str | None) -> dict[str, str]:
    """Local Metaflow metadata and datastore in DIR, whatever the user's Metaflow config says;
    the user name of `export` (`export METAFLOW_USER=name`) where Metaflow would find none."""
    return {
        **os.environ,
        **({"METAFLOW_USER": export.partition("=")[2]} if export else {}),
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(directory),
        "TRITONFLOW_REPOSITORY": str(repository),
    }


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
    command += ["--grpc-port", "0", "--metrics-port", "0"]  # NOTE: the tour speaks HTTP on a free port only
    with log.open("wb") as out:
        # NOTE: in DIR: `-m` imports from the working folder first, and a tritonflow clone's own
        # tritonflow/ folder there is not the installed package.
        process = subprocess.Popen(command, cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT)
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
    from tritonflow.api import describe_deployment
    from tritonflow.lineage.report import render_text
    from tritonflow.lineage.repository import ModelRepository

    repo = ModelRepository(repository)
    text = render_text(describe_deployment(repo, repo.resolve(deployment_id)))
    print("\n".join(f"      {line}" for line in text.splitlines()), flush=True)
