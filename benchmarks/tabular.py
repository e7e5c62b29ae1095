"""A tabular pipeline served three ways: the ensemble in the node vs whole in ONNX Runtime vs sklearn.

    python benchmarks/tabular.py            # ~50 s on 2 CPU cores
    python benchmarks/tabular.py --quick    # a smoke check in under a minute

The pipeline (issue 16's): 3 string categorical columns and 20 float64 columns (some NaN),
`ColumnTransformer([OneHotEncoder(handle_unknown="ignore") on the strings, SimpleImputer +
StandardScaler on the floats])` in front of `XGBClassifier(n_estimators=300, max_depth=6)`.
Requests are rows of a held-out frame (unseen categories included), 1 row and 1,000 rows:

- node ensemble: `python -m tritonflow serve` on the repository tritonflow.plugin.publish.deploy
  writes for the pipeline (as @deploy does): `<m>.preprocess` (ONNX, one input per column),
  `<m>.forest` (Treelite checkpoint for FIL) and `<m>` (platform "ensemble", pinning both
  versions); tritonclient HTTP, binary tensors, strings as BYTES; client-side latency, so HTTP,
  encoding and the loopback hop are in it;
- onnxruntime (whole): skl2onnx's conversion of the whole pipeline (the trees in ONNX Runtime's
  TreeEnsemble, their input cast to float32 as XGBoost casts it), the same per-column inputs,
  run in-process: no HTTP;
- sklearn: `pipe.predict_proba(frame)` in-process: no HTTP.

Each timed call starts from a pandas DataFrame and ends with the probabilities; rounds alternate
the contenders, figures are medians over the rounds. The node's answers must equal predict_proba
within 1e-6, or the benchmark fails. Writes benchmarks/results/tabular.json and tabular.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from machine import RESULTS, preamble, write_report
from serving_contenders import model_engine, rotated, running, tritonflow_contender
from tabular_contenders import (
    CATEGORIES,
    HELD_OUT,
    MISSING,
    MODEL,
    N_NUMERIC,
    Call,
    column_arrays,
    node_call,
    publish_ensemble,
    train,
    whole_onnx,
)

TOLERANCE = 1e-6
BATCHES = (1, HELD_OUT)
CONTENDERS = ("node ensemble", "onnxruntime (whole)", "sklearn")
TITLE = "Tabular pipeline: the ensemble in the node vs whole in ONNX Runtime vs sklearn"


@dataclass(frozen=True)
class Plan:
    train_rows: int
    rounds: int
    requests: dict[int, int]  # batch rows -> sequential calls per contender per round


FULL = Plan(train_rows=20_000, rounds=5, requests={1: 600, 1_000: 50})
QUICK = Plan(train_rows=4_000, rounds=1, requests={1: 100, 1_000: 5})


# -- what the client and the node spend -----------------------------------------------------------
def encoding_ms(requests: list[pd.DataFrame], columns: list[tuple[str, str]]) -> dict[str, float]:
    """Median ms to turn one request's frame into tensors: column_arrays, and serving/frames.py's
    column_tensor (what tritonflow.client.infer_frame does), not part of the timed calls."""
    from tritonflow.serving.frames import column_tensor

    ways: dict[str, Callable[[pd.DataFrame], object]] = {
        "column_arrays": lambda rows: column_arrays(rows, columns),
        "frames.column_tensor (infer_frame)": lambda rows: [column_tensor(rows, c, d) for c, d in columns],
    }
    return {way: statistics.median(timed(f, requests[:50])) for way, f in ways.items()}


def node_stats(port: int) -> dict[str, dict[str, int]]:
    """Per model: requests answered and their nanoseconds in the node, and compute_infer's."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/v2/models/stats")
    body = json.loads(connection.getresponse().read())
    connection.close()
    out = {}
    for model in body["model_stats"]:
        stats = model["inference_stats"]
        out[model["name"]] = {
            "requests": stats["success"]["count"],
            "ns": stats["success"]["ns"],
            "compute_infer_ns": stats["compute_infer"]["ns"],
            "executions": model["execution_count"],
        }
    return out


# -- measuring --------------------------------------------------------------------------------------------
def batches(held_out: pd.DataFrame, rows: int, count: int) -> list[pd.DataFrame]:
    """`count` request frames of `rows` rows each, walking the held-out frame."""
    starts = [(i * rows) % (len(held_out) - rows + 1) for i in range(count)]
    return [held_out.iloc[s : s + rows].reset_index(drop=True) for s in starts]


