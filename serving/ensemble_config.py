"""An ensemble's `ensemble_scheduling` as a plan: its steps in an order that runs, checked from the text.

Triton's semantics: each step names a model (`model_name`) and a version (`model_version`, -1: the
one the model serves by default), and maps the step model's tensors to ensemble tensors
(`input_map` {step input: ensemble tensor}, `output_map` {step output: ensemble tensor}). The
tensors form a graph from the ensemble's inputs to its outputs. What this module can tell from the
config alone (a tensor no step produces, one produced twice, a cycle, an output never produced) is a
config error; what needs the step models (their tensors' types and shapes) is checked when the
ensemble version loads (serving/ensemble.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as pb

ENSEMBLE_PLATFORM = "ensemble"
LATEST = -1  # a step's model_version: the version its model serves by default


@dataclass(frozen=True)
class Step:
    model: str
    version: int  # LATEST, or a pinned version
    inputs: dict[str, str]  # step model input -> ensemble tensor
    outputs: dict[str, str]  # step model output -> ensemble tensor

    @property
    def label(self) -> str:
        return f"{self.model}:{'latest' if self.version == LATEST else self.version}"


def is_ensemble(config: pb.ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM


def steps(config: pb.ModelConfig) -> list[Step]:
    """The config's steps as written."""
    return [
        Step(s.model_name, s.model_version, dict(s.input_map), dict(s.output_map))
        for s in config.ensemble_scheduling.step
    ]


def plan(config: pb.ModelConfig) -> list[Step]:
    """The steps in an order where each runs after the steps producing its inputs (a checked config)."""
    ordered, problems = _order(config)
    if problems:
        raise ValueError("; ".join(message for _, message in problems))
    return ordered


def step_models(config: pb.ModelConfig) -> set[str]:
    """The models an ensemble's steps call."""
    return {s.model_name for s in config.ensemble_scheduling.step}


def ensemble_problems(config: pb.ModelConfig) -> list[tuple[str | None, str]]:
    """(a fragment of the line to point at, the message) for every error of an ensemble config."""
    found: list[tuple[str | None, str]] = []
    if config.backend:
        found.append(
            ("backend", f'an ensemble has platform "ensemble" and no backend, got {config.backend!r}')
        )
    if not config.input or not config.output:
        found.append((None, "an ensemble lists its inputs and outputs (name, data_type, dims)"))
    for t in [*config.input, *config.output]:
        if t.data_type == pb.TYPE_INVALID:
            found.append((f'"{t.name}"', f"tensor {t.name!r} has no data_type"))
    if not config.ensemble_scheduling.step:
        found.append((None, "an ensemble needs ensemble_scheduling with at least one step"))
        return found
    for i, s in enumerate(config.ensemble_scheduling.step):
        where = f'"{s.model_name}"' if s.model_name else "step"
        if not s.model_name:
            found.append((where, f"step {i} has no model_name"))
        elif s.model_name == config.name:
            found.append((where, f"step {i} calls the ensemble {config.name!r} itself"))
        if s.model_version < LATEST or s.model_version == 0:
            found.append(
                (where, f"step {i} ({s.model_name}): model_version is -1 (latest) or a version >= 1")
            )
        if not s.input_map or not s.output_map:
            found.append((where, f"step {i} ({s.model_name}) needs an input_map and an output_map"))
    return found + _order(config)[1]


def _order(config: pb.ModelConfig) -> tuple[list[Step], list[tuple[str | None, str]]]:
    """The steps topologically ordered, and the problems of the tensor graph."""
    found: list[tuple[str | None, str]] = []
    inputs = {t.name for t in config.input}
    producer: dict[str, int] = {}
    written = steps(config)
    for i, step in enumerate(written):
        for tensor in step.outputs.values():
            if tensor in inputs:
                found.append((f'"{tensor}"', f"step {i} ({step.model}) writes ensemble input {tensor!r}"))
            elif tensor in producer:
                found.append(
                    (
                        f'"{tensor}"',
                        f"tensor {tensor!r} is written by steps {producer[tensor]} and {i}: keep one",
                    )
                )
            else:
                producer[tensor] = i
    for i, step in enumerate(written):
        for name, tensor in step.inputs.items():
            if tensor not in inputs and tensor not in producer:
                found.append(
                    (
                        f'"{tensor}"',
                        f"step {i} ({step.model}) input {name!r} reads tensor {tensor!r}, which is no "
                        "ensemble input and no step's output",
                    )
                )
    for t in config.output:
        if t.name not in producer:
            found.append((f'"{t.name}"', f"ensemble output {t.name!r} is written by no step's output_map"))
    if found:
        return [], found
    ordered: list[Step] = []
    ready = set(inputs)
    left = list(written)
    while left:
        runnable = [s for s in left if set(s.inputs.values()) <= ready]
        if not runnable:
            cycle = ", ".join(s.model for s in left)
            return [], [
                (None, f"the steps {cycle} wait on each other's outputs (a cycle): no order runs them")
            ]
        for s in runnable:
            ordered.append(s)
            ready.update(s.outputs.values())
            left.remove(s)
    return ordered, []
