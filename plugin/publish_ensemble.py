"""A tabular pipeline published as a Triton ensemble: `<name>.preprocess`, `<name>.forest`, and
`<name>` pinning the step versions it was exported with.

Every check (the three configs, the parity gate through the ensemble's steps, the signatures, the
promote decision) runs before the repository is touched; a retried task that published it all
already gets that version back before anything is decided again. The steps are published first, as
models of their own with their own records (their configs keep serving what they served: a new step
version serves only once an ensemble version that pins it does); the ensemble's version last, its
record listing the steps and its reference profile (per column: plugin/reference.ensemble_profile).
The release state is the ensemble's: promoting, rolling back or setting a canary moves its steps
with it (lineage/releases.apply_state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonflow.lineage import layout, releases
from tritonflow.lineage.errors import NotFound
from tritonflow.lineage.records import DeploymentRecord, sha256_hex
from tritonflow.lineage.reference import FILE as REFERENCE_FILE
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin import promotion
from tritonflow.plugin.batch_engine import with_batch_engine
from tritonflow.plugin.exporters import config_spec
from tritonflow.plugin.exporters.base import Export
from tritonflow.plugin.exporters.tabular import FOREST, PREPROCESS, EnsembleExport
from tritonflow.plugin.options import DeployOptions
from tritonflow.plugin.parity import check_ensemble_parity, ensemble_predictor, published_predictor
from tritonflow.plugin.publish import (
    Provenance,
    check_signature,
    config_summary,
    export_fields,
    file_entry,
    new_record,
)
from tritonflow.plugin.reference import DataRows, FrameRows, ensemble_profile, profile_bytes
from tritonflow.plugin.signature import SAMPLE_ROWS
from tritonflow.serving import labels, model_config
from tritonflow.serving.release_policy import champion_config

if TYPE_CHECKING:
    import pandas as pd

UNSEEN = "__tritonflow_unseen__"  # a category no training set holds: the parity gate sends it too


@dataclass(frozen=True)
class _Config:
    """One generated config.pbtxt, checked, with the labels file beside it."""

    spec: model_config.ConfigSpec
    config: model_config.ModelConfig
    text: str
    beside: dict[str, bytes]


def deploy_ensemble(
    export: EnsembleExport,
    options: DeployOptions,
    sample: pd.DataFrame,
    provenance: Provenance,
    sample_name: str | None = None,
    sample_labels: Any = None,
    training_data: Sequence[DataRows | FrameRows] = (),
) -> DeploymentRecord:
    """Publish the pipeline as the next version of the ensemble `options.name`; its record. Its
    reference profile describes the `training_data` frames with the sample's columns (else the sample)."""
    name, models = options.name, export.step_models(options.name)
    steps = {
        step: _checked(
            config_spec(
                step_export,
                models[step],
                max_batch_size=options.max_batch_size,
                instance_kind=options.instance_kind,
                max_queue_delay_us=options.max_queue_delay_us,
            )
        )
        for step, step_export in export.steps
    }
    ensemble = _checked(_ensemble_spec(export, options, {}))
    frame = sample.head(SAMPLE_ROWS)
    checked = with_unseen(frame, export)
    parity = check_ensemble_parity(export, checked)
    export, batch_engine = _with_batch_engine(export, checked)

    repository = ModelRepository(options.repository)
    task = provenance.metaflow.get("task", "")
    exports = dict(export.steps)
    previous = _published_by(repository, name, models, exports, task)
    if previous is not None:  # NOTE: a retried task that had published it all: settle, never re-decide
        promotion.settle(repository, previous)
        return previous
    reference = profile_bytes(
        ensemble_profile(sample, sample_name, training_data, export.columns, export.native_predict)
    )
    classes = ensemble.spec.labels
    decision = promotion.decide(
        options.promote,
        repository,
        name,
        lambda: ensemble_predictor(export)(frame),
        (sample, frame),
        sample_labels,
        classes,
        published=lambda version: published_predictor(repository, name, version)(frame),
    )
    published = {
        step: _publish_step(
            repository,
            models[step],
            exports[step],
            steps[step],
            provenance,
            options,
            task,
            {"batch_engine": batch_engine} if step == FOREST and batch_engine else None,
        )
        for step in models
    }
    final = _checked(_ensemble_spec(export, options, {step: r.version for step, r in published.items()}))
    if decision.champion is None:
        written = final.text
    else:
        kept = releases.step_pins(repository, name, decision.champion)
        written = champion_config(final.text, decision.champion, pins=kept)

    def make_record(version: int) -> DeploymentRecord:
        return new_record(
            name,
            version,
            repository,
            provenance,
            {},
            config=config_summary(written, final.beside),
            signature={
                "columns": [c for c, _ in export.columns],
                "sample": sample_name,
                **model_config.signature(final.config),
            },
            **export_fields(export, options, parity, decision),
            steps=[
                {
                    "step": step,
                    "model": record.model_name,
                    "version": record.version,
                    "deployment_id": record.deployment_id,
                    "format": record.format,
                    "backend": record.backend,
                    "files": record.files,
                }
                for step, record in published.items()
            ],
            reference=file_entry(version, REFERENCE_FILE, reference),
        )

    record = repository.publish(
        name,
        written,
        {REFERENCE_FILE: reference},
        make_record,
        owner={"task": task or "(no task)", "model": name},
        check_current=lambda text: check_signature(text, final.config, classes, name, repository),
        model_files=final.beside,
    )
    promotion.settle(repository, record)
    return record


