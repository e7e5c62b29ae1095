"""A seeded fuzz of one real node's gRPC side: thousands of hostile messages, and none takes it down.

The node serves a forest (FIL) and an ONNX model. The corpus (grpc_fuzz_corpus.py) is fixed by
SEED and sent as raw bytes on a plain channel (identity serializers), so that damaged messages reach
the node as they are. Every answer must be OK or a status other than INTERNAL/UNKNOWN whose message
is non-empty and shows no server path or traceback; a model or version that is not there is never
answered OK; every CHECK_EVERY calls both models still answer a good gRPC request as sklearn does;
the node stays alive, its log has no traceback, and its resident memory stays within RSS_GROWTH_MB.
What the fuzz found is replayed on its own below, so that it stays found whatever the corpus becomes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import PROBA_ATOL, Server, config_for, data, publish
from fuzz_corpus import MODELS
from grpc_fuzz_corpus import FAMILIES, REGION, REGION_BYTES, REGION_KEY, ROWS, Corpus, Fuzzed
from servers import wait_for
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import shared_memory as shm

SEED = 20261202
CALLS = 6000
CHECK_EVERY = 100
RSS_GROWTH_MB = 150
MAX_BYTES = 4 << 20  # NOTE: the node's --max-request-bytes: the corpus's 1 MB ids fit under it
SERVICE = "/inference.GRPCInferenceService/"
TIMEOUT_S = 30  # NOTE: a call not answered by then means the node hangs: it is reported, not timed
LEAKS = ("Traceback", 'File "', "/work/", "site-packages", "tritonflow/serving")


# -- the node ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(serve_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root: Path = tmp_path_factory.mktemp("grpc-fuzz") / "repo"
    root.mkdir()
    for name, (trained, _) in MODELS.items():
        publish(root, name, trained(), config_for(name, trained()))
    # NOTE: the in-flight budget is one largest request: a byte a call fails to give back shows at the end
    return serve_module(
        root, *("--max-request-bytes", str(MAX_BYTES)), *("--max-inflight-bytes", str(MAX_BYTES))
    )


@pytest.fixture(scope="module")
def channel(server: Server) -> Any:
    """A channel to the node, with a region registered there that holds ROWS rows of the data."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    handle = shm.create_shared_memory_region(REGION, REGION_KEY, REGION_BYTES)
    shm.set_shared_memory_region(handle, [data()[0][:ROWS]])
    try:
        with grpc.insecure_channel(server.grpc_url, options=options) as opened:
            register = pb.SystemSharedMemoryRegisterRequest(
                name=REGION, key=REGION_KEY, byte_size=REGION_BYTES
            )
            opened.unary_unary(SERVICE + "SystemSharedMemoryRegister")(register.SerializeToString())
            yield opened
    finally:
        shm.destroy_shared_memory_region(handle)


def rss_mb(server: Server) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def refused(code: grpc.StatusCode, details: str | None) -> str | None:
    """What is wrong with a refusal; None when nothing is."""
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"{code.name}: {details!r:.300}"
    if not details:
        return f"{code.name} without a message"
    leaked = [leak for leak in LEAKS if leak in details]
    return f"{code.name} shows {leaked}: {details!r:.300}" if leaked else None


def send(channel: Any, fuzzed: Fuzzed) -> tuple[grpc.StatusCode, str | None, list[bytes]]:
    """The call's status, its message and the answers (identity serializers: bytes in, bytes out)."""
    try:
        if fuzzed.cancel and fuzzed.stream:
            call = channel.stream_stream(SERVICE + fuzzed.rpc)(iter(fuzzed.messages), timeout=TIMEOUT_S)
            first = next(call)
            call.cancel()
            return grpc.StatusCode.CANCELLED, None, [first]
        if fuzzed.cancel:
            channel.unary_unary(SERVICE + fuzzed.rpc).future(fuzzed.messages[0], timeout=TIMEOUT_S).cancel()
            return grpc.StatusCode.CANCELLED, None, []
        if fuzzed.stream:
            call = channel.stream_stream(SERVICE + fuzzed.rpc)
            return grpc.StatusCode.OK, None, list(call(iter(fuzzed.messages), timeout=TIMEOUT_S))
        return (
            grpc.StatusCode.OK,
            None,
            [channel.unary_unary(SERVICE + fuzzed.rpc)(fuzzed.messages[0], timeout=TIMEOUT_S)],
        )
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), []


