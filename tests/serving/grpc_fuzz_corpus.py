"""The gRPC fuzz test's corpus: seeded mutations of valid Triton gRPC messages to the two models it serves.

Families (a Corpus method each, weighted by FAMILIES): valid ModelInferRequests (raw and typed
contents), the seeds of every mutation; byte-level damage of a valid message (flips, truncation,
duplication, insertion); one hostile value put in a field of a valid message (shapes, names,
datatypes, contents, every InferParameter kind, ids, versions, shared memory windows of the region
the test registers); other RPCs with hostile messages; streams of several of the above; calls the
client cancels (a stream of many, mid-way). Every choice comes from one random.Random(seed), so a seed names
the same messages on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from conftest import data
from fuzz_corpus import HOSTILE_NAMES, MODELS, OUTPUTS
from tritonclient.grpc import service_pb2 as pb

FAMILIES = {"valid": 1, "bytes": 5, "field": 6, "rpc": 3, "stream": 1, "cancel": 1}
# The region the test registers (REGION_KEY, REGION_BYTES): the rows of ROWS at offset 0, outputs after
REGION, REGION_KEY, REGION_BYTES, ROWS = "fuzz", "/tritonflow-grpc-fuzz", 256, 3

# -- what the corpus is made of ----------------------------------------------------------------
NAMES = [
    *("", "..", "../..", "a/../b", "\x00", "a\x00b", "fraud-classifier\x00", "fraud-classifier/../x"),
    *("/etc/passwd", "x" * 5000, "\u00e9\u202e", "fraud-classifier\n", "%2e%2e", " ", "."),
]
VERSIONS = [
    "-1",
    "9" * 30,
    "0",
    "01",
    "+1",
    "1.0",
    "0x1",
    "..",
    "\x00",
    "1\x00",
    "one",
    "18446744073709551616",
]
DATATYPES = ["FP32", "FP64", "FP16", "BF16", "INT8", "INT64", "UINT64", "BOOL", "BYTES", "", "fp32", "FLOAT"]
ITEMSIZE = {
    "FP32": 4,
    "FP64": 8,
    "FP16": 2,
    "BF16": 2,
    "INT8": 1,
    "INT64": 8,
    "UINT64": 8,
    "BOOL": 1,
    "BYTES": 8,
}
SHAPES = [
    *([2**62, 2**62], [2**63 - 1, 8], [-1, 8], [-(2**63), 8], [0, 2**62], [2**62, 0], [0, 8], [1] * 64),
    *([1] * 65, [1] * 64 + [8], [1] * 100, [], [8], [1, 1, 8], [1, 7], [2**31, 2**31, 2**31]),
]
CONTENTS = [
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
]
PARAMETER_KEYS = [
    *("classification", "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"),
    *("binary_data", "binary_data_size", "sequence_id", "priority", "timeout", "", "\x00", "x" * 300),
]
PARAMETER_VALUES: list[tuple[str, Any]] = [
    *(("bool_param", True), ("bool_param", False), ("int64_param", 0), ("int64_param", -1)),
    *(("int64_param", 2**63 - 1), ("int64_param", -(2**63)), ("int64_param", 3), ("int64_param", 10**9)),
    *(("string_param", ""), ("string_param", "3"), ("string_param", "region"), ("string_param", "\x00")),
    *(("string_param", "x" * 5000), ("double_param", 1.5), ("double_param", float("nan"))),
    *(("double_param", float("inf")), ("double_param", -1e308), ("uint64_param", 2**64 - 1)),
    ("uint64_param", 0),
]
IDS = ["", "r-1", "\u00e9" * 10, "x" * (1 << 20), "\x00"]  # NOTE: a 1 MB id, under the node's request limit


@dataclass
class Fuzzed:
    """One call of the corpus: an RPC and its serialized message (a stream: several); `hostile`: the
    call names a model or version that is not there and must not be answered OK."""

    family: str
    rpc: str
    messages: list[bytes]
    hostile: bool = False
    note: str = ""
    stream: bool = False
    cancel: bool = False  # NOTE: cancelled by the client once sent (a stream: after its first answer)

    def __str__(self) -> str:
        sizes = ", ".join(str(len(m)) for m in self.messages[:8])
        head = repr(self.messages[0][:120]) if self.messages else "-"
        return f"[{self.family}] {self.rpc} {self.note} ({sizes} bytes) {head}"


class Corpus:
    """The seeded message generator: every choice comes from one random.Random(seed)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def next(self) -> Fuzzed:
        family = self.rng.choices(list(FAMILIES), weights=list(FAMILIES.values()))[0]
        return getattr(self, family)()

    # -- valid requests, the seeds of every mutation ----------------------------------------------
    def rows(self) -> np.ndarray:
        n = self.rng.randint(1, 4)
        start = self.rng.randrange(len(data()[0]) - n)
        return data()[0][start : start + n]

    def request(self) -> tuple[str, pb.ModelInferRequest]:
        """A valid request to one of the models: raw or typed contents, maybe its outputs asked for."""
        model = self.rng.choice(list(MODELS))
        x = self.rows()
        request = pb.ModelInferRequest(model_name=model, model_version=self.rng.choice(["", "1"]))
        request.id = self.rng.choice(["", "r-1", "\u00e9\u00e8"])
        tensor = request.inputs.add(name="input__0", datatype="FP32", shape=x.shape)
        if self.rng.random() < 0.15:
            del tensor.shape[:]
            tensor.shape.extend([ROWS, x.shape[1]])
            tensor.parameters["shared_memory_region"].string_param = REGION
            tensor.parameters["shared_memory_byte_size"].int64_param = ROWS * x.shape[1] * 4
        elif self.rng.random() < 0.5:
            request.raw_input_contents.append(x.tobytes())
        else:
            tensor.contents.fp32_contents.extend(x.ravel().tolist())
        if self.rng.random() < 0.4:
            for name in self.rng.sample(OUTPUTS[model], self.rng.randint(1, len(OUTPUTS[model]))):
                asked = request.outputs.add(name=name)
                if self.rng.random() < 0.4:
                    asked.parameters["classification"].int64_param = self.rng.randint(1, 2)
        return model, request

    def valid(self) -> Fuzzed:
        _, request = self.request()
        return Fuzzed("valid", "ModelInfer", [request.SerializeToString()])

    # -- mutations ---------------------------------------------------------------------------------
    def damaged(self, message: bytes) -> tuple[bytes, str]:
        """One to three byte-level mutations of a serialized message."""
        out = bytearray(message)
        notes = []
        for _ in range(self.rng.randint(1, 3)):
            action = self.rng.choice(["flip", "truncate", "duplicate", "insert", "byte"])
            at = self.rng.randrange(len(out) + 1)
            if action == "flip" and out:
                at = min(at, len(out) - 1)
                out[at] ^= 1 << self.rng.randrange(8)
            elif action == "truncate":
                del out[at:]
            elif action == "duplicate":
                end = min(len(out), at + self.rng.randint(1, 64))
                out[at:at] = out[at:end] * self.rng.randint(1, 4)
            elif action == "insert":
                out[at:at] = self.rng.randbytes(self.rng.randint(1, 16))
            elif out:
                at = min(at, len(out) - 1)
                out[at] = self.rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x1A])
            notes.append(f"{action}@{at}")
        return bytes(out), " ".join(notes)

    def bytes(self) -> Fuzzed:
        _, request = self.request()
        message, note = self.damaged(request.SerializeToString())
        return Fuzzed("bytes", "ModelInfer", [message], note=note)

    def parameter(self, parameters: Any) -> str:
        key = self.rng.choice(PARAMETER_KEYS)
        kind, value = self.rng.choice(PARAMETER_VALUES)
        setattr(parameters[key], kind, value)
        return f"{key}={kind}:{str(value)[:20]}"

    def hostile_field(self, model: str, request: pb.ModelInferRequest) -> tuple[str, bool]:
        """One hostile value in one field; whether it names a model or version that is not there."""
        tensor = request.inputs[0]
        pick = self.rng.randrange(14)
        if pick == 0:
            request.model_name = self.rng.choice([*NAMES, *HOSTILE_NAMES])
            return f"model_name={request.model_name[:30]!r}", True
        if pick == 1:
            request.model_version = self.rng.choice(VERSIONS)
            return f"model_version={request.model_version[:30]!r}", True
        if pick == 2:
            del tensor.shape[:]
            tensor.shape.extend(self.rng.choice(SHAPES))
            return f"shape={list(tensor.shape)[:6]}", False
        if pick == 3:
            tensor.name = self.rng.choice(["", "\x00", "input__1", "x" * 5000, "input__0 "])
            return f"input name={tensor.name[:20]!r}", False
        if pick == 4:
            tensor.datatype = self.rng.choice(DATATYPES)
            size = ITEMSIZE.get(tensor.datatype)
            if request.raw_input_contents and size and self.rng.random() < 0.6:
                # NOTE: raw contents of the new datatype's size, so that FP16, BOOL... get past the framing
                request.raw_input_contents[0] = self.rng.randbytes(size * math.prod(tensor.shape))
            return f"datatype={tensor.datatype!r}", False
        if pick == 5:  # NOTE: a second input, the same one or another, with or without its data
            other = request.inputs.add()
            other.CopyFrom(tensor)
            other.name = self.rng.choice(["input__0", "input__1", ""])
            if request.raw_input_contents and self.rng.random() < 0.7:
                request.raw_input_contents.append(request.raw_input_contents[0])
            return f"two inputs, the second {other.name!r}", False
        if pick == 6:
            count = self.rng.choice([0, 2, 3])
            x = self.rows().tobytes()
            del request.raw_input_contents[:]
            request.raw_input_contents.extend([x[: self.rng.randrange(len(x) + 1)]] * count)
            return f"{count} raw_input_contents", False
        if pick == 7:
            contents = self.rng.choice(CONTENTS)
            values = getattr(tensor.contents, contents)
            n = self.rng.choice([0, 1, 7, 8, 9, 1000])
            values.extend([b"x"] * n if contents == "bytes_contents" else [True] * n)
            return f"{n} {contents}", False
        if pick == 8:
            return f"input parameter {self.parameter(tensor.parameters)}", False
        if pick == 9:
            asked = request.outputs.add(name=self.rng.choice([*OUTPUTS[model], "", "nope", "\x00"]))
            for _ in range(self.rng.randint(1, 3)):
                self.parameter(asked.parameters)
            return f"output {asked.name!r} parameters {dict(asked.parameters)!s:.80}", False
        if pick == 10:
            asked = request.outputs.add(name=OUTPUTS[model][-1])
            asked.parameters["classification"].int64_param = self.rng.choice([2**62, 2**31, 10**6, -5, 0, 3])
            return f"classification {asked.parameters['classification'].int64_param}", False
        if pick == 11:  # NOTE: shared memory parameters of a region that was never registered, or bad ones
            where = (
                tensor.parameters
                if self.rng.random() < 0.5
                else request.outputs.add(name=OUTPUTS[model][0]).parameters
            )
            where["shared_memory_region"].string_param = self.rng.choice([REGION] * 4 + ["nope", "", "\x00"])
            at, size = REGION_BYTES, (-1, 0, 4, 24, 96, REGION_BYTES - 8, REGION_BYTES, 2**62, 2**63 - 1)
            where["shared_memory_offset"].int64_param = self.rng.choice(
                [-1, -(2**63), 0, 8, at - 4, at, 2**62]
            )
            where["shared_memory_byte_size"].int64_param = self.rng.choice(size)
            return "shared memory parameters", False
        if pick == 12:
            request.id = self.rng.choice(IDS)
            return f"id of {len(request.id)} characters", False
        return f"request parameter {self.parameter(request.parameters)}", False

    def field(self) -> Fuzzed:
        model, request = self.request()
        note, hostile = self.hostile_field(model, request)
        return Fuzzed("field", "ModelInfer", [request.SerializeToString()], hostile=hostile, note=note)

    def rpc(self) -> Fuzzed:
        """Another RPC, its message hostile in a field or in its bytes."""
        name = self.rng.choice(NAMES + list(MODELS))
        version = self.rng.choice([*VERSIONS, "", "1"])
        hostile = name not in MODELS or version not in ("", "1")
        rpc, message = self.rng.choice(
            [
                ("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version)),
                ("ModelConfig", pb.ModelConfigRequest(name=name, version=version)),
                ("ModelReady", pb.ModelReadyRequest(name=name, version=version)),
                ("ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version)),
                ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=name)),
                ("RepositoryIndex", pb.RepositoryIndexRequest(repository_name=name, ready=True)),
                ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest(name=name)),
                ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest(name=name)),
                ("CudaSharedMemoryRegister", pb.CudaSharedMemoryRegisterRequest(name=name, byte_size=8)),
                ("SystemSharedMemoryRegister", self.register(name)),
                ("TraceSetting", self.trace(name)),
                ("LogSettings", self.log()),
            ]
        )
        data = message.SerializeToString()
        note = f"name={name[:30]!r} version={version[:30]!r}"
        if self.rng.random() < 0.1:  # NOTE: a message of another RPC
            data, note = self.request()[1].SerializeToString(), "a ModelInferRequest"
        # NOTE: a damaged log update could be a valid one (no more error logs): log updates stay whole
        if rpc != "LogSettings" and self.rng.random() < 0.4:
            data, damage = self.damaged(data)
            note += " " + damage
        # NOTE: these must refuse: a model that is not there (ready answers False, the rest are not about
        # it), a key no region has (none of register()'s keys is one), a log update (none is valid), a
        # repository other than the node's one
        must_refuse = rpc in ("SystemSharedMemoryRegister", "LogSettings") or (
            (hostile and rpc in ("ModelMetadata", "ModelConfig")) or (bool(name) and rpc == "RepositoryIndex")
        )
        must_refuse = must_refuse and data == message.SerializeToString()
        return Fuzzed("rpc", rpc, [data], hostile=must_refuse, note=note)

    def register(self, name: str) -> pb.SystemSharedMemoryRegisterRequest:
        key = self.rng.choice(
            ["/nope", "", "../../etc/passwd", "/dev/shm/../../etc/passwd", "\x00", "x" * 300]
        )
        offset = self.rng.choice([0, 2**62, 2**64 - 1, 8])
        return pb.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=offset, byte_size=self.rng.choice([0, 8, 2**64 - 1])
        )

    def trace(self, name: str) -> pb.TraceSettingRequest:
        """A trace setting update that is never valid: unknown keys or values no setting takes."""
        request = pb.TraceSettingRequest(model_name=name)
        key = self.rng.choice(["trace_level", "trace_rate", "log_frequency", "", "\x00", "zzz"])
        request.settings[key].value.extend(
            self.rng.choice([["-1"], ["x" * 300], ["\x00"], ["1e999"], ["1", "2"]])
        )
        return request

    def cancel(self) -> Fuzzed:
        """A call the client gives up on: a small message, or a stream of many cancelled mid-way."""
        if self.rng.random() < 0.5:
            fuzzed = self.rng.choice([self.valid, self.field])()
            return Fuzzed("cancel", "ModelInfer", fuzzed.messages, cancel=True)
        messages = [self.valid().messages[0] for _ in range(self.rng.randint(20, 120))]
        return Fuzzed("cancel", "ModelStreamInfer", messages, stream=True, cancel=True)

    def log(self) -> pb.LogSettingsRequest:
        """A log settings update that is never valid: unknown keys or values of the wrong kind."""
        request = pb.LogSettingsRequest()
        key, kind, value = self.rng.choice(
            [
                *(("log_info", "string_param", "true"), ("log_info", "uint32_param", 1)),
                *(("log_verbose_level", "bool_param", True), ("log_verbose_level", "string_param", "9")),
                *(("log_format", "bool_param", True), ("log_format", "string_param", "\x00")),
                *(("log_file", "string_param", "/etc/passwd"), ("log_file", "string_param", "../x.log")),
                *(
                    ("", "bool_param", True),
                    ("\x00", "uint32_param", 2**32 - 1),
                    ("x" * 300, "string_param", ""),
                ),
            ]
        )
        setattr(request.settings[key], kind, value)
        return request

    def stream(self) -> Fuzzed:
        """Several messages on one ModelStreamInfer stream, good and bad mixed."""
        messages = []
        for _ in range(self.rng.randint(2, 6)):
            fuzzed = self.rng.choice([self.valid, self.bytes, self.field])()
            messages.append(fuzzed.messages[0])
        return Fuzzed("stream", "ModelStreamInfer", messages, stream=True)
