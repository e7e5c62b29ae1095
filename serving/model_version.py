"""One loaded model version, with what the hot path needs computed once, at load: its tensors, its
stamp, its batcher, and a count of the requests in flight on it so a retired version is unloaded
only when its last request is done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple

import numpy as np

from tritonflow.lineage.records import DeploymentRecord
from tritonflow.serving import datatypes
from tritonflow.serving.backends import Backend
from tritonflow.serving.batcher import Batcher, BatchPolicy, Runner, Traffic
from tritonflow.serving.metrics import VersionStats
from tritonflow.serving.model_config import ModelConfig, signature

log = logging.getLogger("tritonflow.serving")


class Tensor(NamedTuple):
    name: str
    datatype: str  # protocol datatype, e.g. "FP32"
    dtype: np.dtype
    dims: tuple[int, ...]  # without the batch dimension; -1: any size


def _tensors(specs: list[dict[str, Any]]) -> dict[str, Tensor]:
    """The inputs or outputs of a config's `signature`, by name."""
    return {
        t["name"]: Tensor(t["name"], t["datatype"], datatypes.TENSOR[t["datatype"]], tuple(t["dims"]))
        for t in specs
    }


def _classes(record: DeploymentRecord, outputs: dict[str, Tensor]) -> list[Any] | None:
    """What the first output's columns are, in order: the record's `model.classes` (a classifier's),
    when it names one class per column; None otherwise."""
    classes = record.model.get("classes")
    first = next(iter(outputs.values()), None)
    if isinstance(classes, list) and first is not None and first.dims[-1:] == (len(classes),):
        return classes
    return None


class ModelVersion:
    """One loaded version, with what the hot path needs computed once, at load."""

    def __init__(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        record: DeploymentRecord,
        backend: Backend,
        traffic: Traffic,
        loop: asyncio.AbstractEventLoop,
        labels: dict[str, list[str]] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.label = f"{name}:{version}"
        self.config = config
        self.record = record
        self.backend = backend
        self.stamp = {
            "model_name": name,
            "model_version": str(version),
            "deployment_id": record.deployment_id,
        }
        tensors = signature(config)
        # NOTE: a dim the config leaves variable (-1) and the model fixes: requests are checked on the model's
        fixed = backend.input_dims()
        inputs = _tensors(tensors["inputs"])
        self.inputs = {name: t._replace(dims=fixed.get(name, t.dims)) for name, t in inputs.items()}
        self.outputs = _tensors(tensors["outputs"])
        self.classes = _classes(record, self.outputs)
        self.labels = labels or {}  # output -> its labels file's lines: column i's label is line i
        self.max_batch_size = config.max_batch_size
        self.stats = VersionStats()
        self.batcher = self._runner(traffic, loop)
        self.inflight = 0
        self.retired = False

    def _runner(self, traffic: Traffic, loop: asyncio.AbstractEventLoop) -> Runner:
        """What runs this version's requests: its engine's batcher (an ensemble runs its steps)."""
        policy = BatchPolicy.from_config(self.config)
        return Batcher(
            self.label,
            self.backend.predict,
            policy,
            self.stats.record_execution,
            traffic,
            loop,
            self.backend.batch_rows,
        )

    def acquire(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        if self.retired and not self.inflight:
            self._close()

    def retire(self) -> None:
        """Take no new requests; unload once the in-flight ones have finished."""
        if self.retired:
            return
        self.retired = True
        if not self.inflight:
            self._close()

    def _close(self) -> None:
        self.batcher.close(then=self._unload)

    def _unload(self) -> None:
        self.backend.unload()
        log.info("unloaded %s (%s)", self.label, self.record.deployment_id)
