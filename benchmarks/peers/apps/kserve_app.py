"""Run inside the kserve environment: one pickled classifier behind kserve.ModelServer, v2 protocol.

    python kserve_app.py --model_name NAME --model_path model.pkl --http_port 8080

kserve.ModelServer reads its own flags (--http_port, --enable_grpc, ...) from the command line.
"""

from __future__ import annotations

import argparse
import pickle
import uuid
from typing import Any

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse


class Probabilities(kserve.Model):
    """`predict_proba` of the first input tensor, answered as FP32 `output__0` like the node's."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.model: Any = None  # the classifier, once loaded

    def load(self) -> bool:
        with open(self.path, "rb") as file:
            self.model = pickle.load(file)
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        proba = self.model.predict_proba(payload.inputs[0].as_numpy()).astype(np.float32)
        output = InferOutput("output__0", list(proba.shape), "FP32", proba)
        # NOTE: a request without an id must still get one: InferResponse refuses None
        return InferResponse(payload.id or str(uuid.uuid4()), self.name, [output])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    model = Probabilities(args.model_name, args.model_path)
    model.load()
    kserve.ModelServer().start([model])
