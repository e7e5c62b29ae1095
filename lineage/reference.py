"""A version's reference profile (`<model>/<version>/reference.json`): the training data as @deploy saw it.

Written by @deploy (plugin/reference.py), read by the drift check (lineage/drift.py). Per feature:
`edges` (inner bin edges; the bins are (-inf, e0], (e0, e1], ..., (ek, inf)), `shares` (the rows' share
per bin, missing rows excluded), `missing` (NaN share), `min`, `max`, `mean`, and `quantiles` (the values
at the `levels`, shared by every feature), enough for a KS estimate. `prediction` has the same shape,
over the model's score per row (`prediction_score`) on the sample. `source` says what the features
describe: {"kind": "training" (the training task's feature matrices, e.g. X_train) or "sample",
"artifacts": [{"name", "sha" (the record's `data` sha; null for the sample), "rows"}], "rows"}; `rows` is
the rows profiled before the subsample (each artifact capped at a million). Triton and the node ignore
the file; the record lists it with its sha256, so a reader knows it is the profile of that version's data.

Schema v1 (one-tensor models): the features are the columns of the one input tensor, in order, all
numeric. Schema v2 (tabular ensembles) adds `"layout": "columns"`: each feature is the model input of
its name (a DataFrame column the clients send), with a `kind`. A `"numeric"` feature holds the entries
above; a `"categorical"` one (a string or category column) holds `values` (its most frequent values,
at most MAX_CATEGORIES, most frequent first, as the clients send them: str of the value), `shares`
(each one's share of the non-missing rows), `other` (the share of the non-missing rows holding any
other value), `distinct` (how many values the data held) and `missing` (the share of rows missing:
None, NaN or "", which clients send for a missing string). Both schemas read; v1 files are still
written for one-tensor models, so an older tritonflow reads them too.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tritonflow.lineage import layout
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.records import DeploymentRecord, sha256_hex
from tritonflow.lineage.store import Store

SCHEMA = "tritonflow.reference/v1"  # one-tensor models: features are the input's columns
COLUMNS_SCHEMA = "tritonflow.reference/v2"  # ensembles: features are the inputs, by name
FILE = "reference.json"
LAYOUT_COLUMNS = "columns"
NUMERIC, CATEGORICAL = "numeric", "categorical"
MAX_CATEGORIES = 50  # values kept per categorical column; the rest count as "other"


class NoReference(TritonflowError):
    """The version has no usable reference profile (deployed before @deploy wrote one, or altered)."""


def prediction_score(outputs: np.ndarray) -> np.ndarray:
    """One number per row from a model's output rows: the value itself (a regressor, or a class), the
    positive class's probability (two columns), or the predicted class (more). In float32, as the node
    answers: a score rounded differently on the two sides would cross a bin edge it sits on."""
    values = np.asarray(outputs, dtype=np.float32).astype(np.float64)
    values = values.reshape(len(values), -1)
    if values.shape[1] == 1:
        return values[:, 0]
    if values.shape[1] == 2:
        return values[:, 1]
    return np.argmax(values, axis=1).astype(np.float64)


def reference_key(model: str, version: int) -> str:
    return f"{layout.version_key(model, version)}/{FILE}"


def read_reference(store: Store, record: DeploymentRecord) -> dict[str, Any]:
    """The version's profile, checked against the sha256 its record lists."""
    listed = record.reference
    redeploy = (
        "redeploy the model from its flow with @deploy(sample=...) to get one "
        "(a deploy without a sample has no training data to profile)"
    )
    if not listed:
        raise NoReference(
            f"{record.deployment_id} has no reference profile (deployed without one): {redeploy}"
        )
    data = store.read(reference_key(record.model_name, record.version))
    if sha256_hex(data) != listed.get("sha256"):
        raise NoReference(
            f"the {FILE} of {record.deployment_id} does not match the sha256 its record lists: "
            f"the file was changed after the deploy; {redeploy}"
        )
    profile: dict[str, Any] = json.loads(data)
    if profile.get("schema") not in (SCHEMA, COLUMNS_SCHEMA):
        raise NoReference(
            f"the {FILE} of {record.deployment_id} has schema {profile.get('schema')!r}, not {SCHEMA!r} "
            f"or {COLUMNS_SCHEMA!r}: "
            f"{redeploy} with this tritonflow"
        )
    return profile


def by_column(profile: dict[str, Any]) -> bool:
    """Whether the profile's features are model inputs by name (an ensemble's columns), not the
    columns of one input tensor."""
    return profile.get("layout") == LAYOUT_COLUMNS


def kind(feature: dict[str, Any]) -> str:
    """A feature's kind; v1 features, which carry none, are numeric."""
    return str(feature.get("kind", NUMERIC))
