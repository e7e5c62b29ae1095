"""The shadow: a copy of the requests the champion answers runs on another version, in another process.

The champion answers; `offer` keeps the request's inputs with the champion's outputs and returns at
once. At most QUEUE copies wait or run: one more is dropped and counted, so the shadow never makes a
client wait nor holds memory without bound. A feeder thread sends all the copies that wait, in one
message, to a worker process (serving/shadow_worker.py) that runs the shadow version's engine at the
lowest CPU priority and compares; the counts come back to the loop. Running the engine in the node,
even batched, cost the champion a third of its throughput on 2 cores (benchmarks/results/shadow.md):
the loop only appends to a deque, and pickling the copies happens on the feeder thread.

With --capture, the worker also sends each copy's outputs back (only then: they cost a pickling) and
the loop offers them to the Capture with role "shadow", under the shadow version, with the request's
id and inputs and the latency the worker measured; the Capture samples them as any request.

Nothing the shadow does or fails reaches a client: its failures are counted and logged once. A
worker that dies or does not load the version fails the copies it had and is started again, at most
RESTARTS times; then the shadow stops, with a log line saying why.

The inputs are kept, not copied: a request's arrays are its own (decoded into new arrays, read-only
views on its body, or copied out of shared memory at read) and nothing writes them afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
from collections import deque
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from time import perf_counter_ns
from typing import Any

from tritonflow.serving import shadow_worker
from tritonflow.serving.batcher import Tensors
from tritonflow.serving.capture import Capture
from tritonflow.serving.errors import InferenceFailed
from tritonflow.serving.metrics import ShadowStats
from tritonflow.serving.model_version import ModelVersion
from tritonflow.serving.shadow_worker import Copy, Outcome, Reply, Spec

log = logging.getLogger("tritonflow.serving")

QUEUE = 64  # copies waiting or running on the shadow; more are dropped
RESTARTS = 3  # worker processes started again after one failed, before the shadow stops
# NOTE: a start is a fresh interpreter, imports and a load, all at the lowest priority: on a busy
# machine it waits for idle cores (30 s seen at load average 13)
START_TIMEOUT_S = 300.0
EXIT_GRACE_S = 5.0  # how long a worker whose pipe closed may take to finish its message and exit


_Waiting = tuple[Copy, int, str | None]  # a copy, when it was offered, its request's id


class WorkerFailed(Exception):
    """The worker process died, did not load the version, or did not start in time."""


class Shadow:
    """Runs copies of `champion`'s requests on `target` in a worker process and compares; created
    and used on the loop. `repository` and `engine`: where and how the node loaded `target`."""

    def __init__(
        self,
        model: str,
        champion: ModelVersion,
        target: ModelVersion,
        repository: str,
        engine: str,
        capture: Capture | None = None,
        size: int = QUEUE,
    ) -> None:
        self.model = model
        self.champion = champion
        self.target = target
        self.capture = capture  # NOTE: None: --capture not given
        self.stats = ShadowStats()
        self._size = size
        self._output = next(iter(champion.outputs))  # NOTE: the first output: a classifier's probabilities
        self._spec = Spec(
            repository,
            model,
            target.version,
            target.config.SerializeToString(),
            engine,
            self._output,
            os.getpid(),
            capture is not None,
        )
        # (copy, when offered, its request's id): appended on the loop, taken by the feeder thread
        self._waiting: deque[_Waiting] = deque()
        self._queued = 0  # copies offered and not finished: counted on the loop only
        self._stopped = False
        self._logged = False
        self._wake = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._feeder = threading.Thread(target=self._feed, name=f"shadow {target.label}", daemon=True)
        self._feeder.start()

    def offer(self, inputs: Tensors, rows: int, outputs: Tensors, request_id: str | None = None) -> None:
        """Queue a copy of a request the champion answered (its raw outputs, before classification)."""
        if self._stopped or self._queued >= self._size:
            self.stats.dropped += 1
            return
        self._queued += 1
        self.target.stats.pending += 1
        self._waiting.append(((inputs, rows, outputs[self._output]), perf_counter_ns(), request_id))
        if not self._wake.is_set():
            self._wake.set()

    def stop(self) -> None:
        """Run no more copies: those waiting count as dropped, those running finish uncounted; the
        worker exits once its message is done."""
        if self._stopped:
            return
        self._stopped = True
        self.stats.dropped += len(self._waiting)
        self.target.stats.pending -= self._queued
        self._waiting.clear()
        self._wake.set()

    # -- the feeder thread ---------------------------------------------------------------------
    def _feed(self) -> None:
        """Start a worker (at once: it is warm for the first copy), send it what waits, hand the
        reply to the loop; a failed worker fails its copies and is replaced, RESTARTS times at most."""
        worker: _Worker | None = None
        failures = 0
        batch: list[_Waiting] = []
        try:
            while True:
                try:
                    worker = worker or _Worker(self._spec, self.target.label)
                    if batch and not self._to_loop(self._finish, batch, worker.run([c for c, _, _ in batch])):
                        return
                except WorkerFailed as exc:
                    if worker is not None:
                        worker.close()
                        worker = None
                    failures += 1
                    if batch and not self._to_loop(self._finish, batch, str(exc)):
                        return
                    if failures > RESTARTS:
                        self._to_loop(self._give_up, failures, str(exc))
                        return
                    log.warning(
                        "the shadow worker of %s failed (%s): starting another (%d of %d)",
                        self.target.label,
                        exc,
                        failures,
                        RESTARTS,
                    )
                batch = self._next()
                if not batch:
                    return
        finally:
            if worker is not None:
                worker.close()

    def _next(self) -> list[_Waiting]:
        """Every copy waiting, once there is one; [] once the shadow stops."""
        while True:
            self._wake.wait()
            self._wake.clear()  # NOTE: before reading: a copy offered after this sets it again
            if self._stopped:
                return []
            if self._waiting:
                return [self._waiting.popleft() for _ in range(len(self._waiting))]

    def _to_loop(self, callback: Any, *args: Any) -> bool:
        """Run `callback(*args)` on the loop; False once the loop is closed (the node is exiting)."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    # -- back on the loop ----------------------------------------------------------------------
    def _finish(self, batch: list[_Waiting], reply: Reply | str) -> None:
        """Count a message's copies: on the shadow version's own statistics, and compared or failed."""
        if self._stopped:  # its copies were taken off the pending count at stop
            return
        self._queued -= len(batch)
        stats = self.target.stats
        stats.pending -= len(batch)
        if isinstance(reply, str):  # NOTE: the worker failed, not the version's engine: its metrics keep out
            self.stats.failed += len(batch)
            self._failed(reply)
            return
        calls, outcomes, compared = reply
        for execution in calls:
            stats.record_execution(execution)
        for ((inputs, rows, _), started, request_id), outcome in zip(batch, outcomes, strict=True):
            self._count(started, rows, outcome)
            if self.capture is not None and outcome.outputs is not None:
                # NOTE: the start as the worker measured it, on this process's clock
                began = perf_counter_ns() - outcome.latency_ns
                self.capture.offer(self.target, "shadow", request_id, inputs, rows, outcome.outputs, began)
        self._merge(compared)

    def _count(self, started: int, rows: int, outcome: Outcome) -> None:
        stats = self.target.stats
        if outcome.execution is None:
            # NOTE: the shadow's engine failed: its own metrics say so
            stats.record_failure(started, InferenceFailed(self.target.label, outcome.error or ""))
        else:
            stats.record_success(started, rows, outcome.execution)
        if outcome.error is not None:
            self.stats.failed += 1
            self._failed(outcome.error)

    def _merge(self, compared: ShadowStats) -> None:
        """Add the worker's comparison of one message to the pair's counts."""
        self.stats.compared += compared.compared
        self.stats.total += compared.total
        self.stats.buckets = [a + b for a, b in zip(self.stats.buckets, compared.buckets, strict=True)]

    def _give_up(self, failures: int, reason: str) -> None:
        log.error(
            "stopped the shadow %s of %s: its worker process failed %d times, last: %s; the champion "
            "serves on; set the shadow again once the version loads",
            self.target.label,
            self.champion.label,
            failures,
            reason,
        )
        self.stop()

    def _failed(self, reason: str) -> None:
        level = logging.DEBUG if self._logged else logging.WARNING
        self._logged = True
        log.log(
            level,
            "shadow %s of %s failed (the champion answered): %s",
            self.target.label,
            self.champion.label,
            reason,
        )


