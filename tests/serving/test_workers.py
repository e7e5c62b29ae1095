"""`tritonflow serve --workers 2`: two worker processes behind one set of ports, seen as one server.

Each test runs a real node subprocess (a supervisor and its two workers) and talks to it over
loopback with tritonclient (HTTP and gRPC) or raw connections: requests spread over the workers,
/metrics and the statistics (HTTP and gRPC) count each request exactly once, readiness (both) waits for
every worker, a version swap and load/unload reach
both workers, an S3 repository over TLS with capture is served and captured once per request, a
worker killed with SIGKILL is replaced while the other answers, SIGTERM drains.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import PROBA_ATOL, Server, forest, publish, wait_for
from test_capture import counter, local_files, read_files
from test_connections import WAIT_S, expect_continue, head, infer_body
from test_reload import X, infer
from test_tls import certificate
from tritonclient.utils import InferenceServerException

from tritonflow.lineage import capture_layout as layout
from tritonflow.serving.worker_sums import family_total, sum_expositions, sum_statistics

MODEL = "fraud-classifier"
WORKERS = ("--workers", "2")
INFER = f"/v2/models/{MODEL}/infer"
FRESH = 40  # requests on connections of their own: each one is handed to whichever worker accepts it


def node(serve, repository, *args: str, **options: object) -> Server:
    """A --workers 2 node once ready: every worker serves (live answers as soon as one does)."""
    server = serve(repository, *WORKERS, *args, **options)
    wait_for(lambda: ready(server), timeout=WAIT_S, what="ready")
    return server


def worker_samples(server: Server, name: str) -> dict[int, tuple[int, float]]:
    """A per-worker metric: worker index -> (pid, value)."""
    text = server.request("GET", "/metrics")[2].decode()
    found = re.findall(rf'^{name}{{pid="(\d+)",worker="(\d+)"}} (\S+)$', text, re.M)
    return {int(worker): (int(pid), float(value)) for pid, worker, value in found}


def pids(server: Server) -> dict[int, int]:
    """worker index -> pid, of the workers answering now."""
    return {index: pid for index, (pid, _) in worker_samples(server, "tritonflow_worker_requests").items()}


def replaced(server: Server, index: int, old_pid: int) -> dict[int, int]:
    """Wait until worker `index` answers again, from a new process; every worker's pid then."""

    def new() -> dict[int, int] | None:
        now = pids(server)
        return now if len(now) == 2 and now[index] != old_pid else None

    return wait_for(new, timeout=WAIT_S, what=f"a new worker {index}")


def ready(server: Server) -> bool:
    return server.request("GET", "/v2/health/ready")[0] == 200


def served_by_both(server: Server) -> bool:
    return all(count > 0 for _, count in worker_samples(server, "tritonflow_worker_requests").values())


