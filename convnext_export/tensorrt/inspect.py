"""What precision TensorRT actually chose per layer, from the engine inspector's JSON.

The engine must be built with ``ProfilingVerbosity.DETAILED``; ``IEngineInspector.
get_engine_information(LayerInformationFormat.JSON)`` then returns ``{"Layers": [...]}`` with,
per layer, "Name", "LayerType" (e.g. "CaskConvolution", "Reformat", "Myelin"), "Inputs" /
"Outputs" (each with "Name", "Dimensions" and, in TensorRT 10, "Format/Datatype" such as
"Row major linear FP32" or "Thirty-two wide channel vectorized row major Int8 format"),
"ParameterType", "Weights" {"Type": "Int8", ...} on convolutions, "TacticName" and, in recent
10.x releases, "Metadata" naming the ONNX nodes a layer came from ("[ONNX Layer: stem.0/Conv]",
several joined by a record separator for fused layers and Myelin regions). TensorRT 11
split "Format/Datatype" into "Format" and "DataType" ("Float", "Half", "Int8": NVIDIA's
"Migrating IEngineInspector Usage from TensorRT 10.x to 11.x"); both spellings are read. With
a dynamic batch the formats read "N/A due to dynamic shapes" unless the inspector is given an
execution context with input shapes set, which ``build`` does (at the profile's opt batch).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import onnx

from ..errors import ConvNeXtExportError

# Order matters: "bfloat16" contains "float", "Int8" must not be read as an int32 tensor.
_DATATYPES = (("int8", "int8"), ("fp8", "fp8"), ("bfloat16", "bf16"), ("bf16", "bf16"), ("half", "fp16"),
              ("fp16", "fp16"), ("fp32", "fp32"), ("float", "fp32"), ("int32", "int32"), ("int64", "int64"),
              ("bool", "bool"))
BOOKKEEPING_TYPES = {"Reformat", "NoOp", "Constant"}  # data movement or nothing: not counted as layers that compute
COMPUTE_PARAMETER_TYPES = {"Convolution", "Deconvolution", "MatrixMultiply", "FullyConnected", "Gemm"}
QUANTIZABLE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


@dataclass(frozen=True)
class LayerPrecision:
    name: str
    layer_type: str
    precision: str  # int8 | fp16 | fp32 | bf16 | fp8 | ... | unknown
    compute: bool  # a convolution or matrix multiply
    opaque: bool  # a Myelin / foreign-node region whose inner layers the inspector does not list
    tactic: str | None = None
    onnx_nodes: tuple[str, ...] = ()  # from "Metadata", where TensorRT records it

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.layer_type, "precision": self.precision, "compute": self.compute,
                "opaque": self.opaque, "tactic": self.tactic, "onnx_nodes": list(self.onnx_nodes)}

    def came_from(self, node: str) -> bool:
        """Whether this layer computes the ONNX node: named in its metadata, or as a whole word in its (fused) name."""
        return node in self.onnx_nodes or _mentions(self.name, node)


def datatype_of(description: str | None) -> str:
    """'Channel major FP16 format (k=8)' -> 'fp16'; 'Int8' -> 'int8'; 'N/A due to dynamic shapes' -> 'unknown'."""
    lowered = (description or "").lower()
    for token, name in _DATATYPES:
        if token in lowered:
            return name
    return "unknown"


def tensor_datatype(tensor: dict) -> str:
    """A layer input/output's data type: TensorRT 11's "DataType", else TensorRT 10's "Format/Datatype"."""
    for key in ("DataType", "Format/Datatype", "Format/DataType", "Format"):
        found = datatype_of(tensor.get(key)) if isinstance(tensor.get(key), str) else "unknown"
        if found != "unknown":
            return found
    return "unknown"


def _tensors(layer: dict, key: str) -> list[dict]:
    return [t for t in layer.get(key, []) if isinstance(t, dict)]


