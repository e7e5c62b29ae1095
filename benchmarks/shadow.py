"""What a shadow costs the champion's clients: latency of unversioned requests with and without one.

    python benchmarks/shadow.py            # ~3 minutes on 2 CPU cores
    python benchmarks/shadow.py --quick    # a smoke check in about a minute

Two nodes (`python -m tritonflow serve`) run side by side on two repositories holding the same two
versions, deployed by @deploy's code: v1, the champion, and v2, a challenger (random forests of 100
trees of depth 8 over 30 features, trained on different seeds). In one repository v2 is the shadow
(`lineage.releases.set_shadow`): that node runs a copy of every unversioned request on it, in its
shadow worker process (serving/shadow_worker.py, at nice 19), and compares. wrk sends 1-row KServe
v2 JSON requests at fixed connection counts to each node in turn, rounds alternating which node goes
first; the figures are medians over the rounds. The shadow node's counters (compared, dropped: its
queue was full) say how much of the traffic the shadow saw.

Writes benchmarks/results/shadow.json and shadow.md.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from machine import preamble, write_report
from serving_contenders import running, tritonflow_contender
from side_by_side import arguments, measure, medians, metrics_text

MODEL = "shadowed"
N_FEATURES = 30
CONNECTIONS = (1, 8)
NODES = ("no shadow", "shadow v2")


def deploy(root: Path, with_shadow: bool) -> Path:
    """A repository with v1 (champion) and v2 (challenger, or shadow), deployed by tritonflow's code."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from tritonflow.lineage.releases import set_shadow
    from tritonflow.lineage.repository import ModelRepository
    from tritonflow.plugin.options import parse_options
    from tritonflow.plugin.publish import Provenance, deploy
    from tritonflow.serving.release_policy import champion_config

    X, y = make_classification(20_000, N_FEATURES, n_informative=12, random_state=0)
    X = X.astype(np.float32)
    for seed, promote in ((0, "always"), (1, "never")):
        forest = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=seed, n_jobs=-1).fit(X, y)
        attributes = {"name": MODEL, "repository": str(root), "format": "treelite", "promote": promote}
        options = parse_options(attributes, "BenchFlow", is_join=False)
        metaflow = {"flow": "BenchFlow", "run_id": str(seed + 1), "task": f"BenchFlow/{seed + 1}/train/1"}
        deploy(forest, options, sample=X[:1_000], provenance=Provenance(metaflow=metaflow))
    if with_shadow:
        set_shadow(ModelRepository(str(root)), MODEL, 2, champion_config, reason="benchmark")
    return root


def shadow_counts(port: int) -> dict[str, float]:
    """The shadow node's tritonflow_shadow_* samples: compared, dropped, failed, mean disagreement."""
    text = metrics_text(port)
    outcomes = re.findall(r'^tritonflow_shadow_requests_total\{.*outcome="(\w+)".*\} (\S+)$', text, re.M)
    found = {outcome: float(value) for outcome, value in outcomes}
    total = re.search(r"^tritonflow_shadow_disagreement_sum\{.*\} (\S+)$", text, re.M)
    rows = re.search(r"^tritonflow_shadow_disagreement_count\{.*\} (\S+)$", text, re.M)
    if total and rows and float(rows.group(1)):
        found["mean_disagreement"] = float(total.group(1)) / float(rows.group(1))
    return found


def markdown(report: dict[str, Any]) -> str:
    table = [
        "| connections | node | p50 ms | p99 ms | requests/s |",
        "|---:|---|---:|---:|---:|",
        *(
            f"| {r['connections']} | {r['node']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['requests_per_s']:,.0f} |"
            for r in report["medians"]
        ),
    ]
    counts = report["shadow_counts"]
    return "\n".join(
        [
            *preamble("Shadow: the champion's latency with and without a shadow", "shadow.py", report),
            "Two nodes side by side, the same v1 champion (RandomForest 100 trees, depth 8, 30 features, "
            "engine `auto`); one also runs v2 as shadow, in a worker process at nice 19. wrk, 1-row JSON "
            "requests, unversioned; "
            f"{report['seconds']} s per measure, medians over {report['rounds']} rounds, nodes alternating.",
            "",
            *table,
            "",
            f"The shadow node's copies over the whole run: {counts.get('compared', 0):,.0f} compared, "
            f"{counts.get('dropped', 0):,.0f} dropped (queue full), {counts.get('failed', 0):,.0f} failed; "
            f"mean disagreement per row {counts.get('mean_disagreement', float('nan')):.4f}.",
            "",
        ]
    )


def main() -> None:
    args, wrk_path, rounds, seconds = arguments(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nodes = [
            tritonflow_contender(label, deploy(root / f"repo{i}", i == 1), MODEL, "auto", workdir=root)
            for i, label in enumerate(NODES)
        ]
        with running(nodes):
            rows = measure(nodes, wrk_path, rounds, seconds, CONNECTIONS, N_FEATURES)
            counts = shadow_counts(nodes[1].port)
    report = {
        "quick": args.quick,
        "rounds": rounds,
        "seconds": seconds,
        "medians": medians(rows, NODES, CONNECTIONS),
        "shadow_counts": counts,
        "runs": rows,
    }
    write_report("shadow", report, args.out, markdown)


if __name__ == "__main__":
    main()