def fp32(x: np.ndarray, module) -> object:
    tensor = module.InferInput("input__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_requests_over_both_workers_are_counted_exactly_once(serve, local_repo):
    publish(local_repo, MODEL, forest(0))
    server = node(serve, local_repo)
    sent = {"http": 0, "grpc": 0, "rows": 0}
    lock = threading.Lock()

    def client_loop(kind: str, requests: int) -> None:
        module = httpclient if kind == "http" else grpcclient
        client = module.InferenceServerClient(server.url if kind == "http" else server.grpc_url)
        for i in range(requests):
            x = X[: 1 + i % 3]
            result = client.infer(MODEL, [fp32(x, module)])
            np.testing.assert_allclose(result.as_numpy("output__0"), forest(0).proba(x), atol=PROBA_ATOL)
            with lock:
                sent[kind] += 1
                sent["rows"] += len(x)
        client.close()

    threads = [threading.Thread(target=client_loop, args=(kind, 30)) for kind in ("http", "grpc") * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(FRESH):  # NOTE: new connections until both workers have answered some
        assert infer(server).status == 200
        sent["http"] += 1
        sent["rows"] += len(X)
    assert sent["http"] + sent["grpc"] == 8 * 30 + FRESH
    total = sent["http"] + sent["grpc"]

    assert server.metric("nv_inference_request_success", MODEL, 1) == total
    assert server.metric("nv_inference_count", MODEL, 1) == sent["rows"]
    assert server.sample("tritonflow_version_role", model=MODEL, role="champion", version="1") == 1
    stats = server.json("GET", f"/v2/models/{MODEL}/stats")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [(MODEL, "1")]
    assert stats[0]["inference_stats"]["success"]["count"] == total
    assert stats[0]["inference_count"] == sent["rows"]
    assert sum(b["compute_infer"]["count"] for b in stats[0]["batch_stats"]) == stats[0]["execution_count"]
    for _ in range(4):  # NOTE: gRPC's statistics are the node's too, whichever worker a channel reaches
        client = grpcclient.InferenceServerClient(server.grpc_url)
        (over_grpc,) = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
        client.close()
        assert int(over_grpc["inference_stats"]["success"]["count"]) == total
        assert int(over_grpc["inference_count"]) == sent["rows"]

    per_worker = worker_samples(server, "tritonflow_worker_requests")
    assert sorted(per_worker) == [0, 1] and sum(count for _, count in per_worker.values()) == total
    assert all(count > 0 for _, count in per_worker.values()), per_worker  # both served some
    memory = worker_samples(server, "tritonflow_worker_resident_memory_bytes")
    assert sorted(memory) == [0, 1] and all(rss > 10 * 2**20 for _, rss in memory.values())
    assert {pid for pid, _ in memory.values()} == {pid for pid, _ in per_worker.values()}
    assert server.process.pid not in {pid for pid, _ in memory.values()}  # the supervisor serves nothing
    memory_line = r"2 workers serving; resident memory \d+ \+ \d+ MiB, \d+ MiB in all"
    wait_for(lambda: re.search(memory_line, server.log_text()), what="the supervisor's memory line")


def test_a_version_swap_reaches_both_workers_and_every_stamp_is_the_version_that_answered(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0), run_id="1000000000000001")
    server = node(serve, local_repo)
    assert infer(server).deployment == v1.deployment_id
    v2 = publish(local_repo, MODEL, forest(2), run_id="1000000000000002")
    answers = []

    def all_on_v2() -> bool:
        batch = [infer(server) for _ in range(10)]  # NOTE: fresh connections, so either worker answers
        answers.extend(batch)
        return all(a.deployment == v2.deployment_id for a in batch)

    wait_for(all_on_v2, timeout=WAIT_S, what="both workers serving version 2")
    assert all(a.status == 200 for a in answers)
    for answer in answers:
        expected = forest(0 if answer.deployment == v1.deployment_id else 2).proba(X)
        assert answer.deployment in (v1.deployment_id, v2.deployment_id)
        np.testing.assert_allclose(answer.outputs, expected, atol=PROBA_ATOL)  # the stamp is who answered
    wait_for(lambda: ready(server), what="ready on version 2")
    assert [infer(server).deployment for _ in range(FRESH)] == [v2.deployment_id] * FRESH


def test_a_worker_killed_with_sigkill_is_replaced_and_the_node_keeps_answering(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0))
    server = node(serve, local_repo)
    before = pids(server)
    os.kill(before[1], signal.SIGKILL)
    wait_for(lambda: f"worker 1 (pid {before[1]}) was killed by SIGKILL: restarting it" in server.log_text())
    # NOTE: while worker 1 restarts, worker 0 takes every connection
    assert [infer(server).deployment for _ in range(FRESH)] == [v1.deployment_id] * FRESH
    assert replaced(server, 1, before[1])[0] == before[0]  # the other worker was never touched
    wait_for(lambda: ready(server), what="ready again")
    wait_for(lambda: infer(server).status == 200 and served_by_both(server), what="the new worker serving")


