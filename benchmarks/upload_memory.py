"""The node's memory under concurrent large uploads: resident set before, at peak and after.

    python benchmarks/upload_memory.py                       # 16 uploads of 60 MB, ~1 minute
    python benchmarks/upload_memory.py --uploads 4 --mb 8    # a quick run
    python benchmarks/upload_memory.py --baseline            # a node without the in-flight flags

Each upload is a KServe v2 JSON infer request (FP32 rows as JSON numbers, as a JSON client sends
them) to an empty repository: the node reads and decodes the whole body before it finds no model,
so every byte is held as a real one would be. Scenarios: the node's defaults; no in-flight bound
(`--max-inflight-bytes` above the uploads' total); and, with --baseline, the node started with no
new flags at all (for a node from before the bound existed). Peak is the kernel's VmHWM, after is
VmRSS a few seconds after the last response. Writes benchmarks/results/upload_memory.json.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from machine import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path[1:1] = [str(ROOT / "tests")]
from servers import Server  # noqa: E402

MB = 1024 * 1024
SETTLE_S = 3.0  # after the last response, before reading "after"


def infer_body(megabytes: float) -> bytes:
    """A JSON infer request of about `megabytes` MB: FP32 rows of 8 features as JSON numbers."""
    values = int(megabytes * MB / 19)  # orjson writes a float32 as about 19 characters
    data = np.random.default_rng(0).random(values, dtype=np.float32)
    rows = values // 8
    tensor = {"name": "input__0", "shape": [rows, 8], "datatype": "FP32", "data": data[: rows * 8].tolist()}
    return orjson.dumps({"inputs": [tensor]})


def proc_mb(pid: int, field: str) -> float:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def upload(port: int, body: bytes, statuses: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(
            "POST", "/v2/models/absent/infer", body=body, headers={"content-type": "application/json"}
        )
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    except OSError as exc:
        print(f"  upload failed: {exc!r}")
        statuses.append(0)
    finally:
        conn.close()


def concurrent_uploads(server: Server, body: bytes, uploads: int) -> dict[str, Any]:
    """Send `uploads` copies of `body` at once; the node's memory and the responses' statuses."""
    pid = server.process.pid
    before = proc_mb(pid, "VmRSS")
    statuses: list[int] = []
    threads = [threading.Thread(target=upload, args=(server.port, body, statuses)) for _ in range(uploads)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    time.sleep(SETTLE_S)
    return {
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(proc_mb(pid, "VmHWM"), 1),
        "rss_after_mb": round(proc_mb(pid, "VmRSS"), 1),
        "statuses": dict(Counter(str(s) for s in statuses)),
        "elapsed_s": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=16)
    parser.add_argument("--mb", type=float, default=60.0, help="size of each upload in MB")
    parser.add_argument("--baseline", action="store_true", help="also run a node with no new flags")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = parser.parse_args()
    body = infer_body(args.mb)
    request_limit = str(len(body) + MB)
    scenarios = {
        "defaults": ["--max-request-bytes", request_limit],
        "no in-flight bound": [
            *("--max-request-bytes", request_limit),
            *("--max-inflight-bytes", str(args.uploads * len(body) + MB)),
        ],
    }
    if args.baseline:
        scenarios = {"baseline (no new flags)": ["--max-request-bytes", request_limit]}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        for name, node_args in scenarios.items():
            workdir = Path(tmp) / name.split()[0]
            workdir.mkdir()
            server = Server(repo, workdir, *node_args)
            try:
                results[name] = {"node_args": node_args, **concurrent_uploads(server, body, args.uploads)}
            finally:
                server.stop()
            row = results[name]
            print(
                f"{name:26s} RSS before {row['rss_before_mb']:7.1f} MB  peak {row['rss_peak_mb']:7.1f} MB  "
                f"after {row['rss_after_mb']:7.1f} MB  statuses {row['statuses']}  {row['elapsed_s']} s"
            )
    payload = {"uploads": args.uploads, "upload_mb": round(len(body) / MB, 1), "results": results}
    path = write_result("upload_memory", payload, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