def layer_precision(layer: dict) -> LayerPrecision:
    """The precision a layer computes in: its first typed input, else its weights, else its first output."""
    layer_type = str(layer.get("LayerType", "unknown"))
    name = str(layer.get("Name", ""))
    candidates = [tensor_datatype(t) for t in _tensors(layer, "Inputs")]
    weights = layer.get("Weights")
    if isinstance(weights, dict):
        candidates.append(datatype_of(str(weights.get("Type", ""))))
    candidates += [tensor_datatype(t) for t in _tensors(layer, "Outputs")]
    precision = next((c for c in candidates if c != "unknown"), "unknown")
    compute = (layer.get("ParameterType") in COMPUTE_PARAMETER_TYPES
               or any(word in layer_type for word in ("Convolution", "MatrixMultiply", "Gemm")))
    opaque = "myelin" in layer_type.lower() or name.startswith("{ForeignNode")
    nodes = tuple(re.findall(r"\[ONNX Layer: ([^\]]+)\]", str(layer.get("Metadata", ""))))
    return LayerPrecision(name, layer_type, precision, compute, opaque, layer.get("TacticName") or None, nodes)


def parse_engine_information(information: str | dict) -> list[LayerPrecision]:
    """Layers from ``get_engine_information(LayerInformationFormat.JSON)`` (a string or its parsed dict)."""
    try:
        data = json.loads(information) if isinstance(information, str) else information
    except json.JSONDecodeError as error:
        raise ConvNeXtExportError(f"the engine inspector returned no JSON ({error})") from None
    layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise ConvNeXtExportError("the engine inspector's JSON has no 'Layers' list")
    if layers and all(isinstance(layer, str) for layer in layers):
        raise ConvNeXtExportError("the engine lists layer names only: it was not built with "
                                  "ProfilingVerbosity.DETAILED, so its layer precisions are unknown")
    return [layer_precision(layer) for layer in layers if isinstance(layer, dict)]


def quantized_onnx_nodes(model: onnx.ModelProto) -> list[str]:
    """Conv/MatMul/Gemm nodes whose activation and weight both come from DequantizeLinear: INT8 in the ONNX."""
    dequantized = {output for node in model.graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    return [node.name for node in model.graph.node
            if node.op_type in QUANTIZABLE_OPS and len(node.input) >= 2
            and node.input[0] in dequantized and node.input[1] in dequantized]


def _mentions(layer_name: str, node_name: str) -> bool:
    """Whether a (possibly fused, ' + '-joined) TensorRT layer name contains this ONNX node name as a whole."""
    return re.search(rf"(?<![\w./-]){re.escape(node_name)}(?![\w./-])", layer_name) is not None


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def precision_report(layers: Iterable[LayerPrecision], int8_nodes: Iterable[str] = ()) -> dict:
    """How much of the engine runs in INT8, and which ONNX INT8 convs TensorRT ran in another precision.

    ``int8_nodes``: the ONNX nodes the graph quantized (``quantized_onnx_nodes``). One the engine
    runs in another precision is a fallback; one found in no layer, or only inside an opaque Myelin
    region whose inner precisions the inspector does not show, is listed as unattributed rather
    than guessed.
    """
    layers = list(layers)
    counted = [layer for layer in layers if layer.layer_type not in BOOKKEEPING_TYPES]
    compute = [layer for layer in counted if layer.compute]
    fallback, unattributed = [], []
    for node in int8_nodes:
        owners = [layer for layer in counted if not layer.opaque and layer.came_from(node)]
        if not owners:
            unattributed.append(node)
        elif not any(layer.precision == "int8" for layer in owners):
            owner = next((layer for layer in owners if layer.compute), owners[0])
            fallback.append({"node": node, "layer": owner.name, "precision": owner.precision})
    by_precision = Counter(layer.precision for layer in counted)
    compute_by_precision = Counter(layer.precision for layer in compute)
    return {
        "layers": len(counted),
        "bookkeeping_layers": len(layers) - len(counted),
        "by_precision": dict(sorted(by_precision.items())),
        "int8_layer_share": _share(by_precision["int8"], len(counted)),
        "compute_layers": len(compute),
        "compute_by_precision": dict(sorted(compute_by_precision.items())),
        "int8_compute_share": _share(compute_by_precision["int8"], len(compute)),
        "opaque_layers": [layer.name for layer in layers if layer.opaque],
        "int8_fallback": fallback,
        "int8_unattributed": unattributed,
    }
