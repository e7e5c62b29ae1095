"""KServe's Python model server: a small `kserve.Model` (kserve_app.py) calling predict_proba.

What a KServe user writes for a custom predictor; served over the v2 protocol on its uvicorn app,
gRPC off (the other contenders serve HTTP only), one worker as its default.
"""

from __future__ import annotations

from pathlib import Path

from serving_contenders import Contender
from serving_models import BenchModel

from .forms import v2_json

REQUIREMENTS = ("kserve==0.21.0",)
LABEL = "kserve (v2 JSON)"
SERVER = Path(__file__).parent / "apps" / "kserve_app.py"


def contender(model: BenchModel, model_pickle: Path, folder: Path, python: Path) -> Contender:
    command = [str(python), str(SERVER), "--model_name", model.name, "--model_path", str(model_pickle)]
    command += ["--http_port", "{port}", "--enable_grpc", "false"]
    found = Contender(LABEL, "peer", model.name, command, folder / "kserve.log")
    found.form = v2_json(model.name)
    found.ready_path = f"/v2/models/{model.name}/ready"
    found.engine = f"{type(model.estimator).__name__}.predict_proba (pickle)"
    return found
