"""System shared memory over HTTP with tritonclient's helpers; the CUDA answers of a node without GPUs.

Inputs read from and outputs written to registered regions give the plain answer and the native
model's; every bad region, key, offset or size is a 4xx saying what is wrong, followed by a good
request; the server fixture fails the module if the node logged a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from conftest import N_FEATURES, PROBA_ATOL, Server, config_for, data, forest, publish
from tritonclient.utils import InferenceServerException

MODEL = "fraud-classifier"
ROWS = 16
IN_BYTES = ROWS * N_FEATURES * 4
OUT_BYTES = ROWS * 2 * 4
AUTH = {"x-shm-key": "s3cret"}  # NOTE: the shared-memory API group is restricted: every call shows it is
KEY = f"/tf-test-shm-{os.getpid()}"  # NOTE: /dev/shm is shared by every test run on the machine
X = data()[0][:ROWS]


@pytest.fixture(scope="module")
def server(serve_module, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root = tmp_path_factory.mktemp("shm") / "repo"
    root.mkdir()
    publish(root, MODEL, forest(), config_for(MODEL, forest()))
    return serve_module(root, "--restrict", "shared-memory:x-shm-key=s3cret")


@pytest.fixture
def regions(server: Server) -> Iterator[dict[str, shm.SharedMemoryRegion]]:
    """An input region holding X and an output region, registered as "in" and "out"; unregistered after."""
    made = {
        "in": shm.create_shared_memory_region("in", f"{KEY}-in", IN_BYTES),
        "out": shm.create_shared_memory_region("out", f"{KEY}-out", OUT_BYTES),
    }
    try:
        shm.set_shared_memory_region(made["in"], [X])
        for name, size in (("in", IN_BYTES), ("out", OUT_BYTES)):
            server.client.register_system_shared_memory(name, f"{KEY}-{name}", size, headers=AUTH)
        yield made
        server.client.unregister_system_shared_memory(headers=AUTH)
    finally:
        for handle in made.values():
            shm.destroy_shared_memory_region(handle)


def shm_infer(
    client: httpclient.InferenceServerClient,
    region: tuple[str, int, int] = ("in", IN_BYTES, 0),
    output: tuple[str, int, int] = ("out", OUT_BYTES, 0),
    rows: int = ROWS,
) -> httpclient.InferResult:
    x = httpclient.InferInput("input__0", [rows, N_FEATURES], "FP32")
    x.set_shared_memory(*region)
    out = httpclient.InferRequestedOutput("output__0")
    out.set_shared_memory(*output)
    return client.infer(MODEL, [x], outputs=[out])


def plain(client: httpclient.InferenceServerClient) -> np.ndarray:
    x = httpclient.InferInput("input__0", list(X.shape), "FP32")
    x.set_data_from_numpy(X, binary_data=True)
    return client.infer(MODEL, [x]).as_numpy("output__0")


def assert_refused(call, status: str, *words: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == status, caught.value
    for word in words:
        assert word in caught.value.message(), caught.value.message()


def assert_still_serving(server: Server, regions: dict[str, shm.SharedMemoryRegion]) -> None:
    assert server.process.poll() is None
    shm_infer(server.client)
    written = shm.get_contents_as_numpy(regions["out"], np.float32, [ROWS, 2])
    np.testing.assert_allclose(written, forest().proba(X), atol=PROBA_ATOL)


def test_register_status_infer_and_unregister(server: Server, regions) -> None:
    client = server.client
    assert client.get_system_shared_memory_status(headers=AUTH) == [
        {"name": "in", "key": f"{KEY}-in", "offset": 0, "byte_size": IN_BYTES},
        {"name": "out", "key": f"{KEY}-out", "offset": 0, "byte_size": OUT_BYTES},
    ]
    assert client.get_system_shared_memory_status("out", headers=AUTH) == [
        {"name": "out", "key": f"{KEY}-out", "offset": 0, "byte_size": OUT_BYTES}
    ]
    result = shm_infer(client)
    # NOTE: as Triton answers: the output's name, datatype and shape, its data in the region only
    assert result.get_output("output__0") == {"name": "output__0", "datatype": "FP32", "shape": [ROWS, 2]}
    assert result.get_response()["parameters"]["deployment_id"].startswith(f"{MODEL}:1@")
    written = shm.get_contents_as_numpy(regions["out"], np.float32, [ROWS, 2])
    np.testing.assert_array_equal(written, plain(client))
    np.testing.assert_allclose(written, forest().proba(X), atol=PROBA_ATOL)

    client.unregister_system_shared_memory("in", headers=AUTH)
    assert [r["name"] for r in client.get_system_shared_memory_status(headers=AUTH)] == ["out"]
    assert_refused(lambda: shm_infer(client), "404", "Unable to find shared memory region: 'in'")
    client.unregister_system_shared_memory(headers=AUTH)
    assert client.get_system_shared_memory_status(headers=AUTH) == []


def test_windows_inside_a_region(server: Server, regions) -> None:
    """Offsets inside registered regions: the input's second half of X, the output at half its region."""
    client = server.client
    shm_infer(
        client, ("in", IN_BYTES // 2, IN_BYTES // 2), ("out", OUT_BYTES // 2, OUT_BYTES // 2), ROWS // 2
    )
    written = shm.get_contents_as_numpy(regions["out"], np.float32, [ROWS // 2, 2], offset=OUT_BYTES // 2)
    np.testing.assert_allclose(written, forest().proba(X[ROWS // 2 :]), atol=PROBA_ATOL)
    # a region registered at an offset of its file reads from there
    client.register_system_shared_memory("tail", f"{KEY}-in", IN_BYTES // 2, IN_BYTES // 2, headers=AUTH)
    shm_infer(client, ("tail", IN_BYTES // 2, 0), rows=ROWS // 2)
    written = shm.get_contents_as_numpy(regions["out"], np.float32, [ROWS // 2, 2])
    np.testing.assert_allclose(written, forest().proba(X[ROWS // 2 :]), atol=PROBA_ATOL)


BAD_INFERS = [
    (
        "unknown input region",
        {"region": ("nope", IN_BYTES, 0)},
        "404",
        "Unable to find shared memory region: 'nope'",
    ),
    ("unknown output region", {"output": ("nope", OUT_BYTES, 0)}, "404", "'nope'"),
    ("input past the region", {"region": ("in", IN_BYTES, 4)}, "400", "Invalid offset + byte size"),
    ("output past the region", {"output": ("out", OUT_BYTES, 8)}, "400", "Invalid offset + byte size"),
    ("size not the shape's", {"region": ("in", IN_BYTES - 4, 0)}, "400", f"takes {IN_BYTES} bytes"),
    ("output region too small", {"output": ("out", OUT_BYTES - 8, 0)}, "400", f"at least {OUT_BYTES} bytes"),
]


@pytest.mark.parametrize("case", BAD_INFERS, ids=[c[0] for c in BAD_INFERS])
def test_bad_infer_regions_are_4xx(server: Server, regions, case) -> None:
    _, kwargs, status, words = case
    assert_refused(lambda: shm_infer(server.client, **kwargs), status, words)
    assert_still_serving(server, regions)


BAD_REGISTERS = [
    ("key not found", ("r", f"{KEY}-missing", 8, 0), "Unable to open shared memory region"),
    ("key with a path", ("r", "/../../etc/passwd", 8, 0), "not a POSIX shared memory name"),
    ("key of a folder", ("r", "/a/b", 8, 0), "not a POSIX shared memory name"),
    ("window past the file", ("r", f"{KEY}-in", IN_BYTES, 8), "past the end"),
    ("empty window", ("r", f"{KEY}-in", 0, 0), "byte_size > 0"),
    ("registered twice", ("in", f"{KEY}-in", 8, 0), "already in manager"),
]


@pytest.mark.parametrize("case", BAD_REGISTERS, ids=[c[0] for c in BAD_REGISTERS])
def test_bad_registers_are_4xx(server: Server, regions, case) -> None:
    _, args, words = case
    assert_refused(lambda: server.client.register_system_shared_memory(*args, headers=AUTH), "400", words)
    assert [r["name"] for r in server.client.get_system_shared_memory_status(headers=AUTH)] == ["in", "out"]
    assert_still_serving(server, regions)


def test_a_symlink_in_dev_shm_is_not_followed(server: Server, regions, tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    link = Path(f"/dev/shm{KEY}-link")
    link.symlink_to(target)
    try:
        assert_refused(
            lambda: server.client.register_system_shared_memory("r", f"{KEY}-link", 8, headers=AUTH),
            "400",
            "Unable to open shared memory region",
        )
    finally:
        link.unlink()
    assert_still_serving(server, regions)


def test_a_region_truncated_by_its_client_is_refused_not_a_crash(server: Server, regions) -> None:
    # NOTE: the test's own mappings are not touched while their files are short (a SIGBUS here too)
    os.truncate(f"/dev/shm{KEY}-in", 0)
    assert_refused(lambda: shm_infer(server.client), "400", "now 0 bytes")
    os.truncate(f"/dev/shm{KEY}-in", IN_BYTES)
    shm.set_shared_memory_region(regions["in"], [X])
    os.truncate(f"/dev/shm{KEY}-out", OUT_BYTES // 2)
    assert_refused(lambda: shm_infer(server.client), "400", f"now {OUT_BYTES // 2} bytes")
    os.truncate(f"/dev/shm{KEY}-out", OUT_BYTES)
    assert_still_serving(server, regions)


def test_regions_unregistered_while_requests_use_them(server: Server, regions) -> None:
    """Requests racing unregister/register of their regions: each answer is whole, the node lives."""
    client = httpclient.InferenceServerClient(server.url, concurrency=4)
    statuses = []
    for _ in range(20):
        x = httpclient.InferInput("input__0", [ROWS, N_FEATURES], "FP32")
        x.set_shared_memory("in", IN_BYTES)
        out = httpclient.InferRequestedOutput("output__0")
        out.set_shared_memory("out", OUT_BYTES)
        pending = client.async_infer(MODEL, [x], outputs=[out])
        for name, size in (("in", IN_BYTES), ("out", OUT_BYTES)):
            server.client.unregister_system_shared_memory(name, headers=AUTH)
            server.client.register_system_shared_memory(name, f"{KEY}-{name}", size, headers=AUTH)
        try:
            pending.get_result()
            statuses.append("200")
        except InferenceServerException as exc:
            assert "shared memory region" in exc.message(), exc.message()
            statuses.append(exc.status())
    client.close()
    assert set(statuses) <= {"200", "404"}, statuses
    assert_still_serving(server, regions)


def test_register_body_and_restricted_group(server: Server, regions) -> None:
    status, _, text = server.request(
        "POST", "/v2/systemsharedmemory/region/r/register", b'{"offset": 0, "byte_size": 8}', AUTH
    )
    assert (status, '"key": string' in json.loads(text)["error"]) == (400, True), text
    status, _, text = server.request("GET", "/v2/systemsharedmemory/status")
    assert (status, "'shared-memory'" in json.loads(text)["error"]) == (403, True), text
    assert_still_serving(server, regions)


def test_cuda_shared_memory_answers_as_a_triton_without_gpus(server: Server, regions) -> None:
    client = server.client
    assert client.get_cuda_shared_memory_status(headers=AUTH) == []
    assert_refused(
        lambda: client.get_cuda_shared_memory_status("c", headers=AUTH),
        "404",
        "Unable to find cuda shared memory region: 'c'",
    )
    assert_refused(
        lambda: client.register_cuda_shared_memory("c", b"\0" * 64, 0, 8, headers=AUTH), "400", "no GPU"
    )
    client.unregister_cuda_shared_memory(headers=AUTH)
    client.unregister_cuda_shared_memory("c", headers=AUTH)
    assert_still_serving(server, regions)
