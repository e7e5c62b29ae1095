"""`tritonflow serve --capture`: a real node answers tritonclient's HTTP and gRPC requests, and the
Parquet files under the capture root (local, and S3 on moto) hold exactly what was asked and answered,
read back with pyarrow as lineage/capture_layout.py lays them out."""

from __future__ import annotations

import io
import re
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import N_FEATURES, Server, forest, publish, wait_for
from servers import stop_process
from test_serve_cli import refusal
from test_serve_cli import serve as refused_start

from tritonflow.lineage import capture_layout as layout

MODEL = "captured"
OUTPUT = "output.output__0"
INPUT = "input.input__0"


def http_infer(server: Server, rows: np.ndarray, request_id: str = "") -> tuple[np.ndarray, str]:
    """The node's answer to one request of `rows`: the output and the response's deployment id."""
    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = server.client.infer(MODEL, [tensor], request_id=request_id)
    return result.as_numpy("output__0"), result.get_response()["parameters"]["deployment_id"]


def grpc_infer(
    client: grpcclient.InferenceServerClient, rows: np.ndarray, request_id: str = ""
) -> tuple[np.ndarray, str]:
    tensor = grpcclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = client.infer(MODEL, [tensor], request_id=request_id)
    return result.as_numpy("output__0"), result.get_response().parameters["deployment_id"].string_param


def read_files(files: Iterable[tuple[str, bytes]]) -> pa.Table:
    """Every capture file's rows; each file must be one of the layout's keys and carry its schema."""
    tables = []
    for key, blob in files:
        assert layout.parse_key(key) is not None, key
        parsed = pq.read_table(io.BytesIO(blob))
        assert parsed.schema.metadata[b"tritonflow.capture"] == layout.SCHEMA.encode()
        tables.append(parsed)
    assert tables, "no capture file"
    return pa.concat_tables(tables, promote_options="default")


