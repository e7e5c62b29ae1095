"""The shadow: a copy of the requests the champion answers runs on another version, off the response path.

The champion answers; `offer` keeps the request's inputs with the champion's outputs and returns at
once. At most QUEUE copies wait or run: one more is dropped and counted, so the shadow never makes a
client wait nor holds memory without bound. One task drains the copies, submitting all that wait at
once to the shadow's batcher (they batch as the champion's requests do), then compares the
outputs row by row. Nothing the shadow does or fails reaches a client: its failures are counted and
logged once. Its engine work is the shadow's real cost (benchmarks/results/shadow.md): the copies go
through the batcher like any request, inline when small, because forcing them onto the worker thread
cost the champion more (p50 1.05 against 0.54 ms at one connection, 2 cores: GIL hand-offs).

The inputs are kept, not copied: a request's arrays are its own (decoded into new arrays, read-only
views on its body, or copied out of shared memory at read) and nothing writes them afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter_ns

import numpy as np

from tritonflow.serving.batcher import Tensors
from tritonflow.serving.metrics import ShadowStats
from tritonflow.serving.model_version import ModelVersion

log = logging.getLogger("tritonflow.serving")

QUEUE = 64  # copies waiting or running on the shadow; more are dropped


def disagreement(champion: np.ndarray, shadow: np.ndarray, batched: bool) -> np.ndarray:
    """Per row, the largest absolute difference over its columns (an unbatched model's answer is
    one row); for BYTES outputs 0 where the row is equal, 1 where it is not."""
    rows = champion.shape[0] if batched else 1
    a, b = champion.reshape(rows, -1), shadow.reshape(rows, -1)
    if a.shape != b.shape:
        raise ValueError(
            f"the shadow's output has shape {list(shadow.shape)}, the champion's {list(champion.shape)}"
        )
    if not a.shape[1]:
        return np.zeros(rows)
    if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":
        return np.any(a != b, axis=1).astype(np.float64)
    return np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), axis=1)


class Shadow:
    """Runs copies of `champion`'s requests on `target` and compares; created and used on the loop."""

    def __init__(self, model: str, champion: ModelVersion, target: ModelVersion, size: int = QUEUE) -> None:
        self.model = model
        self.champion = champion
        self.target = target
        self.stats = ShadowStats()
        self._size = size
        self._waiting: deque[tuple[Tensors, int, np.ndarray]] = deque()
        self._running = 0
        self._wake = asyncio.Event()
        self._output = next(iter(champion.outputs))  # NOTE: the first output: a classifier's probabilities
        self._logged = False
        self._task = asyncio.get_running_loop().create_task(self._drain())

    def offer(self, inputs: Tensors, rows: int, outputs: Tensors) -> None:
        """Queue a copy of a request the champion answered (its raw outputs, before classification)."""
        if len(self._waiting) + self._running >= self._size:
            self.stats.dropped += 1
            return
        self._waiting.append((inputs, rows, outputs[self._output]))
        self._wake.set()

    def stop(self) -> None:
        """Run no more copies: those waiting count as dropped, those running finish uncounted."""
        self._task.cancel()
        self.stats.dropped += len(self._waiting)
        self._waiting.clear()

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                batch = list(self._waiting)
                self._waiting.clear()
                self._running = len(batch)
                # NOTE: acquired for the batch: a swap that retires the shadow unloads it after these
                self.target.acquire()
                try:
                    await asyncio.gather(*(self._run(*copy) for copy in batch))
                finally:
                    self._running = 0
                    self.target.release()

    async def _run(self, inputs: Tensors, rows: int, expected: np.ndarray) -> None:
        stats, started = self.target.stats, perf_counter_ns()
        stats.pending += 1
        try:
            outputs, execution = await self.target.batcher.submit(inputs, rows)
        except Exception as exc:
            stats.record_failure(started, exc)  # NOTE: the shadow's engine failed: its own metrics say so
            self._failed(exc)
            return
        finally:
            stats.pending -= 1
        stats.record_success(started, rows, execution)
        try:
            per_row = disagreement(expected, outputs[self._output], self.target.max_batch_size > 0)
        except (
            ValueError
        ) as exc:  # NOTE: answers that cannot be compared: the shadow's failure, not its engine's
            self._failed(exc)
            return
        self.stats.observe(per_row)

    def _failed(self, exc: Exception) -> None:
        self.stats.failed += 1
        level = logging.DEBUG if self._logged else logging.WARNING
        self._logged = True
        log.log(
            level,
            "shadow %s of %s failed (the champion answered): %s",
            self.target.label,
            self.champion.label,
            exc,
        )
