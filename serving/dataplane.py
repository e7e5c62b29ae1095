"""What the server does, apart from any transport: infer, readiness, metadata, stats, lineage, repository.

Infer routes name@version (an unversioned request: champion or canary), checks the decoded inputs
against that version's config, submits them to the version's batcher, stamps the response, counts,
and hands a copy to the model's shadow when it has one. Anything a request gets wrong is
a ServingError; once the version is resolved, the error carries its stamp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from time import perf_counter_ns
from typing import Any

import numpy as np

from tritonflow import __version__
from tritonflow.lineage import layout
from tritonflow.lineage.errors import NotFound, TritonflowError
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.releases import ReleaseState, read_state
from tritonflow.lineage.report import lineage_document
from tritonflow.lineage.runs import LiveRun, live_run
from tritonflow.serving.access import Access
from tritonflow.serving.capture import Capture
from tritonflow.serving.classification import check_classifiable, classify
from tritonflow.serving.codec import InferRequest, InferResponse, RequestedOutput
from tritonflow.serving.datatypes import DATATYPE
from tritonflow.serving.errors import (
    BadBatchSize,
    InvalidVersion,
    MalformedRequest,
    MissingInputs,
    ModelControlDisabled,
    ModelNotFound,
    ServerNotReady,
    ServingError,
    UnknownTensor,
    WrongDatatype,
    WrongShape,
)
from tritonflow.serving.metrics import Metrics, ShadowStats, VersionStats
from tritonflow.serving.model_config import ModelConfig, to_json
from tritonflow.serving.model_version import ModelVersion, Tensor
from tritonflow.serving.registry import Registry
from tritonflow.serving.served_config import as_served
from tritonflow.serving.settings import Log, LogSettings, Trace, TraceSettings
from tritonflow.serving.shared_memory import SharedMemory
from tritonflow.serving.throttle import Throttle

log = logging.getLogger(__name__)

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "parameters",
    "model_configuration",
    "model_repository",
    "statistics",
    "trace",  # NOTE: its settings endpoints, answered with tracing off (serving/settings.py)
    "logging",
    "system_shared_memory",
    "cuda_shared_memory",  # NOTE: answered as by a Triton without GPUs (no region can be registered)
    "tritonflow_lineage",
]


# Lineage documents are read again after this long: the live run can gain tags or notes.
LINEAGE_TTL_S = 10.0
LINEAGE_CACHED = 256


class DataPlane:
    def __init__(
        self,
        registry: Registry,
        access: Access | None = None,
        model_control: str = "poll",
        strict_readiness: bool = True,
        capture: Capture | None = None,
    ) -> None:
        self.registry = registry
        self.access = access or Access()
        self.model_control = model_control
        self.strict_readiness = strict_readiness
        self.ready = False  # set once the repository is loaded, cleared on shutdown
        self.capture = capture  # NOTE: None: --capture not given
        registry.capture = capture  # NOTE: the shadows it builds capture their answers too
        self._metrics = Metrics(
            self._stats, self._refusals, self._shadows, lambda: self.capture.stats if self.capture else None
        )
        self._lineage_slots = Throttle("lineage", concurrency=1, queue=8)
        self._lineage_cache: dict[
            tuple[str, int], tuple[float, DeploymentRecord, LiveRun, ReleaseState | None]
        ] = {}
        self.shared_memory = SharedMemory()  # NOTE: the node's regions, one set for every transport
        self._log = LogSettings()
        self._trace = TraceSettings()

    # -- inference -----------------------------------------------------------------------------
    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        started = perf_counter_ns()
        target, shadow = self.registry.route(model, version, request.id)
        target.acquire()  # NOTE: no await between route and acquire: a swap cannot unload it
        stats = target.stats
        try:
            rows = _check_inputs(target, request.inputs)
            wanted = _check_outputs(target, request.outputs)
            regions = {n: o.region for n, o in (request.outputs or {}).items() if o.region is not None}
            for region in regions.values():
                self.shared_memory.check(region)  # NOTE: before the model runs, as Triton checks them
            stats.pending += 1
            try:
                outputs, execution = await target.batcher.submit(request.inputs, rows)
            except BaseException as exc:  # NOTE: a cancelled request (client gone) counts, as CANCELED
                stats.record_failure(started, exc)
                raise
            finally:
                stats.pending -= 1
        except ServingError as exc:
            # NOTE: rejected before the model (unknown input, shape...): stamped, not a failure, as Triton
            exc.stamp = target.stamp
            raise
        finally:
            target.release()
        raw = outputs  # NOTE: the shadow compares these, before any classification
        if wanted is not None:
            outputs = {name: _answer(target, name, outputs[name], asked) for name, asked in wanted.items()}
        try:
            for name, region in regions.items():
                # NOTE: checked again: the region may have been unregistered or shrunk meanwhile
                self.shared_memory.write(region, outputs[name])
        except ServingError as exc:
            stats.record_failure(started, exc)  # NOTE: the model ran: a failed answer, as Triton counts it
            exc.stamp = target.stamp
            raise
        # NOTE: once its outputs are formatted and written, as Triton's compute_output counts them
        stats.record_success(started, rows, execution)
        if self.capture is not None:  # NOTE: what the client got: classified outputs, as answered
            role = self.registry.role(target)
            self.capture.offer(target, role, request.id, request.inputs, rows, outputs, started)
        if shadow is not None:
            shadow.offer(request.inputs, rows, raw, request.id)
        if log.isEnabledFor(logging.DEBUG):  # NOTE: Triton's verbose log has a line per request too
            log.debug("%s answered %d row(s) of request %r", target.label, rows, request.id)
        return InferResponse(request.id, target.stamp, outputs)

    # -- health and metadata ---------------------------------------------------------------------
    def server_ready(self) -> None:
        """Returns if ready: started, and (strict) every model meant to serve has a version serving."""
        if not self.ready:
            raise ServerNotReady()
        unserved = self.registry.unserved() if self.strict_readiness else {}
        if unserved:
            name = sorted(unserved)[0]
            more = f" (and {len(unserved) - 1} more)" if len(unserved) > 1 else ""
            raise ServerNotReady(f"model {name!r} is not serving: {unserved[name]}{more}")

    # NOTE: the node's readiness, statistics and metrics, which every transport answers: one worker's own
    # here; a worker of `--workers N` replaces these three with the whole node's (serving/peers.py)
    async def node_ready(self) -> None:
        self.server_ready()

    async def node_stats(self, model: str | None, version: str | None) -> dict[str, Any]:
        return self.model_stats(model, version)

    async def node_metrics(self) -> bytes:
        return self.metrics()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "tritonflow", "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, model: str, version: str | None) -> None:
        """Returns if ready; raises ModelNotFound saying why not."""
        self.registry.resolve(model, version)

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        target = self.registry.resolve(model, version)
        config = target.config
        batch = [-1] if target.max_batch_size > 0 else []
        outputs = [_tensor_json(t, batch) for t in target.outputs.values()]
        if target.classes is not None:
            # NOTE: on the tensor, as MLServer's tensor metadata carries parameters: which column is which
            outputs[0]["parameters"] = {"classes": target.classes}
        return {
            "name": model,
            "versions": [str(v) for v in sorted(self.registry.models[model].versions)],
            "platform": config.platform or config.backend,
            "backend": config.backend or config.platform,
            "inputs": [_tensor_json(t, batch) for t in target.inputs.values()],
            "outputs": outputs,
            "engine": target.backend.engine,
            "deployment_id": target.record.deployment_id,
        }

    def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        return to_json(self.served_config(model, version))

    def served_config(self, model: str, version: str | None) -> ModelConfig:
        """The config as Triton serves it (the proto: gRPC answers it as is, HTTP as JSON)."""
        # NOTE: `model`, the folder's name, is the name Triton gives a config that has none.
        return as_served(self.registry.resolve(model, version).config, model)

    def model_stats(self, model: str | None, version: str | None) -> dict[str, Any]:
        """Triton's statistics: one version, every version of a model, or every model."""
        if model is None:
            targets = self.registry.serving()
        elif version:
            targets = [self.registry.resolve(model, version)]
        else:
            self.registry.resolve(model, None)
            targets = list(self.registry.models[model].versions.values())
        return {"model_stats": [t.stats.to_json(t.name, t.version) for t in targets]}

    def metrics(self) -> bytes:
        return self._metrics.exposition()

    def log_settings(self, update: Mapping[str, bool | int | str] | None = None) -> Log:
        """Triton's log settings, after applying `update` (checked whole first)."""
        return self._log.update(update) if update else self._log.get()

    def trace_settings(
        self, model: str | None, update: Mapping[str, list[str] | None] | None = None
    ) -> Trace:
        """Triton's trace settings, global or a model's, after applying `update`."""
        if model is not None:
            self.registry.resolve(model, None)
        return self._trace.update(model, update) if update else self._trace.get(model)

    async def lineage(self, model: str, version: str) -> dict[str, Any]:
        """The version's lineage document: the same JSON as `tritonflow lineage <id> --json`.
        Its reads (the record, Metaflow's metadata) are throttled and kept for a few seconds."""
        number = layout.parse_version(version)
        if number is None:
            raise InvalidVersion(version)
        serving = self.registry.models.get(model)
        cached = self._lineage_cache.get((model, number))
        if cached is None or cached[0] <= time.monotonic():
            async with self._lineage_slots.slot():
                found = await self._lineage_facts(model, number)
            if len(self._lineage_cache) >= LINEAGE_CACHED:
                self._lineage_cache.clear()
            cached = self._lineage_cache[model, number] = (time.monotonic() + LINEAGE_TTL_S, *found)
        served = sorted(serving.versions) if serving is not None else []
        return lineage_document(cached[1], cached[2], served, cached[3])

    async def _lineage_facts(
        self, model: str, number: int
    ) -> tuple[DeploymentRecord, LiveRun, ReleaseState | None]:
        serving = self.registry.models.get(model)
        if serving is not None and number in serving.versions:
            record = serving.versions[number].record
        else:
            try:
                record = await asyncio.to_thread(self.registry.repository.read_record, model, number)
            except NotFound:
                raise ModelNotFound(model, number) from None
        # NOTE: the live Metaflow lookup imports metaflow on first use and reads its metadata: off the loop.
        return (
            record,
            await asyncio.to_thread(live_run, record),
            await asyncio.to_thread(self._releases, model),
        )

    def _releases(self, model: str) -> ReleaseState | None:
        try:
            return read_state(self.registry.repository, model)
        except TritonflowError:  # NOTE: a broken release log must not hide the lineage; the node logs it
            return None

    # -- the repository API ------------------------------------------------------------------------
    def repository_index(self, ready_only: bool) -> list[dict[str, str]]:
        rows = self.registry.index()
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    async def load(self, model: str) -> None:
        self._check_model_control("load")
        await self.registry.load(model, requested=True)

    async def unload(self, model: str) -> None:
        self._check_model_control("unload")
        await self.registry.unload(model)

    def _check_model_control(self, action: str) -> None:
        if self.model_control != "explicit":
            raise ModelControlDisabled(action, self.model_control)

    def _refusals(self) -> list[tuple[str, str, int]]:
        return [(model, kind, n) for (model, kind), n in self.registry.refusals.items()]

    def _shadows(self) -> list[tuple[str, int, int, ShadowStats]]:
        return [(s.model, s.champion.version, s.target.version, s.stats) for s in self.registry.shadows()]

    def _stats(self) -> list[tuple[str, int, str, VersionStats]]:
        return [(t.name, t.version, self.registry.role(t), t.stats) for t in self.registry.serving()]


