"""Runs one model version's engine calls, merging requests when the config asks for batching.

With `dynamic_batching` in the config, the requests submitted during one turn of the event loop
are gathered (a burst from many connections arrives in one turn) and run as one engine call
(concatenate on axis 0, split the outputs back by row offsets). A small gathering runs on the
loop itself when the worker is idle: the hop to the worker thread and back costs more (about
25 us) than the engine call (about 10 us for a few rows). A larger one goes to the version's
worker thread, which merges what is queued until the batch reaches the largest preferred size
(else max_batch_size) or the oldest request has waited max_queue_delay_microseconds. That delay
is a maximum: the worker waits only while other requests are in the server and could join, so a
lone request (a sequential client) pays none, and a preferred size already reached runs at once.

Without `dynamic_batching`, every request is its own engine call: on the loop when it is small
and alone in the server, else on the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

import numpy as np

from tritonflow.serving.errors import InferenceFailed
from tritonflow.serving.model_config import ModelConfig

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
_STOP = object()
_PR_SET_TIMERSLACK = 29
# Up to this many rows, an engine call may run inline on the loop (see above).
INLINE_ROWS = 16


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_rows: int
    preferred: frozenset[int]
    delay_ns: int
    target_rows: int = field(init=False)  # gathering stops here: the largest preferred size, else max_rows

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_rows", max(self.preferred, default=self.max_rows))

    @classmethod
    def from_config(cls, config: ModelConfig) -> BatchPolicy | None:
        """The config's dynamic batching, or None when each request runs on its own."""
        if not config.HasField("dynamic_batching") or config.max_batch_size <= 0:
            return None
        batching = config.dynamic_batching
        return cls(
            max_rows=config.max_batch_size,
            preferred=frozenset(batching.preferred_batch_size),
            delay_ns=batching.max_queue_delay_microseconds * 1000,
        )


class Traffic:
    """Requests the server is handling now: the router counts them, batch workers read the count
    (a plain int: a hint for whether to wait, so no lock)."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


@dataclass(frozen=True, slots=True)
class Execution:
    """One engine call: its rows and when each phase ended (perf_counter_ns)."""

    rows: int
    started_ns: int  # left the queue
    input_ns: int  # inputs merged
    infer_ns: int  # engine returned
    ended_ns: int  # outputs split


@dataclass(slots=True)
class _Item:
    inputs: Tensors
    rows: int
    future: asyncio.Future[tuple[Tensors, Execution]]
    submitted_ns: int


def _precise_timeouts() -> None:
    """Make this thread's timed waits end on time.

    NOTE: Linux lets a timed wait overshoot by the thread's timer slack, 50 us by default: half
    of a typical max_queue_delay. 1 us of slack keeps the wait to what the config says.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)