def timed(call: Callable[[pd.DataFrame], object], requests: list[pd.DataFrame]) -> list[float]:
    """Milliseconds per call, sequential, after two warm-up calls."""
    for rows in requests[:2]:
        call(rows)
    out = []
    for rows in requests:
        start = time.perf_counter()
        call(rows)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def summary(samples: list[list[float]], rows: int) -> dict[str, float]:
    """Medians over the rounds of each round's p50, p99 and rows/s."""
    p50 = statistics.median(float(np.percentile(s, 50)) for s in samples)
    p99 = statistics.median(float(np.percentile(s, 99)) for s in samples)
    rate = statistics.median(rows * len(s) / (sum(s) / 1e3) for s in samples)
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "rows_per_s": rate,
        "rounds": len(samples),
        "calls": len(samples[0]),
    }


def parity(call: Call, pipe: Any, held_out: pd.DataFrame) -> float:
    """Max |answer - predict_proba| over the whole held-out frame, sent as one request."""
    return float(np.abs(call(held_out) - pipe.predict_proba(held_out)).max())


def measure(
    calls: dict[str, Call], port: int, held_out: pd.DataFrame, plan: Plan, columns: list[tuple[str, str]]
) -> dict[str, Any]:
    """Per batch size: every contender's figures, the node's own view and the encoding costs."""
    results, in_node, encoding = [], {}, {}
    for rows in BATCHES:
        requests = batches(held_out, rows, plan.requests[rows])
        samples: dict[str, list[list[float]]] = {label: [] for label in calls}
        before = node_stats(port)
        for round_no in range(plan.rounds):
            for label in rotated(list(calls), round_no):
                samples[label].append(timed(calls[label], requests))
        in_node[str(rows)] = _in_node(before, node_stats(port))
        encoding[str(rows)] = encoding_ms(requests, columns)
        for label, got in samples.items():
            results.append({"contender": label, "rows": rows, **summary(got, rows)})
            print(f"{rows} rows, {label}: p50 {results[-1]['p50_ms']:.3f} ms", flush=True)
    return {"results": results, "node_server_side": in_node, "client_encoding_ms": encoding}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="less training data, fewer calls, one round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    started, load = time.monotonic(), [round(x, 2) for x in os.getloadavg()]
    pipe, held_out = train(plan.train_rows)
    from tritonflow.plugin.exporters.tabular import columns_of

    columns = columns_of(held_out)
    onnx_call, as_converted, onnx_note = whole_onnx(pipe, columns)
    node_label, onnx_label, sklearn_label = CONTENDERS
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        publish_ensemble(pipe, held_out, root / "repo")
        # NOTE: named by the forest step, for model_engine: the engine the node picked for it
        node = tritonflow_contender("node", root / "repo", f"{MODEL}.forest", "auto", workdir=root)
        with running([node]):
            call, client = node_call(node.url(), columns)
            calls: dict[str, Call] = {node_label: call, sklearn_label: pipe.predict_proba}
            if onnx_call is not None:
                calls[onnx_label] = onnx_call
            diffs = {label: parity(f, pipe, held_out) for label, f in calls.items() if label != sklearn_label}
            if as_converted is not None:
                diffs[f"{onnx_label[:-1]}, as skl2onnx converts it)"] = parity(as_converted, pipe, held_out)
            if diffs[node_label] > TOLERANCE:
                raise SystemExit(
                    f"PARITY FAILED: the node's ensemble answers differ from predict_proba by "
                    f"{diffs[node_label]:.3g} (> {TOLERANCE})"
                )
            figures = measure(calls, node.port, held_out, plan, columns)
            engine = model_engine(node)
            client.close()
    report = {
        "quick": args.quick,
        "plan": asdict(plan),
        "pipeline": _describe(pipe),
        "onnx_whole": onnx_note,
        "parity_max_abs_diff": diffs,
        "tolerance": TOLERANCE,
        "parity_ok": diffs[node_label] <= TOLERANCE,
        "node_forest_engine": engine,
        **figures,
        "seconds": round(time.monotonic() - started, 1),
        "load_average_start": load,
    }
    write_report("tabular", report, args.out, markdown)