def _fits(dims: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Dims against the config's, where -1 takes any size (the exact match is tested first)."""
    return len(dims) == len(expected) and all(e == -1 or d == e for d, e in zip(dims, expected, strict=True))


def _check_inputs(target: ModelVersion, inputs: dict[str, np.ndarray]) -> int:
    """The request's rows, once every input has the config's name, datatype and shape."""
    batched = target.max_batch_size > 0
    rows = 1
    for i, (name, array) in enumerate(inputs.items()):
        spec = target.inputs.get(name)
        if spec is None:
            raise UnknownTensor("input", name, target.label, list(target.inputs))
        if array.dtype != spec.dtype:
            raise WrongDatatype(name, target.label, DATATYPE[array.dtype], spec.datatype)
        dims = array.shape[1:] if batched else array.shape
        if dims != spec.dims and not _fits(dims, spec.dims):
            raise WrongShape(
                name, target.label, list(array.shape), [-1, *spec.dims] if batched else list(spec.dims)
            )
        if batched:
            if i and array.shape[0] != rows:
                raise MalformedRequest(f"the inputs of model {target.label} have different batch sizes")
            rows = array.shape[0]
    if len(inputs) != len(target.inputs):
        raise MissingInputs(target.label, [n for n in target.inputs if n not in inputs])
    if batched and not 0 < rows <= target.max_batch_size:
        raise BadBatchSize(target.label, rows, target.max_batch_size)
    return rows


def _check_outputs(
    target: ModelVersion, requested: dict[str, RequestedOutput] | None
) -> dict[str, RequestedOutput] | None:
    """The outputs to answer with, in the order asked; None: every output."""
    if not requested:
        return None
    for name, asked in requested.items():
        if name not in target.outputs:
            raise UnknownTensor("output", name, target.label, list(target.outputs))
        if asked.class_count:
            check_classifiable(name, target.outputs[name].datatype, target.label)
    return requested


def _answer(target: ModelVersion, name: str, array: np.ndarray, asked: RequestedOutput) -> np.ndarray:
    """An output as asked: itself, or (class_count) its top classes."""
    if not asked.class_count:
        return array
    return classify(array, asked.class_count, target.max_batch_size > 0, target.labels.get(name))


def _tensor_json(tensor: Tensor, batch: list[int]) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": [*batch, *tensor.dims]}
