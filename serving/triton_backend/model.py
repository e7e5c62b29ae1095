"""Triton's `fil` and `onnxruntime` backends on tritonflow's runtimes: `<backends>/<name>/model.py`.

Triton runs this file, through its python backend, for every model whose config names a backend
(`backend: "fil"`, or `platform: "onnxruntime_onnx"`) that the backend directory has no native
library for (the server in the nvidia-pytriton wheel has neither). The config is served unchanged:
the runtime is the one tritonflow's node loads for it (serving/backends), so answers match the
native backends' and tritonflow's own serving node. FIL engine: nvForest when the stub's Python can
import it, Treelite's GTIL otherwise (always with Triton 24.10, whose python backend needs numpy<2
and so cannot share an environment with nvForest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend stub
from google.protobuf import json_format

from tritonflow.serving.backends import backend_name, load_backend
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
            # NOTE: "fil": what Triton's own FIL backend runs, never the version's batch engine file
            engine = "fil" if backend_name(config) == "fil" else "auto"
            self.backend = load_backend(version_dir, config, engine)
        except Exception as exc:  # BackendError says which file and why; Triton shows it as the load error
            raise pb_utils.TritonModelException(str(exc)) from None
        self.inputs = [t.name for t in config.input]
        self.outputs = [t.name for t in config.output]
        self.batched = config.max_batch_size > 0
        pb_utils.Logger.log_info(
            f"tritonflow {backend_name(config)}: {args['model_name']} version {args['model_version']} "
            f"runs on {self.backend.engine}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """One predict call for the whole batch, split back by rows (one per request unbatched).

        Triton has already checked every request against the config (inputs present, types and
        shapes), so a batch concatenates input by input; an engine error fails the batch.
        """
        feeds = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
            for r in requests
        ]
        if not self.batched:  # NOTE: no batch dimension to join on: one call per request
            return [self._answer([feed])[0] for feed in feeds]
        return self._answer(feeds)

    def _answer(self, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
        if len(feeds) == 1:  # one request: no copy
            joined = feeds[0]
        else:
            joined = {name: np.concatenate([feed[name] for feed in feeds]) for name in self.inputs}
        try:
            out = self.backend.predict(joined)
        except Exception as exc:  # every request of the batch gets the reason (BackendError names it)
            error = pb_utils.TritonError(str(exc))
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in feeds]
        responses, start = [], 0
        for feed in feeds:
            rows = len(feed[self.inputs[0]])
            part = out if len(feeds) == 1 else {n: out[n][start : start + rows] for n in self.outputs}
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(part[n])) for n in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += rows
        return responses

    def finalize(self) -> None:
        self.backend.unload()
