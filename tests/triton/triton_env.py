"""Real Triton on this machine, for the Triton tests and the serving benchmark alike.

Triton 24.10 is the server binary inside the nvidia-pytriton wheel. That wheel pins numpy<2
while the project's environment has nvForest (numpy>=2), so Triton gets its own virtual
environment: built once, cached outside the checkout under
~/.cache/tritonflow/triton-env/<hash of its requirements>, reused while they are unchanged.
The checkout's tritonflow is never installed into it: each session makes a small virtual
environment of its own that sees the cached one's packages (a .pth file) and installs this
checkout's tritonflow there (--no-deps), so the `fil` backend Triton runs is the code under test,
packaged as users get it, and two checkouts can test against one cached environment at once.
(PYTHONPATH would be simpler, but Triton's python backend stub does not pass it on.)
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = (
    "nvidia-pytriton==0.7.0",  # Triton 24.10 (server 2.51.0); its backends folder has the python backend only
    "numpy<2",  # pytriton's pin; Triton 24.10's python backend also returns no outputs under numpy 2
    "treelite>=4.7,<4.8",  # what the checkpoints were written with
    "onnxruntime>=1.20",  # the Python-based onnxruntime backend's runtime (numpy>=1.21.6: numpy<2 fits)
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

    def command(self, repository: Path, http_port: int | str, grpc_port: int, metrics_port: int) -> list[str]:
        """tritonserver on `repository`, on loopback ports; add --model-control-mode etc. after."""
        return [
            str(self.tritonserver),
            *("--model-repository", str(repository), "--backend-directory", str(self.directory)),
            # NOTE: FIL configs are complete; Triton must serve them as written, with nothing filled in.
            "--disable-auto-complete-config",
            *("--http-address", "127.0.0.1", "--http-port", str(http_port)),
            *("--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port)),
            *("--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port)),
            "--exit-timeout-secs=5",
        ]

    def environ(self) -> dict[str, str]:
        """This process's environment with the installation's library path and Python in front."""
        env = dict(os.environ)
        for name, prefix in self.environment.items():
            env[name] = os.pathsep.join(p for p in (prefix, env.get(name)) if p)
        return env


def unsupported() -> str | None:
    """Why the tritonserver in nvidia-pytriton cannot run here, or None."""
    libc, version = platform.libc_ver()
    glibc = tuple(int(p) for p in version.split(".")[:2]) if libc == "glibc" and version else (0, 0)
    if sys.platform != "linux" or platform.machine() != "x86_64" or glibc < (2, 35):
        return (
            f"the tritonserver in nvidia-pytriton runs on Linux x86_64 with glibc >= 2.35; "
            f"this is {sys.platform} {platform.machine()} {libc} {version}"
        )
    return None


def env_dir() -> Path:
    """The cached environment for these requirements and this Python (built or not)."""
    key = hashlib.sha256(json.dumps([REQUIREMENTS, sys.version_info[:2]]).encode()).hexdigest()[:16]
    return CACHE / key


def is_built(env: Path) -> bool:
    return (env / COMPLETE).is_file() and (env / "bin" / "python").exists()  # its base Python may be gone


def prepare(progress: Callable[[str], None], workdir: Path) -> Path:
    """A python for Triton: this session's environment over the cached one (built if missing),
    with this checkout's tritonflow installed."""
    env = env_dir()
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{env.name}.lock").open("w") as lock:
        # NOTE: held only while building: a complete environment is never written again.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_built(env):
            _build(env, progress)
    started = time.monotonic()
    session, log = workdir / "env", workdir / "install.log"
    _run([str(env / "bin" / "python"), "-m", "venv", "--without-pip", str(session)], log)
    (site,) = session.glob("lib/python*/site-packages")
    (shared,) = env.glob("lib/python*/site-packages")
    (site / "triton_env.pth").write_text(f"{shared}\n")
    _run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        + ["--no-deps", "--no-build-isolation", "--target", str(site), str(ROOT)],
        log,
    )
    progress(f"{session} over {env}: tritonflow from {ROOT} installed in {time.monotonic() - started:.1f} s")
    return session / "bin" / "python"


def write_backends(python: Path, directory: Path) -> Backends:
    """`tritonflow triton-backends DIR --json` run in Triton's environment, as users run it."""
    done = subprocess.run(
        [str(python), "-m", "tritonflow", "triton-backends", str(directory), "--json"],
        cwd=directory.parent,  # NOTE: not the checkout, whose tritonflow/ folder `-m` would import first
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`tritonflow triton-backends` failed in {python}: {done.stderr.strip()[-500:]}")
    launch = json.loads(done.stdout)
    return Backends(Path(launch["backend_directory"]), Path(launch["tritonserver"]), launch["environment"])


def _run(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(command[:4])}... failed ({done.returncode}); log {log}:\n{tail}")


def _build(env: Path, progress: Callable[[str], None]) -> None:
    if env.exists():
        shutil.rmtree(env)
    log = env.parent / f"{env.name}.log"
    log.write_text("")
    started = time.monotonic()
    progress(f"building {env} (nvidia-pytriton ~55 MB; once per requirements change)")
    _run([sys.executable, "-m", "venv", str(env)], log)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    _run([*pip, *REQUIREMENTS], log)
    (env / COMPLETE).write_text(json.dumps(REQUIREMENTS))
    progress(f"built in {time.monotonic() - started:.0f} s")
