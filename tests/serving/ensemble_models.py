"""Small models with string tensors, and hand-written ensembles of them, published as @deploy would.

A frame of one string column (`color`) and three float columns; a preprocessing step (skl2onnx
ColumnTransformer: one-hot of `color`, scaling of the floats, one input tensor per column) and a
Treelite forest on its output; a numeric pair (an ONNX scaler, a forest); and an ONNX model that
answers strings (BYTES outputs). The steps "by hand" (onnxruntime, then Treelite) give the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import treelite
from conftest import N_FEATURES, Trained, config_for, data, fil_forest, publish
from onnx import TensorProto, helper
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tritonflow.lineage.records import DeploymentRecord
from tritonflow.serving.model_config import ModelConfig, parse_config

COLORS = ["red", "green", "blue"]
FLOATS = ["f0", "f1", "f2"]
ENSEMBLE_FILES = Trained(RandomForestClassifier(), {}, "ensemble")  # an ensemble version has no files


@cache
def frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = data()[0][:n]
    return pd.DataFrame(
        {"color": rng.choice(COLORS, n), **{c: X[:, i].astype(np.float32) for i, c in enumerate(FLOATS)}}
    )


def inputs_of(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The frame as the ensemble's tensors: one [rows, 1] tensor per column, strings as bytes."""
    tensors = {"color": np.array([[c.encode()] for c in df["color"]], dtype=object)}
    return {**tensors, **{c: df[[c]].to_numpy(np.float32) for c in FLOATS}}


@dataclass(frozen=True)
class Pipeline:
    prep: Trained  # ONNX: color (BYTES [1]), f0..f2 (FP32 [1]) -> transformed_column (FP32 [width])
    forest: Trained  # FIL on the transformed columns
    width: int

    def by_hand(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """The steps run by hand: onnxruntime on the columns, then Treelite on its output."""
        session = ort.InferenceSession(self.prep.files["model.onnx"])
        feed = dict(tensors)
        feed["color"] = np.array([[b.decode() for b in row] for row in tensors["color"]], dtype=object)
        features = session.run(None, feed)[0]
        return forest_proba(self.forest, features)


def forest_proba(trained: Trained, X: np.ndarray) -> np.ndarray:
    model = treelite.Model.deserialize_bytes(trained.files["checkpoint.tl"])
    return treelite.gtil.predict(model, X.astype(np.float32))[:, 0, :]


@cache
def pipeline() -> Pipeline:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    df, y = frame(), data()[1]
    prep = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="ignore"), ["color"]), ("num", StandardScaler(), FLOATS)],
        sparse_threshold=0,
    ).fit(df)
    types = [("color", StringTensorType([None, 1]))] + [(c, FloatTensorType([None, 1])) for c in FLOATS]
    graph = convert_sklearn(prep, initial_types=types)
    features = prep.transform(df).astype(np.float32)
    est = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(features, y)
    forest = fil_forest(est)
    onnx_prep = Trained(est, {"model.onnx": graph.SerializeToString()}, "onnxruntime")
    return Pipeline(onnx_prep, forest, features.shape[1])


@cache
def scaler() -> Trained:
    """A StandardScaler over the conftest features, as ONNX: float_input FP32 [8] -> variable FP32 [8]."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    est = StandardScaler().fit(data()[0])
    graph = convert_sklearn(est, initial_types=[("float_input", FloatTensorType([None, N_FEATURES]))])
    return Trained(RandomForestClassifier(), {"model.onnx": graph.SerializeToString()}, "onnxruntime")


@cache
def scaled_forest(seed: int = 0) -> Trained:
    X = scaler_apply(data()[0])
    est = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=seed).fit(X, data()[1])
    return fil_forest(est)


def scaler_apply(X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(scaler().files["model.onnx"])
    return session.run(None, {"float_input": X.astype(np.float32)})[0]


LABELS = {
    "fraud": "FRAUD",
    "naïve café": "NAÏVE CAFÉ",
    "ab": "AB",
    "ÿ": "Ÿ",
    "x": "X",
    "yz": "YZ",
    "still": "STILL",
}


def labelled(text: str) -> str:
    """What the echo model's `upper` answers for a text: its LABELS entry, else "?"."""
    return LABELS.get(text, "?")


