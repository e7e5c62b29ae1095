"""An ensemble version: a loaded model whose requests run its steps' loaded versions, in-process.

At load the ensemble binds each step to the version its model serves then (`model_version` -1:
the step model's default version, what an unversioned request gets; else that version; a version
whose deployment record pins its steps (an ensemble @deploy published) binds those, so a canary
and a champion each run the steps they were exported with), checks
every mapped tensor's datatype, dims and batching against the step models' configs, and holds
those versions (acquired) for as long as it serves. So a step that is reloaded, or unloaded, under
a live ensemble never breaks its requests: the ensemble answers with the step versions it bound,
and the registry rebuilds it on the new step versions when they serve (`rebind`), keeping the old
binding serving when the new one does not check.

A request runs the steps in dependency order, each through its step version's batcher: concurrent
ensemble requests (and direct requests to the step models) merge there, so the ensemble's own
requests are batched as any model's are, at each step, without a second queue in front. Each step
counts the request in its own statistics (as Triton's composing models do); the ensemble counts it
once, as one execution spanning the steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter_ns

import numpy as np
from tritonclient.grpc import model_config_pb2 as pb

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving import datatypes
from tritonflow.serving.backends.base import Backend
from tritonflow.serving.batcher import Execution, Runner, Tensors, Traffic
from tritonflow.serving.ensemble_config import LATEST, Step, plan
from tritonflow.serving.errors import ServingError, WrongShape
from tritonflow.serving.integrity import check_record
from tritonflow.serving.loading import Refusal, VersionRefused, refusal
from tritonflow.serving.model_config import ModelConfig
from tritonflow.serving.model_version import ModelVersion, Tensor

# A step's version as the registry resolves it: (model, version or None for the default) -> loaded version.
Resolve = Callable[[str, str | None], ModelVersion]
Binding = list[tuple[Step, ModelVersion]]
log = logging.getLogger("tritonflow.serving")

STEPS_PARAMETER = "tritonflow_steps"  # the response parameter naming the step versions that answered


class EnsembleError(TritonflowError):
    """An ensemble version whose steps do not fit together: the message names the step and tensor."""


class StepNotServing(EnsembleError):
    """A step's model (or pinned version) serves nothing yet: models load in any order."""


def bind(name: str, config: ModelConfig, resolve: Resolve, pins: dict[str, int]) -> Binding:
    """Each step with the loaded version it runs on (`pins`, step model -> version, over the
    config's), once every tensor it maps fits; EnsembleError if not."""
    batched = config.max_batch_size > 0
    known = {t.name: _tensor(t) for t in config.input}  # ensemble tensor -> its type and dims
    binding: Binding = []
    for step in plan(config):
        version = pins.get(step.model, step.version)
        try:
            mv = resolve(step.model, None if version == LATEST else str(version))
        except ServingError as exc:
            raise StepNotServing(f"ensemble {name}: step {step.label} is not serving: {exc}") from None
        where = f"ensemble {name}: step {mv.label}"
        if (mv.max_batch_size > 0) != batched or mv.max_batch_size < config.max_batch_size:
            raise EnsembleError(
                f"{where} has max_batch_size {mv.max_batch_size}, the ensemble {config.max_batch_size}: a "
                "batching ensemble needs steps that batch at least as many rows; a non-batching one, "
                "steps that do not"
            )
        for kind, mapped, tensors in (
            ("input", step.inputs, mv.inputs),
            ("output", step.outputs, mv.outputs),
        ):
            unknown = sorted(set(mapped) - set(tensors))
            if unknown:
                raise EnsembleError(
                    f"{where} has no {kind} {unknown[0]!r}: its {kind}s are {sorted(tensors)}"
                )
        missing = sorted(set(mv.inputs) - set(step.inputs))
        if missing:
            raise EnsembleError(f"{where}: input {missing[0]!r} is in no input_map entry")
        for input_name, tensor in step.inputs.items():
            _check_fit(f"{where} input {input_name!r}", known[tensor], mv.inputs[input_name], tensor)
        for output_name, tensor in step.outputs.items():
            known[tensor] = mv.outputs[output_name]
        binding.append((step, mv))
    for t in config.output:
        _check_fit(f"ensemble {name} output {t.name!r}", known[t.name], _tensor(t), t.name)
    return binding


async def load_ensemble(
    repository: ModelRepository,
    name: str,
    version: int,
    config: ModelConfig,
    resolve: Resolve,
    traffic: Traffic,
) -> EnsembleVersion:
    """An ensemble version: its record checked as any version's (it lists no files), its steps
    bound; no engine, no probe. Refused with token None, so tried again at every poll: a step
    not serving yet (kind "steps": models load in any order) may serve by then."""
    try:
        record = await asyncio.to_thread(repository.read_record, name, version)
        check_record(record, name, version, has_files=False)
        binding = bind(name, config, resolve, record.pins)
        # NOTE: no await between bind and the version's acquiring its steps: none can be unloaded
        mv = EnsembleVersion(name, version, config, record, binding, traffic, asyncio.get_running_loop())
    except StepNotServing as exc:
        raise VersionRefused(Refusal(str(exc), "steps", None)) from exc
    except Exception as exc:
        raise VersionRefused(refusal(exc, None)) from exc
    log.info("loaded ensemble %s (%s) on %s", mv.label, record.deployment_id, mv.stamp[STEPS_PARAMETER])
    return mv


