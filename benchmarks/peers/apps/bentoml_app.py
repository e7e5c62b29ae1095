"""Run inside the bentoml environment: `bentoml serve bentoml_app:Probabilities`, PEER_MODEL=model.pkl."""

from __future__ import annotations

import os
import pickle

import bentoml
import numpy as np


@bentoml.service
class Probabilities:
    """predict_proba of a pickled classifier, as a BentoML user writes it."""

    def __init__(self) -> None:
        with open(os.environ["PEER_MODEL"], "rb") as file:
            self.model = pickle.load(file)

    @bentoml.api
    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(rows)