def test_ready_only_while_every_worker_answers(serve, local_repo):
    publish(local_repo, MODEL, forest(0))
    server = node(serve, local_repo)
    pid = pids(server)[0]
    os.kill(pid, signal.SIGSTOP)  # NOTE: stopped, not dead: the supervisor does not replace it
    try:

        def refused() -> str | None:
            status, _, body = server.request("GET", "/v2/health/ready")
            return body.decode() if status == 503 else None

        assert "worker 0" in wait_for(refused, timeout=WAIT_S, what="not ready with worker 0 stopped")

        def refused_over_grpc() -> bool | None:
            # NOTE: a worker asks a stopped peer for up to PEER_TIMEOUT_S['state'] (2 s) before it answers
            client = grpcclient.InferenceServerClient(server.grpc_url)
            try:
                return client.is_server_ready(client_timeout=5) is False or None
            except InferenceServerException:  # NOTE: a channel that reached the stopped worker
                return None
            finally:
                client.close()

        # NOTE: a new channel reaches either worker (SO_REUSEPORT): 2 x WAIT_S, at most 5 s a try
        assert wait_for(refused_over_grpc, timeout=2 * WAIT_S, what="gRPC not ready with worker 0 stopped")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: ready(server), what="ready again")


def test_load_and_unload_act_on_every_worker_and_answer_once(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0))
    server = node(serve, local_repo, "--model-control-mode", "explicit", "--load-model", MODEL)
    assert server.request("POST", f"/v2/repository/models/{MODEL}/unload", b"")[0] == 200
    assert {infer(server).status for _ in range(FRESH)} == {404}  # neither worker serves it
    assert server.index_row(MODEL, 1)["state"] == "UNAVAILABLE"
    # a worker that starts later applies the unload too, though --load-model names the model
    assert ready(server)  # NOTE: both serve the same versions: none
    pid = pids(server)[1]
    os.kill(pid, signal.SIGKILL)
    replaced(server, 1, pid)
    assert ready(server)  # the new worker 1 serves none either: it applied the unload before serving
    assert {infer(server).status for _ in range(FRESH)} == {404}
    assert server.request("POST", f"/v2/repository/models/{MODEL}/load", b"")[0] == 200
    assert {infer(server).deployment for _ in range(FRESH)} == {v1.deployment_id}
    assert ready(server)
    client = grpcclient.InferenceServerClient(server.grpc_url)  # gRPC's model control, the same
    try:
        client.unload_model(MODEL)
        assert {infer(server).status for _ in range(FRESH)} == {404}
        client.load_model(MODEL)
        assert {infer(server).deployment for _ in range(FRESH)} == {v1.deployment_id}
    finally:
        client.close()


def test_sigterm_lets_requests_in_flight_on_both_workers_finish(serve, local_repo):
    publish(local_repo, MODEL, forest(0))
    server = node(serve, local_repo)
    body = infer_body(X)
    clients = []
    for _ in range(8):  # NOTE: connections accepted by either worker, each mid-request
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        sock.sendall(head("POST", INFER, Content_Length=str(len(body)), Expect="100-continue") + b"\r\n")
        expect_continue(sock)
        sock.sendall(body[:10])
        clients.append(sock)
    server.process.send_signal(signal.SIGTERM)
    for sock in clients:
        sock.sendall(body[10:])
        answer = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
        answer.begin()
        assert answer.status == 200, answer.read()
        assert json.loads(answer.read())["model_version"] == "1"
        sock.close()
    assert server.process.wait(timeout=WAIT_S) == 0, server.log_text()
    log = server.log_text()
    assert log.count("Application shutdown complete") == 2 and "stopping the workers" in log, log


def test_workers_whose_supervisor_is_killed_drain_and_exit(local_repo, tmp_path):
    publish(local_repo, MODEL, forest(0))
    server = Server(local_repo, tmp_path, *WORKERS)  # NOTE: not the fixture: its supervisor dies here
    try:
        wait_for(lambda: ready(server), timeout=WAIT_S, what="ready")
        workers = pids(server)
        spec = Path(Path(f"/proc/{workers[0]}/cmdline").read_bytes().split(b"\0")[3].decode())
        assert spec.name == "spec.pickle" and spec.exists()
        server.process.kill()
        server.process.wait()
        for pid in workers.values():
            wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), timeout=WAIT_S, what=f"{pid} gone")
        assert server.log_text().count("Application shutdown complete") == 2, server.log_text()
        assert not spec.parent.exists()  # the run folder, removed by the workers the supervisor left
    finally:
        server.stop()


