"""config.pbtxt <-> Triton's own typed ModelConfig, and the checks a config passes before use.

The schema is Triton's protobuf (`tritonclient.grpc.model_config_pb2`), so unknown fields, bad
enums and wrong types are caught exactly as Triton catches them. The FIL backend adds rules the
schema cannot express (string booleans, required and removed parameters, output dims); a
config that breaks them loads in Triton yet silently misbehaves, so they are errors here too.
The labels files a config names (serving/labels.py) are checked where the model folder can be read;
an ensemble's steps and tensor graph by serving/ensemble_config.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import model_config_pb2 as pb

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.layout import LABEL_FILE
from tritonflow.serving import datatypes
from tritonflow.serving.ensemble_config import ENSEMBLE_PLATFORM, Step, ensemble_problems
from tritonflow.serving.labels import ReadFile, label_problems

ModelConfig: TypeAlias = pb.ModelConfig

# The GPU tuning keys below were removed from the FIL backend in 25.09 (Triton only warns).
FIL_MODEL_FILES = {
    "treelite_checkpoint": "checkpoint.tl",
    "xgboost_json": "xgboost.json",
    "xgboost_ubj": "xgboost.ubj",
    "xgboost": "xgboost.model",
    "lightgbm": "model.txt",
}
FIL_BOOLEANS = ("is_classifier", "output_class", "predict_proba")
FIL_REMOVED = ("storage_type", "threads_per_tree", "algo", "blocks_per_sm")
FIL_KNOWN = {
    "model_type",
    "threshold",
    "layout",
    "chunk_size",
    "use_experimental_optimizations",
    "transfer_threshold",
    "xgboost_allow_unknown_field",
    *FIL_BOOLEANS,
}
ONNX_PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class Problem:
    line: int | None
    message: str
    severity: str = "error"  # "error" fails the check; "warning" is only reported

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "config"
        return f"{where}: {self.severity}: {self.message}"


class ConfigError(TritonflowError):
    def __init__(self, where: str, problems: list[Problem]) -> None:
        self.problems = problems
        listed = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{where} is not a valid Triton model config:\n{listed}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # protocol datatype, e.g. "FP32"
    dims: tuple[int, ...]  # without the batch dimension


@dataclass(frozen=True)
class ConfigSpec:
    """What a deploy asks of a config; `build_config` turns it into a complete ModelConfig.
    With `steps`, an ensemble (platform "ensemble", no backend, instances or batching of its own)."""

    name: str
    backend: str  # "fil" | "onnxruntime"; "" for an ensemble
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 8192
    instance_kind: str = "cpu"  # "cpu" | "gpu"
    max_queue_delay_us: int = 100
    parameters: dict[str, str] = field(default_factory=dict)
    latest_versions: int = 1
    labels: tuple[str, ...] = ()  # what outputs[0]'s columns are, in order: its label_filename (LABEL_FILE)
    steps: tuple[Step, ...] = ()  # an ensemble's steps, in the order they run


@dataclass(frozen=True)
class FilOptions:
    """The FIL backend's reading of a config's parameters, both dialects."""

    model_type: str
    model_file: str
    is_classifier: bool
    threshold: float
    predict_proba: bool


# -- text <-> typed ----------------------------------------------------------------------------
def parse_config(text: str, where: str = "config.pbtxt") -> ModelConfig:
    """Parse with Triton's schema only; `check_config` adds the semantic checks."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        line = exc.GetLine() or None
        message = str(exc).split(" : ", 1)[-1]
        raise ConfigError(where, [Problem(line, message)]) from None
    return config


