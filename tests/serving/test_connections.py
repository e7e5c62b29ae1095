"""No client can hold the node: slow headers and bodies, idle and bare connections, and connections
past --max-connections are closed or refused while normal requests are served; SIGTERM drains within
--shutdown-timeout and exits 0; concurrent large uploads stay within --max-inflight-bytes. HTTPS is
in test_tls.py.

Every test talks to a real node subprocess over real sockets, with small timeouts so that it runs
fast; waits are bounded generously and never asserted as timings.
"""

from __future__ import annotations

import http.client
import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import N_FEATURES, PROBA_ATOL, Server, data, forest, publish, wait_for
from servers import free_port

from tritonflow.serving.connections import DEFAULT_MAX_CONNECTIONS, RESERVED_FDS

MODEL = "m"
INFER = f"/v2/models/{MODEL}/infer"
X = data()[0][:4]
WAIT_S = 60.0  # the bound on every wait for the node to act: generous, the machine is shared
MB = 1024 * 1024


@pytest.fixture
def repo(local_repo: Path) -> Path:
    publish(local_repo, MODEL, forest())
    return local_repo


def infer_body(x: np.ndarray) -> bytes:
    tensor = {"name": "input__0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def assert_serving(server: Server) -> None:
    """A normal inference on a new connection is answered, stamped and right."""
    status, headers, raw = server.request("POST", INFER, infer_body(X))
    assert status == 200, raw
    assert headers["x-deployment-id"].startswith(f"{MODEL}:1@")
    [output] = json.loads(raw)["outputs"]
    proba = np.array(output["data"], np.float32).reshape(output["shape"])
    np.testing.assert_allclose(proba, forest().proba(X), atol=PROBA_ATOL)


def head(method: str, path: str, **headers: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: node",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    return "\r\n".join(lines).encode() + b"\r\n"


def read_until(sock: socket.socket, end: bytes) -> bytes:
    """What the node sends up to `end`, or until it closes the connection (or resets it)."""
    data = b""
    while not data.endswith(end):
        try:
            more = sock.recv(65536)
        except ConnectionResetError:
            break
        if not more:
            break
        data += more
    return data


def expect_continue(sock: socket.socket) -> None:
    """Wait for 100 Continue: the node has begun reading this request's body (it is in flight)."""
    assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100 ")


class Clients:
    """Raw connections to the node that send what a test says and notice when the node closes them."""

    def __init__(self, port: int, count: int, first: bytes = b"") -> None:
        self.open = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
        self.received: dict[socket.socket, bytes] = {}  # what the node sent on each, if anything
        for sock in self.open:
            if first:
                sock.sendall(first)
            sock.setblocking(False)

    def poll(self, dribble: bytes = b"") -> int:
        """Drop the connections the node has closed, send `dribble` on the others; how many are open."""
        still = []
        for sock in self.open:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:  # NOTE: a reset: the node closed it with bytes of ours unread
                data = b""
            if data == b"":
                sock.close()
                continue
            if data:
                self.received[sock] = self.received.get(sock, b"") + data
            elif dribble:
                try:
                    sock.send(dribble)
                except BlockingIOError:
                    pass
                except OSError:
                    sock.close()
                    continue
            still.append(sock)
        self.open = still
        return len(still)

    @property
    def answers(self) -> list[bytes]:
        return list(self.received.values())

    def close(self) -> None:
        for sock in self.open:
            sock.close()


def wait_closed(server: Server, polls: Callable[[], int], what: str) -> None:
    """Poll until `polls()` reports no connection open, checking that the node serves meanwhile."""
    deadline = time.monotonic() + WAIT_S
    while (left := polls()) and time.monotonic() < deadline:
        assert_serving(server)
        time.sleep(0.2)
    assert left == 0, f"{left} {what} still open after {WAIT_S} s"


@pytest.mark.parametrize(
    "first, dribble, count, flag",
    [
        (head("GET", "/v2/health/ready"), b"X-Dribble: 1\r\n", 200, "--header-timeout"),
        (head("POST", INFER, Content_Length="1000000") + b"\r\n", b"0", 50, "--body-timeout"),
    ],
    ids=["slowloris headers", "slow bodies"],
)
def test_slow_requests_get_408_and_are_closed_while_others_are_served(
    serve: Callable[..., Server], repo: Path, first: bytes, dribble: bytes, count: int, flag: str
) -> None:
    server = serve(repo, "--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "600")
    slow = Clients(server.port, count, first)
    try:
        wait_closed(server, lambda: slow.poll(dribble), "slow clients, dribbling all along,")
    finally:
        slow.close()
    assert slow.answers, "no slow client was told why it was closed"
    for answer in slow.answers:
        assert answer.startswith(b"HTTP/1.1 408 ") and flag.encode() in answer, answer
    assert_serving(server)


def test_idle_bare_and_blank_line_connections_are_closed_after_the_keep_alive_timeout(
    serve: Callable[..., Server], repo: Path
) -> None:
    server = serve(repo, "--keep-alive-timeout", "1", "--header-timeout", "600")
    bare = Clients(server.port, 100)
    answered = Clients(server.port, 20, head("GET", "/v2/health/live") + b"\r\n")  # then silent
    blank = Clients(server.port, 20)  # blank lines start no request
    try:
        wait_closed(server, lambda: bare.poll() + answered.poll() + blank.poll(b"\r\n"), "idle connections")
    finally:
        for clients in (bare, answered, blank):
            clients.close()
    assert not bare.answers and not blank.answers
    assert len(answered.answers) == 20 and all(a.startswith(b"HTTP/1.1 200 ") for a in answered.answers)


def test_a_client_that_stops_reading_its_responses_is_dropped_after_the_body_timeout(
    serve: Callable[..., Server], repo: Path
) -> None:
    server = serve(repo, "--body-timeout", "1", "--keep-alive-timeout", "600")
    body = infer_body(np.tile(X, (256, 1)))  # 1024 rows: some 40 KB of JSON in each response
    request = head("POST", INFER, Content_Length=str(len(body))) + b"\r\n" + body
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # NOTE: the node's writes back up sooner
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)

    def dropped() -> bool:
        """Pipeline one more request, never reading; True once the node has reset the connection."""
        try:
            sock.send(request)
        except BlockingIOError:  # the node has stopped reading: it waits to write
            pass
        except OSError:
            return True
        return False

    try:
        wait_for(dropped, WAIT_S, "the node to drop a client that does not read its responses")
    finally:
        sock.close()
    assert_serving(server)


def test_connections_past_max_connections_get_503_and_the_others_keep_working(
    serve: Callable[..., Server], repo: Path
) -> None:
    server = serve(repo, "--max-connections", "10", "--keep-alive-timeout", "600")
    held = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(10)]
    try:
        for conn in held:  # NOTE: a request each, so all ten are admitted before the extra ones come
            conn.request("GET", "/v2/health/live")
            assert conn.getresponse().read() == b""
        for _ in range(5):
            status, headers, raw = server.request("GET", "/v2/health/live")
            assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close", raw
            assert "--max-connections" in json.loads(raw)["error"]
        for conn in held:  # the admitted ones are served as before
            conn.request("POST", INFER, infer_body(X))
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
        held.pop().close()
        wait_for(lambda: server.request("GET", "/v2/health/live")[0] == 200, WAIT_S, "a freed slot")
        assert_serving(server)
    finally:
        for conn in held:
            conn.close()


def test_the_open_file_limit_is_raised_so_1100_idle_connections_leave_room_for_requests(
    serve: Callable[..., Server], repo: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1100 * 2 + RESERVED_FDS:
        pytest.skip(f"the hard open-file limit ({hard}) is too low to show it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # NOTE: the node inherits the usual default
    try:
        server = serve(repo, "--keep-alive-timeout", "600")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    cap = min(DEFAULT_MAX_CONNECTIONS, (hard - RESERVED_FDS) // 2)
    assert f"accepting up to {cap} connections (open-file limit {hard})" in server.log_text()
    idle = Clients(server.port, 1100)
    try:
        for _ in range(3):
            assert_serving(server)
        assert idle.poll() == 1100
    finally:
        idle.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--max-connections", "1000000000"],
            "--max-connections 1000000000 does not fit the open-file limit",
        ),
        (["--max-inflight-bytes", "1000"], "--max-inflight-bytes 1000 is below --max-request-bytes"),
        (["--tls-cert", "cert.pem"], "--tls-cert needs --tls-key"),
        (["--tls-key", "key.pem"], "--tls-key needs --tls-cert"),
        (["--tls-ca", "ca.pem"], "--tls-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "absent.pem", "--tls-key", "absent.pem"], "cannot use --tls-cert absent.pem"),
    ],
)
def test_start_up_refuses_limits_and_tls_it_cannot_keep(
    local_repo: Path, args: list[str], message: str
) -> None:
    command = [
        sys.executable,
        "-m",
        "tritonflow",
        "serve",
        str(local_repo),
        "--port",
        str(free_port()),
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=local_repo)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_lets_requests_finish_cuts_stalled_ones_at_the_deadline_and_exits_0(
    serve: Callable[..., Server], repo: Path
) -> None:
    server = serve(repo, "--shutdown-timeout", "3", *("--body-timeout", "600", "--keep-alive-timeout", "600"))
    body = infer_body(X)
    clients = []
    for _ in range(2):  # one finishes its body after the signal, one never does
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        sock.sendall(head("POST", INFER, Content_Length=str(len(body)), Expect="100-continue") + b"\r\n")
        expect_continue(sock)
        sock.sendall(body[:10])
        clients.append(sock)
    finishing, stalled = clients
    bare = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    server.process.send_signal(signal.SIGTERM)
    finishing.sendall(body[10:])
    answer = http.client.HTTPResponse(finishing)  # type: ignore[arg-type]
    answer.begin()
    assert answer.status == 200 and answer.getheader("x-deployment-id", "").startswith(f"{MODEL}:1@")
    assert json.loads(answer.read())["outputs"]
    assert server.process.wait(timeout=WAIT_S) == 0, server.log_text()
    cut = read_until(stalled, b"}")
    assert cut == b"" or cut.startswith(b"HTTP/1.1 503 ") and b"shutting down" in cut, cut
    assert read_until(bare, b"\n") == b""
    assert "still in progress at the shutdown deadline" in server.log_text()
    for sock in (finishing, stalled, bare):
        sock.close()


def upload(port: int, body: bytes, answers: list[tuple[int, dict[str, str], bytes]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", INFER, body=body)
        response = conn.getresponse()
        answers.append((response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()))
    finally:
        conn.close()


def vm(pid: int, field: str) -> float:
    """A /proc/<pid>/status figure in MB (VmRSS now, VmHWM the peak so far)."""
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith(field))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the node's memory from /proc")
def test_concurrent_large_uploads_stay_within_max_inflight_bytes(
    serve: Callable[..., Server], repo: Path
) -> None:
    rows = np.random.default_rng(0).random((60 * MB // 20 // N_FEATURES, N_FEATURES), dtype=np.float32)
    body = infer_body(rows)  # about 60 MB of JSON numbers (some 20 characters each)
    assert 50 * MB < len(body) < 64 * MB  # under the default --max-request-bytes
    budget = 64 * MB  # one of them at a time
    server = serve(repo, "--max-inflight-bytes", str(budget), "--body-timeout", "600")
    before = vm(server.process.pid, "VmRSS")
    answers: list[tuple[int, dict[str, str], bytes]] = []
    threads = [threading.Thread(target=upload, args=(server.port, body, answers)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    peak = vm(server.process.pid, "VmHWM")
    statuses = sorted(status for status, _, _ in answers)
    assert len(answers) == 16 and 503 in statuses and statuses[0] != 503, statuses
    for status, headers, raw in answers:
        if status == 503:
            assert headers["retry-after"] == "1" and "--max-inflight-bytes" in json.loads(raw)["error"], raw
        else:  # read and decoded in full, then refused for their rows (over the model's max_batch_size)
            assert 400 <= status < 500 and status != 413, raw
    # NOTE: unbounded, all 16 bodies were held at once (+1.2 GB); within the budget, the body, the copy
    # joining its chunks and its decoding (JSON numbers to Python floats: twice the body) add up to
    # about 4.5 times it (measured: +283 MB)
    assert peak - before < 8 * budget / MB, f"RSS {before:.0f} MB before, peak {peak:.0f} MB"
    assert_serving(server)


def test_a_chunked_body_counts_as_it_streams_and_a_gone_client_gives_its_bytes_back(
    serve: Callable[..., Server], repo: Path
) -> None:
    server = serve(repo, "--max-request-bytes", str(3 * MB), "--max-inflight-bytes", str(4 * MB))
    holder = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    holder.sendall(head("POST", INFER, Content_Length=str(3 * MB), Expect="100-continue") + b"\r\n")
    expect_continue(holder)  # NOTE: its 3 MB are claimed before its body is read

    def chunked() -> tuple[int, dict[str, str], bytes]:
        """A 2 MB body in chunks (no Content-Length): it fits only once the holder is gone."""
        return server.request("POST", INFER, (b" " * (256 * 1024) for _ in range(8)))  # type: ignore[arg-type]

    status, headers, raw = chunked()
    assert status == 503 and headers["retry-after"] == "1" and "--max-inflight-bytes" in raw.decode(), raw
    holder.close()
    status, _, raw = wait_for(lambda: (answer := chunked())[0] != 503 and answer, WAIT_S, "the bytes back")
    assert status == 400, raw  # read in full, then refused for what it is: not JSON
    assert_serving(server)
