"""The drift check: captured inputs and predictions of a version against its reference profile.

Per feature and for the prediction: PSI over the reference's equal-frequency bins (plus a missing
bucket), and the KS statistic of the captured values against the reference's distribution (scipy's
two-sample statistic against the reference's 101 stored quantiles, so to about 0.01). Over either threshold
is drift. PSI 0.2 is the usual "significant shift" line; KS 0.2 means a fifth of the distribution
moved, well above the ~0.06 that sampling noise gives for 1,000 rows against a 1,000-row reference.

A tabular ensemble's profile (schema v2) is per input by name: numeric columns as above, string and
category columns by PSI alone over the reference's values, "other" (any value past them, unseen ones
included) and missing ("" as clients send it, or null); a KS statistic has no order to run on there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from tritonflow.lineage import capture_layout as cl
from tritonflow.lineage.reference import CATEGORICAL, NUMERIC, by_column, kind, prediction_score

EPSILON = 1e-4  # the share given to an empty bin, so PSI stays finite
SCHEMA = "tritonflow.drift/v1"
OTHER, MISSING = "(other)", "(missing)"  # a categorical column's last two buckets, as documents name them


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2
    ks: float = 0.2


def column_drift(reference: dict[str, Any], values: np.ndarray, thresholds: Thresholds) -> dict[str, Any]:
    """PSI and KS of one column's captured values against its reference profile."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    expected = np.array([*reference["shares"], 0.0]) * (1 - reference["missing"])
    expected[-1] = reference["missing"]
    counts = np.bincount(
        np.searchsorted(reference["edges"], present, side="left"), minlength=len(expected) - 1
    )
    actual = np.append(counts, len(values) - len(present)) / max(len(values), 1)
    psi = _psi(expected, actual)
    quantiles = reference["quantiles"]
    # NOTE: two-sample, the reference's quantiles standing for it (to ~1%): ties, as in a forest's
    # few distinct scores, count as steps; a CDF interpolated between quantiles would smear them
    ks = float(stats.ks_2samp(present, quantiles).statistic) if len(present) and quantiles else None
    return {
        "name": reference["name"],
        "kind": NUMERIC,
        "psi": psi,
        "ks": ks,
        "drift": psi > thresholds.psi or (ks is not None and ks > thresholds.ks),
        "rows": len(values),
        "missing": {"reference": reference["missing"], "current": float(actual[-1])},
        "mean": {"reference": reference["mean"], "current": float(present.mean()) if len(present) else None},
        "bins": {"edges": reference["edges"], "reference": expected.tolist(), "current": actual.tolist()},
    }


