"""The per-column reference profile of a tabular ensemble (plugin/reference.ensemble_profile): which
training frames it describes, and what a string or category column's entry holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tritonflow.lineage.reference import COLUMNS_SCHEMA, MAX_CATEGORIES
from tritonflow.plugin.reference import (
    DataRows,
    FrameRows,
    category_profile,
    ensemble_profile,
    training_artifact,
)

COLUMNS = [("city", "BYTES"), ("amount", "FP64")]


def _frame(rows: int, seed: int, cities: list[str], shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"city": rng.choice(cities, rows), "amount": rng.normal(shift, 1, rows)})


def _predict(frame: pd.DataFrame) -> np.ndarray:
    return np.stack([1 - frame["amount"].to_numpy(), frame["amount"].to_numpy()], axis=1)


def test_a_category_column_keeps_its_most_frequent_values_and_counts_the_rest_as_other() -> None:
    values = [f"v{i:02d}" for i in range(MAX_CATEGORIES + 10)]
    # v00 twice as frequent as every other value, then a NaN, a None and an empty string (missing)
    column = pd.Series(pd.Categorical([values[0], *values, None, np.nan, ""]))
    entry = category_profile("code", column)
    present = len(values) + 1
    assert (entry["kind"], entry["distinct"], len(entry["values"])) == ("categorical", 60, MAX_CATEGORIES)
    assert entry["values"][:3] == ["v00", "v01", "v02"] and entry["shares"][0] == pytest.approx(2 / present)
    assert entry["other"] == pytest.approx(10 / present)  # v50..v59
    assert sum(entry["shares"]) + entry["other"] == pytest.approx(1.0)
    assert entry["missing"] == pytest.approx(3 / (present + 3))


def test_the_training_frames_with_the_sample_columns_are_profiled_train_first() -> None:
    train = training_artifact("X_train", "a", _frame(400, 0, ["Paris", "Rome"]))
    test = training_artifact("X_test", "b", _frame(100, 1, ["Oslo"], shift=5))
    numeric = training_artifact("numbers", "c", pd.DataFrame({"amount": [1.0, 2.0]}))
    assert isinstance(train, FrameRows) and isinstance(numeric, DataRows)
    assert training_artifact("y", "d", np.arange(3)) is None
    sample = _frame(50, 2, ["Rome"], shift=-3)
    doc = ensemble_profile(sample, "X_val", [test, numeric, train], COLUMNS, _predict)
    assert doc["schema"] == COLUMNS_SCHEMA and doc["layout"] == "columns"
    assert [a["name"] for a in doc["source"]["artifacts"]] == ["X_train"] and doc["rows"] == 400
    city, amount = doc["features"]
    assert sorted(city["values"]) == ["Paris", "Rome"] and abs(amount["mean"]) < 0.2
    assert doc["prediction"]["rows"] == 50 and doc["prediction"]["mean"] == pytest.approx(-3, abs=0.5)

    # none named for training: every frame with the columns; none with them: the sample
    doc = ensemble_profile(sample, "X_val", [test, numeric], COLUMNS, _predict)
    assert [a["name"] for a in doc["source"]["artifacts"]] == ["X_test"]
    doc = ensemble_profile(sample, "X_val", [numeric], COLUMNS, _predict)
    assert doc["source"]["kind"] == "sample" and doc["features"][0]["values"] == ["Rome"]
