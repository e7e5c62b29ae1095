"""Check the champion's captured traffic against the training data it was deployed with; a card shows
the drift, and the end step says whether retraining is due. Schedule it (cron, Argo, Step Functions).

python flows/monitor_flow.py run --model fraud-classifier --captures ./captures
python flows/monitor_flow.py run --since 24h --captures s3://bucket/captures
python flows/monitor_flow.py card view check                    # the drift report

It reads what `tritonflow serve --capture` wrote and the reference profile @deploy(sample=...) wrote.
"""

import os

from metaflow import FlowSpec, Parameter, card, current, step


class MonitorFlow(FlowSpec):
    model = Parameter("model", default="fraud-classifier", help="the model whose champion is checked")
    repository = Parameter(
        "repository",
        default=os.environ.get("TRITONFLOW_REPOSITORY", "model_repository"),
        help="the model repository (a folder or s3://bucket/prefix)",
    )
    captures = Parameter("captures", default="captures", help="where the node captures (--capture)")
    since = Parameter("since", default="", help="only the rows of the last 30m, 24h, 7d... (all by default)")
    psi = Parameter("psi-threshold", default=0.2, help="PSI above this is drift")
    ks = Parameter("ks-threshold", default=0.2, help="KS above this is drift")

    @step
    def start(self):
        import tritonflow

        releases = tritonflow.releases(self.model, self.repository, live=False)
        serving = [v.version for v in releases.versions if v.role in ("champion", "serving")]
        if not serving:
            raise ValueError(f"{self.model} has no champion in {self.repository}: nothing serves to check")
        self.target = f"{self.model}:{serving[0]}"
        self.next(self.check)

    @card(type="blank", id="drift")
    @step
    def check(self):
        from metaflow.cards import Image, Markdown, Table

        from tritonflow.lineage.arguments import duration
        from tritonflow.lineage.drift import Thresholds
        from tritonflow.lineage.drift_check import check_drift
        from tritonflow.lineage.drift_html import drift_plots

        since = duration(self.since) if self.since else None
        self.report = check_drift(
            self.target, self.captures, self.repository, since, Thresholds(float(self.psi), float(self.ks))
        )
        doc = self.report
        verdict = f"drift in {', '.join(doc['drifting'])}" if doc["drift"] else "no drift"
        current.card["drift"].append(Markdown(f"# Drift of {doc['deployment_id']}: {verdict}"))
        current.card["drift"].append(
            Markdown(
                f"{doc['rows']:,} captured rows against {doc['reference_rows']:,} reference rows; "
                f"thresholds PSI {doc['thresholds']['psi']}, KS {doc['thresholds']['ks']}"
            )
        )
        columns = [*doc["features"], *([doc["prediction"]] if doc["prediction"] else [])]
        current.card["drift"].append(
            Table(
                [
                    [c["name"], f"{c['psi']:.3f}", f"{c['ks'] or 0:.3f}", "DRIFT" if c["drift"] else ""]
                    for c in columns
                ],
                headers=["column", "PSI", "KS", ""],
            )
        )
        for name, png in drift_plots(doc):
            current.card["drift"].append(Image(png, label=name))
        self.next(self.end)

    @step
    def end(self):
        doc = self.report
        if doc["drift"]:
            print(
                f"retraining is due: {doc['deployment_id']} drifted in {', '.join(doc['drifting'])} "
                f"over {doc['rows']:,} captured rows"
            )
        else:
            print(f"no retraining due: {doc['deployment_id']} shows no drift over {doc['rows']:,} rows")


if __name__ == "__main__":
    MonitorFlow()
