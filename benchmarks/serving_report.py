"""The report of benchmarks/serving.py: serving.md's tables, serving.json, and the latency plot."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from serving_contenders import FASTAPI
from serving_targets import load_medians

REFERENCE_MS = {"Triton FIL (starter pack)": 0.44, "FastAPI + uvicorn (starter pack)": 5.15}
HOW = (
    "tritonflow: `python -m tritonflow serve REPO --engine E --model-control-mode none`, every model "
    "deployed by `tritonflow.plugin.publish.deploy` (max_batch_size 65536, max_queue_delay_us 100).",
    "batching off: the same checkpoint deployed as `<name>-nobatch`, its config.pbtxt then edited to drop "
    "`dynamic_batching` (@deploy always writes it).",
    "fastapi: benchmarks/fastapi_baseline.py on uvicorn's defaults (access log on), the model pickled as the "
    "starter pack does (RandomForest n_jobs=None), `GET /predict?data=<json>` per row.",
    "workers: the first engine's node again with `--workers 2` (and `--workers auto`: os.cpu_count() "
    "workers), a supervisor and its workers sharing the port; sequential and wrk only, no batch scoring.",
    "peers: MLServer, KServe's model server, BentoML and `mlflow models serve`, each in its own virtual "
    "environment (benchmarks/peers/), on their defaults, serving the same model file (MLServer's XGBoost "
    "runtime: the booster's JSON), asked for predict_proba in their own JSON, single rows and batches alike; "
    "each checked against the native predict_proba on 8 rows before timing.",
    "triton: Triton 24.10 (nvidia-pytriton) with `tritonflow triton-backends`: its `fil` backend is "
    "tritonflow's Python adapter on the python backend (engine in the tables), not NVIDIA's native FIL.",
)


def versions(wrk_path: str | None) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in (
        "tritonflow",
        "fastapi",
        "uvicorn",
        "scikit-learn",
        "xgboost",
        "treelite",
        "onnxruntime",
        "nvforest-cu12",
        "numpy",
    ):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    if wrk_path:
        found["wrk"] = (
            subprocess.run([wrk_path, "-v"], capture_output=True, text=True).stdout.split(" [")[0].strip()
        )
    return found


def _table(header: str, rows: list[list[str]]) -> list[str]:
    """A markdown table: `header` is "name|>number|...", `>` right-aligning a column."""
    names = [h.lstrip(">") for h in header.split("|")]
    rules = ["---:" if h.startswith(">") else "---" for h in header.split("|")]
    return [
        "| " + " | ".join(names) + " |",
        "|" + "|".join(rules) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def markdown(report: dict[str, Any]) -> str:
    m, plan = report["machine"], report["plan"]
    loads = [" ".join(map(str, x)) for x in (m["load_average"], report["load_average_end"])]
    lines = [
        "# Serving benchmark: tritonflow vs the starter pack's FastAPI server vs Triton",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}.",
        f"Load average {loads[0]} at the start, {loads[1]} at the end; client, wrk, servers share the cores.",
        f"Run {report['created_at']}: `python benchmarks/serving.py{' --quick' if report['quick'] else ''}`.",
        "",
        "Reference (the starter pack, its machine, mean of a sequential client): "
        + ", ".join(f"{k} {v} ms" for k, v in REFERENCE_MS.items())
        + ". Every figure below comes from this one run: same machine, model files, rows and client.",
        "",
        *(f"- {line}" for line in HOW),
        *(f"- {what} skipped: {why}" for what, why in report["skipped"].items()),
        "",
    ]
    lines += _peer_environments(report.get("peer_environments", {}))
    for result in report["models"]:
        lines += [*_model_tables(result, plan), *_workers_table(result, report["workers_auto"])]
        lines += [
            f"- {label} not timed: {why[:500]}" for label, why in result.get("peer_problems", {}).items()
        ]
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    rows = [
        [
            r["model"],
            r["target"],
            r["contender"],
            "" if r["value"] is None else f"{r['value']:,.{1 if abs(r['value']) >= 10 else 2}f}",
            r["required"],
            verdict[r["met"]],
        ]
        for r in report["targets"]
    ]
    lines += [
        "## Targets",
        "",
        "The issue's targets are set on the starter pack's model; the XGBoost rows show how they "
        "carry over to a production-size forest.",
        "",
    ]
    lines += [*_table("model|target|contender|>measured|required|met", rows), ""]
    lines += ["![single-row latency at concurrency 1](serving_latency.png)", ""]
    return "\n".join(
        [*lines, "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    )


def _peer_environments(made: dict[str, dict[str, Any]]) -> list[str]:
    """Each peer's environment: what it pins, how long the set-up took, its size (a user's install)."""
    rows = [
        [name, " ".join(facts["requirements"]), f"{facts['install_s']:.0f}", f"{facts['size_mb']:,}"]
        for name, facts in made.items()
        if facts
    ]
    if not rows:
        return []
    lines = ["Peers' environments (~/.cache/tritonflow/peers/, made once by the benchmark, then reused):", ""]
    return [*lines, *_table("peer|requirements|>install s|>size MB", rows), ""]


def _model_tables(result: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    engines = {row["contender"]: row["engine"] for row in result["servers"]}
    sequential = [
        [
            r["contender"],
            engines[r["contender"]],
            *(f"{r[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")),
            " / ".join(f"{x:.3f}" for x in r["round_p50_ms"]),
        ]
        for r in sorted(result["sequential"], key=lambda r: r["p50_ms"])
    ]
    load = [
        [
            label,
            str(connections),
            f"{r['requests_per_s']:,.0f}",
            " / ".join(f"{x:,.0f}" for x in r["round_requests_per_s"]),
            f"{r['p99_ms']:.2f}",
            str(r["errors"]),
        ]
        for (label, connections), r in sorted(
            load_medians(result).items(), key=lambda kv: (kv[0][1], -kv[1]["requests_per_s"])
        )
    ]
    batch = [
        [
            r["contender"] + (", POST JSON variant" if r["contender"] == FASTAPI else ""),
            f"{r['rows']:,}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['median_ms']:.2f}",
            f"{r['agreement']:.1%}",
        ]
        for r in result["batch"]
    ]
    memory = [
        [
            r["contender"],
            f"{r['rss_ready_mb']:.0f}",
            f"{r['rss_peak_mb']:.0f}",
            "yes" if r["nvforest_mapped"] else "no",
        ]
        for r in result["servers"]
    ]
    lines = [f"## {result['title']} (`{result['model']}`)", ""]
    lines += [
        f"Single-row latency at concurrency 1: one keep-alive http.client loop, {plan['requests']:,} "
        f"requests x {plan['rounds']} round(s) per contender, rounds alternating the contenders.",
        "",
    ]
    lines += [*_table("contender|engine|>p50 ms|>p90 ms|>p99 ms|>mean ms|>p50 per round", sequential), ""]
    if load:
        lines += [
            f"Throughput: wrk, 1-row requests, {plan['load_s']} s per run after 1 s of warm-up; "
            "median of the rounds.",
            "",
        ]
        lines += [*_table("contender|>connections|>req/s|>req/s per round|>p99 ms|>socket errors", load), ""]
    lines += [
        "Batch scoring: binary tensors through tritonclient.http; FastAPI: a JSON POST variant (the starter "
        "pack's GET cannot carry the rows); peers: their own JSON. Agreement: predicted class vs the native "
        "model's `predict`.",
        "",
    ]
    lines += [*_table("contender|>rows per request|>rows/s|>median ms|>agrees", batch), ""]
    lines += [
        "Memory: the server's process tree (Triton: with its python backend stubs); VmRSS once ready, "
        "VmHWM (peak) at the end.",
        "",
    ]
    return [*lines, *_table("contender|>RSS ready MB|>peak RSS MB|nvForest mapped", memory), ""]


def _workers_table(result: dict[str, Any], auto: int) -> list[str]:
    """--workers 1 / 2 / auto side by side: req/s and p99 at 64 connections, p50 at c1, the tree's RSS."""
    p50 = {row["contender"]: row["p50_ms"] for row in result["sequential"]}
    load = load_medians(result)
    facts = {row["contender"]: row for row in result["servers"]}
    rows = []
    for value, label in result["workers"].items():
        at64 = load.get((label, 64))
        rows.append(
            [
                f"auto ({auto})" if value == "auto" else value,
                label,
                "" if at64 is None else f"{at64['requests_per_s']:,.0f}",
                "" if at64 is None else f"{at64['p99_ms']:.2f}",
                f"{p50[label]:.3f}",
                str(facts[label]["processes"]),
                f"{facts[label]['rss_ready_mb']:.0f}",
                f"{facts[label]['rss_peak_mb']:.0f}",
            ]
        )
    lines = [
        "Workers: the same node with `--workers` 1 / 2 / auto. RSS: VmRSS summed over the process tree "
        "(supervisor, workers, their probe fork servers) once ready; peak: VmHWM summed at the end.",
    ]
    if "auto" not in result["workers"]:
        lines.append(
            f"`--workers auto` starts os.cpu_count() = {auto} worker(s) on this machine: "
            f"the row `{auto}`, not run twice."
        )
    header = "workers|contender|>req/s c64|>p99 ms c64|>p50 ms c1|>processes|>RSS ready MB|>peak RSS MB"
    return [*lines, "", *_table(header, rows), ""]


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Box plots of single-row latency at concurrency 1, one panel per model (whiskers: p1..p99).

    The starter model's panel also draws the starter pack's published means, for orientation only:
    they were measured on another machine with another client.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5.2), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        ordered = sorted(result["latencies_ms"].items(), key=lambda kv: float(np.median(kv[1])))
        ax.boxplot([v for _, v in ordered], whis=(1, 99), showfliers=False)
        labels = [
            k.replace(" (", "\n(").replace("tritonflow ", "tritonflow\n").replace(" --workers", "\n--workers")
            for k, _ in ordered
        ]
        ax.set_xticks(range(1, len(ordered) + 1), labels, fontsize=8)
        if result["model"] == "starter-rf":
            for (name, ms), style in zip(REFERENCE_MS.items(), (":", "--"), strict=True):
                ax.axhline(ms, color="grey", linestyle=style, linewidth=1, label=f"{name}: {ms} ms (mean)")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel("ms per single-row request")
        ax.set_title(result["title"], fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.suptitle(
        "Single-row latency, sequential keep-alive client (box p25-p75, whiskers p1-p99)", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot(report["models"], out / "serving_latency.png")
    for result in report["models"]:
        result.pop("latencies_ms")  # raw samples: the plot has them; the JSON keeps the percentiles
    (out / "serving.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    text = markdown(report)
    (out / "serving.md").write_text(text)
    print(text)
    print(f"wrote {out / 'serving.md'}, {out / 'serving.json'}, {out / 'serving_latency.png'}")
