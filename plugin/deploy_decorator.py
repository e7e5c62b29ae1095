"""@deploy: the Metaflow side. Reads the run, hands plain data to `publish.deploy`.

Metaflow imports this module in every process it starts (the decorator is registered as an
extension), so heavy libraries (treelite, sklearn, onnx) are imported only when a task deploys.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from typing import TYPE_CHECKING, Any

from metaflow.decorators import StepDecorator
from metaflow.exception import MetaflowException

from tritonflow.lineage.errors import TritonflowError
from tritonflow.plugin.artifact_origin import producing_tasks
from tritonflow.plugin.options import DeployOptions, parse_options
from tritonflow.plugin.project import ProjectBranch, current_branch
from tritonflow.plugin.remote import check_repository_travels, metaflow_command, where_it_runs
from tritonflow.plugin.source_identity import file_identity, run_git_info

if TYPE_CHECKING:  # NOTE: imported when a task deploys (numpy), not in every Metaflow process
    from tritonflow.plugin.reference import DataRows, FrameRows

# Artifact types (class names, as Metaflow stores them) that count as training data in the record.
_DATA_TYPES = ("ndarray", "DataFrame", "Series", "scipy.sparse", "Table", "IncludedFile")
# Those of them that can be feature matrices, loaded for the reference profile.
_MATRIX_TYPES = ("ndarray", "DataFrame")


class DeployException(MetaflowException):
    headline = "@deploy"


class DeployDecorator(StepDecorator):
    """
    Export the step's model, write a validated Triton config, and publish it as a new version of
    a Triton model repository, with a deployment record that links it back to this run.

    Parameters
    ----------
    model : str, default "model"
        Artifact holding the model (scikit-learn, XGBoost, LightGBM, or another estimator).
    select : str, optional
        On a join step: "max:<artifact>" or "min:<artifact>". The input whose artifact is best
        provides the model (it becomes `self.<model>`); every candidate is recorded.
    name : str, optional
        Triton model name. Default: the flow name in kebab case (FraudFlow -> fraud-flow).
    repository : str, optional
        Local path or "s3://bucket/prefix". Default: $TRITONFLOW_REPOSITORY, else
        ./model_repository. Steps on @kubernetes or @batch need an S3 repository.
    format : str, default "auto"
        "auto" (Treelite for supported tree models, ONNX otherwise), "treelite" or "onnx".
    sample : str, optional
        Artifact with sample input rows (numpy or pandas): the signature and the parity gate.
    metrics : str, optional
        Artifact with a dict of metrics to record.
    promote : str, default "always"
        "always" (the new version becomes champion), "never" (published as a challenger; the first
        version of a model is still promoted), "on_success" (a challenger until the whole run has
        finished successfully, then champion; only where `flow.py run` drives the run: on Argo or
        Step Functions it stays pending for `tritonflow promote`) or "if_better:<metric>"
        (roc_auc, average_precision, log_loss, accuracy, f1, rmse, mae, r2): promoted only if it
        scores strictly better than the champion on `sample` and `labels`.
    labels : str, optional
        Artifact with one label per row of `sample` (promote="if_better:...").
    instance_kind : str, default "cpu"
        "cpu" or "gpu" (the config's instance_group kind).
    max_batch_size : int, default 8192
    max_queue_delay_us : int, default 100
        Dynamic batching delay in microseconds.
    triton_version : str, optional
        Target Triton release (YY.MM); decides the FIL config dialect. Default: the newest supported.
    card : bool, default True
        Attach the deployment card to the step (`python flow.py card view <step>`); False: no card.

    After the step the task has the artifacts `deployment_id` (str) and `deployment` (the record).
    """

    name = "deploy"
    defaults = {
        "model": "model",
        "select": None,
        "name": None,
        "repository": None,
        "format": "auto",
        "sample": None,
        "metrics": None,
        "instance_kind": "cpu",
        "max_batch_size": 8192,
        "max_queue_delay_us": 100,
        "triton_version": None,
        "promote": "always",
        "labels": None,
        "card": True,
    }

    def step_init(self, flow, graph, step_name, decorators, environment, flow_datastore, logger):
        remote = where_it_runs((d.name for d in decorators), metaflow_command())
        try:
            options = parse_options(self.attributes, flow.name, graph[step_name].type == "join", remote)
            if remote:
                check_repository_travels(self.attributes, decorators, remote)
            # NOTE: @project's flow_init has run: off `prod`, the deploy goes to a model of its own
            self.project: ProjectBranch | None = current_branch(options.name)
        except TritonflowError as exc:
            raise DeployException(f"step *{step_name}*: {exc}") from None
        name = self.project.model if self.project else options.name
        self.options: DeployOptions = dataclasses.replace(options, name=name)
        self.flow_datastore = flow_datastore
        self.flow_name = flow.name
        if self.options.card:
            from tritonflow.plugin.card import attach_card

            attach_card(decorators, step_name)

    def runtime_init(self, flow, graph, package, run_id):
        self.run_id = str(run_id)

    def runtime_finished(self, exception):
        # NOTE: called in the process that ran `flow.py run`, once, when the whole run has ended
        if self.options.promote.mode != "on_success" or not getattr(self, "run_id", None):
            return
        from tritonflow.plugin.on_success import settle_run

        try:
            lines = settle_run(self.options.repository, self.options.name, self.flow_name, self.run_id)
        except TritonflowError as exc:
            lines = [f"could not settle promote=on_success: {exc}"]
        for line in lines:
            print(f"@deploy: {line}")

    def task_pre_step(
        self,
        step_name,
        task_datastore,
        metadata,
        run_id,
        task_id,
        flow,
        graph,
        retry_count,
        max_user_code_retries,
        ubf_context,
        inputs,
    ):
        self.task = {
            "run_id": str(run_id),
            "step": step_name,
            "task_id": str(task_id),
            "attempt": retry_count,
        }
        self.selection = None
        # The task whose artifacts trained the model: the selected input, else the parent.
        self.training_task = inputs[0] if inputs else None
        if self.options.select:
            from tritonflow.plugin.selection import select

            try:
                self.selection, self.training_task = select(self.options.select, inputs, flow.name)
            except TritonflowError as exc:
                raise DeployException(str(exc)) from None
            if self.options.model not in self.training_task:
                raise DeployException(
                    f"the selected input {self.selection.winner.task} has no artifact "
                    f"{self.options.model!r}: set self.{self.options.model} in the training step "
                    "or pass @deploy(model=...)"
                )
            # Set before the step body, so the body (and merge_artifacts) sees the chosen model.
            setattr(flow, self.options.model, self.training_task[self.options.model])
        sample = self.options.sample
        # NOTE: the earliest a step decorator sees the sample: it runs in its own step only, so a select
        # join checks it after the candidates trained, yet before its own body does its work.
        if sample and self.training_task is not None and sample in self.training_task:
            from tritonflow.plugin.signature import check_sample

            try:
                check_sample(self.training_task[sample])
            except TritonflowError as exc:
                raise DeployException(
                    f"step *{step_name}* did not run: sample={sample!r} "
                    f"(from {flow.name}/{self.training_task.pathspec}): {exc} (if this step encodes the "
                    "sample itself, keep the encoded rows under another name and pass that as sample=)"
                ) from None

    def task_post_step(self, step_name, flow, graph, retry_count, max_user_code_retries):
        from tritonflow.plugin.promotion import describe
        from tritonflow.plugin.publish import Provenance, deploy

        opts = self.options
        if not hasattr(flow, opts.model):
            raise DeployException(
                f"step *{step_name}* has no artifact {opts.model!r} to deploy: assign "
                f"self.{opts.model} = <trained model> in the step, or pass @deploy(model='<artifact>')"
            )
        for attribute, name, holds in (
            ("sample", opts.sample, "rows of model input"),
            ("labels", opts.labels, "one label per sample row"),
        ):
            if name and not hasattr(flow, name):
                raise DeployException(
                    f"{attribute}={name!r} names no artifact of step *{step_name}*: set "
                    f"self.{name} ({holds}) in the step, or drop {attribute}"
                )
        data = self._data_artifacts(graph)
        provenance = Provenance(
            metaflow=self._run_info(flow),
            data=data,
            metrics=self._metrics(flow),
            selection=self.selection.to_record() if self.selection else None,
        )
        try:
            record = deploy(
                getattr(flow, opts.model),
                opts,
                sample=getattr(flow, opts.sample) if opts.sample else None,
                provenance=provenance,
                sample_name=opts.sample,
                sample_labels=getattr(flow, opts.labels) if opts.labels else None,
                training_data=self._training_rows(data) if opts.sample else [],
            )
        except TritonflowError as exc:
            raise DeployException(f"nothing was published: {exc}") from None
        flow.deployment_id = record.deployment_id
        flow.deployment = record.to_dict()
        print(f"@deploy: published {record.deployment_id} to {record.repository}")
        if self.project:
            print(f"@deploy: {self.project.describe()}")
        release = describe(record)
        print(f"@deploy: {release}")
        if opts.card:
            from tritonflow.plugin.card import fill_card

            fill_card(record, release)

    # -- what the record says about the run ----------------------------------------------------
    def _run_info(self, flow) -> dict[str, Any]:
        from metaflow import current
        from metaflow.metaflow_version import get_version

        script = os.path.abspath(sys.argv[0])
        # NOTE: set by Metaflow at task start; not in its type stubs.
        names = getattr(current, "parameter_names", None) or []
        params = {name: _jsonable(getattr(flow, name, None)) for name in names}
        info: dict[str, Any] = {
            "flow": flow.name,
            "run_id": self.task["run_id"],
            "step": self.task["step"],
            "task_id": self.task["task_id"],
            "task": f"{flow.name}/{self.task['run_id']}/{self.task['step']}/{self.task['task_id']}",
            "attempt": self.task["attempt"],
            "model_artifact": self.options.model,
            "user": current.username,
            "tags": sorted(current.tags),
            "parameters": params,
            "data_files": _data_files(params),
            "script": os.path.basename(script),
            # the bytes that ran, whatever git says (None for a script that is not on disk)
            "script_file": file_identity(script) if os.path.isfile(script) else None,
            "git": run_git_info(script),
            "metaflow_version": get_version(),
            "python_version": platform.python_version(),
            "datastore": self.flow_datastore.TYPE,
            "datastore_root": self.flow_datastore.datastore_root,
        }
        if self.project:
            info["project"] = self.project.to_record()
        code_url = os.environ.get("METAFLOW_CODE_URL")
        if code_url:
            info["code_package"] = {"url": code_url, "sha": os.environ.get("METAFLOW_CODE_SHA")}
        return info

    def _data_artifacts(self, graph) -> list[dict[str, Any]]:
        """The training task's data artifacts, each with the task that produced it (`task`) and
        the task the model was trained with (`seen_in`)."""
        task = self.training_task
        if task is None:
            return []
        flow_name = self.flow_datastore.flow_name
        # NOTE: TaskDataStore._info (type per artifact) is private Metaflow API; no public one says the type
        # without loading the artifact.
        names = sorted(
            n
            for n, info in task._info.items()
            if not n.startswith("_") and any(t in info.get("type", "") for t in _DATA_TYPES)
        )
        shas = dict(zip(names, task.keys_for_artifacts(names), strict=True))
        sizes = dict(task.get_artifact_sizes(names))
        producers = producing_tasks(self.flow_datastore, graph, task, names)
        return [
            {
                "name": name,
                "sha": shas[name],
                "size": sizes.get(name),
                "type": task._info[name].get("type"),
                "task": f"{flow_name}/{producers[name]}",
                "seen_in": f"{flow_name}/{task.pathspec}",
            }
            for name in names
        ]

    def _training_rows(self, data: list[dict[str, Any]]) -> list[DataRows | FrameRows]:
        """The training task's matrices (not the sample or labels) for the reference profile: numeric
        ones as DataRows, DataFrames with string or category columns as FrameRows (an ensemble's),
        loaded one at a time and capped in rows, so memory stays bounded."""
        from tritonflow.plugin.reference import training_artifact

        skip = {self.options.sample, self.options.labels, self.options.model}
        loaded = (
            training_artifact(entry["name"], entry["sha"], self.training_task[entry["name"]])
            for entry in data
            if entry["name"] not in skip and any(t in (entry["type"] or "") for t in _MATRIX_TYPES)
        )
        return [rows for rows in loaded if rows is not None]

    def _metrics(self, flow) -> dict[str, Any]:
        name = self.options.metrics
        if not name:
            return {}
        if hasattr(flow, name):
            value = getattr(flow, name)
        elif self.training_task is not None and name in self.training_task:
            value = self.training_task[name]
        else:
            raise DeployException(f"metrics={name!r}: neither this step nor its input has that artifact")
        if not isinstance(value, dict):
            raise DeployException(
                f"metrics={name!r} must be a dict of metric name -> value, got {type(value)}"
            )
        return {str(k): _jsonable(v) for k, v in value.items()}


def _data_files(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Parameters that name a readable file (e.g. --data), hashed: the data a run read from disk."""
    return [
        {"parameter": name, **file_identity(value)}
        for name, value in sorted(params.items())
        if isinstance(value, str) and value and os.path.isfile(value)
    ]


def _jsonable(value: Any) -> Any:
    """Numbers, strings, bools and None as they are; numpy scalars unwrapped; the rest as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
