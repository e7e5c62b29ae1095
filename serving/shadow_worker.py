"""The shadow's worker process: the shadow version's engine, off the node's cores when they are busy.

serving/shadow.py starts it with spawn (the node has threads: a forked child could inherit their
locks held) and it runs at the lowest CPU priority, so on a busy machine the champion's requests get
the cores first. It loads the version through the node's own Loader (its record checked, its files
verified, the node's engine), then answers one message at a time: copies in (each request's inputs
and the champion's output), the comparison out, and each copy's outputs when the node captures them.
The copies go through a Batcher as requests do in the node, so they batch and chunk as the version's
config says. It exits when its pipe closes or its parent is gone (and the kernel kills it with the
thread that started it), so it never outlives the node.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from time import perf_counter_ns
from typing import NamedTuple

import numpy as np

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.backends import Backend
from tritonflow.serving.batcher import Batcher, BatchPolicy, Execution, Tensors, Traffic
from tritonflow.serving.loading import Loader, LoadSettings
from tritonflow.serving.metrics import ShadowStats
from tritonflow.serving.model_config import ModelConfig
from tritonflow.serving.probe import die_with_parent

PARENT_CHECK_S = 1.0  # how often an idle worker checks that the node is still its parent

Copy = tuple[Tensors, int, np.ndarray]  # a request's inputs, its rows, the champion's compared output


@dataclass(frozen=True)
class Spec:
    """What the worker loads: the version as the node loaded it, and what it compares."""

    repository: str  # the node's repository URI
    model: str
    version: int
    config: bytes  # the config the node loaded the version under (a serialized ModelConfig)
    engine: str  # the node's forest engine (`--engine`)
    output: str  # the output compared: the champion's first
    node_pid: int
    answers: bool = False  # send each copy's outputs back (the node captures them): pickled only then


class Outcome(NamedTuple):
    """One copy's result: its timing (None: the engine failed on it), why it failed or could not be
    compared (None: compared), and with Spec.answers the shadow's outputs and its time in the worker."""

    execution: Execution | None
    error: str | None
    outputs: Tensors | None = None
    latency_ns: int = 0


Reply = tuple[list[Execution], list[Outcome], ShadowStats]  # the engine calls, each copy's, the comparison


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


def main(conn: Connection, spec: Spec) -> None:
    """The worker's life: load, say ("ready", engine) or ("refused", why), then answer each message
    (a list of copies) with a Reply until the pipe closes or the node is gone."""
    die_with_parent(spec.node_pid)
    os.nice(19)
    config = ModelConfig.FromString(spec.config)
    try:
        backend = _load(spec, config)
    except Exception as exc:  # NOTE: the loader's VersionRefused says why; anything else names its type
        why = str(exc) if isinstance(exc, TritonflowError) else f"{type(exc).__name__}: {exc}"
        _say(conn, ("refused", why))
        return
    if not _say(conn, ("ready", backend.engine)):
        backend.unload()
        return
    loop = asyncio.new_event_loop()
    calls: list[Execution] = []
    # NOTE: no traffic: every copy of a message is submitted at once, so no batch waits for more
    batcher = Batcher(
        f"{spec.model}:{spec.version} (shadow)",
        backend.predict,
        BatchPolicy.from_config(config),
        calls.append,
        Traffic(),
        loop,
        backend.batch_rows,
    )
    try:
        while (copies := _receive(conn, spec.node_pid)) is not None:
            outcomes, stats = loop.run_until_complete(
                _run(batcher, copies, spec.output, config.max_batch_size > 0, spec.answers)
            )
            conn.send((list(calls), outcomes, stats))
            calls.clear()
    except OSError:  # NOTE: the node closed the pipe while a reply was on its way: it stopped the shadow
        pass
    finally:
        batcher.close(then=backend.unload)
        batcher.join(5)


def _load(spec: Spec, config: ModelConfig) -> Backend:
    """The version's engine, loaded as the node loads a version (checks included, no probe: the node
    probed it before serving it); the downloads and checked copy are gone once the engine has them."""
    with tempfile.TemporaryDirectory(prefix="tritonflow-shadow-") as cache:
        loader = Loader(LoadSettings(engine=spec.engine, cache_dir=Path(cache), probe=None), mirror=None)
        _, backend = loader.open(ModelRepository(spec.repository), spec.model, spec.version, config)
    return backend


def _say(conn: Connection, message: tuple[str, str]) -> bool:
    """Send a start-up message; False when the node stopped waiting for it (the pipe is closed)."""
    try:
        conn.send(message)
    except OSError:
        return False
    return True


def _receive(conn: Connection, node_pid: int) -> list[Copy] | None:
    """The next message; None once the pipe is closed or the node is no longer this process's parent."""
    try:
        while not conn.poll(PARENT_CHECK_S):
            if os.getppid() != node_pid:
                return None
        copies: list[Copy] = conn.recv()
    except (EOFError, OSError):
        return None
    return copies


async def _run(
    batcher: Batcher, copies: list[Copy], output: str, batched: bool, keep: bool
) -> tuple[list[Outcome], ShadowStats]:
    """Every copy through the batcher at once, each compared with the champion's output (and, with
    `keep`, its outputs and its time from submission kept)."""
    submitted = perf_counter_ns()
    futures = [batcher.submit(inputs, rows) for inputs, rows, _ in copies]
    answers = await asyncio.gather(*futures, return_exceptions=True)
    stats, outcomes = ShadowStats(), []
    for (_, _, expected), answer in zip(copies, answers, strict=True):
        if isinstance(answer, BaseException):
            outcomes.append(Outcome(None, str(answer)))
            continue
        outputs, execution = answer
        kept = (outputs, execution.ended_ns - submitted) if keep else (None, 0)
        try:
            per_row = disagreement(expected, outputs[output], batched)
        except (
            ValueError
        ) as exc:  # NOTE: answers that cannot be compared: the shadow's fault, not its engine's
            outcomes.append(Outcome(execution, str(exc), *kept))
            continue
        stats.observe(per_row)
        outcomes.append(Outcome(execution, None, *kept))
    return outcomes, stats
