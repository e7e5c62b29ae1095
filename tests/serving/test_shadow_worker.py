"""The shadow's engine runs in a worker process of the node (serving/shadow_worker.py), on a real node.

The worker is the node's child, not the node, at the lowest CPU priority; it ends with the node
(SIGTERM or SIGKILL); one killed is replaced and the comparison goes on; one that cannot load the
shadow version fails its copies and, after a few tries, stops the shadow; no client notices any of it.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
import time
from pathlib import Path

import psutil
from conftest import Server, wait_for
from probes import gone
from test_canary_shadow import MODEL, X, ask, release, shadow_count, three_versions

from tritonflow.lineage.releases import set_canary, set_shadow


def worker_pids(server: Server) -> list[int]:
    """The shadow worker processes the node started, in order, from its log."""
    return [int(pid) for pid in re.findall(rf"shadow {MODEL}:\d+ runs in process (\d+)", server.log_text())]


class Load:
    """One client sending unversioned 1-row requests until stopped: every status and version seen."""

    def __init__(self, server: Server) -> None:
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, args=(server.port,))
        self._thread.start()

    def _send(self, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        deadline, i = time.monotonic() + 600, 0  # bounded, whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            status, answer, _ = ask(conn, X[i % len(X)][None])
            self.answers.append((status, answer.get("model_version", "")))
            i += 1
        conn.close()

    def stop(self) -> list[tuple[int, str]]:
        self._stop.set()
        self._thread.join()
        return self.answers


def test_the_shadow_runs_in_a_worker_process_that_ends_with_the_node(serve, local_repo, tmp_path):
    three_versions(local_repo)
    release(local_repo, set_shadow, 2)
    server = serve(local_repo)
    server.wait_for_state(MODEL, 2, "READY")
    (pid,) = wait_for(lambda: worker_pids(server), what="the shadow's worker process")
    worker = psutil.Process(pid)
    assert pid != server.process.pid and worker.ppid() == server.process.pid
    assert worker.nice() == 19  # the champion's requests get the cores first
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for i in range(20):
        assert ask(conn, X[i][None])[0] == 200
    wait_for(lambda: shadow_count(server, "compared") == 20, what="the worker's comparisons")
    # SIGTERM: the node shuts down cleanly and its worker with it
    assert server.stop() == 0
    wait_for(lambda: gone(pid), what="the worker to exit with the node")
    # SIGKILL: the node has no time to stop it; the worker still ends (its parent is gone)
    node = Server(local_repo, tmp_path)
    try:
        node.wait_for_state(MODEL, 2, "READY")
        (pid,) = wait_for(lambda: worker_pids(node), what="the second node's worker")
        node.process.kill()
        node.process.wait()
        wait_for(lambda: gone(pid), what="the worker of a killed node to exit")
    finally:
        node.stop()


def test_a_killed_worker_is_replaced_and_no_request_fails(serve, local_repo):
    three_versions(local_repo)
    release(local_repo, set_shadow, 2)
    server = serve(local_repo)
    (first,) = wait_for(lambda: worker_pids(server), what="the shadow's worker process")
    load = Load(server)
    try:
        wait_for(lambda: shadow_count(server, "compared") >= 20, what="copies compared")
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: worker_pids(server)[1:], timeout=180, what="a new worker")[0]
        assert second != first and psutil.Process(second).ppid() == server.process.pid
        after = shadow_count(server, "compared")
        wait_for(lambda: shadow_count(server, "compared") > after + 50, timeout=120, what="more comparisons")
    finally:
        answers = load.stop()
    assert {status for status, _ in answers} == {200} and {v for _, v in answers} == {"1"}
    assert shadow_count(server, "failed") >= 1  # the copies the killed worker had
    assert "the shadow worker of" in server.log_text() and "starting another (1 of 3)" in server.log_text()


def test_a_version_the_worker_cannot_load_fails_its_copies_and_stops_the_shadow(serve, local_repo):
    three_versions(local_repo)
    server = serve(local_repo)
    # v2 serves in the node (as a 1% canary) before its file breaks: only the worker loads it after
    release(local_repo, set_canary, 2, 1.0)
    server.wait_for_state(MODEL, 2, "READY")
    checkpoint = Path(local_repo, MODEL, "2", "checkpoint.tl")
    checkpoint.write_bytes(bytes(len(checkpoint.read_bytes())))
    load = Load(server)
    try:
        wait_for(lambda: len(load.answers) > 20, what="answers")
        release(local_repo, set_shadow, 2)
        wait_for(lambda: "stopped the shadow" in server.log_text(), timeout=300, what="the shadow to stop")
        count = len(load.answers)
        wait_for(lambda: len(load.answers) > count + 20, what="answers after it stopped")
    finally:
        answers = load.stop()
    assert {status for status, _ in answers} == {200} and {v for _, v in answers} <= {"1", "2"}
    log = server.log_text()
    assert "does not load in the worker process" in log and "sha256" in log, log
    assert shadow_count(server, "failed") >= 1 and shadow_count(server, "compared") == 0
    assert log.count("stopped the shadow") == 1
