"""Triton's `fil` backend on tritonflow's forest engine: `<backends>/fil/model.py`.

Triton runs this file, through its python backend, for every model whose config says
`backend: "fil"` when the backend directory has no native `libtriton_fil.so` (the server in the
nvidia-pytriton wheel, say). The config is served unchanged: ForestBackend already reads the
FIL parameters in both dialects (`is_classifier` from 25.09, `output_class` before), so answers
match the native FIL backend's and tritonflow's own serving node. Engine: nvForest when the
stub's Python can import it, Treelite's GTIL otherwise (always with Triton 24.10, whose python
backend needs numpy<2 and so cannot share an environment with nvForest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend stub
from google.protobuf import json_format

from tritonflow.serving.backends.forest import ForestBackend
from tritonflow.serving.model_config import ModelConfig


class TritonPythonModel:
    """One instance of one model version; Triton hands `execute` every request of a batch."""

    def initialize(self, args: dict[str, str]) -> None:
        config = ModelConfig()
        # NOTE: a config from a newer Triton may carry fields this protobuf schema lacks.
        json_format.ParseDict(json.loads(args["model_config"]), config, ignore_unknown_fields=True)
        # model_repository is the model's own folder (<repo>/<model>), not the repository root.
        version_dir = Path(args["model_repository"]) / args["model_version"]
        try:
            self.forest = ForestBackend(version_dir, config)
        except Exception as exc:  # BackendError says which file and why; Triton shows it as the load error
            raise pb_utils.TritonModelException(str(exc)) from None
        self.input_name, self.output_name = self.forest.input_name, self.forest.output_name
        pb_utils.Logger.log_info(
            f"tritonflow fil: {args['model_name']} version {args['model_version']} "
            f"runs on {self.forest.engine} ({self.forest.path})"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """One predict call for the whole batch, split back by rows.

        Triton has already checked every request against the config (input present, FP32,
        [rows, n_features]), so the batch concatenates; an engine error fails the batch.
        """
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        x = batches[0] if len(batches) == 1 else np.concatenate(batches)  # one request: no copy
        try:
            out = self.forest.predict({self.input_name: x})[self.output_name]
        except Exception as exc:  # every request of the batch gets the reason (BackendError names it)
            error = pb_utils.TritonError(str(exc))
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for x in batches:
            tensor = pb_utils.Tensor(self.output_name, out[start : start + len(x)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += len(x)
        return responses

    def finalize(self) -> None:
        self.forest.unload()
