"""The contenders of benchmarks/tabular.py: the data, the pipeline, and the three ways to serve it.

The node's repository is what @deploy writes for the pipeline: tritonflow.plugin.publish.deploy
with a DataFrame sample publishes it as a Triton ensemble (plugin/publish_ensemble.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MODEL = "tabular"
CATEGORIES = {"merchant": 40, "country": 12, "channel": 4}  # column -> levels seen in training
N_NUMERIC = 20
MISSING = 0.05  # share of NaN in each float column
MAX_BATCH = 1_024  # every model's max_batch_size: a 1,000-row request is one batch
HELD_OUT = 1_000
OUTPUT = "output__0"  # the ensemble's output: the forest step's, under its own name


# -- data and model --------------------------------------------------------------------------------
def frame(rows: int, seed: int, unseen: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """Strings and floats, a label depending on both; `unseen`: share of categories never trained on."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    signal = np.zeros(rows)
    for name, levels in CATEGORIES.items():
        codes = rng.integers(0, levels, rows)
        signal += np.sin(codes * 1.7)
        values = np.array([f"{name}-{c}" for c in codes], dtype=object)
        values[rng.random(rows) < unseen] = f"{name}-new"
        columns[name] = values
    numbers = rng.normal(size=(rows, N_NUMERIC))
    signal += numbers[:, :6] @ rng.normal(size=6)
    numbers[rng.random(numbers.shape) < MISSING] = np.nan
    for i in range(N_NUMERIC):
        columns[f"x{i}"] = numbers[:, i]
    labels = (signal + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    return pd.DataFrame(columns), labels


def train(rows: int) -> tuple[Any, pd.DataFrame]:
    """The fitted pipeline and a held-out frame (2% unseen categories) the requests are drawn from."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from xgboost import XGBClassifier

    X, y = frame(rows, seed=0)
    numeric = [f"x{i}" for i in range(N_NUMERIC)]
    prep = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore"), list(CATEGORIES)),
            ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), numeric),
        ],
        sparse_threshold=0,
    )
    # NOTE: one thread in-process (XGBoost and ONNX Runtime alike): on 2 shared cores, 2 OpenMP threads
    # made 1-row calls 3x slower and 1,000-row calls no faster
    gbm = XGBClassifier(n_estimators=300, max_depth=6, random_state=0, n_jobs=1)
    pipe = Pipeline([("prep", prep), ("gbm", gbm)]).fit(X, y)
    return pipe, frame(HELD_OUT, seed=1, unseen=0.02)[0]


# -- the node's repository --------------------------------------------------------------------------
def publish_ensemble(pipe: Any, sample: pd.DataFrame, repository: Path) -> Any:
    """`<m>.preprocess`, `<m>.forest` and the ensemble `<m>` pinning their versions, published by
    @deploy's own path (tritonflow.plugin.publish.deploy with a DataFrame sample); its record."""
    from tritonflow.plugin.options import parse_options
    from tritonflow.plugin.publish import Provenance, deploy

    attributes = {"name": MODEL, "repository": str(repository), "max_batch_size": MAX_BATCH}
    options = parse_options(attributes, "BenchFlow", is_join=False)
    metaflow = {"flow": "BenchFlow", "run_id": "1", "task": "BenchFlow/1/train/1"}
    record = deploy(pipe, options, sample=sample, provenance=Provenance(metaflow=metaflow))
    if record.format != "ensemble":
        raise SystemExit(f"@deploy published the pipeline as {record.format}, not as an ensemble")
    return record


# -- contenders ---------------------------------------------------------------------------------------
Call = Callable[[pd.DataFrame], np.ndarray]


def column_arrays(rows: pd.DataFrame, columns: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Each column as a [rows, 1] array, strings as str objects (tritonclient sends them as UTF-8
    BYTES, ONNX Runtime reads them as strings): one encoding, so both pay the same for it."""
    from tritonflow.serving.frames import NUMPY

    return {
        name: rows[name].to_numpy(object if datatype == "BYTES" else NUMPY[datatype]).reshape(-1, 1)
        for name, datatype in columns
    }


def node_call(url: str, columns: list[tuple[str, str]]) -> tuple[Call, Any]:
    """One binary tritonclient HTTP request per call, every column its own tensor; and the client."""
    import tritonclient.http as client_module

    client = client_module.InferenceServerClient(url)
    wanted = [client_module.InferRequestedOutput(OUTPUT, binary_data=True)]

    def call(rows: pd.DataFrame) -> np.ndarray:
        tensors = []
        for (name, datatype), values in zip(columns, column_arrays(rows, columns).values(), strict=True):
            tensor = client_module.InferInput(name, list(values.shape), datatype)
            tensor.set_data_from_numpy(values, binary_data=True)
            tensors.append(tensor)
        return client.infer(MODEL, tensors, outputs=wanted).as_numpy(OUTPUT)

    return call, client


def whole_onnx(pipe: Any, columns: list[tuple[str, str]]) -> tuple[Call | None, Call | None, str]:
    """The whole pipeline in ONNX Runtime sessions (one thread, as XGBoost in-process): with the
    trees' input cast to float32, and as skl2onnx converts it; Nones and why when it cannot.

    As converted, TreeEnsembleClassifier reads the float64 features and compares them with the
    float32 thresholds, where XGBoost rounds the features to float32 first: a feature just under
    a threshold in float64 that rounds onto it goes the other way (24 of 1,000 rows and 1.6e-2 in
    one run, 5e-2 in another)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common import data_types as t
    from sklearn.impute import SimpleImputer

    from tritonflow.plugin.exporters.native_sklearn import _register_boosters_with_skl2onnx
    from tritonflow.plugin.exporters.tabular import _imputer, _imputer_shape

    _register_boosters_with_skl2onnx("xgboost")
    types = {"BYTES": t.StringTensorType, "FP64": t.DoubleTensorType, "FP32": t.FloatTensorType}
    initial = [(name, types[datatype]([None, 1])) for name, datatype in columns]
    try:
        graph = convert_sklearn(
            pipe,
            initial_types=initial,
            options={id(pipe.steps[-1][1]): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
            # NOTE: ORT's Imputer has no double kernel: the export's own IsNaN/Where SimpleImputer
            custom_conversion_functions={SimpleImputer: _imputer},
            custom_shape_calculators={SimpleImputer: _imputer_shape},
        )
    except Exception as exc:  # skl2onnx raises RuntimeError, NotImplementedError, MissingShapeCalculator
        return None, None, f"skl2onnx cannot convert the whole pipeline: {type(exc).__name__}: {exc}"
    ops = sorted({node.op_type for node in graph.graph.node})
    note = f"{len(graph.graph.node)} ONNX nodes ({', '.join(ops)}), a Cast to float32 before the trees"
    as_converted = _session(graph.SerializeToString(), columns)
    return _session(_float32_trees(graph).SerializeToString(), columns), as_converted, note


def _session(model: bytes, columns: list[tuple[str, str]]) -> Call:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return lambda rows: np.asarray(session.run(["probabilities"], column_arrays(rows, columns))[0])


def _float32_trees(graph: Any) -> Any:
    """The graph with the tree ensemble's input cast to float32, as XGBoost casts its input."""
    from onnx import TensorProto, helper

    nodes = list(graph.graph.node)
    at = next(i for i, n in enumerate(nodes) if n.op_type == "TreeEnsembleClassifier")
    trees = nodes[at]
    cast = helper.make_node("Cast", [trees.input[0]], ["trees_input_f32"], to=TensorProto.FLOAT)
    trees.input[0] = "trees_input_f32"
    graph.graph.node.insert(at, cast)
    return graph
