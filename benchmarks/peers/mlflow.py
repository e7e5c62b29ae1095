"""MLflow's `mlflow models serve`: the model saved with the sklearn flavor, served at /invocations.

Found here: MLflow 3's default sklearn format (skops) refuses a forest unless sklearn.tree._tree.Tree
is trusted, so the model is saved as cloudpickle; and a pyfunc answers `predict` (labels) unless
`pyfunc_predict_fn="predict_proba"`, which the sklearn flavor takes for XGBClassifier too.
Pinned to 3.17.2: mlflow 3.18.0 needs an mlflow-tracing 3.18.0 that the index did not have yet.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from serving_contenders import Contender
from serving_models import BenchModel

from .environment import PeerUnavailable
from .forms import json_rows

REQUIREMENTS = ("mlflow==3.17.2",)
LABEL = "mlflow models serve"
SAVE = """\
import pickle, sys
import mlflow.sklearn
with open(sys.argv[1], "rb") as file:
    model = pickle.load(file)
mlflow.sklearn.save_model(
    model, sys.argv[2], serialization_format="cloudpickle", pyfunc_predict_fn="predict_proba"
)
"""


def contender(model: BenchModel, model_pickle: Path, folder: Path, python: Path) -> Contender:
    saved = folder / "mlflow-model"
    done = subprocess.run(
        [str(python), "-c", SAVE, str(model_pickle), str(saved)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise PeerUnavailable(f"mlflow: saving the model failed: {done.stderr[-1500:]}")
    command = [str(python.parent / "mlflow"), "models", "serve", "-m", str(saved), "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", "{port}"]
    found = Contender(LABEL, "peer", model.name, command, folder / "mlflow.log")
    # NOTE: it starts its scoring server with the `python` on PATH: the environment's must come first
    path = os.pathsep.join([str(python.parent), os.environ.get("PATH", "")])
    found.env = {"PATH": path, "MLFLOW_TRACKING_URI": f"file://{folder / 'mlruns'}"}
    found.form = json_rows(
        "/invocations", lambda rows: {"inputs": rows}, lambda answer: answer["predictions"]
    )
    found.ready_path = "/health"
    found.engine = f"{type(model.estimator).__name__}.predict_proba (mlflow.sklearn, cloudpickle)"
    return found
