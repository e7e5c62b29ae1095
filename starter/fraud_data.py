"""Synthetic card transactions shaped like the public credit-card fraud data (Time, V1..V28, Amount)."""

FEATURES = ["Time", *(f"V{i}" for i in range(1, 29)), "Amount"]


def synthetic_transactions(rows: int, seed: int):
    """A seeded, imbalanced (about 2% fraud) table with a `Class` label column."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=rows,
        n_features=30,
        n_informative=12,
        n_redundant=6,
        weights=[0.98],
        class_sep=1.2,
        flip_y=0.005,
        random_state=seed,
    )
    frame = pd.DataFrame(X.astype("float32"), columns=FEATURES)
    rng = np.random.default_rng(seed)
    frame["Time"] = np.sort(rng.uniform(0, 172_800, rows)).astype("float32")
    frame["Amount"] = np.round(np.exp(rng.normal(3.5, 1.2, rows)) * (1 + y), 2).astype("float32")
    frame["Class"] = y
    return frame