def render(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def to_json(config: ModelConfig) -> dict[str, Any]:
    """The config as Triton's HTTP API shows it: every field without presence, at its default too
    (Triton prints primitive fields always), int64 as numbers, proto field names."""
    data = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _ints(config, data)


def _ints(message: Any, data: dict[str, Any]) -> dict[str, Any]:
    # NOTE: protobuf's JSON writes int64 as strings; Triton's endpoint writes numbers.
    int64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64}
    for fd in message.DESCRIPTOR.fields:
        if fd.name not in data:
            continue
        value = data[fd.name]
        if fd.type in int64:
            data[fd.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            sub = getattr(message, fd.name)
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.message_type is not None:
                data[fd.name] = {k: _ints(sub[k], v) for k, v in value.items()}
        elif fd.message_type is not None:
            sub = getattr(message, fd.name)
            if isinstance(value, list):
                data[fd.name] = [_ints(m, v) for m, v in zip(sub, value, strict=True)]
            else:
                data[fd.name] = _ints(sub, value)
    return data


def parameter(config: ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value if key in config.parameters else None


def instance_kind(config: ModelConfig) -> str:
    """ "gpu" when the first instance group asks for a GPU, else "cpu"."""
    groups = config.instance_group
    return "gpu" if groups and groups[0].kind == pb.ModelInstanceGroup.KIND_GPU else "cpu"


def served_versions(config: ModelConfig, versions: list[int]) -> list[int]:
    """The versions (ascending) that Triton's version_policy serves; default: the latest one."""
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return sorted(versions)
    if kind == "specific":
        wanted = set(policy.specific.versions)
        return sorted(v for v in versions if v in wanted)
    n = policy.latest.num_versions if kind == "latest" else 1
    return sorted(versions)[-n:] if n > 0 else []


def build_config(spec: ConfigSpec) -> ModelConfig:
    config = ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    for tensors, target in ((spec.inputs, config.input), (spec.outputs, config.output)):
        for t in tensors:
            target.add(
                name=t.name,
                data_type=pb.DataType.Value(datatypes.to_config(t.datatype)),
                dims=list(t.dims),
            )
    config.version_policy.latest.num_versions = spec.latest_versions
    if spec.labels:
        config.output[0].label_filename = LABEL_FILE
    if spec.steps:
        config.platform = ENSEMBLE_PLATFORM
        for step in spec.steps:
            added = config.ensemble_scheduling.step.add(model_name=step.model, model_version=step.version)
            added.input_map.update(step.inputs)
            added.output_map.update(step.outputs)
        return config
    config.backend = spec.backend
    kind = pb.ModelInstanceGroup.KIND_GPU if spec.instance_kind == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=1)
    config.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
    for key, value in spec.parameters.items():
        config.parameters[key].string_value = value
    return config


def signature(config: ModelConfig) -> dict[str, Any]:
    """What a model name must keep across versions: runtime, tensors and batching."""
    tensor = lambda t: {  # noqa: E731
        "name": t.name,
        "datatype": datatypes.from_config(pb.DataType.Name(t.data_type)),
        "dims": list(t.dims),
    }
    return {
        "backend": config.backend or config.platform,
        "batched": config.max_batch_size > 0,
        "inputs": [tensor(t) for t in config.input],
        "outputs": [tensor(t) for t in config.output],
    }


# -- semantic checks ---------------------------------------------------------------------------
def check_config(
    text: str, where: str = "config.pbtxt", model_name: str | None = None, read_file: ReadFile | None = None
) -> ModelConfig:
    """Parse and check; raise ConfigError listing every error with its line number. `read_file`: the
    model folder's files, to check the labels files the config names (None: the text alone)."""
    config = parse_config(text, where)
    errors = [p for p in problems(text, config, model_name, read_file) if p.severity == "error"]
    if errors:
        raise ConfigError(where, errors)
    return config


def problems(
    text: str,
    config: ModelConfig | None = None,
    model_name: str | None = None,
    read_file: ReadFile | None = None,
) -> list[Problem]:
    """Every problem found, errors and warnings, ordered by line."""
    if config is None:
        try:
            config = parse_config(text)
        except ConfigError as exc:
            return exc.problems
    line = _LineFinder(text)
    found: list[Problem] = []
    if model_name and config.name and config.name != model_name:
        found.append(
            Problem(line("name"), f"name {config.name!r} differs from the model folder {model_name!r}")
        )
    runtime = config.backend or config.platform
    if not runtime:
        found.append(Problem(None, 'no backend: add backend: "fil" or backend: "onnxruntime"'))
    if config.platform == ENSEMBLE_PLATFORM:
        found += [
            Problem(fragment and line(fragment), message) for fragment, message in ensemble_problems(config)
        ]
    elif config.backend == "fil":
        found += _fil_problems(config, line)
    elif config.backend == "onnxruntime" or config.platform == ONNX_PLATFORM:
        found += _tensor_problems(config, line)
    found += [Problem(line("label_filename"), message) for message in label_problems(config, read_file)]
    for kind in config.instance_group:
        if kind.count < 0:
            found.append(Problem(line("count"), "instance_group count must be >= 0"))
    batching = config.dynamic_batching
    if config.HasField("dynamic_batching") and config.max_batch_size <= 0:
        found.append(Problem(line("dynamic_batching"), "dynamic_batching needs max_batch_size > 0"))
    for size in batching.preferred_batch_size:
        if size <= 0 or (config.max_batch_size > 0 and size > config.max_batch_size):
            found.append(
                Problem(
                    line("preferred_batch_size"),
                    f"preferred_batch_size {size} must be in 1..max_batch_size",
                )
            )
    return sorted(found, key=lambda p: p.line or 0)


def _tensor_problems(config: ModelConfig, line: _LineFinder) -> list[Problem]:
    found = []
    if not config.input or not config.output:
        found.append(Problem(None, "list every input and output (name, data_type, dims)"))
    for t in [*config.input, *config.output]:
        if t.data_type == pb.TYPE_INVALID:
            found.append(Problem(line(f'"{t.name}"'), f"tensor {t.name!r} has no data_type"))
    return found


def _fil_problems(config: ModelConfig, line: _LineFinder) -> list[Problem]:
    found = _tensor_problems(config, line)
    params = {k: v.string_value for k, v in config.parameters.items()}
    if config.max_batch_size <= 0:
        found.append(Problem(line("max_batch_size"), "the FIL backend needs max_batch_size > 0"))
    if len(config.input) != 1 or len(config.output) != 1:
        found.append(Problem(None, "the FIL backend takes exactly one input and one output"))
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for t in tensors:
            if t.data_type != pb.TYPE_FP32:
                found.append(Problem(line(f'"{t.name}"'), f"FIL tensor {t.name!r} must be TYPE_FP32"))
            # NOTE: FIL takes its input's width from the request (-1: any, the model's); it allocates
            # an output from the config's dims, which must fix them
            variable = kind == "input" and list(t.dims) == [-1]
            if not variable and (len(t.dims) != 1 or t.dims[0] <= 0):
                allowed = "one positive dim" + (", or [-1] (the model's width)" if kind == "input" else "")
                found.append(
                    Problem(line(f'"{t.name}"'), f"FIL {kind} {t.name!r} needs {allowed}, got {list(t.dims)}")
                )
    model_type = params.get("model_type")
    if model_type is None:
        found.append(Problem(None, f'missing parameter "model_type" (one of {", ".join(FIL_MODEL_FILES)})'))
    elif model_type not in FIL_MODEL_FILES:
        found.append(
            Problem(
                line.value("model_type"),
                f'model_type "{model_type}" is not one of {", ".join(FIL_MODEL_FILES)}',
            )
        )
    if "is_classifier" not in params and "output_class" not in params:
        found.append(
            Problem(
                None,
                'missing parameter "is_classifier" ("true"/"false"; "output_class" before Triton 25.09)',
            )
        )
    if "is_classifier" in params and "output_class" in params:
        found.append(
            Problem(
                line('"output_class"'),
                '"output_class" is the pre-25.09 name of "is_classifier": keep one',
                "warning",
            )
        )
    for key in FIL_BOOLEANS:
        if key in params and params[key] not in ("true", "false"):
            found.append(
                Problem(
                    line.value(key),
                    f'{key} is "{params[key]}": FIL reads only lowercase "true" or "false" '
                    "(anything else silently falls back to the default)",
                )
            )
    is_classifier = params.get("is_classifier", params.get("output_class")) == "true"
    predict_proba = params.get("predict_proba") == "true"
    if "threshold" in params:
        try:
            float(params["threshold"])
        except ValueError:
            bad = params["threshold"]
            found.append(Problem(line.value("threshold"), f'threshold "{bad}" is not a number'))
    elif is_classifier and not predict_proba:
        found.append(Problem(None, 'classifiers need parameter "threshold" (e.g. "0.5")'))
    if predict_proba and not is_classifier:
        found.append(Problem(line('"predict_proba"'), 'predict_proba needs is_classifier "true"'))
    for key in FIL_REMOVED:
        if key in params:
            found.append(
                Problem(
                    line(f'"{key}"'),
                    f'"{key}" was removed from the FIL backend in 25.09: delete it',
                )
            )
    for key in sorted(set(params) - FIL_KNOWN - set(FIL_REMOVED)):
        found.append(Problem(line(f'"{key}"'), f'"{key}" is not a FIL parameter (a typo?)', "warning"))
    if len(config.output) == 1 and len(config.output[0].dims) == 1:
        dims = config.output[0].dims[0]
        if predict_proba and dims < 2:
            found.append(
                Problem(
                    line(f'"{config.output[0].name}"'),
                    f"with predict_proba the output dims are [n_classes >= 2], got [{dims}]",
                )
            )
        if not predict_proba and dims != 1:
            found.append(
                Problem(
                    line(f'"{config.output[0].name}"'),
                    f"without predict_proba the output dims are [1], got [{dims}]",
                )
            )
    return found


def fil_options(config: ModelConfig) -> FilOptions:
    """The FIL semantics of a checked config (legacy `output_class` understood)."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    model_type = params["model_type"]
    return FilOptions(
        model_type=model_type,
        model_file=config.default_model_filename or FIL_MODEL_FILES[model_type],
        is_classifier=params.get("is_classifier", params.get("output_class")) == "true",
        threshold=float(params.get("threshold", "0.5")),
        predict_proba=params.get("predict_proba") == "true",
    )


class _LineFinder:
    """First line (1-based) that contains a fragment; None when absent."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def __call__(self, fragment: str, after: int = 0) -> int | None:
        for number, text in enumerate(self.lines[after:], after + 1):
            if fragment in text:
                return number
        return None

    def value(self, key: str) -> int | None:
        """The `string_value` line of parameter `key` (where a wrong value is written)."""
        line = self(f'"{key}"')
        return self("string_value", after=line) if line else None
