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

Large requests do not starve small ones: no engine call is larger than a chunk, about CHUNK_NS of
engine time (its rows learnt from this version's own calls). A request of more rows runs chunk by
chunk, its outputs reassembled in row order; after each chunk the worker runs the small requests
queued meanwhile (merged, as above, up to a chunk), then the next chunk. A 1-row request waits for
one chunk, not for 8,192 rows, and a stream of small ones cannot stall a large one. Large requests
run one after another, in order.
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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter_ns, sleep
from typing import Any, Protocol, TypeAlias

import numpy as np

from tritonflow.serving.backends import RefusedValues
from tritonflow.serving.errors import InferenceFailed, ServingError, ValuesRefused
from tritonflow.serving.model_config import ModelConfig

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
_STOP = object()
_PR_SET_TIMERSLACK = 29
# Up to this many rows, an engine call may run inline on the loop (see above).
INLINE_ROWS = 16
# The engine time a chunk aims at: what a small request may wait behind a large one (on nvForest,
# which holds the GIL, the event loop as well). A call's own overhead is ~10 us (nvForest) to ~50 us
# (Treelite GTIL): 1-5% of it. Longer chunks reach the forest backend's second OpenMP thread, and on
# 2 busy cores those calls ran 2-3x slower per row (benchmarks/results/fairness.md).
CHUNK_NS = 1_000_000
# A large request's first chunk, before this version's time per row is known: 1,024 rows take
# 0.4 ms on nvForest and 4.4 ms on GTIL for the starter pack's forest, 14-22 ms for 500 trees of depth 8.
FIRST_CHUNK_ROWS = 1_024
# Chunks never get smaller (and calls of fewer rows teach nothing: their fixed overhead dominates).
MIN_CHUNK_ROWS = 64


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
    done: int = 0  # rows run so far, when it runs in chunks
    pieces: list[tuple[Tensors, Execution]] = field(default_factory=list)  # each chunk's outputs and call


Answers = list[tuple[_Item, tuple[Tensors, Execution] | ServingError]]  # each request's result, or its error
Outcome: TypeAlias = tuple[list[Tensors], Execution] | ServingError


def _precise_timeouts() -> None:
    """Make this thread's timed waits end on time.

    NOTE: Linux lets a timed wait overshoot by the thread's timer slack, 50 us by default: half
    of a typical max_queue_delay. 1 us of slack keeps the wait to what the config says.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)


class Runner(Protocol):
    """What runs a loaded version's requests: a Batcher over its engine, or an ensemble's steps."""

    def submit(self, inputs: Tensors, rows: int) -> Awaitable[tuple[Tensors, Execution]]: ...

    def close(self, then: Callable[[], None]) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


class Batcher:
    def __init__(
        self,
        label: str,
        predict: Callable[[Tensors], Tensors],
        policy: BatchPolicy | None,
        on_execution: Callable[[Execution], None],
        traffic: Traffic,
        loop: asyncio.AbstractEventLoop,
        batch_rows: int = 0,
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
        # The worker's own: requests taken off the queue, by size, and the rows of a chunk.
        self._small: deque[_Item] = deque()
        self._large: deque[_Item] = deque()
        # NOTE: a batch engine's floor (Backend.batch_rows) lets a chunk run past CHUNK_NS: its rows
        # at a fraction of the per-row cost beat a small request's shorter wait
        self._min_chunk_rows = max(MIN_CHUNK_ROWS, batch_rows)
        self._chunk_rows = max(FIRST_CHUNK_ROWS, self._min_chunk_rows)
        self._stopping = False
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
        """One engine call on the loop if it is small and no small request waits for the worker.

        NOTE: a large request the worker is running does not stop it: between two chunks the
        engine is free, and a small request then need not wait for the next chunk.
        """
        if rows > self._inline_rows or self._small or not self._queue.empty():
            return False
        if not self._engine.acquire(blocking=False):
            return False
        try:
            for settled in self._settle(batch):
                self._finish(*settled)
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
        while True:
            if not (self._small or self._large):
                if self._stopping:
                    break
                self._sort(self._queue.get())
            self._drain()
            # NOTE: one engine call for the small requests, then one chunk of a large one: neither starves.
            if self._small:
                self._execute(self._gather())
            if self._large:
                # NOTE: nvForest holds the GIL through a call; this lets a waiting loop in first, else it
                # would only ask for the GIL back after the 5 ms switch interval, several chunks later.
                sleep(0)
                self._execute_chunk(self._large[0])
        try:
            self._on_close()
        except Exception:
            log.exception("closing %s failed", self.label)

    def _sort(self, item: Any) -> None:
        if item is _STOP:
            self._stopping = True
        elif item.rows > self._chunk_rows:
            self._large.append(item)
        else:
            self._small.append(item)

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            self._sort(item)

    def _gather(self) -> list[_Item]:
        """The small requests of the next engine call, in order: with a policy, merged up to its
        size (never past a chunk), waiting up to its delay while others in the server could join."""
        batch = [self._small.popleft()]
        policy = self._policy
        if policy is None:
            return batch
        rows = batch[0].rows
        limit = min(policy.max_rows, self._chunk_rows)
        target = min(policy.target_rows, limit)
        deadline = batch[0].submitted_ns + policy.delay_ns
        while rows < target:
            if self._small:
                if rows + self._small[0].rows > limit:
                    break
                batch.append(self._small.popleft())
                rows += batch[-1].rows
                continue
            wait = (deadline - perf_counter_ns()) / 1e9
            # NOTE: requests queued as large cannot join this call: they are no reason to wait.
            if rows in policy.preferred or wait <= 0 or self._traffic.active <= len(batch) + len(self._large):
                break
            try:
                self._sort(self._queue.get(timeout=wait))
            except queue.Empty:
                break
        return batch

    def _execute(self, batch: list[_Item]) -> None:
        with self._engine:
            settled = self._settle(batch)
        for execution, answers in settled:
            self._loop.call_soon_threadsafe(self._finish, execution, answers)

    def _settle(self, batch: list[_Item]) -> list[tuple[Execution | None, Answers]]:
        """Whole requests in one engine call (the engine lock held): each call to count, with the
        requests it answered. A merged call that fails runs again request by request, so one
        request's values (a category its model refuses) fail that request alone."""
        outcome = self._call([(item.inputs, item.rows) for item in batch])
        if len(batch) == 1 or not isinstance(outcome, ServingError):
            return [_answers(batch, outcome)]
        return [_answers([item], self._call([(item.inputs, item.rows)])) for item in batch]

    def _execute_chunk(self, item: _Item) -> None:
        """The next chunk of a large request; after its last one, the request's reassembled outputs."""
        left = item.rows - item.done
        # NOTE: what is left in equal chunks: no last chunk of a few rows paying for a whole call.
        start, stop = item.done, item.done + _ceil_div(left, _ceil_div(left, self._chunk_rows))
        with self._engine:
            outcome = self._call(
                [({k: v[start:stop] for k, v in item.inputs.items()}, stop - start)], chunk=True
            )
        if isinstance(outcome, ServingError):
            self._large.popleft()
            failed: Answers = [(item, outcome)]
            self._loop.call_soon_threadsafe(self._finish, None, failed)
            return
        ([outputs], execution) = outcome
        item.pieces.append((outputs, execution))
        item.done = stop
        answers: Answers = []
        if stop == item.rows:
            self._large.popleft()
            answers.append((item, _assemble(item)))
        self._loop.call_soon_threadsafe(self._finish, execution, answers)

    def _call(self, parts: list[tuple[Tensors, int]], chunk: bool = False) -> Outcome:
        """One engine call on `parts` (inputs, rows): each part's outputs and the timing, or the
        error to answer with. Merged or chunked (`chunk`), outputs must have a row per input row."""
        started = perf_counter_ns()
        try:
            if len(parts) == 1:
                inputs, rows = parts[0]
            else:
                inputs = {name: np.concatenate([part[0][name] for part in parts]) for name in parts[0][0]}
                rows = sum(part[1] for part in parts)
            merged = perf_counter_ns()
            outputs = self._predict(inputs)
            inferred = perf_counter_ns()
            if chunk or len(parts) > 1:
                for name, array in outputs.items():
                    if len(array) != rows:
                        raise ValueError(f"output {name!r} has {len(array)} rows for {rows} input rows")
            if len(parts) == 1:
                results = [outputs]
            else:
                offsets = itertools.accumulate((part[1] for part in parts), initial=0)
                results = [{k: v[a:b] for k, v in outputs.items()} for a, b in itertools.pairwise(offsets)]
        except RefusedValues as exc:  # NOTE: the client's values, not a fault: no traceback
            return ValuesRefused(self.label, str(exc))
        except Exception as exc:
            log.exception("engine call of %s failed on %d request(s)", self.label, len(parts))
            return InferenceFailed(self.label, f"{type(exc).__name__}: {exc}")
        self._learn(rows, inferred - merged)
        return results, Execution(rows, started, merged, inferred, perf_counter_ns())

    def _learn(self, rows: int, infer_ns: int) -> None:
        """Size the next chunks to CHUNK_NS of engine time, from this call's time per row (smoothed:
        one call slowed by a busy machine moves it a quarter of the way)."""
        if rows >= MIN_CHUNK_ROWS:  # NOTE: so only the worker writes it: inline calls are smaller
            fitted = rows * CHUNK_NS // max(infer_ns, 1)
            self._chunk_rows = max(self._min_chunk_rows, (3 * self._chunk_rows + fitted) // 4)

    # -- back on the loop ------------------------------------------------------------------
    def _finish(self, execution: Execution | None, answers: Answers) -> None:
        """Count an engine call (None: it failed) and answer the requests it completed."""
        if execution is not None:
            self._on_execution(execution)
        for item, answer in answers:
            if item.future.done():  # a cancelled request (client gone) has no one to tell
                continue
            if isinstance(answer, ServingError):
                item.future.set_exception(answer)
            else:
                item.future.set_result(answer)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _answers(batch: list[_Item], outcome: Outcome) -> tuple[Execution | None, Answers]:
    """An engine call on whole requests: the call to count, and each request's result."""
    if isinstance(outcome, ServingError):
        return None, [(item, outcome) for item in batch]
    results, execution = outcome
    return execution, [(item, (out, execution)) for item, out in zip(batch, results, strict=True)]


def _assemble(item: _Item) -> tuple[Tensors, Execution]:
    """A chunked request's outputs in row order, and its timing: the chunks' phases end to end,
    ending with its last chunk; the waits between chunks (other requests' calls) are queue time."""
    outputs = {name: np.concatenate([out[name] for out, _ in item.pieces]) for name in item.pieces[0][0]}
    calls = [call for _, call in item.pieces]
    started = calls[-1].ended_ns - sum(c.ended_ns - c.started_ns for c in calls)
    merged = started + sum(c.input_ns - c.started_ns for c in calls)
    inferred = merged + sum(c.infer_ns - c.input_ns for c in calls)
    ended = inferred + sum(c.ended_ns - c.infer_ns for c in calls)
    return outputs, Execution(item.rows, started, merged, inferred, ended)