@cache
def echo() -> Trained:
    """An ONNX model that answers its strings (`same`) and their LABELS (`upper`): BYTES in, BYTES out."""
    text = helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1])
    same = helper.make_tensor_value_info("same", TensorProto.STRING, [None, 1])
    upper = helper.make_tensor_value_info("upper", TensorProto.STRING, [None, 1])
    nodes = [
        helper.make_node("Identity", ["text"], ["same"]),
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["upper"],
            domain="ai.onnx.ml",
            keys_strings=list(LABELS),
            values_strings=list(LABELS.values()),
            default_string="?",
        ),
    ]
    graph = helper.make_graph(nodes, "echo", [text], [same, upper])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return Trained(RandomForestClassifier(), {"model.onnx": model.SerializeToString()}, "onnxruntime")


def onnx_config(name: str, inputs: list[tuple[str, str, int]], outputs: list[tuple[str, str, int]]) -> str:
    """A hand-written onnxruntime config: (name, TYPE_*, width) per tensor, batching up to 1024 rows."""
    return f"""
name: "{name}"
backend: "onnxruntime"
max_batch_size: 1024
{_tensors("input", inputs)}
{_tensors("output", outputs)}
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
"""


def _tensors(kind: str, tensors: list[tuple[str, str, int]]) -> str:
    return "\n".join(f'{kind} {{ name: "{n}" data_type: {t} dims: [ {w} ] }}' for n, t, w in tensors)


def ensemble_config(
    name: str,
    inputs: list[tuple[str, str, int]],
    outputs: list[tuple[str, str, int]],
    steps: list[tuple[str, int, dict[str, str], dict[str, str]]],
    max_batch_size: int = 1024,
) -> str:
    """A hand-written ensemble: steps as (model, model_version, input_map, output_map)."""

    def pairs(kind: str, mapping: dict[str, str]) -> str:
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in mapping.items())

    written = "\n".join(
        f'  step {{ model_name: "{m}" model_version: {v} {pairs("input_map", i)} {pairs("output_map", o)} }}'
        for m, v, i, o in steps
    )
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: {max_batch_size}
{_tensors("input", inputs)}
{_tensors("output", outputs)}
ensemble_scheduling {{
{written}
}}
"""


PIPELINE_INPUTS = [("color", "TYPE_STRING", 1)] + [(c, "TYPE_FP32", 1) for c in FLOATS]


def publish_text(root: str | Path, name: str, trained: Trained, text: str) -> DeploymentRecord:
    return publish(root, name, trained, parse_config(text))


def publish_pipeline(root: str | Path, name: str = "pipeline") -> dict[str, DeploymentRecord]:
    """The string pipeline: prep (ONNX) -> forest (FIL), as three models; their records by model."""
    p = pipeline()
    prep_out = [("transformed_column", "TYPE_FP32", p.width)]
    forest_config: ModelConfig = config_for(f"{name}.forest", p.forest)
    forest_config.input[0].dims[:] = [p.width]
    return {
        "prep": publish_text(
            root, f"{name}.prep", p.prep, onnx_config(f"{name}.prep", PIPELINE_INPUTS, prep_out)
        ),
        "forest": publish(root, f"{name}.forest", p.forest, forest_config),
        "ensemble": publish_text(
            root,
            name,
            ENSEMBLE_FILES,
            ensemble_config(
                name,
                PIPELINE_INPUTS,
                [("proba", "TYPE_FP32", 2)],
                [
                    (
                        f"{name}.prep",
                        -1,
                        {c: c for c, _, _ in PIPELINE_INPUTS},
                        {"transformed_column": "features"},
                    ),
                    (f"{name}.forest", -1, {"input__0": "features"}, {"output__0": "proba"}),
                ],
            ),
        ),
    }


def numeric_ensemble_text(name: str = "numeric", scaler_version: int = 1) -> str:
    return ensemble_config(
        name,
        [("x", "TYPE_FP32", N_FEATURES)],
        [("proba", "TYPE_FP32", 2)],
        [
            ("scaler", scaler_version, {"float_input": "x"}, {"variable": "scaled"}),
            ("forest", -1, {"input__0": "scaled"}, {"output__0": "proba"}),
        ],
    )


def publish_numeric(root: str | Path, name: str = "numeric") -> dict[str, DeploymentRecord]:
    """The numeric pair: scaler (ONNX, pinned version 1) -> forest (FIL, latest)."""
    width = [("float_input", "TYPE_FP32", N_FEATURES)]
    return {
        "scaler": publish_text(
            root, "scaler", scaler(), onnx_config("scaler", width, [("variable", "TYPE_FP32", N_FEATURES)])
        ),
        "forest": publish(root, "forest", scaled_forest(), config_for("forest", scaled_forest())),
        "ensemble": publish_text(root, name, ENSEMBLE_FILES, numeric_ensemble_text(name)),
    }
