"""A flood of lineage lookups costs its senders 429s, not the node its inference.

The throttle itself is checked on the event loop (slots, queue, 429 past both); the node is then
flooded for real, and inference keeps answering throughout.
"""

from __future__ import annotations

import asyncio
import http.client
import threading

from conftest import config_for, forest, publish, wait_for
from test_reload import infer

from tritonflow.serving.errors import TooManyRequests
from tritonflow.serving.throttle import Throttle

MODEL = "fraud-classifier"


def test_the_throttle_queues_a_few_and_refuses_the_rest():
    async def scenario() -> tuple[int, int, int]:
        throttle = Throttle("lineage", concurrency=1, queue=2)
        release = asyncio.Event()
        done = refused = 0
        peak = running = 0

        async def call() -> None:
            nonlocal done, refused, peak, running
            try:
                async with throttle.slot():
                    running += 1
                    peak = max(peak, running)
                    await release.wait()
                    running -= 1
                    done += 1
            except TooManyRequests as exc:
                assert exc.status == 429 and exc.retry_after == 1
                refused += 1

        tasks = [asyncio.create_task(call()) for _ in range(6)]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks)
        return done, refused, peak

    done, refused, peak = asyncio.run(scenario())
    assert (done, refused, peak) == (3, 3, 1)  # one running + two queued; three refused


def test_a_lineage_flood_gets_429s_while_inference_keeps_answering(serve, local_repo):
    config = config_for(MODEL, forest(0), policy="all")
    for v in range(6):
        publish(local_repo, MODEL, forest(0), config, run_id=f"10000000000000{v:02d}")
    server = serve(local_repo)
    inference: list[int] = []
    stop = threading.Event()

    def infer_loop() -> None:
        while not stop.is_set():
            inference.append(infer(server).status)

    def burst(n: int) -> list[tuple[int, dict[str, str]]]:
        """n lookups on n connections opened first, every request sent before any answer is read: the
        node sees them all at once however slowly this machine runs the client (threads did not)."""
        connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=30) for _ in range(n)]
        try:
            for connection in connections:
                connection.connect()
            for i, connection in enumerate(connections):
                connection.request("GET", f"/v2/models/{MODEL}/versions/{i % 6 + 1}/lineage")
            answers = []
            for connection in connections:
                response = connection.getresponse()
                response.read()
                answers.append((response.status, {k.lower(): v for k, v in response.getheaders()}))
            return answers
        finally:
            for connection in connections:
                connection.close()

    worker = threading.Thread(target=infer_loop)
    worker.start()
    try:
        statuses = []
        for _ in range(10):  # bursts, until the throttle has shown itself (bounded)
            answers = burst(96)
            statuses += [status for status, _ in answers]
            if 429 in statuses:
                break
    finally:
        stop.set()
        worker.join()
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
    assert all(h.get("retry-after") == "1" for s, h in answers if s == 429)
    assert inference and set(inference) == {200}


def test_a_cached_lineage_document_still_says_what_serves(serve, local_repo):
    publish(local_repo, MODEL, forest(0), run_id="1000000000000001")
    server = serve(local_repo)
    first = server.json("GET", f"/v2/models/{MODEL}/versions/1/lineage")
    assert first["deployment"]["currently_served"] is True
    v2 = publish(local_repo, MODEL, forest(2), run_id="1000000000000002")
    wait_for(lambda: infer(server).deployment == v2.deployment_id, what="v2")
    again = server.json("GET", f"/v2/models/{MODEL}/versions/1/lineage")  # from the cache
    assert again["deployment"]["currently_served"] is False
