"""Rows with a missing value, for the checks that compare two engines on a model (the parity gate at
deploy, the batch engine's check at load): a request may carry NaN, and each converter routes it its
own way (Treelite's importer and skl2onnx each sent scikit-learn's everywhere the same side)."""

from __future__ import annotations

import numpy as np

MISSING_VALUE_ROWS = 256  # at most, unless there are more features: each goes missing once


def missing_value_rows(rows: np.ndarray) -> np.ndarray:
    """The first rows once more (repeated when fewer than the features), row i with feature
    i % n_features missing (NaN), so each feature goes missing once at least; and a row of NaN only."""
    n_features = rows.shape[1]
    count = max(n_features, min(len(rows), MISSING_VALUE_ROWS))
    missing = np.resize(rows, (count, n_features)).copy()
    missing[np.arange(count), np.arange(count) % n_features] = np.nan
    return np.concatenate([missing, np.full((1, n_features), np.nan, dtype=rows.dtype)])
