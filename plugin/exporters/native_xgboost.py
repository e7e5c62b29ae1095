"""XGBoost's adapter: Boosters and sklearn wrappers, through Treelite, onnxmltools or its own predictor.

A module of its own, as each library's adapter is (native.py keeps the base and what they share):
`native_model` imports it only for an XGBoost model, and xgboost itself is imported inside methods.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from tritonflow.plugin.exporters.base import INPUT, ExportError
from tritonflow.plugin.exporters.native import ONNX_OPSET, NativeModel, json_safe, sklearn_api_predict

XGBOOST_CLASSIFIERS = ("binary:logistic", "multi:softprob", "multi:softmax")


class XGBoostModel(NativeModel):
    """A Booster or an sklearn wrapper, exported through its Booster cut at `best_iteration`.

    Treelite and onnxmltools read every round of a Booster, while XGBoost's wrappers predict up to
    `best_iteration`: the Booster is sliced first. A raw Booster that carries `best_iteration`
    (from early stopping in xgb.train) is exported and compared as of that round too.
    """

    library = "xgboost"
    onnx_converter = "onnxmltools"

    def __init__(self, model: Any) -> None:
        import xgboost

        booster = model if isinstance(model, xgboost.Booster) else model.get_booster()
        self.config = json.loads(booster.save_config())["learner"]
        best = booster.attr("best_iteration")
        self.best_iteration = None if best is None else int(best)
        if self.best_iteration is not None and self.best_iteration + 1 < booster.num_boosted_rounds():
            booster = booster[: self.best_iteration + 1]
        self.booster = booster
        super().__init__(model)

    def _task(self) -> tuple[bool, int | None]:
        if self.config["objective"]["name"] in XGBOOST_CLASSIFIERS:
            return True, max(2, int(self.config["learner_model_param"]["num_class"]))
        return False, None

    @property
    def is_tree_ensemble(self) -> bool:
        return (
            self.config["gradient_booster"]["name"] in ("gbtree", "dart")
            and int(self.config["learner_model_param"].get("num_target", 1)) == 1
        )

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return sklearn_api_predict(self._wrapper, self._category_frame(rows), self.is_classifier)

    @functools.cached_property
    def categories(self) -> dict[str, list[Any]]:
        """Category feature -> its training categories in code order ({} for a model without)."""
        if "c" not in (self.booster.feature_types or []):
            return {}
        if not hasattr(self.booster, "get_categories"):
            raise ExportError(
                "XGBoost before 3.1 does not keep the categories it trained on, so the values clients "
                "send cannot be mapped to its codes: train with xgboost>=3.1"
            )
        kept = self.booster.get_categories(export_to_arrow=True).to_arrow()
        return {str(name): values.to_pylist() for name, values in kept if values is not None}

    def _category_frame(self, rows: np.ndarray) -> Any:
        """XGBoost reads category features only from a DataFrame: rows of codes (a value's position
        among the training categories, NaN missing, as the trees read them) become one."""
        if not self.categories or hasattr(rows, "columns"):
            return rows
        import pandas as pd

        frame = pd.DataFrame(rows, columns=self.booster.feature_names)
        for name, values in self.categories.items():
            codes = frame[name].to_numpy()
            known = np.isfinite(codes) & (codes >= 0) & (codes < len(values))
            frame[name] = pd.Categorical.from_codes(np.where(known, codes, -1).astype(int), categories=values)
        return frame

    @functools.cached_property
    def _wrapper(self) -> Any:
        """The sklearn wrapper, which predicts as XGBoost users expect (a raw Booster is loaded into one)."""
        import xgboost

        if not isinstance(self.model, xgboost.Booster):
            return self.model
        wrapper = xgboost.XGBClassifier() if self.is_classifier else xgboost.XGBRegressor()
        wrapper.load_model(bytearray(self.booster.save_raw(raw_format="ubj")))
        return wrapper

    def hyperparameters(self) -> dict[str, Any]:
        import xgboost

        if not isinstance(self.model, xgboost.Booster):
            return json_safe(self.model.get_params())
        train = self.config["gradient_booster"].get("tree_train_param", {})
        return json_safe(
            {
                "objective": self.config["objective"]["name"],
                "booster": self.config["gradient_booster"]["name"],
                "num_boosted_rounds": self.model.num_boosted_rounds(),
                **{
                    k: _number(train[k])
                    for k in ("eta", "max_depth", "max_leaves", "subsample")
                    if k in train
                },
            }
        )

    def info(self) -> dict[str, Any]:
        info = super().info()
        if self.best_iteration is not None:
            info["best_iteration"] = self.best_iteration
        return info

    def to_treelite(self) -> Any:
        import treelite

        if not self.categories:
            return treelite.frontend.from_xgboost(self.booster)
        # NOTE: Treelite refuses XGBoost >= 3.1's category recoder; without it the trees read each
        # value's position among the training categories, which the ensemble's category step computes
        model = json.loads(self.booster.save_raw(raw_format="json"))
        _drop_category_recoder(model)
        return treelite.frontend.from_xgboost_json(json.dumps(model))

    def batch_engine_file(self, n_features: int) -> tuple[str, bytes]:
        # NOTE: on 1,024 rows of 500 rounds x depth 8, XGBoost's predictor ran 2.5x ONNX Runtime's rows/s
        return "xgboost", bytes(self.booster.save_raw(raw_format="ubj"))

    def to_onnx(self, n_features: int) -> Any:
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        booster = self.booster.copy()
        booster.feature_names = None  # onnxmltools reads features as f0, f1, ... only
        return onnxmltools.convert_xgboost(
            booster,
            initial_types=[(INPUT, FloatTensorType([None, n_features]))],
            target_opset=ONNX_OPSET,
        )


def _drop_category_recoder(model: dict[str, Any]) -> None:
    """Empties the `cats` block (the recoder's training categories) wherever the booster keeps one
    (gbtree's model, or dart's inner gbtree)."""
    stack: list[Any] = [model]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("cats"), dict):
                node["cats"] = {"enc": [], "feature_segments": [], "sorted_idx": []}
            stack += [v for k, v in node.items() if k != "trees"]


def _number(text: str) -> float | int:
    number = float(text)
    return int(number) if number.is_integer() else number