def category_drift(reference: dict[str, Any], values: pa.Array, thresholds: Thresholds) -> dict[str, Any]:
    """PSI of one string column's captured values (flat, strings) over the reference's values, other
    and missing; `top` is the value whose share moved most."""
    counted = pc.value_counts(values)
    seen = dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))
    missing = seen.pop("", 0) + seen.pop(None, 0)
    kept = [seen.pop(value, 0) for value in reference["values"]]
    actual = np.array([*kept, sum(seen.values()), missing]) / max(len(values), 1)
    expected = np.array([*reference["shares"], reference["other"], 0.0]) * (1 - reference["missing"])
    expected[-1] = reference["missing"]
    labels = [*reference["values"], OTHER, MISSING]
    top = int(np.argmax(np.abs(actual - expected)))
    psi = _psi(expected, actual)
    return {
        "name": reference["name"],
        "kind": CATEGORICAL,
        "psi": psi,
        "ks": None,
        "drift": psi > thresholds.psi,
        "rows": len(values),
        "missing": {"reference": reference["missing"], "current": float(actual[-1])},
        "top": {"value": labels[top], "reference": float(expected[top]), "current": float(actual[top])},
        "bins": {"labels": labels, "reference": expected.tolist(), "current": actual.tolist()},
    }


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e, a = np.maximum(expected, EPSILON), np.maximum(actual, EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_document(
    deployment_id: str,
    profile: dict[str, Any],
    signature: dict[str, Any],
    table: pa.Table,
    thresholds: Thresholds,
) -> dict[str, Any]:
    """The whole check as one JSON-ready document: features sorted by drift (PSI), then the prediction."""
    notes: list[str] = []
    output_name = signature["outputs"][0]["name"]
    if by_column(profile):
        features = _by_column(profile, table, thresholds, notes)
    else:
        features = _by_matrix(profile, signature["inputs"][0]["name"], table, thresholds, notes)
    features.sort(key=lambda f: -f["psi"])
    outputs = _matrix(table, cl.OUTPUT + output_name)
    prediction = None
    if profile.get("prediction") and outputs is not None:
        prediction = column_drift(profile["prediction"], prediction_score(outputs), thresholds)
    elif outputs is None:
        notes.append(f"no {cl.OUTPUT}{output_name} column: predictions not compared")
    drifting = [f["name"] for f in features if f["drift"]] + (
        ["prediction"] if prediction and prediction["drift"] else []
    )
    return {
        "schema": SCHEMA,
        "deployment_id": deployment_id,
        "rows": table.num_rows,
        "reference_rows": profile["rows"],
        "thresholds": {"psi": thresholds.psi, "ks": thresholds.ks},
        "drift": bool(drifting),
        "drifting": drifting,
        "features": features,
        "prediction": prediction,
        "notes": notes,
    }


def _by_matrix(
    profile: dict[str, Any], input_name: str, table: pa.Table, thresholds: Thresholds, notes: list[str]
) -> list[dict[str, Any]]:
    """The features of a one-tensor model: the columns of its one input."""
    rows = _matrix(table, cl.INPUT + input_name)
    if rows is None:
        notes.append(
            f"no {cl.INPUT}{input_name} column (captured with --capture-inputs none): inputs not compared"
        )
        return []
    if rows.shape[1] != len(profile["features"]):
        notes.append(
            f"captured rows have {rows.shape[1]} values, the reference {len(profile['features'])} features: "
            "inputs not compared"
        )
        return []
    return [column_drift(ref, rows[:, j], thresholds) for j, ref in enumerate(profile["features"])]


def _by_column(
    profile: dict[str, Any], table: pa.Table, thresholds: Thresholds, notes: list[str]
) -> list[dict[str, Any]]:
    """The features of an ensemble: each the input of its name, one value per row."""
    features, absent, wide = [], [], []
    for ref in profile["features"]:
        column = cl.INPUT + ref["name"]
        if column not in table.column_names:
            absent.append(ref["name"])
        elif kind(ref) == CATEGORICAL:
            features.append(category_drift(ref, _strings(table, column), thresholds))
        elif (values := _matrix(table, column)) is not None and values.shape[1:] == (1,):
            features.append(column_drift(ref, values[:, 0], thresholds))
        else:
            wide.append(ref["name"])
    if absent and len(absent) == len(profile["features"]):
        notes.append(f"no {cl.INPUT}* columns (captured with --capture-inputs none): inputs not compared")
    elif absent:
        notes.append(f"no captured column for {', '.join(absent)}: not compared")
    if wide:
        notes.append(f"{', '.join(wide)} captured with more than one value a row: not compared")
    return features


def _strings(table: pa.Table, column: str) -> pa.Array:
    """A list column's values, flat, as strings (captures written before BYTES were strings hold binary)."""
    flat = table.column(column).combine_chunks().flatten()
    return flat.cast(pa.string()) if pa.types.is_binary(flat.type) else flat


def _matrix(table: pa.Table, column: str) -> np.ndarray | None:
    """A list column as a (rows, values) float array, or None when absent."""
    if column not in table.column_names:
        return None
    lists = table.column(column).combine_chunks()
    flat = np.asarray(lists.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    return flat.reshape(len(lists), -1) if len(lists) else flat.reshape(0, 0)


def render_text(doc: dict[str, Any]) -> str:
    """The terminal table: one line per feature, most drifted first, then the prediction."""
    header = ("FEATURE", "PSI", "KS", "MISSING", "MEAN | MOST MOVED VALUE (REF -> NOW)", "DRIFT")
    lines = []
    for item in [*doc["features"], *([doc["prediction"]] if doc["prediction"] else [])]:
        lines.append(
            (
                item["name"],
                f"{item['psi']:.3f}",
                "-" if item["ks"] is None else f"{item['ks']:.3f}",
                f"{item['missing']['current']:.1%}",
                _moved(item),
                "DRIFT" if item["drift"] else "ok",
            )
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    table = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *lines]
    ]
    t = doc["thresholds"]
    verdict = (
        f"drift in {', '.join(doc['drifting'])}" if doc["drift"] else "no drift"
    ) + f" (PSI > {t['psi']:g} or KS > {t['ks']:g})"
    summary = (
        f"{doc['deployment_id']}: {doc['rows']} captured rows against {doc['reference_rows']} reference rows"
    )
    return "\n".join([summary, *table, *[f"note: {n}" for n in doc["notes"]], verdict])


def _moved(item: dict[str, Any]) -> str:
    """The mean of a numeric column; a categorical one's value whose share moved most, and its shares."""
    if item.get("kind") == CATEGORICAL:
        top = item["top"]
        return f"{top['value']}: {top['reference']:.1%} -> {top['current']:.1%}"
    return f"{_num(item['mean']['reference'])} -> {_num(item['mean']['current'])}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
