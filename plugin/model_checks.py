"""Is the artifact one trained model whose input a served FP32 tensor can carry? Asked first.

Libraries find an unfitted, empty or one-class model deep inside an export (`AttributeError:
classes_`, a C++ check), and a model that encodes string columns itself fails on the parity
gate's float rows (numpy's `ufunc 'isnan' not supported`). These checks name each case in the
user's terms before anything reads the model. Boosters are known by their class's name and
module, so no check imports XGBoost or LightGBM.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tritonflow.lineage.errors import TritonflowError

COLLECTIONS = (list, tuple, set, dict)  # what a user may hold several models in, by mistake


class ModelError(TritonflowError):
    """The artifact is not one trained model that a served endpoint can answer with."""


def check_trained(model: Any) -> None:
    """Refuse what is not one fitted model: None, a class, a collection of models, unfitted, one class."""
    name = type(model).__name__
    if model is None:
        raise ModelError("the model artifact is None: assign the trained model (self.model = ...fit(X, y))")
    if isinstance(model, type):
        raise ModelError(
            f"the model artifact is the class {model.__name__}, not a trained model: assign an instance "
            f"fitted on the training data (self.model = {model.__name__}(...).fit(X, y))"
        )
    items = (
        list(model.values()) if isinstance(model, dict) else model if isinstance(model, COLLECTIONS) else []
    )
    if any(_is_estimator(item) or _is_booster(item) for item in items):
        raise ModelError(
            f"the model artifact is a {name} of models ({len(items)}), not one model: deploy one model per "
            "step (train candidates in a foreach and pick one with @deploy(select='max:<metric>') on the "
            "join), or keep the one to deploy in an artifact of its own and pass @deploy(model=...)"
        )
    if not _is_fitted(model):
        how = (
            "train it with at least one boosting round (xgb.train / lgb.train)"
            if _is_booster(model)
            else "call .fit(X, y) on it in the step (or assign what .fit returns)"
        )
        raise ModelError(f"{name} is not fitted: {how} before @deploy publishes it")
    classes = getattr(model, "classes_", None)
    if classes is not None and len(classes) < 2:
        raise ModelError(
            f"{name} was trained on one class only ({[_plain(c) for c in classes]}): a served classifier "
            "answers a probability for each of two or more classes, so train it on labels (y) that hold "
            "every class"
        )


def string_columns(model: Any) -> list[str]:
    """Input columns the model reads as strings or pandas categories, which an FP32 tensor cannot carry.

    Found in scikit-learn encoders anywhere inside the model (Pipeline and ColumnTransformer steps,
    HistGradientBoosting's own encoder), and in LightGBM and XGBoost models trained on pandas
    categories (served, they would read the categories' internal codes, which no client knows).
    """
    columns: list[str] = []
    for part in _parts(model):
        columns += _encoded_string_columns(part) + _booster_category_columns(part)
    return list(dict.fromkeys(columns))


def _is_fitted(model: Any) -> bool:
    if _is_booster(model):
        trees = getattr(model, "num_boosted_rounds", None) or model.num_trees  # xgboost | lightgbm
        try:
            return bool(trees() > 0)
        except Exception:  # NOTE: an empty xgboost.Booster() answers every question with an XGBoostError
            return False
    if callable(getattr(model, "fit", None)) and _is_estimator(model):
        # the scikit-learn API: estimators, Pipelines, and XGBoost's and LightGBM's wrappers
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(model)
        except NotFittedError:
            return False
    return True


def _parts(model: Any) -> Iterator[Any]:
    """The model and every estimator held in its attributes, steps and lists, each once."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        part = stack.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        if _is_estimator(part) or _is_booster(part):
            yield part
            stack += [v for v in getattr(part, "__dict__", {}).values() if _may_hold_estimators(v)]
        elif isinstance(part, list | tuple):  # Pipeline.steps, ColumnTransformer.transformers_
            stack += [v for v in part if _may_hold_estimators(v)]


def _may_hold_estimators(value: Any) -> bool:
    return isinstance(value, list | tuple) or _is_estimator(value) or _is_booster(value)


def _is_estimator(value: Any) -> bool:
    return callable(getattr(value, "get_params", None))


def _is_booster(value: Any) -> bool:
    """A raw XGBoost or LightGBM Booster (or a subclass), known by class without importing either."""
    return any(
        cls.__name__ == "Booster" and cls.__module__.split(".")[0] in ("xgboost", "lightgbm")
        for cls in type(value).__mro__
    )


def _encoded_string_columns(part: Any) -> list[str]:
    """A fitted scikit-learn encoder's columns whose categories hold strings (OneHot, Ordinal, Target)."""
    categories = getattr(part, "categories_", None)
    if not isinstance(categories, list):
        return []
    names = getattr(part, "feature_names_in_", None)
    return [
        str(names[i]) if names is not None else f"column {i} of its {type(part).__name__}"
        for i, values in enumerate(categories)
        if any(isinstance(v, str | bytes) for v in values)
    ]


def _booster_category_columns(part: Any) -> list[str]:
    """Columns a LightGBM or XGBoost Booster learned as pandas categories (with their values)."""
    if not _is_booster(part):
        return []
    if hasattr(part, "pandas_categorical"):  # lightgbm.Booster: one list of values per category column
        found = part.pandas_categorical or []
        names, indices = part.feature_name(), part.params.get("categorical_column", [])
        if len(indices) == len(found):
            return [str(names[i]) for i in indices]
        return [f"{len(found)} category column(s)"] if found else []
    get_categories = getattr(part, "get_categories", None)  # xgboost >= 3.1 keeps the values it recodes
    if get_categories is None or get_categories().empty():
        return []
    names = part.feature_names or [f"f{i}" for i in range(part.num_features())]
    return [str(n) for n, kind in zip(names, part.feature_types or [], strict=False) if kind == "c"]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