def _in_node(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, float]:
    """Per request of the ensemble: its ms in the node, and the steps' compute_infer ms."""
    delta = {m: {k: after[m][k] - before[m].get(k, 0) for k in after[m]} for m in after}
    requests = max(delta[MODEL]["requests"], 1)
    out = {"ensemble_ms": delta[MODEL]["ns"] / requests / 1e6}
    for model, d in delta.items():
        if model != MODEL:
            out[f"{model} compute_infer_ms"] = d["compute_infer_ns"] / requests / 1e6
    return out


def _describe(pipe: Any) -> dict[str, Any]:
    prep = pipe.steps[0][1]
    return {
        "categorical": CATEGORIES,
        "numeric": N_NUMERIC,
        "missing_share": MISSING,
        "features": int(sum(len(c) for c in prep.named_transformers_["cat"].categories_) + N_NUMERIC),
        "model": "XGBClassifier(n_estimators=300, max_depth=6)",
        "versions": {m: sys.modules[m].__version__ for m in ("sklearn", "xgboost", "onnxruntime", "numpy")},
    }


def markdown(report: dict[str, Any]) -> str:
    p = report["pipeline"]
    lines = [
        *preamble(TITLE, "tabular.py", report),
        f"Pipeline: OneHotEncoder(handle_unknown='ignore') on {len(p['categorical'])} string columns "
        f"({', '.join(f'{k}: {v} levels' for k, v in p['categorical'].items())}), SimpleImputer + "
        f"StandardScaler on {p['numeric']} float64 columns ({p['missing_share']:.0%} NaN), then "
        f"{p['model']} on {p['features']} features. Requests: rows of a held-out frame "
        "(2% unseen categories).",
        "",
        "- node ensemble: `python -m tritonflow serve` (engine auto), the ensemble `tabular` @deploy's "
        "path (tritonflow.plugin.publish.deploy) publishes = "
        "`tabular.preprocess` (ONNX, onnxruntime) -> `tabular.forest` (Treelite checkpoint, FIL config, "
        f"served by {report['node_forest_engine']}); "
        "tritonclient HTTP with binary tensors, one per column (strings as BYTES). **Client-side** "
        "latency: the HTTP round trip, encoding and decoding are in it.",
        "- onnxruntime (whole): the whole pipeline converted by skl2onnx (XGBoost through onnxmltools' "
        f"converter), the same per-column inputs, one in-process session: {report['onnx_whole']}. "
        "**In-process: no HTTP cost.**",
        "- sklearn: `pipe.predict_proba(frame)`, in-process. **No HTTP cost.**",
        "",
        f"Each call starts from a DataFrame; {report['plan']['rounds']} round(s), contenders alternating, "
        "figures are medians over the rounds of each round's p50/p99/rows per second. Load average at "
        f"the start {report['load_average_start']}; {report['seconds']} s in all.",
        "",
    ]
    for rows in BATCHES:
        mine = [r for r in report["results"] if r["rows"] == rows]
        lines += [
            f"## {rows:,} row{'s' if rows > 1 else ''} per request ({mine[0]['calls']} calls per round)",
            "",
        ]
        lines += ["| contender | p50 ms | p99 ms | rows/s |", "|---|---:|---:|---:|"]
        lines += [
            f"| {r['contender']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rows_per_s']:,.0f} |"
            for r in mine
        ]
        side = report["node_server_side"][str(rows)]
        lines += [
            "",
            "In the node, per request (its statistics endpoint): "
            + ", ".join(f"{k} {v:.3f}" for k, v in side.items())
            + ". Turning the request's frame into tensors, ms (outside the timed calls): "
            + ", ".join(f"{k} {v:.3f}" for k, v in report["client_encoding_ms"][str(rows)].items()),
            "",
        ]
    diffs = report["parity_max_abs_diff"]
    lines += [
        f"Parity over the {max(BATCHES):,} held-out rows, max |answer - predict_proba|: "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
        + f" (the node must be within {report['tolerance']:g}: {'ok' if report['parity_ok'] else 'FAILED'}). "
        "As skl2onnx converts it, the whole graph's TreeEnsembleClassifier reads the float64 features and "
        "compares them with float32 thresholds, where XGBoost rounds the features to float32 first: a value "
        "that rounds onto a threshold goes the other way. The timed graph casts to float32 before the trees.",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in p['versions'].items())}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
