"""S3 glitches and outages, through a fault-injecting proxy in front of the real S3 server.

One empty listing must not unload anything (it is confirmed on the next poll first); an outage is
logged once, and so is the recovery; a node restarted while S3 is down serves what it served before
from its own checked copy, and says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from conftest import Server, forest, publish, wait_for
from faults import S3Faults
from test_reload import infer

MODEL = "fraud-classifier"


@pytest.fixture
def faults(s3_server, s3_bucket) -> Iterator[S3Faults]:
    bucket, prefix = s3_bucket.removeprefix("s3://").split("/", 1)
    proxy = S3Faults(s3_server.endpoint, prefix)
    yield proxy
    proxy.close()


def serve_through(serve, monkeypatch, faults: S3Faults, repository: str, *args: str) -> Server:
    """A node whose S3 endpoint is the proxy (the test itself keeps talking to S3 directly)."""
    with monkeypatch.context() as mp:
        mp.setenv("TRITONFLOW_S3_ENDPOINT_URL", faults.endpoint)
        return serve(repository, *args)


def statuses_while(server: Server, condition, timeout: float = 20) -> list[int]:
    """The statuses of back-to-back requests until `condition()` holds (bounded)."""
    seen, deadline = [], time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        seen.append(infer(server).status)
    return seen


def test_one_empty_listing_unloads_nothing(serve, monkeypatch, s3_bucket, faults):
    v1 = publish(s3_bucket, MODEL, forest(0))
    server = serve_through(serve, monkeypatch, faults, s3_bucket)
    faults.empty_listings = 1
    statuses = statuses_while(server, lambda: faults.emptied == 1)
    time.sleep(1.0)  # several polls after the glitch
    statuses += [infer(server).status for _ in range(20)]
    assert faults.emptied == 1 and set(statuses) == {200}
    assert infer(server).deployment == v1.deployment_id
    assert (
        f"no longer shows model {MODEL!r}: unloading only if the next poll confirms it" in server.log_text()
    )
    assert "WARNING" in server.log_text()


def test_a_removal_confirmed_by_the_next_poll_unloads(serve, monkeypatch, s3_bucket, faults):
    publish(s3_bucket, MODEL, forest(0))
    server = serve_through(serve, monkeypatch, faults, s3_bucket)
    faults.empty_listings = 1000  # the model is really gone
    wait_for(lambda: infer(server).status == 404, what="the model to unload")
    assert f"unloading {MODEL}: it left" in server.log_text()


def test_an_outage_is_logged_once_and_so_is_the_recovery(serve, monkeypatch, s3_bucket, faults):
    v1 = publish(s3_bucket, MODEL, forest(0), run_id="1000000000000001")
    server = serve_through(serve, monkeypatch, faults, s3_bucket)
    faults.down = True
    wait_for(lambda: "serving what is loaded until it answers" in server.log_text(), what="the outage")
    time.sleep(1.5)  # many failed polls
    assert infer(server).deployment == v1.deployment_id
    faults.down = False
    wait_for(lambda: "answers again after" in server.log_text(), what="the recovery")
    assert server.log_text().count("serving what is loaded until it answers") == 1
    v2 = publish(s3_bucket, MODEL, forest(2), run_id="1000000000000002")
    wait_for(lambda: infer(server).deployment == v2.deployment_id, what="polling to resume")


def test_a_node_starts_from_its_copy_while_s3_is_down(serve, monkeypatch, s3_bucket, faults):
    v1 = publish(s3_bucket, MODEL, forest(0), run_id="1000000000000001")
    first = serve_through(serve, monkeypatch, faults, s3_bucket)
    assert infer(first).deployment == v1.deployment_id
    first.stop()
    faults.down = True
    restarted = serve_through(serve, monkeypatch, faults, s3_bucket)  # the same --cache-dir
    answer = infer(restarted)
    assert (answer.status, answer.deployment) == (200, v1.deployment_id)
    assert "starting from the copy of what it last served" in restarted.log_text()
    v2 = publish(s3_bucket, MODEL, forest(2), run_id="1000000000000002")
    faults.down = False
    wait_for(lambda: infer(restarted).deployment == v2.deployment_id, what="S3 to take over again")
    assert "answers again after" in restarted.log_text()


def test_without_a_copy_a_node_cannot_start_while_s3_is_down(monkeypatch, s3_bucket, faults, tmp_path):
    publish(s3_bucket, MODEL, forest(0))
    faults.down = True
    with monkeypatch.context() as mp:
        mp.setenv("TRITONFLOW_S3_ENDPOINT_URL", faults.endpoint)
        with pytest.raises(RuntimeError, match="cannot reach S3 endpoint"):
            Server(s3_bucket, tmp_path)


def test_requests_keep_flowing_while_polls_fail(serve, monkeypatch, s3_bucket, faults):
    publish(s3_bucket, MODEL, forest(0))
    server = serve_through(serve, monkeypatch, faults, s3_bucket)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            statuses.append(infer(server).status)

    worker = threading.Thread(target=load)
    worker.start()
    faults.down = True
    time.sleep(1.5)
    faults.down = False
    time.sleep(0.5)
    stop.set()
    worker.join()
    assert statuses and set(statuses) == {200}