@pytest.mark.parametrize("given", ["0", "two"])
def test_a_worker_count_that_is_not_one_or_more_is_refused(local_repo, given):
    command = [sys.executable, "-m", "tritonflow", "serve", str(local_repo), "--workers", given]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers" in done.stderr and "auto" in done.stderr, done.stderr


def test_sums_add_amounts_keep_markers_and_match_entries_by_version():
    one = "\n".join(
        [
            "# HELP nv_inference_count Number of inferences",
            "# TYPE nv_inference_count counter",
            'nv_inference_count{model="m",version="1"} 3',
            "# TYPE tritonflow_version_role gauge",
            'tritonflow_version_role{model="m",role="champion",version="1"} 1',
        ]
    )
    v1 = 'nv_inference_count{model="m",version="1"} 3'
    two = one.replace(
        v1, 'nv_inference_count{model="m",version="1"} 4\nnv_inference_count{model="m",version="2"} 5'
    )
    summed = sum_expositions([one, two])
    assert (
        'nv_inference_count{model="m",version="1"} 7\nnv_inference_count{model="m",version="2"} 5' in summed
    )
    assert 'tritonflow_version_role{model="m",role="champion",version="1"} 1' in summed  # not 2
    assert summed.count("# TYPE nv_inference_count counter") == 1
    assert family_total(summed, "nv_inference_count") == 12

    def entry(version: str, count: int, last: int, batches: dict[int, int]) -> dict:
        duration = {"count": count, "ns": 10 * count}
        return {
            "name": "m",
            "version": version,
            "last_inference": last,
            "inference_count": count,
            "inference_stats": {"success": duration},
            "batch_stats": [
                {"batch_size": size, "compute_infer": {"count": n, "ns": n}} for size, n in batches.items()
            ],
        }

    total = sum_statistics(
        [
            {"model_stats": [entry("1", 2, 100, {1: 2})]},
            {"model_stats": [entry("1", 3, 50, {1: 1, 4: 2}), entry("2", 1, 7, {})]},
        ]
    )["model_stats"]
    assert [(e["version"], e["inference_count"], e["last_inference"]) for e in total] == [
        ("1", 5, 100),
        ("2", 1, 7),
    ]
    assert total[0]["inference_stats"]["success"] == {"count": 5, "ns": 50}
    assert total[0]["batch_stats"] == [
        {"batch_size": 1, "compute_infer": {"count": 3, "ns": 3}},
        {"batch_size": 4, "compute_infer": {"count": 2, "ns": 2}},
    ]


def test_workers_serve_an_s3_repository_over_tls_and_capture_each_request_once(serve, s3_bucket, tmp_path):
    record = publish(s3_bucket, MODEL, forest(0), run_id="1000000000000001")
    cert, key, _ = certificate(tmp_path, "node")
    context = ssl.create_default_context(cafile=cert)
    root = tmp_path / "captures"
    capture = ("--capture", str(root), "--capture-window-s", "0.5")
    server = node(serve, s3_bucket, "--tls-cert", str(cert), "--tls-key", str(key), *capture, tls=context)
    sent = 0
    while sent < FRESH or not served_by_both(server):  # NOTE: HTTPS connections of their own
        answer = infer(server, conn=http.client.HTTPSConnection("127.0.0.1", server.port, context=context))
        assert (answer.status, answer.deployment) == (200, record.deployment_id)
        np.testing.assert_allclose(answer.outputs, forest(0).proba(X), atol=PROBA_ATOL)
        sent += 1
    rows = sent * len(X)
    wait_for(lambda: counter(server, "tritonflow_capture_rows_total") == rows, what="every row written")
    captured = read_files(local_files(root))
    assert captured.num_rows == rows  # each worker's files, none overwriting another's
    assert set(captured.column(layout.DEPLOYMENT_ID).to_pylist()) == {record.deployment_id}
