"""Dynamic batching: concurrent requests merge into fewer engine calls, each gets its own rows back.

Over HTTP against the server, and on the Batcher itself with a real worker thread and event loop.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time

import numpy as np
import pytest
from conftest import N_FEATURES, PROBA_ATOL, Server, config_for, data, forest, publish

from tritonflow.serving.backends import RefusedValues
from tritonflow.serving.batcher import FIRST_CHUNK_ROWS, INLINE_ROWS, Batcher, BatchPolicy, Execution, Traffic
from tritonflow.serving.errors import InferenceFailed, ValuesRefused


@pytest.fixture(scope="module")
def server(serve_module, tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("batching") / "repo"
    root.mkdir()
    rf = forest()
    publish(root, "batched-rf", rf, config_for("batched-rf", rf, max_batch_size=64, queue_delay_us=20_000))
    publish(root, "direct-rf", rf, config_for("direct-rf", rf, queue_delay_us=None))
    return serve_module(root)


def concurrent_infer(server: Server, model: str, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One request per size, all sent at once from their own connections: (rows, outputs) each."""
    X = data()[0]
    starts = np.cumsum([0, *sizes[:-1]])
    results: list[tuple[np.ndarray, np.ndarray] | BaseException] = [ValueError("no answer")] * len(sizes)
    barrier = threading.Barrier(len(sizes))

    def send(i: int) -> None:
        x = X[starts[i] : starts[i] + sizes[i]]
        body = json.dumps(
            {"inputs": [{"name": "input__0", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
        )
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.connect()
            barrier.wait()
            conn.request("POST", f"/v2/models/{model}/infer", body)
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            out = answer["outputs"][0]
            results[i] = (x, np.asarray(out["data"], np.float32).reshape(out["shape"]))
        except BaseException as exc:
            results[i] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def test_concurrent_requests_share_engine_calls_and_get_their_own_rows(server):
    sizes = [1 + i % 4 for i in range(24)]
    inferences = server.metric("nv_inference_count", "batched-rf", 1)
    # NOTE: merging needs the requests in the server together; on a starved machine the client threads
    # can arrive one by one (and each then runs alone, as it should). A bounded number of rounds lets
    # the test wait for one real burst without a timing assertion.
    calls_per_round = []
    for _ in range(10):
        executions = server.metric("nv_inference_exec_count", "batched-rf", 1)
        for x, out in concurrent_infer(server, "batched-rf", sizes):
            np.testing.assert_allclose(out, forest().proba(x), atol=PROBA_ATOL)
        calls_per_round.append(server.metric("nv_inference_exec_count", "batched-rf", 1) - executions)
        if calls_per_round[-1] < len(sizes) / 2:
            break
    assert 0 < calls_per_round[-1] < len(sizes) / 2, (
        f"engine calls per round of {len(sizes)}: {calls_per_round}"
    )
    rounds = len(calls_per_round)
    assert server.metric("nv_inference_count", "batched-rf", 1) - inferences == rounds * sum(sizes)
    stats = server.client.get_inference_statistics("batched-rf")["model_stats"][0]
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 4  # more rows than any one request
    assert all(b["batch_size"] <= 64 for b in stats["batch_stats"])


def test_without_dynamic_batching_each_request_is_its_own_engine_call(server):
    executions = server.metric("nv_inference_exec_count", "direct-rf", 1)
    for x, out in concurrent_infer(server, "direct-rf", [2] * 12):
        np.testing.assert_allclose(out, forest().proba(x), atol=PROBA_ATOL)
    assert server.metric("nv_inference_exec_count", "direct-rf", 1) - executions == 12


# -- the Batcher on its own --------------------------------------------------------------------------
def double(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": inputs["x"] * 2}


def policy(max_rows: int = 8, preferred: tuple[int, ...] = (), delay_s: float = 0.0) -> BatchPolicy:
    return BatchPolicy(max_rows, frozenset(preferred), int(delay_s * 1e9))


async def run_batch(
    batch_policy: BatchPolicy | None, sizes: list[int], active: int, predict=double
) -> tuple[list[np.ndarray | BaseException], list[Execution], float]:
    """Submit one request per size at once; their outputs (or errors), the engine calls, the time taken."""
    executions: list[Execution] = []
    traffic = Traffic()
    traffic.active = active  # requests the server is handling: the batcher waits only if others could join
    batcher = Batcher("test:1", predict, batch_policy, executions.append, traffic, asyncio.get_running_loop())
    inputs = [
        np.arange(n * N_FEATURES, dtype=np.float32).reshape(n, N_FEATURES) + 1000 * i
        for i, n in enumerate(sizes)
    ]
    started = time.perf_counter()
    futures = [batcher.submit({"x": x}, len(x)) for x in inputs]
    results = await asyncio.gather(*futures, return_exceptions=True)
    elapsed = time.perf_counter() - started
    batcher.close(then=lambda: None)
    batcher.join(5)
    outputs = [r if isinstance(r, BaseException) else r[0]["y"] for r in results]
    for x, out in zip(inputs, outputs, strict=True):
        if not isinstance(out, BaseException):
            np.testing.assert_array_equal(out, x * 2)  # each request gets its own rows back
    return outputs, executions, elapsed


def test_batcher_merges_up_to_max_rows_and_splits_by_offsets():
    outputs, executions, _ = asyncio.run(run_batch(policy(max_rows=8, delay_s=0.05), [3, 2, 4, 1, 5, 2], 6))
    assert sum(e.rows for e in executions) == 17
    assert all(e.rows <= 8 for e in executions)
    assert len(executions) < 6


def test_batcher_runs_a_preferred_size_without_waiting_out_the_delay():
    # more rows than run inline, so the worker gathers them
    sizes = [INLINE_ROWS // 2 + 1] * 2
    batch_policy = policy(64, preferred=(sum(sizes),), delay_s=5.0)
    _, executions, elapsed = asyncio.run(run_batch(batch_policy, sizes, 10))
    assert [e.rows for e in executions] == [sum(sizes)]
    assert elapsed < 2.5


def test_batcher_waits_for_others_only_while_they_are_in_the_server():
    rows = [INLINE_ROWS + 1]  # for the worker (a small request runs inline without waiting)
    _, executions, elapsed = asyncio.run(run_batch(policy(64, delay_s=5.0), rows, 1))
    assert [e.rows for e in executions] == rows and elapsed < 2.5  # alone: no one to wait for
    _, executions, elapsed = asyncio.run(run_batch(policy(64, delay_s=0.3), rows, 3))
    assert [e.rows for e in executions] == rows and elapsed >= 0.3  # others in the server: wait the delay


def test_requests_submitted_in_one_turn_of_the_loop_run_as_one_call_without_waiting():
    _, executions, elapsed = asyncio.run(run_batch(policy(64, delay_s=5.0), [1, 3, 2, 1], 4))
    assert [e.rows for e in executions] == [7]
    assert elapsed < 2.5


def test_a_burst_merges_even_when_each_request_finds_the_server_otherwise_idle():
    # uvicorn starts each request's task in turn: each sees 1 request in the server when it submits.
    # Seen at 64 connections before turns were gathered: every request ran inline on its own.
    _, executions, _ = asyncio.run(run_batch(policy(64, delay_s=0.001), [1, 1, 1, 1], 1))
    assert [e.rows for e in executions] == [4]


def test_batcher_without_a_policy_runs_each_request_alone():
    _, executions, _ = asyncio.run(run_batch(None, [2, 3, 1], 3))
    assert [e.rows for e in executions] == [2, 3, 1]


def test_engine_failure_fails_each_request_of_the_batch_and_the_worker_goes_on():
    calls = []

    def flaky(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        if len(calls) == 1:
            raise RuntimeError("engine fell over")
        return double(inputs)

    outputs, executions, _ = asyncio.run(run_batch(None, [1, 2], 2, predict=flaky))
    assert isinstance(outputs[0], InferenceFailed) and "engine fell over" in str(outputs[0])
    assert outputs[0].status == 500
    assert [e.rows for e in executions] == [2]  # the second request still ran


@pytest.mark.parametrize(
    ("raised", "answered"),
    [(RefusedValues("unknown category 'x'"), ValuesRefused), (RuntimeError("bad"), InferenceFailed)],
)
@pytest.mark.parametrize("batch_policy", [policy(64, delay_s=5.0), policy(64, delay_s=0.001)])
def test_one_requests_values_failing_a_merged_call_fail_that_request_alone(batch_policy, raised, answered):
    def refuses_the_third(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if ((inputs["x"] >= 2000) & (inputs["x"] < 3000)).any():  # request 2's rows (run_batch: +1000 * i)
            raise raised
        return double(inputs)

    sizes = [1, 3, 2, 1] if batch_policy.delay_ns > 1e6 else [INLINE_ROWS // 2 + 1] * 4  # inline; worker
    outputs, executions, _ = asyncio.run(run_batch(batch_policy, sizes, 4, predict=refuses_the_third))
    assert [type(out) for out in outputs if isinstance(out, BaseException)] == [answered]
    assert isinstance(outputs[2], answered) and str(raised) in str(outputs[2])
    assert outputs[2].status == (400 if answered is ValuesRefused else 500)
    assert sorted(e.rows for e in executions) == sorted(n for i, n in enumerate(sizes) if i != 2)


def on_which_thread(inputs: dict[str, np.ndarray], seen: list[str]) -> dict[str, np.ndarray]:
    seen.append(threading.current_thread().name)
    return double(inputs)


@pytest.mark.parametrize("batch_policy", [None, policy(64, delay_s=0.001)])
def test_a_small_engine_call_runs_inline_on_the_loop(batch_policy):
    seen: list[str] = []
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on this thread

    asyncio.run(run_batch(batch_policy, [1], 1, predict=lambda x: on_which_thread(x, seen)))
    assert seen == [loop_thread]  # alone and small: no hop to the worker
    seen.clear()
    asyncio.run(run_batch(batch_policy, [INLINE_ROWS + 1], 1, predict=lambda x: on_which_thread(x, seen)))
    assert seen == ["engine test:1"]  # too big to hold the loop


def test_without_batching_requests_with_others_in_the_server_go_to_the_worker():
    seen: list[str] = []
    asyncio.run(run_batch(None, [1, 1], 2, predict=lambda x: on_which_thread(x, seen)))
    assert seen == ["engine test:1"] * 2


def test_with_batching_a_small_turn_runs_inline_and_a_large_one_on_the_worker():
    seen: list[str] = []
    loop_thread = threading.current_thread().name

    def predict(x):
        return on_which_thread(x, seen)

    _, executions, _ = asyncio.run(run_batch(policy(64), [2, 2], 2, predict=predict))
    assert seen == [loop_thread] and [e.rows for e in executions] == [4]
    seen.clear()
    sizes = [INLINE_ROWS // 2 + 1] * 2
    _, executions, _ = asyncio.run(run_batch(policy(64), sizes, 2, predict=predict))
    assert loop_thread not in seen and sum(e.rows for e in executions) == sum(sizes)


@pytest.mark.parametrize("max_rows", [2, 3])
def test_an_inline_turn_never_exceeds_max_batch_size(max_rows):
    _, executions, _ = asyncio.run(run_batch(policy(max_rows), [1, 1, 1, 1], 4))
    assert sum(e.rows for e in executions) == 4
    assert all(e.rows <= max_rows for e in executions)


def test_an_inline_failure_is_reported_like_any_other():
    def broken(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("engine fell over")

    outputs, executions, _ = asyncio.run(run_batch(None, [1], 1, predict=broken))
    assert isinstance(outputs[0], InferenceFailed) and "engine fell over" in str(outputs[0])
    assert executions == []


# -- large requests run in chunks ------------------------------------------------------------------
@pytest.mark.parametrize("batch_policy", [None, policy(65_536, delay_s=0.001)])
def test_a_large_request_runs_in_chunks_and_gets_its_rows_back_in_order(batch_policy):
    rows = 3 * FIRST_CHUNK_ROWS
    _, executions, _ = asyncio.run(run_batch(batch_policy, [rows], 1))  # run_batch checks every row
    assert executions[0].rows == FIRST_CHUNK_ROWS  # before this version's time per row is known
    assert len(executions) >= 2 and sum(e.rows for e in executions) == rows


def test_a_small_request_runs_between_the_chunks_of_a_large_one():
    calls: list[int] = []
    chunk_running, go_on = threading.Event(), threading.Event()

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        if len(calls) == 1:  # the first chunk waits until the small requests are queued
            chunk_running.set()
            go_on.wait(10)
        return double(inputs)

    async def scenario() -> tuple[list[str], list[np.ndarray], Execution]:
        loop = asyncio.get_running_loop()
        traffic = Traffic()
        traffic.active = 4
        batcher = Batcher("test:1", predict, policy(65_536, delay_s=0.001), lambda e: None, traffic, loop)
        large = np.arange(4 * FIRST_CHUNK_ROWS * N_FEATURES, dtype=np.float32).reshape(-1, N_FEATURES)
        smalls = [np.full((1, N_FEATURES), -i, np.float32) for i in range(1, 4)]
        answered: list[str] = []
        futures = [batcher.submit({"x": large}, len(large))]
        futures[0].add_done_callback(lambda _: answered.append("large"))
        await asyncio.to_thread(chunk_running.wait, 10)
        for x in smalls:
            futures.append(batcher.submit({"x": x}, 1))
            futures[-1].add_done_callback(lambda _: answered.append("small"))
        loop.call_soon(go_on.set)  # after the turn has ended: the small requests are queued by then
        results = await asyncio.gather(*futures)
        batcher.close(then=lambda: None)
        batcher.join(5)
        for x, (outputs, _) in zip([large, *smalls], results, strict=True):
            np.testing.assert_array_equal(outputs["y"], x * 2)
        return answered, [r[0]["y"] for r in results], results[0][1]

    answered, _, execution = asyncio.run(scenario())
    # the small requests merged into one call between the first and second chunk, and were answered first
    assert calls[:2] == [FIRST_CHUNK_ROWS, 3]
    assert sum(calls) == 4 * FIRST_CHUNK_ROWS + 3
    assert answered == ["small"] * 3 + ["large"]
    assert execution.rows == 4 * FIRST_CHUNK_ROWS  # the large request's own timing covers all its chunks
    assert execution.started_ns <= execution.input_ns <= execution.infer_ns <= execution.ended_ns


def test_small_requests_merge_up_to_a_chunk_not_past_it():
    sizes = [FIRST_CHUNK_ROWS // 2 + 1] * 3  # two of them make more rows than a chunk
    _, executions, _ = asyncio.run(run_batch(policy(65_536, delay_s=0.05), sizes, 3))
    assert executions[0].rows == sizes[0]
    assert sum(e.rows for e in executions) == sum(sizes)


def test_a_failed_chunk_fails_its_request_and_the_worker_goes_on():
    calls: list[int] = []

    def flaky(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        if len([n for n in calls if n > 2]) == 2:  # the large request's second chunk
            raise RuntimeError("engine fell over")
        return double(inputs)

    outputs, executions, _ = asyncio.run(run_batch(None, [3 * FIRST_CHUNK_ROWS, 2], 2, predict=flaky))
    assert isinstance(outputs[0], InferenceFailed) and "engine fell over" in str(outputs[0])
    assert not isinstance(outputs[1], BaseException)  # run_batch checked its rows
    assert sorted(e.rows for e in executions) == [2, FIRST_CHUNK_ROWS]  # no chunk after the failed one
