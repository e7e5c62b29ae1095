"""The client side of benchmarks/serving.py: the same requests and clocks for every contender.

Single-row requests on one keep-alive connection, wrk at a fixed number of connections, and
batch scoring through tritonclient; each returns plain figures for the report.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from peers.forms import JSON, Form
from serving_contenders import Contender
from serving_models import BenchModel


# -- requests -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


def single_row(contender: Contender, row: np.ndarray) -> Request:
    """The contender's native single-row request: KServe v2 JSON, the starter pack's GET, or a peer's form."""
    if contender.form is not None:
        return Request("POST", contender.form.path, contender.form.encode(row[None, :]), JSON)
    values = row.tolist()
    if contender.protocol == "fastapi":
        return Request("GET", "/predict?data=" + quote(json.dumps(values)), None, {})
    tensor = {"name": "input__0", "shape": [1, len(values)], "datatype": "FP32", "data": values}
    body = json.dumps({"inputs": [tensor]}).encode()
    return Request("POST", f"/v2/models/{contender.model}/infer", body, {"Content-Type": "application/json"})


def sequential(contender: Contender, requests: list[Request], count: int, warmup: int = 50) -> np.ndarray:
    """Seconds per request, one keep-alive connection, one request at a time: the same loop for all."""
    connection = contender.connect(timeout=60)
    times = np.empty(count)
    for i in range(-warmup, count):
        request = requests[i % len(requests)]
        started = time.perf_counter()
        connection.request(request.method, request.path, request.body, request.headers)
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{contender.label}: HTTP {response.status}: {body[:300]!r}")
        if i >= 0:
            times[i] = elapsed
    connection.close()
    return times


def latency_summary(seconds: np.ndarray) -> dict[str, float]:
    ms = seconds * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(ms.mean()), "n": int(ms.size)}


# -- load: wrk -----------------------------------------------------------------------------------------
def ensure_wrk() -> str | None:
    """wrk's path, installed from Debian's packages if missing; None (and why, printed) if it cannot be."""
    if not shutil.which("wrk") and shutil.which("apt-get") and os.geteuid() == 0:
        print("installing wrk: apt-get install -y wrk", flush=True)
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(command, capture_output=True, check=False)
    found = shutil.which("wrk")
    if found is None:
        print(
            "load tests skipped: wrk is not installed and could not be (run `sudo apt-get install -y wrk`, "
            "or pass --no-load-generator)",
            flush=True,
        )
    return found


WRK_SCRIPT = """\
wrk.method = "{method}"
wrk.path = [==[{path}]==]
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk_script(request: Request, path: Path) -> Path:
    """wrk sends GETs without a script; a POST body needs one (Lua long brackets keep the JSON as is)."""
    body = f"[==[{request.body.decode()}]==]" if request.body else "nil"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in request.headers.items())
    path.write_text(WRK_SCRIPT.format(method=request.method, path=request.path, body=body, headers=headers))
    return path


def wrk(
    wrk_path: str, contender: Contender, script: Path, connections: int, seconds: int
) -> dict[str, float]:
    """Requests/s and latency at a fixed number of connections, after an unrecorded warm-up run."""
    base = [wrk_path, f"-t{min(2, connections)}", f"-c{connections}", "--timeout", "10s", "-s", str(script)]
    url = f"http://{contender.url()}"
    subprocess.run([*base, "-d1s", url], capture_output=True, check=True)
    out = subprocess.run([*base, f"-d{seconds}s", url], capture_output=True, text=True, check=True).stdout
    stats = json.loads(next(ln for ln in out.splitlines() if ln.startswith("WRK_JSON "))[len("WRK_JSON ") :])
    if stats["status_errors"]:  # a wrong URL or body answers fast: its req/s would mean nothing
        raise RuntimeError(f"{contender.label}: {stats['status_errors']} non-2xx answers under wrk")
    return {
        "requests_per_s": stats["requests"] / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1e3,
        "p99_ms": stats["p99_us"] / 1e3,
        "mean_ms": stats["mean_us"] / 1e3,
        "errors": stats["socket_errors"],
        "requests": stats["requests"],
    }


# -- batch scoring -------------------------------------------------------------------------------------
def batch_call(contender: Contender, rows: np.ndarray, form: Form | None = None) -> Callable[[], np.ndarray]:
    """A function sending one request of `rows` and returning the predicted classes.

    KServe contenders get binary tensors through tritonclient.http, or `form` (e.g. v2 JSON); the
    baseline gets the labelled JSON POST variant (its GET cannot carry thousands of rows), body built
    once; peers their own JSON form, as their users send it.
    """
    form = form or contender.form
    if form is not None:
        body = form.encode(rows)
        session = contender.connect(timeout=600)

        def send() -> np.ndarray:
            session.request("POST", form.path, body, JSON)
            return form.decode(session.getresponse().read()).argmax(axis=1)

        return send
    if contender.protocol == "fastapi":
        body = json.dumps(rows.tolist()).encode()
        connection = contender.connect(timeout=600)

        def post() -> np.ndarray:
            connection.request("POST", "/predict_batch", body, {"Content-Type": "application/json"})
            return np.asarray(json.loads(connection.getresponse().read())["predictions"])

        return post
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(contender.url(), connection_timeout=600, network_timeout=600)
    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("output__0", binary_data=True)]

    def infer() -> np.ndarray:
        return client.infer(contender.model, [tensor], outputs=wanted).as_numpy("output__0").argmax(axis=1)

    return infer


def batch_scoring(
    contender: Contender, model: BenchModel, n_rows: int, budget_s: float, form: Form | None = None
) -> dict[str, Any]:
    """Rows/s of `n_rows`-row requests (median call), and agreement with the native model's classes."""
    rows = model.rows[:n_rows]
    call = batch_call(contender, rows, form)
    agreement = float(np.mean(call() == model.estimator.predict(rows)))
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 1_000):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "rows": n_rows,
        "median_ms": median * 1e3,
        "rows_per_s": n_rows / median,
        "calls": len(times),
        "agreement": agreement,
    }