def problem(fuzzed: Fuzzed, code: grpc.StatusCode, details: str | None, answers: list[bytes]) -> str | None:
    """What is wrong with the answer to one fuzzed call; None when nothing is."""
    if fuzzed.cancel:
        return None  # NOTE: what the node does with it shows in its log, its budget and the next calls
    if fuzzed.family == "valid" and code != grpc.StatusCode.OK:
        return f"{code.name} to a valid request: {details!r:.300}"
    if code != grpc.StatusCode.OK:
        return refused(code, details)
    if fuzzed.hostile:
        return "OK to a call naming a model, version, region or repository that is not there"
    if fuzzed.stream:
        if len(answers) != len(fuzzed.messages):
            return f"{len(answers)} answers to {len(fuzzed.messages)} stream messages"
        for raw in answers:
            error = pb.ModelStreamInferResponse.FromString(raw).error_message
            found = error and refused(grpc.StatusCode.INVALID_ARGUMENT, error)
            if (
                found or "internal server error" in error
            ):  # NOTE: InternalError's text: an unexpected exception
                return f"stream error message: {error!r:.300}"
    return None


def infer(channel: Any, model: str, x: np.ndarray, output: str) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input__0", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    answer = pb.ModelInferResponse.FromString(
        channel.unary_unary(SERVICE + "ModelInfer")(request.SerializeToString())
    )
    index = [o.name for o in answer.outputs].index(output)
    return np.frombuffer(answer.raw_output_contents[index], np.float32).reshape(answer.outputs[index].shape)


def assert_models_answer(channel: Any) -> None:
    x = data()[0][:3]
    for name, (trained, output) in MODELS.items():
        np.testing.assert_allclose(infer(channel, name, x, output), trained().proba(x), atol=PROBA_ATOL)


def largest(channel: Any) -> bool:
    """Whether a request of the node's whole in-flight budget is answered: no call kept a byte of it."""
    request = pb.ModelInferRequest(model_name=next(iter(MODELS)))
    x = data()[0][:1]
    request.inputs.add(name="input__0", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    request.id = "x" * (MAX_BYTES - request.ByteSize() - 8)  # NOTE: 8: the id's tag and length prefix
    assert MAX_BYTES - 8 <= request.ByteSize() <= MAX_BYTES
    try:
        channel.unary_unary(SERVICE + "ModelInfer")(request.SerializeToString(), timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        return False
    return True


def test_fuzzed_grpc_messages_never_take_the_node_down(server: Server, channel: Any) -> None:
    corpus = Corpus(SEED)
    assert_models_answer(channel)
    assert largest(channel)
    baseline = peak = rss_mb(server)
    failures: list[str] = []
    statuses: Counter[tuple[str, str]] = Counter()
    for i in range(1, CALLS + 1):
        fuzzed = corpus.next()
        code, details, answers = send(channel, fuzzed)
        statuses[fuzzed.family, code.name] += 1
        found = problem(fuzzed, code, details, answers)
        if found is not None:
            failures.append(f"#{i} {fuzzed} -> {found}")
            print(failures[-1])
        assert server.process.poll() is None, (
            f"the node died after #{i} {fuzzed}:\n{server.log_text()[-3000:]}"
        )
        if i % CHECK_EVERY == 0:
            assert_models_answer(channel)
            peak = max(peak, rss_mb(server))
    print(f"answers by family and status: {dict(sorted(statuses.items()))}")
    print(f"resident memory: {baseline:.0f} MB at the start, {peak:.0f} MB at most")
    assert not failures, f"{len(failures)} of {CALLS} fuzzed calls went wrong:\n" + "\n".join(failures[:40])
    assert {family for family, _ in statuses} == set(FAMILIES), "the corpus must hold every family"
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
    # NOTE: polled: cancelled calls may still be running on the node; a byte never given back never frees
    wait_for(lambda: largest(channel), what="the whole in-flight budget to be free again")
    assert peak - baseline < RSS_GROWTH_MB, f"resident memory grew from {baseline:.0f} MB to {peak:.0f} MB"


@pytest.mark.parametrize(
    ("transport", "key"),
    [("grpc", "/fuzz\x00key"), ("http", "/fuzz\x00key"), ("http", "/fuzz\ud800key")],
    ids=["grpc-nul", "http-nul", "http-surrogate"],
)
def test_what_the_fuzz_found_a_key_os_open_cannot_take_is_refused(
    server: Server, channel: Any, transport: str, key: str
) -> None:
    """os.open raised ValueError on a NUL (or a lone surrogate, which only JSON can carry): INTERNAL on
    gRPC, a 500 on HTTP, a traceback in the log."""
    expected = "not a POSIX shared memory name"
    if transport == "grpc":
        request = pb.SystemSharedMemoryRegisterRequest(name="bad-key", key=key, offset=0, byte_size=8)
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(SERVICE + "SystemSharedMemoryRegister")(request.SerializeToString())
        answer = (caught.value.code(), expected in (caught.value.details() or ""))
        assert answer == (grpc.StatusCode.INVALID_ARGUMENT, True), caught.value.details()
    else:
        body = json.dumps({"key": key, "offset": 0, "byte_size": 8}).encode()
        status, _, raw = server.request("POST", "/v2/systemsharedmemory/region/bad-key/register", body)
        assert (status, expected in json.loads(raw)["error"]) == (400, True), raw
    assert "Traceback" not in server.log_text()
    assert_models_answer(channel)
