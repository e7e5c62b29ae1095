"""`tritonflow serve --workers N`: a supervisor and N worker processes, each today's node.

One Python event loop is the node's limit, so N processes share the listening sockets: the
supervisor binds them once (serving/listeners.py, the same checks as a single node) and each worker
inherits them, runs its own event loop and registry, and loads every model itself. The kernel hands
each new HTTP connection to one worker; gRPC's own sockets join the held port with SO_REUSEPORT.
The workers agree through serving/peers.py (summed metrics and statistics, readiness, load/unload).

The supervisor restarts a worker that dies (logging its exit status or signal), and on SIGTERM or
SIGINT sends SIGTERM to every worker and waits: each drains as a single node does. Workers run in
their own process group (a terminal's Ctrl-C reaches the supervisor only, which stops them once)
and stop themselves if the supervisor is gone. A worker that fails its start-up (a model that
cannot load in mode none, say) exits 1: the supervisor then stops the node, as a single node stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tritonflow.lineage.arguments import argument_type
from tritonflow.serving.peers import resident_bytes, socket_path

log = logging.getLogger("tritonflow.serving")

STARTUP_FAILED = 1  # a worker's exit status when its node did not start (serving/server.py run_node)
QUICK_DEATH_S = 5.0  # a worker that dies sooner after its start waits this long before the next one
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s"
ENTRY = "from tritonflow.serving.workers import work; work()"


def worker_count(text: str) -> int:
    """--workers: a count, or `auto` for one per CPU."""
    if text == "auto":
        return os.cpu_count() or 1
    return argument_type(int, lambda v: v > 0, "a number of workers >= 1, or auto")(text)


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float


class Supervisor:
    """Starts the workers on the bound sockets, restarts those that die, stops them all on a signal."""

    def __init__(
        self, args: argparse.Namespace, sockets: list[socket.socket], held: list[socket.socket]
    ) -> None:
        self.count = args.workers
        self.sockets = sockets
        # NOTE: gRPC's port stays held by sockets that are bound, not listening: a listening one would
        # take a share of the connections (SO_REUSEPORT) and reset them once the worker's gRPC listens
        self.grpc_held = [_reserve(*sock.getsockname()[:2]) for sock in held]
        for sock in held:
            sock.close()
        self.run_dir = Path(tempfile.mkdtemp(prefix="tritonflow-workers-"))
        # NOTE: the parsed flags, less what argparse attached (the parser holds unpicklable closures)
        options = {k: v for k, v in vars(args).items() if k not in ("handler", "command_parser")}
        self.spec = self.run_dir / "spec.pickle"
        self.spec.write_bytes(pickle.dumps(argparse.Namespace(**options)))
        # NOTE: each worker holds the read end; EOF there means the supervisor is gone
        self.alive_r, self.alive_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()
        self.stopping = False
        self.failed = False
        self.reported: set[int] = set()

    def run(self) -> int:
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        try:
            workers = {i: self._start(i) for i in range(self.count)}
            pids = ", ".join(str(w.process.pid) for w in workers.values())
            log.info("%d workers started (pids %s)", self.count, pids)
            self._supervise(workers)
            codes = [w.process.wait() for w in workers.values()]
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if self.failed or any(codes) else 0

    def _supervise(self, workers: dict[int, Worker]) -> None:
        while not self.stopping:
            select.select([self.wake_r], [], [], 0.5)
            _drain(self.wake_r)
            for index, worker in list(workers.items()):
                code = worker.process.poll()
                if code is None or self.stopping:
                    continue
                served = socket_path(self.run_dir, index)  # NOTE: made once its node has started
                if code == STARTUP_FAILED and not served.exists():
                    log.error("worker %d could not start its node: stopping the others", index)
                    self.failed = self.stopping = True
                    break
                log.error("worker %d (pid %d) %s: restarting it", index, worker.process.pid, _death(code))
                served.unlink(missing_ok=True)
                if time.monotonic() - worker.started < QUICK_DEATH_S:
                    select.select([self.wake_r], [], [], QUICK_DEATH_S)  # NOTE: a signal ends the wait
                    if self.stopping:
                        break
                workers[index] = self._start(index)
                self.reported.discard(index)
            self._report_memory(workers)
        for worker in workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)

    def _start(self, index: int) -> Worker:
        fds = [s.fileno() for s in [*self.sockets, *self.grpc_held]]
        command = [
            *(sys.executable, "-c", ENTRY, str(self.spec), str(index), str(self.alive_r)),
            ",".join(str(s.fileno()) for s in self.sockets),
            ",".join(str(s.fileno()) for s in self.grpc_held),
        ]
        process = subprocess.Popen(command, pass_fds=[*fds, self.alive_r], start_new_session=True)
        return Worker(index, process, time.monotonic())

    def _report_memory(self, workers: dict[int, Worker]) -> None:
        """Once every worker serves (again): each one's resident memory and the total, in one line."""
        serving = {i for i in workers if socket_path(self.run_dir, i).exists()}
        if serving == set(workers) and serving != self.reported:
            self.reported = serving
            sizes = [resident_bytes(w.process.pid) for w in workers.values()]
            log.info(
                "%d workers serving; resident memory %s MiB, %.0f MiB in all",
                len(sizes),
                " + ".join(f"{s / 2**20:.0f}" for s in sizes),
                sum(sizes) / 2**20,
            )

    def _stop(self, signum: int, frame: object) -> None:
        log.info("%s: stopping the workers (each lets its requests finish)", signal.Signals(signum).name)
        self.stopping = True


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to gRPC's address with SO_REUSEPORT, as gRPC's own are, that never listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    return sock


def _drain(fd: int) -> None:
    """Empties the signal wake-up pipe (its bytes only wake the loop)."""
    os.set_blocking(fd, False)
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _death(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


def work() -> None:
    """A worker process: argv is the spec file, the worker's index, the supervisor's pipe, and the
    inherited socket fds (HTTP and metrics, then the gRPC hold)."""
    spec, index, alive, served, held = sys.argv[1:6]
    from tritonflow.serving import server  # NOTE: the serving stack, imported in the worker only

    args, run_dir = pickle.loads(Path(spec).read_bytes()), Path(spec).parent
    server.configure_logging(WORKER_LOG_FORMAT.format(index=index))
    orphaned = threading.Event()
    threading.Thread(target=_stop_with_supervisor, args=(int(alive), orphaned), daemon=True).start()
    sockets = [socket.socket(fileno=int(fd)) for fd in served.split(",") if fd]
    grpc = [socket.socket(fileno=int(fd)) for fd in held.split(",") if fd]
    code = server.serve_worker(args, sockets, grpc, int(index), run_dir)
    if orphaned.is_set():  # NOTE: no supervisor is left to remove the run folder; a peer still draining
        shutil.rmtree(run_dir, ignore_errors=True)  # only finds this worker's socket gone
    sys.exit(code)


def _stop_with_supervisor(fd: int, orphaned: threading.Event) -> None:
    """Blocks until the supervisor's end of the pipe closes (it exited, or was killed), then drains."""
    os.read(fd, 1)
    orphaned.set()
    os.kill(os.getpid(), signal.SIGTERM)
