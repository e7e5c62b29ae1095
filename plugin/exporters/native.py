"""A trained model as every exporter sees it, whatever its library.

One adapter per library family knows how that library predicts, describes itself and converts
to Treelite or ONNX; the exporters only know file formats and configs. `predict` answers in the
served output's terms (classifiers: class probabilities (rows, n_classes); regressors: values
(rows, n_targets)), so the parity gate compares like with like. Libraries are imported inside
methods: a family costs nothing until a model of it is exported.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from tritonflow.plugin.exporters.base import INPUT, ExportError, brief, onnx_bytes

ONNX_OPSET = 15  # the newest onnxmltools writes; onnxruntime >= 1.10 (every supported Triton) reads it
XGBOOST_CLASSIFIERS = ("binary:logistic", "multi:softprob", "multi:softmax")
LIGHTGBM_CLASSIFIERS = ("binary", "multiclass", "multiclassova")


class NativeModel(ABC):
    """One trained model: its served-output predictions, its description, its conversions."""

    library: str  # the distribution name shown in records: "scikit-learn", "xgboost", "lightgbm"
    onnx_converter: str  # the distribution that writes its ONNX graph

    def __init__(self, model: Any) -> None:
        self.model = model
        self.is_classifier, self.n_classes = self._task()

    @abstractmethod
    def _task(self) -> tuple[bool, int | None]:
        """(is_classifier, n_classes or None); raise ExportError for anything else."""

    @property
    @abstractmethod
    def is_tree_ensemble(self) -> bool:
        """True when Treelite reads it and FIL serves it: a single-output tree ensemble."""

    @abstractmethod
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Float32 rows -> the served output, float32 (rows, width)."""

    @abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """A small, JSON-safe description of how the model was trained."""

    @abstractmethod
    def to_treelite(self) -> Any:
        """The model as a treelite.Model (only called when `is_tree_ensemble`)."""

    @abstractmethod
    def to_onnx(self, n_features: int) -> Any:
        """The converter's ONNX ModelProto, input INPUT FP32 [N, n_features], no ZipMap."""

    def batch_engine_file(self, n_features: int) -> tuple[str, bytes]:
        """(engine, file) of the CPU engine that beats FIL's on batches (serving/backends/
        forest_engines.py): ONNX Runtime, unless the library's own predictor is faster still."""
        return "onnxruntime", onnx_bytes(self.to_onnx(n_features), type(self.model).__name__)

    def info(self) -> dict[str, Any]:
        from importlib.metadata import version

        cls = type(self.model)
        info = {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "library": self.library,
            "library_version": version(self.library),
            "hyperparameters": self.hyperparameters(),
        }
        if self.is_classifier and hasattr(self.model, "classes_"):
            info["classes"] = json_safe(list(self.model.classes_))  # the meaning of each output column
        return info

    def width(self, n_features: int) -> int:
        """Values per served row; asks the model itself, which also proves it reads n_features."""
        try:
            return int(self.predict(np.zeros((1, n_features), np.float32)).shape[1])
        except Exception as exc:  # each library raises its own type for a wrong width
            raise ExportError(
                f"{type(self.model).__name__} does not predict on {n_features} features: {brief(exc)}"
            ) from None


