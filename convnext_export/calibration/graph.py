"""The fused FP32 graph as the INT8 and FP16 steps see it: nodes named after the modules.

The dynamo exporter names nodes ``node_Conv_67``; its ``pkg.torch.onnx.name_scopes`` metadata
keeps the module path. Nodes are renamed ``<module path>/<OpType>`` (``stages.0.0.pwconv1/Conv``,
``stages.0.0.norm/LayerNormalization``, ``stages.0.0/Add``), so ``--exclude`` patterns,
fallback reports and the manifest speak the official parameter names.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import Counter
from collections.abc import Iterable

import onnx

# Op classes of the INT8 recipe, from the module path of a node.
_CLASS_BY_SUFFIX = (
    (re.compile(r"^stem(\.0)?$"), "stem_conv"),
    (re.compile(r"^downsamples\.\d+(\.1)?$"), "downsample_conv"),
    (re.compile(r"\.dwconv$"), "dwconv"),
    (re.compile(r"\.pwconv1$"), "pwconv1"),
    (re.compile(r"\.pwconv2$"), "pwconv2"),
    (re.compile(r"^head$"), "head"),
)


def _module_path(node: onnx.NodeProto) -> str | None:
    for entry in node.metadata_props:
        if entry.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(entry.value)
            except (ValueError, SyntaxError):
                return None
            # The last scope is the aten call (conv2d_3); the one before it, the module.
            modules = [s for s in scopes[:-1] if s]
            return modules[-1] if modules else ""
    return None


def name_nodes_by_module(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename nodes in place to ``<module>/<OpType>[_k]``; nodes without scope metadata keep their name."""
    used: Counter = Counter()
    for node in model.graph.node:
        module = _module_path(node)
        if module is None:
            continue
        base = f"{module or 'model'}/{node.op_type}"
        used[base] += 1
        node.name = base if used[base] == 1 else f"{base}_{used[base] - 1}"
    return model


def module_of(node_name: str) -> str:
    return node_name.rsplit("/", 1)[0]


def op_class(node: onnx.NodeProto) -> str:
    """The recipe's class of a node: stem_conv, downsample_conv, dwconv, pwconv1, pwconv2, head,
    layernorm, gelu, residual_add, or other."""
    module = module_of(node.name)
    if node.op_type in ("Conv", "Gemm", "MatMul"):
        for pattern, name in _CLASS_BY_SUFFIX:
            if pattern.search(module):
                return name
        return "other"
    if node.op_type == "Add":  # the block's own Add; a decomposed GELU's Add lives in stages.i.j.act
        return "residual_add" if re.fullmatch(r"stages\.\d+\.\d+", module) else "other"
    return {"LayerNormalization": "layernorm", "Gelu": "gelu"}.get(node.op_type, "other")


def stage_of(node_name: str) -> str:
    """stem, stages.i, downsamples.i or head: the unit the fallback moves at once when asked to."""
    module = module_of(node_name)
    match = re.match(r"^(stages\.\d+|downsamples\.\d+)", module)
    if match:
        return match.group(1)
    return module.split(".")[0] or "model"


def graph_fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of what the graph computes: nodes (type, inputs, outputs, attributes) and initializers.

    Metadata (stack traces, producer, doc strings) is left out, so re-exporting the same model
    from another checkout gives the same fingerprint.
    """
    digest = hashlib.sha256()
    for node in model.graph.node:
        digest.update(f"{node.op_type}|{node.domain}|{','.join(node.input)}|{','.join(node.output)}|".encode())
        for attribute in sorted(node.attribute, key=lambda a: a.name):
            copy = onnx.AttributeProto()
            copy.CopyFrom(attribute)
            copy.ClearField("doc_string")
            digest.update(copy.SerializeToString(deterministic=True))
    for initializer in sorted(model.graph.initializer, key=lambda t: t.name):
        digest.update(initializer.name.encode())
        digest.update(bytes(initializer.dims.__repr__(), "ascii"))
        digest.update(onnx.numpy_helper.to_array(initializer).tobytes())
    for value in list(model.graph.input) + list(model.graph.output):
        digest.update(value.SerializeToString(deterministic=True))
    return digest.hexdigest()


def nodes_matching(model: onnx.ModelProto, patterns: Iterable[str]) -> dict[str, list[str]]:
    """pattern -> names of the nodes it matches (fnmatch on the node name or its module path)."""
    from fnmatch import fnmatchcase

    names = [node.name for node in model.graph.node]
    return {pattern: [name for name in names if fnmatchcase(name, pattern) or fnmatchcase(module_of(name), pattern)]
            for pattern in patterns}


def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes sorted so each comes after the producers of its inputs (quantizers append Q/DQ nodes
    at the end of the list, so the stored order is not always topological)."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    waiting = [sum(1 for name in set(node.input) if name in producer) for node in graph.node]
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in set(node.input):
            if name in producer:
                consumers.setdefault(producer[name], []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in consumers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    return [graph.node[i] for i in order]