class _Worker:
    """One worker process, as the feeder thread sees it: started and loaded, or WorkerFailed."""

    def __init__(self, spec: Spec, label: str) -> None:
        context = multiprocessing.get_context("spawn")  # NOTE: not fork: the node has threads
        self._conn, child = context.Pipe()
        self._process: BaseProcess = context.Process(
            target=shadow_worker.main, args=(child, spec), name=f"tritonflow-shadow {label}", daemon=True
        )
        try:
            self._process.start()  # NOTE: multiprocessing also ends daemon children when the node exits
            child.close()  # NOTE: so the worker's death reads as the pipe's end
            kind, value = self._reply(START_TIMEOUT_S)
        except OSError as exc:
            self.close()
            raise WorkerFailed(f"the worker process did not start: {exc}") from exc
        except WorkerFailed:
            self.close()
            raise
        if kind != "ready":
            self.close()
            raise WorkerFailed(f"the version does not load in the worker process: {value}")
        log.info("shadow %s runs in process %d (engine=%s)", label, self._process.pid, value)

    def run(self, copies: list[Copy]) -> Reply:
        try:
            self._conn.send(copies)
        except OSError:
            raise self._died() from None
        reply: Reply = self._reply(None)
        return reply

    def _reply(self, timeout: float | None) -> Any:
        ready = wait([self._conn, self._process.sentinel], timeout)
        if self._conn in ready:
            try:
                return self._conn.recv()
            except (EOFError, OSError):  # NOTE: a socket pair: a peer that died unread resets it
                pass
        elif not ready:
            raise WorkerFailed(f"the worker process did not start within {timeout:g} s")
        raise self._died()

    def _died(self) -> WorkerFailed:
        self._process.join(EXIT_GRACE_S)
        code = self._process.exitcode
        how = signal.Signals(-code).name if code is not None and code < 0 else f"exit status {code}"
        return WorkerFailed(f"the worker process {self._process.pid} ended ({how})")

    def close(self) -> None:
        """End the worker: its pipe closes, it finishes its message and exits (else it is killed)."""
        self._conn.close()
        if self._process.pid is None:  # never started
            return
        self._process.join(EXIT_GRACE_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