def rebound(versions: dict[int, ModelVersion], resolve: Resolve, traffic: Traffic) -> dict[int, ModelVersion]:
    """An ensemble's serving versions bound to the step versions serving now (the same objects
    where nothing changed). One whose steps no longer fit keeps the versions it holds, logged."""
    serving: dict[int, ModelVersion] = {}
    for number, mv in versions.items():
        serving[number] = mv
        if isinstance(mv, EnsembleVersion):
            try:
                serving[number] = mv.rebind(resolve, traffic)
            except EnsembleError as exc:
                log.error("%s keeps serving on %s: %s", mv.label, mv.stamp[STEPS_PARAMETER], exc)
    return serving


def _tensor(t: pb.ModelInput | pb.ModelOutput) -> Tensor:
    datatype = datatypes.from_config(pb.DataType.Name(t.data_type))
    return Tensor(t.name, datatype, datatypes.TENSOR[datatype], tuple(t.dims))


def _check_fit(where: str, given: Tensor, wanted: Tensor, tensor: str) -> None:
    if given.datatype != wanted.datatype:
        raise EnsembleError(f"{where} is {wanted.datatype}, but tensor {tensor!r} is {given.datatype}")
    if not _compatible(given.dims, wanted.dims):
        raise EnsembleError(
            f"{where} has dims {list(wanted.dims)}, but tensor {tensor!r} has dims {list(given.dims)} "
            "(-1: any size)"
        )


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


class _Held(Backend):
    """The ensemble's stand-in for an engine: it holds the bound step versions, released at unload."""

    engine = "ensemble"

    def __init__(self, held: list[ModelVersion]) -> None:
        self.held = held
        for mv in held:
            mv.acquire()  # NOTE: no await since bind: a step swapped meanwhile is still loaded

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise EnsembleError("an ensemble runs its steps, not an engine")

    def unload(self) -> None:
        for mv in self.held:
            mv.release()
        self.held = []


class EnsembleVersion(ModelVersion):
    """One ensemble version bound to its steps' loaded versions (held until it is unloaded)."""

    def __init__(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        record: DeploymentRecord,
        binding: Binding,
        traffic: Traffic,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.binding = binding
        super().__init__(name, version, config, record, _Held([mv for _, mv in binding]), traffic, loop)
        self.stamp[STEPS_PARAMETER] = ",".join(mv.label for _, mv in binding)

    def rebind(self, resolve: Resolve, traffic: Traffic) -> EnsembleVersion:
        """This version bound to the step versions serving now (itself when they are the same ones)."""
        binding = bind(self.name, self.config, resolve, self.record.pins)
        if [mv for _, mv in binding] == [mv for _, mv in self.binding]:
            return self
        return EnsembleVersion(
            self.name, self.version, self.config, self.record, binding, traffic, asyncio.get_running_loop()
        )

    def _runner(self, traffic: Traffic, loop: asyncio.AbstractEventLoop) -> Runner:
        return _Steps(self)

    async def run(self, inputs: Tensors, rows: int) -> tuple[Tensors, Execution]:
        """Every step in order, each through its version's batcher; the ensemble outputs and their timing."""
        tensors = dict(inputs)
        calls: list[Execution] = []
        for step, mv in self.binding:
            feed = {name: tensors[tensor] for name, tensor in step.inputs.items()}
            _check_shapes(mv, feed)
            started = perf_counter_ns()
            mv.stats.pending += 1
            try:
                outputs, execution = await mv.batcher.submit(feed, rows)
            except BaseException as exc:
                mv.stats.record_failure(started, exc)
                raise
            finally:
                mv.stats.pending -= 1
            mv.stats.record_success(started, rows, execution)
            calls.append(execution)
            for name, tensor in step.outputs.items():
                tensors[tensor] = outputs[name]
        first, last = calls[0], calls[-1]
        execution = Execution(rows, first.started_ns, first.input_ns, last.infer_ns, last.ended_ns)
        self.stats.record_execution(execution)
        return {name: tensors[name] for name in self.outputs}, execution


def _check_shapes(mv: ModelVersion, feed: Tensors) -> None:
    """A step's inputs against its dims, where the ensemble's variable dims (-1) met fixed ones."""
    batched = mv.max_batch_size > 0
    for name, array in feed.items():
        dims = array.shape[1:] if batched else array.shape
        if not _compatible(dims, mv.inputs[name].dims):
            expected = list(mv.inputs[name].dims)
            raise WrongShape(name, mv.label, list(array.shape), [-1, *expected] if batched else expected)


class _Steps:
    """The ensemble's Runner: a request is a coroutine over the steps; nothing to stop or wait for."""

    def __init__(self, ensemble: EnsembleVersion) -> None:
        self._ensemble = ensemble

    def submit(self, inputs: Tensors, rows: int) -> Awaitable[tuple[Tensors, Execution]]:
        return self._ensemble.run(inputs, rows)

    def close(self, then: Callable[[], None]) -> None:
        then()

    def join(self, timeout: float | None = None) -> None:
        return None
