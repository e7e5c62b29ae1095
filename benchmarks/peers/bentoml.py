"""BentoML: one `@bentoml.api` endpoint calling predict_proba (apps/bentoml_app.py), JSON in and out.

`bentoml serve` on the service's defaults (one worker process under its supervisor); the rows
arrive as `{"rows": [[...], ...]}` and the probabilities come back as a JSON list of lists.
"""

from __future__ import annotations

from pathlib import Path

from serving_contenders import Contender
from serving_models import BenchModel

from .forms import json_rows

REQUIREMENTS = ("bentoml==1.4.40",)
LABEL = "bentoml (JSON)"


def contender(model: BenchModel, model_pickle: Path, folder: Path, python: Path) -> Contender:
    command = [str(python.parent / "bentoml"), "serve", "bentoml_app:Probabilities"]
    command += ["--working-dir", str(Path(__file__).parent / "apps")]
    command += ["--host", "127.0.0.1", "--port", "{port}"]
    found = Contender(LABEL, "peer", model.name, command, folder / "bentoml.log")
    found.env = {"PEER_MODEL": str(model_pickle), "BENTOML_DO_NOT_TRACK": "true"}
    found.form = json_rows("/predict_proba", lambda rows: {"rows": rows}, lambda answer: answer)
    found.ready_path = "/readyz"
    found.engine = f"{type(model.estimator).__name__}.predict_proba (pickle)"
    return found