def _published_by(
    repository: ModelRepository, name: str, models: dict[str, str], exports: dict[str, Export], task: str
) -> DeploymentRecord | None:
    """The ensemble version this task published already (a retry), pinning the step versions it
    published of these very files; None when it published none (read only: nothing is written)."""
    previous = repository.find_task_deployment(name, task, set()) if task else None
    if previous is None:
        return None
    steps = {models[step]: _digests(step_export) for step, step_export in exports.items()}
    found = {model: repository.find_task_deployment(model, task, digests) for model, digests in steps.items()}
    pins = {model: record.version for model, record in found.items() if record is not None}
    return previous if previous.pins == pins else None


def _digests(export: Export) -> set[str]:
    return {sha256_hex(data) for data in export.files.values()}


def _with_batch_engine(
    export: EnsembleExport, frame: pd.DataFrame
) -> tuple[EnsembleExport, dict[str, Any] | None]:
    """The ensemble with its forest step's batch engine file (plugin/batch_engine.py), gated on the
    features the preprocessing step makes of the sample: the node times it against FIL's engine for
    the step as for any forest."""
    steps = dict(export.steps)
    features = steps[PREPROCESS].native_predict(frame)
    forest, note = with_batch_engine(steps[FOREST], np.asarray(features, dtype=np.float32))
    return replace(export, steps=((PREPROCESS, steps[PREPROCESS]), (FOREST, forest))), note


def with_unseen(frame: pd.DataFrame, export: EnsembleExport) -> pd.DataFrame:
    """The frame, and for each string column a copy of its first rows holding a category never
    trained on, when the native pipeline takes one (an encoder that refuses unknowns does not)."""
    import pandas as pd

    strings = [name for name, datatype in export.columns if datatype == "BYTES"]
    if not strings:
        return frame
    together, unseen = frame.copy(), frame.head(min(len(frame), 8)).copy()
    for column in strings:
        dtype = together[column].dtype
        if isinstance(dtype, pd.CategoricalDtype):  # NOTE: a category column stays one, one category more
            dtype = pd.CategoricalDtype([*dtype.categories, UNSEEN], ordered=dtype.ordered)
            together[column] = together[column].astype(dtype)
        unseen[column] = pd.Series(UNSEEN, index=unseen.index, dtype=dtype)
    together = pd.concat([together, unseen], ignore_index=True)
    try:
        export.native_predict(together)
    except Exception:  # NOTE: a pipeline that refuses unknown categories refuses a client's too
        return frame
    return together


def _ensemble_spec(
    export: EnsembleExport, options: DeployOptions, versions: dict[str, int]
) -> model_config.ConfigSpec:
    return config_spec(
        export,
        options.name,
        max_batch_size=options.max_batch_size,
        steps=export.schedule(options.name, versions),
    )


def _checked(spec: model_config.ConfigSpec) -> _Config:
    config = model_config.build_config(spec)
    text = model_config.render(config)
    # NOTE: the labels file is per model, beside config.pbtxt, like the config itself
    beside = {layout.LABEL_FILE: labels.labels_text(spec.labels)} if spec.labels else {}
    model_config.check_config(text, where=f"the generated config of {spec.name!r}", read_file=beside.get)
    return _Config(spec, config, text, beside)


def _publish_step(
    repository: ModelRepository,
    model: str,
    export: Export,
    checked: _Config,
    provenance: Provenance,
    options: DeployOptions,
    task: str,
    parity: dict[str, Any] | None,
) -> DeploymentRecord:
    """One step's version (the one this task published already, on a retry), its config serving
    what it served: the ensemble's release decides when this version serves. `parity`: the step's
    own gate (the forest's batch engine file), beside the ensemble's."""
    previous = repository.find_task_deployment(model, task, _digests(export)) if task else None
    if previous is not None:
        return previous
    written = _keep_serving(repository, model, checked.text)

    def make_record(version: int) -> DeploymentRecord:
        return new_record(
            model,
            version,
            repository,
            provenance,
            export.files,
            config=config_summary(written, checked.beside),
            signature=model_config.signature(checked.config),
            **export_fields(export, options, parity, None),
        )

    return repository.publish(
        model,
        written,
        export.files,
        make_record,
        owner={"task": task or "(no task)", "model": model},
        check_current=lambda text: check_signature(
            text, checked.config, checked.spec.labels, model, repository
        ),
        model_files=checked.beside,
    )


def _keep_serving(repository: ModelRepository, model: str, text: str) -> str:
    """`text` serving the versions the model's current config serves (as generated: the first)."""
    try:
        current = model_config.parse_config(repository.read_config(model))
    except NotFound:
        return text
    served = list(current.version_policy.specific.versions)
    return champion_config(text, max(served), also=served) if served else text
