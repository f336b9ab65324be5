"""What an ONNX model is, recorded in the manifest at export and checked against the file on load.

The manifest's sha256 says the file is the one exported; it does not say the manifest tells the truth
about it (an edited ``precision`` or ``image_size``, another network's ONNX with its sha updated) or
that the file loads. ``verify_model`` reads the graph and checks the manifest's claims against it
(precision from the Q/DQ and FP16 markers, input and output shapes, the config's layer shapes) and,
where the manifest has one, the fingerprint recorded at export (inputs, outputs, op census, precision
markers, initializer shapes). Any disagreement is a bad artifact (InputError, exit 2).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx

from .errors import InputError

if TYPE_CHECKING:
    from .artifact import Artifact
    from .config import ConvNeXtConfig

FINGERPRINT = "fingerprint"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def op_census(proto: onnx.ModelProto) -> dict[str, int]:
    """Op type -> count, most frequent first."""
    return dict(Counter(node.op_type for node in proto.graph.node).most_common())


def _tensor(value: onnx.ValueInfoProto) -> dict:
    tensor = value.type.tensor_type
    shape = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            if tensor.elem_type else "undefined", "shape": shape}


def graph_inputs(proto: onnx.ModelProto) -> list[dict]:
    initializers = {init.name for init in proto.graph.initializer}
    return [_tensor(value) for value in proto.graph.input if value.name not in initializers]


def precision_markers(proto: onnx.ModelProto) -> dict[str, int]:
    """Counts that say a graph's precision: Q/DQ nodes, integer and FP16 initializers, casts to FP16."""
    census = Counter(node.op_type for node in proto.graph.node)
    types = Counter(init.data_type for init in proto.graph.initializer)
    casts = sum(1 for node in proto.graph.node if node.op_type == "Cast"
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in node.attribute))
    return {"QuantizeLinear": census["QuantizeLinear"], "DequantizeLinear": census["DequantizeLinear"],
            "integer_initializers": types[onnx.TensorProto.INT8] + types[onnx.TensorProto.UINT8],
            "cast_to_fp16": casts, "fp16_initializers": types[onnx.TensorProto.FLOAT16]}


def graph_precision(markers: dict[str, int]) -> str:
    """fp32 / fp16 / int8, as the graph's markers say."""
    if markers["QuantizeLinear"] or markers["DequantizeLinear"]:
        return "int8"
    if markers["cast_to_fp16"] or markers["fp16_initializers"]:
        return "fp16"
    return "fp32"


def _initializer_shapes(proto: onnx.ModelProto) -> list[list[int]]:
    return [list(init.dims) for init in proto.graph.initializer]


def model_fingerprint(proto: onnx.ModelProto) -> dict:
    """What the manifest records of the graph at export."""
    shapes = _initializer_shapes(proto)
    elements = sum(int(_product(shape)) for shape in shapes)
    return {
        "inputs": graph_inputs(proto),
        "outputs": [_tensor(value) for value in proto.graph.output],
        "op_census": op_census(proto),
        "precision_markers": precision_markers(proto),
        "initializers": {"count": len(shapes), "elements": elements,
                         "shapes_sha256": hashlib.sha256(json.dumps(sorted(shapes)).encode()).hexdigest()},
    }


