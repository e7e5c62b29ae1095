"""Any supported model -> an ONNX graph served by Triton's onnxruntime backend (`model.onnx`).

Every format serves one signature: input "input__0" FP32 [n_features] -> output "output__0"
FP32 [width], class probabilities for classifiers (columns in the order of model_info["classes"])
or predicted values for regressors. So the converter's probabilities ("probabilities") or values
("variable") output is renamed "output__0", and its `label` output is pruned from the graph:
it is the argmax of the probabilities, a rank-1 tensor (string for string classes) that Triton
would need a reshape for, and a client then reads FIL and ONNX models with the same code.
The graph is written for opset 15 (see native.ONNX_OPSET), which every supported Triton reads.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import numpy as np

from tritonflow.plugin.exporters.base import INPUT, OUTPUT, Export, Exporter, ExportError, brief, onnx_bytes
from tritonflow.plugin.exporters.native import ONNX_OPSET, NativeModel
from tritonflow.serving.backends.onnx import MODEL_FILE
from tritonflow.serving.datatypes import DATATYPE
from tritonflow.serving.model_config import TensorSpec

SERVED = {True: "probabilities", False: "variable"}  # the converter output served, by is_classifier


class OnnxExporter(Exporter):
    format = "onnx"

    def can_export(self, model: Any) -> bool:
        return isinstance(model, NativeModel)

    def export(self, model: Any, n_features: int, triton_version: str) -> Export:
        import onnx

        width = model.width(n_features)
        try:
            graph = model.to_onnx(n_features)
        except Exception as exc:  # the converters raise RuntimeError, NameError, KeyError, ...
            raise ExportError(
                f"{model.onnx_converter} cannot convert {type(model.model).__name__} to ONNX: {brief(exc)}"
            ) from None
        graph = _serve_one_output(graph, SERVED[model.is_classifier], width)
        elem_type = graph.graph.output[0].type.tensor_type.elem_type
        datatype = DATATYPE[np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))]
        return Export(
            format=self.format,
            backend="onnxruntime",
            files={MODEL_FILE: onnx_bytes(graph, type(model.model).__name__)},
            inputs=(TensorSpec(INPUT, "FP32", (n_features,)),),
            outputs=(TensorSpec(OUTPUT, datatype, (width,)),),
            parameters={},
            n_classes=model.n_classes,
            model_info=model.info(),
            versions={
                "onnx": onnx.__version__,
                model.onnx_converter: version(model.onnx_converter),
                "onnx_opset": str(ONNX_OPSET),
            },
            native_predict=model.predict,
        )


def _serve_one_output(graph: Any, source: str, width: int) -> Any:
    """Keep only `source` (and the nodes it needs), renamed OUTPUT, shaped [batch, width]."""
    import onnx.utils

    names = [o.name for o in graph.graph.output]
    if source not in names:
        raise ExportError(f"the ONNX converter gave outputs {names}, without {source!r} to serve")
    graph = onnx.utils.Extractor(graph).extract_model([INPUT], [source])
    for node in graph.graph.node:
        node.input[:] = [OUTPUT if name == source else name for name in node.input]
        node.output[:] = [OUTPUT if name == source else name for name in node.output]
    output = graph.graph.output[0]
    output.name = OUTPUT
    # NOTE: converters may declare [N, 1] for multi-target values or no shape at all: state the truth.
    shape = output.type.tensor_type.shape
    del shape.dim[:]
    shape.dim.add().dim_param = "batch"
    shape.dim.add().dim_value = width
    return graph
