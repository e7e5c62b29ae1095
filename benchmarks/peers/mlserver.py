"""Seldon's MLServer: the same KServe v2 protocol as the node, its own sklearn and XGBoost runtimes.

Found here: MLServer 1.7.1 loads no model under uvloop 0.22+ ("There is no current event loop"),
hence the pin. Neither runtime answers probabilities by default (`predict`): the request asks for
the `predict_proba` output by name, which both runtimes accept. The XGBoost runtime loads the
booster's JSON (model.json), the sklearn runtime the pickle (joblib reads plain pickles).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from serving_contenders import Contender, free_port
from serving_models import BenchModel

from .forms import v2_json

REQUIREMENTS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "mlserver-xgboost==1.7.1", "uvloop<0.22")
LABEL = "mlserver (v2 JSON)"


def contender(model: BenchModel, model_pickle: Path, folder: Path, python: Path) -> Contender:
    root = folder / "mlserver"
    (root / model.name).mkdir(parents=True)
    if type(model.estimator).__module__.startswith("xgboost"):
        runtime, uri = "mlserver_xgboost.XGBoostModel", "model.json"
        model.estimator.save_model(root / model.name / uri)
    else:
        runtime, uri = "mlserver_sklearn.SKLearnModel", "model.joblib"
        shutil.copyfile(model_pickle, root / model.name / uri)
    settings = {"name": model.name, "implementation": runtime, "parameters": {"uri": f"./{uri}"}}
    (root / model.name / "model-settings.json").write_text(json.dumps(settings))
    found = Contender(
        LABEL, "peer", model.name, [str(python.parent / "mlserver"), "start", str(root)], root / "log"
    )
    found.form = v2_json(model.name, output="predict_proba")
    found.ready_path = "/v2/health/ready"
    found.engine = f"{type(model.estimator).__name__}.predict_proba ({runtime.split('.')[0]})"
    # NOTE: the server's own defaults otherwise (one parallel inference worker process)
    server = {
        "host": "127.0.0.1",
        "http_port": found.port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
    }
    (root / "settings.json").write_text(json.dumps(server))
    return found