def _product(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def config_shape_problems(config: "ConvNeXtConfig", proto: onnx.ModelProto) -> list[str]:
    """The config's layers the graph lacks: the 4x4 stem conv of width dims[0] and depths[i] 7x7 depthwise
    convs of width dims[i] per stage (no fusion changes those)."""
    shapes = Counter(tuple(shape) for shape in _initializer_shapes(proto))
    problems = []
    stem = (config.dims[0], 3, 4, 4)
    if not shapes[stem]:
        problems.append(f"no stem conv weight shaped {list(stem)}")
    for stage, (depth, width) in enumerate(zip(config.depths, config.dims)):
        found = shapes[(width, 1, 7, 7)]
        if found != depth:
            problems.append(f"stage {stage}: {found} depthwise 7x7 conv weight(s) of width {width}, the config has "
                            f"{depth} block(s)")
    return problems


def _dim(value: int | str) -> str:
    return str(value) if isinstance(value, int) else f"dynamic ({value})"


def _claims(artifact: "Artifact", proto: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(disagreements between the manifest's claims and the graph, what could not be checked)."""
    problems, unchecked = [], []
    markers = precision_markers(proto)
    actual = graph_precision(markers)
    if actual != artifact.precision:
        problems.append(f"'precision' is {artifact.precision!r}, the graph is {actual} ({markers['QuantizeLinear']} "
                        f"QuantizeLinear, {markers['DequantizeLinear']} DequantizeLinear, {markers['cast_to_fp16']} "
                        f"casts to FP16, {markers['fp16_initializers']} FP16 initializers)")
    inputs, outputs = graph_inputs(proto), [_tensor(value) for value in proto.graph.output]
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        problems.append(f"the graph's inputs are {[(i['name'], i['shape']) for i in inputs]}, not one image batch "
                        f"[batch, 3, H, W]")
    else:
        batch, channels, height, width = inputs[0]["shape"]
        size = artifact.preprocessing.image_size
        if channels != 3:
            problems.append(f"input {inputs[0]['name']!r} has {_dim(channels)} channels, not 3 (RGB)")
        for axis, value in (("height", height), ("width", width)):
            if isinstance(value, int) and value != size:
                problems.append(f"'preprocessing.image_size' is {size}, the graph's input {axis} is {value}")
            elif not isinstance(value, int):
                unchecked.append(f"input {axis} is dynamic: 'image_size' {size} is checked when it runs")
        if artifact.batch is not None and batch != artifact.batch:
            problems.append(f"'batch' is {artifact.batch}, the graph's input batch is {_dim(batch)}")
        elif artifact.batch is None and isinstance(batch, int):
            problems.append(f"'batch' is null (dynamic), the graph's input batch is static {batch}")
    classes = artifact.config.num_classes
    if len(outputs) < 1 or not outputs[0]["shape"] or outputs[0]["shape"][-1] != classes:
        problems.append(f"'config.num_classes' is {classes}, the graph's outputs are "
                        f"{[(o['name'], o['shape']) for o in outputs]}")
    shape_problems = config_shape_problems(artifact.config, proto)
    if shape_problems:
        problems.append(f"'config' is ConvNeXt-{artifact.config.name} (depths {list(artifact.config.depths)}, dims "
                        f"{list(artifact.config.dims)}), the graph has {'; '.join(shape_problems)}")
    return problems, unchecked


def _fingerprint_problems(recorded: dict, actual: dict) -> list[str]:
    problems = []
    for field in sorted(set(recorded) | set(actual)):
        if recorded.get(field) == actual.get(field):
            continue
        want, have = recorded.get(field), actual.get(field)
        if isinstance(want, dict) and isinstance(have, dict):
            keys = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            detail = ", ".join(f"{k} {want.get(k)} -> {have.get(k)}" for k in keys[:6])
            problems.append(f"fingerprint '{field}' differs (manifest -> graph: {detail}"
                            f"{', ...' if len(keys) > 6 else ''})")
        else:
            problems.append(f"fingerprint '{field}' is {json.dumps(want)[:200]}, the graph has {json.dumps(have)[:200]}")
    return problems


def load_model(artifact: "Artifact") -> onnx.ModelProto:
    """The artifact's ONNX graph (weights inline; external data not read); InputError when it does not parse."""
    from .artifact import reexport_hint

    try:
        return onnx.load(str(artifact.model_path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError, onnx's errors: all mean a damaged file
        lines = str(error).strip().splitlines()
        raise InputError(f"{artifact.model_path}: does not load as an ONNX model ({type(error).__name__}"
                         f"{': ' + lines[0][:160] if lines else ''}) although its sha256 matches the manifest: the "
                         f"artifact is damaged; {reexport_hint(artifact.directory, artifact.to_dict())}") from None


def verify_model(artifact: "Artifact", log: Callable[[str], None] = lambda message: None) -> None:
    """Check the ONNX file against the manifest's claims and fingerprint (InputError naming the artifact, the field
    and what the graph says); ``log`` hears what an older manifest without a fingerprint left unchecked."""
    from .artifact import reexport_hint

    proto = load_model(artifact)
    problems, unchecked = _claims(artifact, proto)
    recorded = artifact.extra.get(FINGERPRINT)
    actual = model_fingerprint(proto)
    if isinstance(recorded, dict):
        problems += _fingerprint_problems(recorded, actual)
    else:
        census = artifact.extra.get("op_census")
        if isinstance(census, dict) and census != actual["op_census"]:
            problems += _fingerprint_problems({"op_census": census}, {"op_census": actual["op_census"]})
        unchecked.append("the manifest has no fingerprint (an older convnext-export): precision, input and output "
                         "shapes, the config's layer shapes" + (" and op census" if census else "") + " were checked "
                         "against the graph; its initializers and precision marker counts could not be")
    if problems:
        raise InputError(f"{artifact.directory}: the manifest does not describe {artifact.model_path.name}: "
                         f"{'; '.join(problems)}. The artifact was edited after export; "
                         f"{reexport_hint(artifact.directory, artifact.to_dict())}")
    for note in unchecked:
        log(f"{artifact.name}: {note}")
