"""A config as Triton serves it: the copy Triton completes on load, which clients read back.

Triton fills in names, defaults and normalised settings whether or not auto-complete is on; the
node serves the config as written but answers the config endpoints with this completed copy, so
`get_model_config()` reads the same document from either server.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as pb

from tritonflow.serving.model_config import ONNX_PLATFORM, ModelConfig

ONNX_BACKEND = "onnxruntime"
SEQUENCE_IDLE_DEFAULT_US = 1_000_000  # Triton's SEQUENCE_IDLE_DEFAULT_MICROSECONDS
TWO_CPU_INSTANCES = ("onnxruntime", "tensorflow")  # Triton's default count for their KIND_CPU groups


def as_served(config: ModelConfig, model: str) -> ModelConfig:
    """A copy completed as Triton 24.10 completes every config it loads, auto-complete off or not
    (its AutoCompleteBackendFields, NormalizeModelConfig, NormalizeInstanceGroup), so a client reads
    the same config from the node as from Triton."""
    served = ModelConfig()
    served.CopyFrom(config)
    served.name = served.name or model
    if served.backend == ONNX_BACKEND or served.platform == ONNX_PLATFORM:
        served.backend, served.platform = ONNX_BACKEND, ONNX_PLATFORM
    # NOTE: the library Triton loads for a C++ backend; its Python-based backends say "model.py".
    served.runtime = served.runtime or f"libtriton_{served.backend}.so"
    if not served.HasField("version_policy"):
        served.version_policy.latest.num_versions = 1
    batching = served.dynamic_batching
    if (
        served.HasField("dynamic_batching")
        and not batching.preferred_batch_size
        and served.max_batch_size > 0
    ):
        batching.preferred_batch_size.append(served.max_batch_size)
    if served.HasField("sequence_batching") and not served.sequence_batching.max_sequence_idle_microseconds:
        served.sequence_batching.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_US
    for pinned in ("input_pinned_memory", "output_pinned_memory"):
        if not served.optimization.HasField(pinned):
            getattr(served.optimization, pinned).enable = True
    if not served.instance_group:
        served.instance_group.add(name=served.name)
    for number, group in enumerate(served.instance_group):
        group.name = group.name or f"{served.name}_{number}"
        if group.kind == pb.ModelInstanceGroup.KIND_AUTO:
            # NOTE: Triton picks GPU where it sees one; the node runs KIND_AUTO on the CPU (instance_kind).
            group.kind = pb.ModelInstanceGroup.KIND_CPU
        if group.count < 1:
            two = group.kind == pb.ModelInstanceGroup.KIND_CPU and served.backend in TWO_CPU_INSTANCES
            group.count = 2 if two else 1
    return served