def local_files(root: Path) -> list[tuple[str, bytes]]:
    return [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*.parquet"))]


def s3_files(s3: Any, uri: str) -> list[tuple[str, bytes]]:
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    listed = s3.client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    keys = [o["Key"] for o in listed if o["Key"].endswith(layout.SUFFIX)]
    return [(k[len(prefix) + 1 :], s3.client.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys]


def counter(server: Server, name: str) -> float:
    """A node-wide counter (no labels) from /metrics."""
    text = server.request("GET", "/metrics")[2].decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"no {name} in /metrics"
    return float(match.group(1))


def by_input(captured: pa.Table) -> dict[bytes, dict[str, Any]]:
    """Captured rows by their input values (each test row is drawn at random: unique)."""
    rows = captured.to_pylist()
    return {np.asarray(r[INPUT], np.float32).tobytes(): r for r in rows}


@pytest.fixture
def repo(local_repo: Path) -> tuple[Path, str]:
    record = publish(local_repo, MODEL, forest())
    return local_repo, record.deployment_id


def test_every_row_asked_and_answered_is_captured_over_http_and_grpc(
    repo: tuple[Path, str], serve: Callable[..., Server], tmp_path: Path
) -> None:
    root = tmp_path / "captures"
    server = serve(repo[0], "--capture", str(root), "--capture-window-s", "0.5", "--capture-file-rows", "700")
    rng = np.random.default_rng(0)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    sent = []  # (rows, request id, output, deployment id) per request
    for i in range(1_000):
        rows = rng.random((1 + i % 4, N_FEATURES), dtype=np.float32)
        request_id = f"req-{i}" if i % 3 else ""
        infer = (lambda r, q: http_infer(server, r, q)) if i % 2 else (lambda r, q: grpc_infer(grpc, r, q))
        sent.append((rows, request_id, *infer(rows, request_id)))
    grpc.close()
    total = sum(len(s[0]) for s in sent)
    wait_for(lambda: counter(server, "tritonflow_capture_rows_total") == total, what="every row written")
    assert counter(server, "tritonflow_capture_files_total") >= 4  # at most 700 rows a file
    assert counter(server, "tritonflow_capture_dropped_total") == 0

    captured = read_files(local_files(root))
    assert captured.num_rows == total
    assert captured.schema.field(layout.TIME).type == pa.timestamp("us", tz="UTC")
    found = by_input(captured)
    for rows, request_id, output, deployment_id in sent:
        assert deployment_id == repo[1]
        for index, row in enumerate(rows):
            got = found[row.tobytes()]
            assert got[layout.REQUEST_ID] == (request_id or None)
            assert got[layout.ROW] == index
            assert got[layout.DEPLOYMENT_ID] == deployment_id
            assert got[layout.ROLE] == "champion"
            assert got[layout.LATENCY_US] > 0
            np.testing.assert_array_equal(np.asarray(got[OUTPUT], np.float32), output[index])
    metadata = pq.read_schema(next(root.rglob("*.parquet"))).metadata
    assert metadata[b"tritonflow.capture.deployment_id"] == repo[1].encode()


def test_capture_to_s3(
    repo: tuple[Path, str], serve: Callable[..., Server], s3_server: Any, s3_bucket: str
) -> None:
    uri = s3_bucket.replace("/models", "/captures")
    server = serve(repo[0], "--capture", uri)
    rng = np.random.default_rng(1)
    sent = [
        (rows, *http_infer(server, rows, f"s3-{i}"))
        for i, rows in enumerate(rng.random((100, 2, N_FEATURES), dtype=np.float32))
    ]
    assert server.stop() == 0  # NOTE: SIGTERM flushes the queue before exit

    found = by_input(read_files(s3_files(s3_server, uri)))
    assert len(found) == 200
    for i, (rows, output, _) in enumerate(sent):
        for index, row in enumerate(rows):
            assert found[row.tobytes()][layout.REQUEST_ID] == f"s3-{i}"
            np.testing.assert_array_equal(np.asarray(found[row.tobytes()][OUTPUT], np.float32), output[index])


def test_sample_takes_whole_requests(
    repo: tuple[Path, str], serve: Callable[..., Server], tmp_path: Path
) -> None:
    root = tmp_path / "captures"
    server = serve(repo[0], "--capture", str(root), "--capture-sample", "0.5")
    rng = np.random.default_rng(2)
    for i in range(400):
        http_infer(server, rng.random((3, N_FEATURES), dtype=np.float32), f"s-{i}")
    assert server.stop() == 0

    captured = read_files(local_files(root)).to_pylist()
    rows: dict[str, list[int]] = {}
    for row in captured:
        rows.setdefault(row[layout.REQUEST_ID], []).append(row[layout.ROW])
    assert 120 <= len(rows) <= 280, len(rows)
    assert all(sorted(indexes) == [0, 1, 2] for indexes in rows.values())


def test_inputs_none_keeps_outputs_and_stamps_only(
    repo: tuple[Path, str], serve: Callable[..., Server], tmp_path: Path
) -> None:
    root = tmp_path / "captures"
    server = serve(repo[0], "--capture", str(root), "--capture-inputs", "none")
    rows = np.random.default_rng(3).random((5, N_FEATURES), dtype=np.float32)
    output, _ = http_infer(server, rows, "private")
    assert server.stop() == 0

    captured = read_files(local_files(root))
    assert not [c for c in captured.column_names if c.startswith(layout.INPUT)]
    assert captured.column_names == [*layout.COLUMNS, OUTPUT]
    np.testing.assert_array_equal(np.asarray(captured.column(OUTPUT).to_pylist(), np.float32), output)


def traffic(server: Server, stop: threading.Event, answered: list[str], name: str) -> threading.Thread:
    """A client sending 2-row requests until `stop`; the ids of those answered 200 go to `answered`."""

    def run() -> None:
        client = httpclient.InferenceServerClient(server.url)
        rng, i = np.random.default_rng(len(answered)), 0
        while not stop.is_set():
            request_id = f"{name}-{i}"
            i += 1
            try:
                http_infer_with(client, rng.random((2, N_FEATURES), dtype=np.float32), request_id)
            except Exception:  # NOTE: the node is going away: refused or cut requests were not answered
                continue
            answered.append(request_id)
        client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def http_infer_with(client: httpclient.InferenceServerClient, rows: np.ndarray, request_id: str) -> None:
    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    client.infer(MODEL, [tensor], request_id=request_id)


def test_sigterm_mid_traffic_captures_every_answered_request(
    repo: tuple[Path, str], serve: Callable[..., Server], tmp_path: Path
) -> None:
    root = tmp_path / "captures"
    server = serve(repo[0], "--capture", str(root))  # NOTE: the default 60 s window: nothing written before
    stop, answered = threading.Event(), list[str]()
    threads = [traffic(server, stop, answered, f"t{n}") for n in range(3)]
    wait_for(lambda: len(answered) >= 150, what="traffic")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    stop.set()
    for thread in threads:
        thread.join(10)

    ids = read_files(local_files(root)).column(layout.REQUEST_ID).to_pylist()
    assert set(answered) <= set(ids)
    assert len(ids) == 2 * len(set(ids))  # whole requests, each once


def test_kill_9_mid_traffic_leaves_only_whole_files(repo: tuple[Path, str], tmp_path: Path) -> None:
    root = tmp_path / "captures"
    args = ("--capture", str(root), "--capture-window-s", "0.1", "--capture-file-rows", "10")
    server = Server(repo[0], tmp_path, *args)
    stop, answered = threading.Event(), list[str]()
    try:
        threads = [traffic(server, stop, answered, f"k{n}") for n in range(3)]
        wait_for(lambda: counter(server, "tritonflow_capture_files_total") >= 20, what="files written")
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    finally:
        stop.set()
        stop_process(server.process)
    for thread in threads:
        thread.join(10)

    files = local_files(root)
    assert len(files) >= 20
    captured = read_files(files)  # NOTE: every file reads whole: pq.read_table raises on a torn one
    assert captured.num_rows % 2 == 0 and set(captured.column(layout.REQUEST_ID).to_pylist()) <= set(answered)


def test_full_queue_drops_rows_and_requests_succeed(
    repo: tuple[Path, str], serve: Callable[..., Server], tmp_path: Path
) -> None:
    root = tmp_path / "captures"
    server = serve(repo[0], "--capture", str(root), "--capture-queue-rows", "8")  # 60 s window: none written
    rng = np.random.default_rng(4)
    for i in range(30):
        http_infer(server, rng.random((1, N_FEATURES), dtype=np.float32), f"q-{i}")  # each answered 200
    assert counter(server, "tritonflow_capture_dropped_total") == 22
    assert server.stop() == 0

    assert read_files(local_files(root)).column(layout.REQUEST_ID).to_pylist() == [f"q-{i}" for i in range(8)]
    assert server.log_text().count("capture queue full") == 1  # NOTE: at most once a minute


def test_failed_writes_are_counted_and_tried_again(
    repo: tuple[Path, str], serve: Callable[..., Server], tmp_path: Path
) -> None:
    root = tmp_path / "captures"
    root.mkdir()
    (root / MODEL).write_text("in the way")  # NOTE: a file where the model's folder goes: writes fail
    server = serve(repo[0], "--capture", str(root), "--capture-window-s", "0.1")
    rng = np.random.default_rng(5)
    for i in range(10):
        http_infer(server, rng.random((1, N_FEATURES), dtype=np.float32), f"f-{i}")
    wait_for(lambda: counter(server, "tritonflow_capture_failures_total") >= 2, what="failed writes")
    assert counter(server, "tritonflow_capture_rows_total") == 0
    (root / MODEL).unlink()
    wait_for(lambda: counter(server, "tritonflow_capture_rows_total") == 10, what="the retry")

    assert sorted(read_files(local_files(root)).column(layout.REQUEST_ID).to_pylist()) == sorted(
        f"f-{i}" for i in range(10)
    )
    assert server.log_text().count("capture: cannot write") == 1  # NOTE: at most once a minute


@pytest.mark.parametrize(
    "args, wanted",
    [
        (["--capture", "{root}", "--capture-sample", "0"], "'0' is not a share of requests in (0, 1]"),
        (["--capture", "{root}", "--capture-sample", "1.5"], "'1.5' is not a share of requests in (0, 1]"),
        (["--capture", "{root}", "--capture-inputs", "some"], "invalid choice: 'some'"),
        (["--capture-sample", "0.5"], "--capture-sample needs --capture ROOT"),
        (["--capture", "{blocked}/captures"], "cannot write there"),
    ],
)
def test_bad_capture_flags_exit_2_with_one_line(
    repo: tuple[Path, str], tmp_path: Path, args: list[str], wanted: str
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    given = [a.format(root=tmp_path / "captures", blocked=blocked) for a in args]
    line = refusal(refused_start(repo[0], *given))
    assert wanted in line, line