class Batcher:
    def __init__(
        self,
        label: str,
        predict: Callable[[Tensors], Tensors],
        policy: BatchPolicy | None,
        on_execution: Callable[[Execution], None],
        traffic: Traffic,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.label = label
        self._predict = predict
        self._policy = policy
        self._on_execution = on_execution
        self._traffic = traffic
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Held for every engine call: the worker's and the loop's inline ones never overlap.
        self._engine = threading.Lock()
        self._closed = False
        self._turn: list[_Item] = []  # submitted during this turn of the loop (batching on)
        self._inline_rows = min(INLINE_ROWS, policy.max_rows) if policy is not None else INLINE_ROWS
        self._on_close: Callable[[], None] = lambda: None
        self._thread = threading.Thread(target=self._run, name=f"engine {label}", daemon=True)
        self._thread.start()

    def submit(self, inputs: Tensors, rows: int) -> asyncio.Future[tuple[Tensors, Execution]]:
        """Queue a request (on the loop); the future gets its outputs and the engine call's timing."""
        future = self._loop.create_future()
        item = _Item(inputs, rows, future, perf_counter_ns())
        if self._policy is not None and not self._closed:
            self._turn.append(item)
            if len(self._turn) == 1:
                self._loop.call_soon(self._end_turn)
        elif self._closed or self._traffic.active > 1 or not self._run_inline([item], rows):
            self._queue.put(item)
        return future

    def _end_turn(self) -> None:
        """Run the requests submitted during this turn of the loop together (batching on)."""
        batch, self._turn = self._turn, []
        if not self._run_inline(batch, sum(item.rows for item in batch)):
            for item in batch:
                self._queue.put(item)

    def _run_inline(self, batch: list[_Item], rows: int) -> bool:
        """One engine call on the loop if it is small and the worker has nothing queued or running."""
        if rows > self._inline_rows or not self._queue.empty() or not self._engine.acquire(blocking=False):
            return False
        try:
            self._finish(batch, self._call(batch))
        finally:
            self._engine.release()
        return True

    def close(self, then: Callable[[], None]) -> None:
        """Finish what is queued, run `then` on the worker (e.g. free the engine), stop the thread."""
        self._on_close = then
        self._closed = True
        self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the worker thread -----------------------------------------------------------------
    def _run(self) -> None:
        if self._policy is not None and self._policy.delay_ns:
            _precise_timeouts()
        carry = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                break
            batch = [first]
            if self._policy is not None:
                carry = self._gather(batch, self._policy)
            self._execute(batch)
        try:
            self._on_close()
        except Exception:
            log.exception("closing %s failed", self.label)

    def _gather(self, batch: list[_Item], policy: BatchPolicy) -> Any:
        """Add queued requests to `batch`; return the item that did not fit, if any."""
        rows = batch[0].rows
        deadline = batch[0].submitted_ns + policy.delay_ns
        while rows < policy.target_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                wait = (deadline - perf_counter_ns()) / 1e9
                if rows in policy.preferred or wait <= 0 or self._traffic.active <= len(batch):
                    return None
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    return None
            if item is _STOP or rows + item.rows > policy.max_rows:
                return item
            batch.append(item)
            rows += item.rows
        return None

    def _execute(self, batch: list[_Item]) -> None:
        with self._engine:
            outcome = self._call(batch)
        self._loop.call_soon_threadsafe(self._finish, batch, outcome)

    def _call(self, batch: list[_Item]) -> tuple[list[Tensors], Execution] | str:
        """One engine call for `batch`: each request's outputs and the timing, or the failure reason."""
        started = perf_counter_ns()
        try:
            if len(batch) == 1:
                inputs, rows = batch[0].inputs, batch[0].rows
            else:
                inputs = {
                    name: np.concatenate([item.inputs[name] for item in batch]) for name in batch[0].inputs
                }
                rows = sum(item.rows for item in batch)
            merged = perf_counter_ns()
            outputs = self._predict(inputs)
            inferred = perf_counter_ns()
            if len(batch) == 1:
                results = [outputs]
            else:
                for name, array in outputs.items():
                    if len(array) != rows:
                        raise ValueError(f"output {name!r} has {len(array)} rows for {rows} input rows")
                offsets = itertools.accumulate((item.rows for item in batch), initial=0)
                results = [{k: v[a:b] for k, v in outputs.items()} for a, b in itertools.pairwise(offsets)]
        except Exception as exc:
            log.exception("engine call of %s failed on %d request(s)", self.label, len(batch))
            return f"{type(exc).__name__}: {exc}"
        return results, Execution(rows, started, merged, inferred, perf_counter_ns())

    # -- back on the loop ------------------------------------------------------------------
    def _finish(self, batch: list[_Item], outcome: tuple[list[Tensors], Execution] | str) -> None:
        """Answer every request of an engine call: its outputs, or the failure (a reason string)."""
        if not isinstance(outcome, str):
            self._on_execution(outcome[1])
        for i, item in enumerate(batch):
            if item.future.done():  # a cancelled request (client gone) has no one to tell
                continue
            if isinstance(outcome, str):
                item.future.set_exception(InferenceFailed(self.label, outcome))
            else:
                item.future.set_result((outcome[0][i], outcome[1]))
