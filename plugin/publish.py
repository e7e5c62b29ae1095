"""Export -> config -> checks -> repository, in the order that makes a failed deploy publish nothing.

Metaflow-free: the decorator gathers the run's facts into a `Provenance`; everything here works
on plain data, so the same path can deploy from a notebook or a test.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tritonflow.lineage import layout
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.ids import DeploymentId
from tritonflow.lineage.records import DeploymentRecord, sha256_hex, utc_now
from tritonflow.lineage.reference import FILE as REFERENCE_FILE
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin import promotion
from tritonflow.plugin.batch_engine import with_batch_engine
from tritonflow.plugin.exporters import config_spec, export_model
from tritonflow.plugin.exporters.tabular import ANY_WIDTH, VARIABLE_WIDTH, export_ensemble
from tritonflow.plugin.model_checks import check_trained
from tritonflow.plugin.options import DeployOptions
from tritonflow.plugin.parity import check_parity
from tritonflow.plugin.reference import (
    DataRows,
    FrameRows,
    profile_bytes,
    reference_profile,
    sample_matrix,
)
from tritonflow.plugin.signature import describe
from tritonflow.serving import labels, model_config
from tritonflow.serving.release_policy import champion_config


class SignatureChanged(TritonflowError):
    """A model name keeps one input/output signature, and its classes, across versions."""


@dataclass(frozen=True)
class Provenance:
    """The Metaflow side of the record: the run, its data, metrics and the selection."""

    metaflow: dict[str, Any]
    data: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None


def deploy(
    model: Any,
    options: DeployOptions,
    sample: Any,
    provenance: Provenance,
    sample_name: str | None = None,
    sample_labels: Any = None,
    training_data: Sequence[DataRows | FrameRows] = (),
) -> DeploymentRecord:
    """Publish `model` as the next version of `options.name`; return its deployment record. A
    Pipeline of preprocessing and trees with a DataFrame sample is published as a Triton ensemble
    (plugin/publish_ensemble.py).

    Every check (export, config schema and FIL rules, parity, signature, the promote decision) runs
    before the repository is touched; a retried task that already published the same files gets its
    earlier deployment back (settled, if a crash stopped it before) instead of a second version. The
    config is written serving the current champion; the new version takes over only once its promote
    event is written (promotion.settle). The reference profile describes the `training_data` matrices
    that fit the signature (the sample when none does).
    """
    check_trained(model)
    ensemble = export_ensemble(model, sample, options.triton_version) if options.format != "onnx" else None
    if ensemble is not None:
        from tritonflow.plugin.publish_ensemble import deploy_ensemble  # NOTE: it builds on this module

        return deploy_ensemble(
            ensemble, options, sample, provenance, sample_name, sample_labels, training_data
        )
    signature = describe(model, sample)
    export = export_model(model, options.format, signature.n_features, options.triton_version)
    spec = config_spec(
        export,
        name=options.name,
        max_batch_size=options.max_batch_size,
        instance_kind=options.instance_kind,
        max_queue_delay_us=options.max_queue_delay_us,
    )
    config = model_config.build_config(spec)
    config_text = model_config.render(config)
    # NOTE: the labels file is per model, beside config.pbtxt, like the config itself
    beside = {layout.LABEL_FILE: labels.labels_text(spec.labels)} if spec.labels else {}
    model_config.check_config(
        config_text, where=f"the generated config of {options.name!r}", read_file=beside.get
    )
    parity = check_parity(export, signature.rows)
    export, batch_engine = with_batch_engine(export, signature.rows)
    if batch_engine is not None:
        parity["batch_engine"] = batch_engine
    # NOTE: only a given sample is training data; the rows generated without one profile nothing
    reference = (
        profile_bytes(
            reference_profile(
                sample_matrix(sample),
                sample_name,
                training_data,
                (signature.n_features, signature.feature_names),
                export.native_predict,
            )
        )
        if sample is not None
        else None
    )

    repository = ModelRepository(options.repository)
    task = provenance.metaflow.get("task", "")
    digests = {sha256_hex(data) for data in export.files.values()}
    previous = repository.find_task_deployment(options.name, task, digests) if task else None
    if previous is not None:  # NOTE: its settle may not have run (a crash between): settle is idempotent
        promotion.settle(repository, previous)
        return previous
    decision = promotion.decide(
        options.promote,
        repository,
        options.name,
        (export.files, config),
        (sample, signature.rows),
        sample_labels,
        spec.labels,
    )
    written = config_text if decision.champion is None else champion_config(config_text, decision.champion)

    def make_record(version: int) -> DeploymentRecord:
        return new_record(
            options.name,
            version,
            repository,
            provenance,
            export.files,
            config=config_summary(written, beside),
            signature={
                "n_features": signature.n_features,
                "feature_names": signature.feature_names,
                "sample": sample_name,
                **model_config.signature(config),
            },
            **export_fields(export, options, parity, decision),
            reference=file_entry(version, REFERENCE_FILE, reference) if reference is not None else None,
        )

    record = repository.publish(
        options.name,
        written,
        {**export.files, **({REFERENCE_FILE: reference} if reference is not None else {})},
        make_record,
        owner={"task": task or "(no task)", "model": options.name},
        check_current=lambda text: check_signature(text, config, spec.labels, options.name, repository),
        model_files=beside,
    )
    promotion.settle(repository, record)
    return record


def new_record(
    name: str,
    version: int,
    repository: ModelRepository,
    provenance: Provenance,
    files: dict[str, bytes],
    **parts: Any,
) -> DeploymentRecord:
    """The record of `name`:`version`, its files listed with their hashes; `parts`: the record's
    fields that say what the version is (config, signature, format, model, release, ...)."""
    flow, run_id = provenance.metaflow.get("flow"), provenance.metaflow.get("run_id")
    did = DeploymentId(name, version, flow, run_id) if flow else DeploymentId(name, version)
    return DeploymentRecord(
        deployment_id=str(did),
        model_name=name,
        version=version,
        created_at=utc_now(),
        repository=repository.uri,
        files=[file_entry(version, file, data) for file, data in sorted(files.items())],
        exporter={**parts.pop("exporter"), "python": platform.python_version()},
        metaflow=provenance.metaflow,
        data=provenance.data,
        metrics=provenance.metrics,
        selection=provenance.selection,
        **parts,
    )


def export_fields(
    export: Any, options: DeployOptions, parity: dict[str, Any] | None, decision: promotion.Decision | None
) -> dict[str, Any]:
    """The record's fields that say what an export is (a model's, an ensemble's or a step's)."""
    model = {**export.model_info, "n_classes": export.n_classes, **({"parity": parity} if parity else {})}
    return {
        "format": export.format,
        "backend": export.backend,
        "triton_version": options.triton_version,
        "exporter": export.versions,
        "model": model,
        "release": decision.to_record() if decision else None,
    }


def file_entry(version: int, name: str, data: bytes) -> dict[str, Any]:
    return {"path": f"{version}/{name}", "sha256": sha256_hex(data), "size": len(data)}


def check_signature(
    current: str,
    config: model_config.ModelConfig,
    classes: tuple[str, ...],
    name: str,
    repository: ModelRepository,
) -> None:
    """The deploy keeps the model's signature and, once the model has a labels file, its classes.
    An ensemble step's `features` tensor may change width (VARIABLE_WIDTH): this deploy's config
    leaves it variable, so it serves the earlier versions (of any width) too."""
    existing = model_config.parse_config(current, where=f"{name}/config.pbtxt")
    after = model_config.signature(config)
    before = _any_width(model_config.signature(existing), after)
    new_name = "deploy under a new name (@deploy(name=...)) or use another repository"
    if before != after:
        raise SignatureChanged(
            f"model {name!r} in {repository.uri} has the signature {before}, but this deploy has "
            f"{after}: a model name keeps one signature, so {new_name}"
        )
    output = config.output[0].name
    kept = labels.read_labels(existing, output, labels.folder_reader(repository.store, name))
    # NOTE: a model without a labels file yet (published before labels were written) takes this deploy's
    if kept is not None and kept != list(classes):
        raise SignatureChanged(
            f"model {name!r} in {repository.uri} answers the classes {kept} in the columns of {output!r}, "
            f"but this deploy's are {list(classes) or 'none'}: a model name keeps its classes in their "
            f"order, so {new_name}"
        )


def _any_width(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`before` with the width of a VARIABLE_WIDTH tensor as [ANY_WIDTH] where `after` has it so
    (a step config written with a fixed width, before widths could vary); every other dim kept."""

    def tensors(kind: str) -> list[dict[str, Any]]:
        variable = {t["name"] for t in after[f"{kind}s"] if t["dims"] == [ANY_WIDTH]}
        return [
            {**t, "dims": [ANY_WIDTH]}
            if (kind, t["name"]) in VARIABLE_WIDTH and t["name"] in variable and len(t["dims"]) == 1
            else t
            for t in before[f"{kind}s"]
        ]

    return {**before, "inputs": tensors("input"), "outputs": tensors("output")}


def config_summary(text: str, beside: dict[str, bytes]) -> dict[str, Any]:
    """config.pbtxt as this deploy wrote it (serving the champion of the time; the version's promote
    event then rewrites its version_policy, as every release command does) in brief, with its sha256,
    and the files beside it (the labels file) with theirs."""
    config = model_config.parse_config(text)
    policy = config.version_policy
    return {
        "sha256": sha256_hex(text.encode()),
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "instance_kind": model_config.instance_kind(config),
        "max_queue_delay_us": config.dynamic_batching.max_queue_delay_microseconds,
        "version_policy": (
            {"specific": list(policy.specific.versions)}
            if policy.WhichOneof("policy_choice") == "specific"
            else {"latest": policy.latest.num_versions}
        ),
        "parameters": {k: v.string_value for k, v in sorted(config.parameters.items())},
        "model_files": [
            {"path": name, "sha256": sha256_hex(data), "size": len(data)}
            for name, data in sorted(beside.items())
        ],
    }
