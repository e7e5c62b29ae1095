"""LightGBM's adapter: Boosters and sklearn wrappers, through Treelite or onnxmltools.

A module of its own, as each library's adapter is (native.py keeps the base and what they share):
`native_model` imports it only for a LightGBM model, and lightgbm itself is imported inside methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonflow.plugin.exporters.base import INPUT
from tritonflow.plugin.exporters.native import ONNX_OPSET, NativeModel, json_safe

LIGHTGBM_CLASSIFIERS = ("binary", "multiclass", "multiclassova")


class LightGBMModel(NativeModel):
    """A Booster or an sklearn wrapper, read through its Booster.

    LightGBM's own writers (model_to_string, dump_model), which Treelite and onnxmltools call,
    keep only the rounds up to `best_iteration` when early stopping set one, as its predict does.
    """

    library = "lightgbm"
    onnx_converter = "onnxmltools"

    def __init__(self, model: Any) -> None:
        import lightgbm

        self.booster = model if isinstance(model, lightgbm.Booster) else model.booster_
        super().__init__(model)

    def _task(self) -> tuple[bool, int | None]:
        header = self.booster.dump_model(num_iteration=1)  # one tree: the header without the forest
        if header["objective"].split()[0] in LIGHTGBM_CLASSIFIERS:
            return True, max(2, int(header["num_class"]))
        return False, None

    @property
    def is_tree_ensemble(self) -> bool:
        return True

    def predict(self, rows: np.ndarray) -> np.ndarray:
        out = np.asarray(self.booster.predict(rows), dtype=np.float32).reshape(len(rows), -1)
        if self.is_classifier and out.shape[1] == 1:  # binary: P(class 1) -> [P(0), P(1)]
            out = np.hstack([1.0 - out, out])
        return out

    def hyperparameters(self) -> dict[str, Any]:
        import lightgbm

        if isinstance(self.model, lightgbm.Booster):
            return json_safe({**self.booster.params, "num_trees": self.booster.num_trees()})
        return json_safe(self.model.get_params())

    def info(self) -> dict[str, Any]:
        info = super().info()
        if self.booster.best_iteration > 0:
            info["best_iteration"] = self.booster.best_iteration
        return info

    def to_treelite(self) -> Any:
        import treelite

        return treelite.frontend.from_lightgbm(self.booster)

    def to_onnx(self, n_features: int) -> Any:
        import lightgbm
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        booster = self.booster
        if 0 < booster.best_iteration < booster.current_iteration():
            # NOTE: onnxmltools dumps the rounds up to best_iteration, then expects every tree: cut first.
            booster = lightgbm.Booster(model_str=booster.model_to_string())
        return onnxmltools.convert_lightgbm(
            booster,
            initial_types=[(INPUT, FloatTensorType([None, n_features]))],
            target_opset=ONNX_OPSET,
            zipmap=False,
        )