# -- scikit-learn ------------------------------------------------------------------------------
class SklearnModel(NativeModel):
    library = "scikit-learn"
    onnx_converter = "skl2onnx"

    def _task(self) -> tuple[bool, int | None]:
        from sklearn.base import is_classifier, is_regressor

        name = type(self.model).__name__
        if is_classifier(self.model):
            if getattr(self.model, "n_outputs_", 1) > 1:
                raise ExportError(f"{name} is a multi-output classifier: serve one classifier per target")
            if not hasattr(self.model, "predict_proba"):
                raise ExportError(
                    f"{name} has no predict_proba, and served classifiers answer class probabilities: "
                    "enable it (e.g. SVC(probability=True)) or wrap it in CalibratedClassifierCV"
                )
            return True, len(self.model.classes_)
        if is_regressor(self.model):
            return False, None
        raise ExportError(
            f"{name} is neither a classifier nor a regressor: tritonflow serves class probabilities "
            "or predicted values (put transformers in a Pipeline in front of the model)"
        )

    @property
    def is_tree_ensemble(self) -> bool:
        from sklearn import ensemble

        trees = (  # subclasses too: what they change is the parity gate's to catch
            ensemble.RandomForestClassifier,
            ensemble.RandomForestRegressor,
            ensemble.ExtraTreesClassifier,
            ensemble.ExtraTreesRegressor,
            ensemble.GradientBoostingClassifier,
            ensemble.GradientBoostingRegressor,
            ensemble.HistGradientBoostingClassifier,
            ensemble.HistGradientBoostingRegressor,
        )
        return isinstance(self.model, trees) and getattr(self.model, "n_outputs_", 1) == 1

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return sklearn_api_predict(self.model, rows, self.is_classifier)

    def hyperparameters(self) -> dict[str, Any]:
        return json_safe(self.model.get_params(deep=True))

    def to_treelite(self) -> Any:
        import treelite.sklearn

        return treelite.sklearn.import_model(self.model)

    def to_onnx(self, n_features: int) -> Any:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        steps = [self.model, *self.model.get_params(deep=True).values()]
        for library in {type(s).__module__.split(".")[0] for s in steps} & {"xgboost", "lightgbm"}:
            _register_boosters_with_skl2onnx(library)
        final = self.model
        while hasattr(final, "steps"):  # the ZipMap option belongs to the pipeline's last estimator
            final = final.steps[-1][1]
        return convert_sklearn(
            self.model,
            initial_types=[(INPUT, FloatTensorType([None, n_features]))],
            options={id(final): {"zipmap": False}} if self.is_classifier else None,
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
        )


@functools.cache
def _register_boosters_with_skl2onnx(library: str) -> None:
    """Teach skl2onnx a library's wrappers (onnxmltools' converters) for pipelines ending in one.

    Per library: a pipeline ending in an XGBoost model must not need lightgbm installed, or back.
    """
    from skl2onnx import update_registered_converter
    from skl2onnx.common import shape_calculator

    if library == "xgboost":
        import xgboost
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost as convert

        classifier, regressor, prefix = xgboost.XGBClassifier, xgboost.XGBRegressor, "XGBoostXGB"
    else:
        import lightgbm
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm as convert

        classifier, regressor, prefix = lightgbm.LGBMClassifier, lightgbm.LGBMRegressor, "LightGbmLGBM"
    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    shapes = shape_calculator.calculate_linear_classifier_output_shapes
    update_registered_converter(classifier, f"{prefix}Classifier", shapes, convert, options=options)
    shapes = shape_calculator.calculate_linear_regressor_output_shapes
    update_registered_converter(regressor, f"{prefix}Regressor", shapes, convert, options=None)


# -- XGBoost -----------------------------------------------------------------------------------
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


# -- LightGBM ----------------------------------------------------------------------------------
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


# -- shared ------------------------------------------------------------------------------------
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


def sklearn_api_predict(model: Any, rows: np.ndarray, is_classifier: bool) -> np.ndarray:
    """predict_proba or predict of an sklearn-style model, as the served (rows, width) float32."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None:  # fitted on a DataFrame: name the columns, as the model expects
        import pandas as pd

        rows = pd.DataFrame(rows, columns=names)
    out = model.predict_proba(rows) if is_classifier else model.predict(rows)
    return np.asarray(out, dtype=np.float32).reshape(len(rows), -1)


def json_safe(value: Any) -> Any:
    """Parameters as strict JSON: scalars as they are, estimators by class name, others as a short repr."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return repr(value)  # XGBoost's missing=nan: JSON has no NaN
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "get_params"):
        return type(value).__name__
    return repr(value)[:200]


def _number(text: str) -> float | int:
    number = float(text)
    return int(number) if number.is_integer() else number
