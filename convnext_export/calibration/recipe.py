"""The ConvNeXt INT8 recipe: which nodes compute in INT8, per op class, per stage and per target.

A node named here is "quantized" in ONNX Runtime's QDQ sense: Q/DQ pairs sit on its inputs
(and its weights are per-channel symmetric int8), never on its outputs; a tensor therefore
carries Q/DQ exactly when some quantized node reads it. The classes:

- INT8 everywhere: the stem 4x4 conv, both pointwise convs, the head Gemm.
- INT8 in stages 0-1, float in stages 2-3 (``FLOAT_STREAM_STAGES``): the residual stream and
  what touches it -- the 7x7 depthwise conv (reads it), the LayerNorm input after it, the
  residual Add, and the downsample conv that starts the stage. The deep stages carry the
  stream's largest outliers: on the CIFAR-10 reference (ConvNeXt-atto, 8,000 test images)
  quantizing those streams cost ~0.6 point of top-1 agreement with eager (98.5% -> 99.15%
  with them float, after ``equalize``), while at 224 px these stages are 14x14 and 7x7, so
  keeping them float cost ~3-5% of ConvNeXt-T's INT8 latency here.
- ``norm_input``: the Transpose in front of a LayerNorm that follows a conv (stem, blocks) or
  a residual Add (downsamples). Quantizing its input puts a Q right after the conv or Add:
  ONNX Runtime then runs it as a QLinearConv / QLinearAdd, and TensorRT picks
  int8-in/int8-out kernels instead of int8-in/fp16-out (NVIDIA Model-Optimizer PR #1117).
- ``conv_output`` (added by ``tap_conv_outputs``): an Identity after an INT8 conv whose
  readers are all float (pwconv2 into a float residual Add), so the conv still gets the Q
  on its output that ONNX Runtime needs to run it as a QLinearConv.
- LayerNormalization stays float on both targets: no int8 kernel on the CPU, and TensorRT
  keeps normalisation in FP16/FP32.
- GELU: on ``cpu`` its input is quantized too, so pwconv1 runs as a QLinearConv (u8 out) and
  GELU is one DQ -> Gelu -> Q island feeding pwconv2's QLinearConv. Measured on this CPU
  (ConvNeXt-T, 2 threads, ONNX Runtime profile): QLinearConv ~60% (the pointwise convs run
  near the VNNI peak), GELU 13-14%, Q/DQ ~14% (ONNX Runtime runs them single-threaded),
  LayerNorm 5-6%. ONNX Runtime's transpose optimizer removes every LayerNorm Transpose pair
  once the convs are NHWC QLinearConvs, whichever side of the Transposes the Q/DQ sit on, so
  no Transpose is left to attack in INT8 stages. Leaving GELU's input float instead made
  pwconv1 a float conv (ONNX Runtime has no int8 conv with a float output); rewriting the
  pointwise convs as Gemms (QGemm with a float output, no DQ before GELU) measured no faster.
  ONNX Runtime has no u8 table kernel for GELU (the island is a 256-entry table; Gather as a table was
  slower than the island in a one-off test): ``--gelu sigmoid`` (``sigmoid_gelu.py``) writes it in the sigmoid form that
  its QLinearSigmoid / QLinearMul table kernels run.
  On ``tensorrt`` GELU's input stays float: pwconv1 is int8-in/fp16-out with GELU fused as
  its epilogue (TensorRT #3127, #4180), and the Q in front of pwconv2 quantizes its output.

Activations: ``cpu`` uses asymmetric uint8 (u8s8 is the VNNI path; signed activations ran
~3x slower here); ``tensorrt`` uses symmetric int8 with zero point 0, all it accepts, with a
dedicated Q/DQ pair per consumer and float biases (TensorRT's parser rejects an int32
DequantizeLinear: "only activation types allowed as input to this layer", onnx-tensorrt #850).
Keeping a conv float takes care: ONNX Runtime quantizes a float conv it finds between a DQ
and a Q by itself, so ``QuantPlan.without`` also floats what would put a Q after it.

Weights and the CPU's integer path (``isa.py``, ``saturation.py``): x86 CPUs without VNNI (AVX2,
AVX-512 BW) sum u8 x s8 products in pairs into a saturating int16, and full-range per-channel
int8 weights overflow it. An artifact is built on one machine (CI, a workstation) and deployed on
CPUs nobody checked, so the default ``--isa x86`` ("portable") is made for every x86 path:
``weight_range_bits`` makes its weights 7-bit ([-64, 64] per channel, ``overflow.reduce_weight_range``),
as for every artifact made for a saturating path (``--isa avx2``, ``avx512bw``, ``--isa host`` on such a
host or an unknown one): 255 x 128 = 32640 fits int16, so no input can saturate, and the kernels are
the same u8 x s8 ones, so the speed is too. The export validates it on the host's kernels and on the
emulated saturating ones (``validation.kernel_families``). ``--isa host`` on a VNNI / AMX host, or
``--isa avx512_vnni`` / ``avx_vnni`` / ``amx``, keeps 8-bit weights: the host-only form.
Why 7-bit everywhere and not 8-bit where a layer cannot saturate: on the official reference no integer
layer's 8-bit weights are pair-safe (each of the 27 has same-sign pairs with |w_i| + |w_j| > 128: 183 of 960
in the stem, 25 of 1,600 in the head, 1-3% of the pairs elsewhere), so that mixed form is the 7-bit form.

Measured (``benchmarks/int8_isa.py``, ``benchmarks/results/int8_isa.md``): both CIFAR-10 references
(ConvNeXt-atto, official layout 78.48% eager; timm conv_mlp layout, other recipe, 69.10% eager), default
calibration (256 train images), top-1 agreement with eager on the 8,000 test images (qemu: ONNX Runtime's
own AVX2 kernels under ``qemu-x86_64 -cpu Haswell`` on 1,000 of them, all classes). AVX-512 BW pairs
like AVX2 (``saturation.py``): its figure is the emulated one (qemu has no AVX-512).

| weights | reference | host | simulated Q/DQ | host kernels | AVX2 emulated | AVX2 under qemu |
|---|---|---|---|---|---|---|
| 7-bit (default, portable) | official | Xeon, amx | 99.05% | 99.12% | 99.09% | 99.1% |
| 7-bit (default, portable) | timm | Xeon, amx | 99.10% | 99.10% | 99.08% | 98.9% |
| 8-bit (host-only on VNNI / AMX) | official | Xeon, amx | (not run) | 99.11% | (not run) | (not run) |
| 8-bit (host-only on VNNI) | official | Zen 4, avx512_vnni | 99.09% | 99.11% | 91.88% | 91.1% |
| 8-bit (host-only on VNNI) | timm | Zen 4, avx512_vnni | 99.21% | 99.14% | 94.29% | 94.7% |
| 7-bit (default, portable) | official | Zen 4, avx512_vnni | 99.05% | 99.12% | 99.09% | 99.1% |
| 7-bit (default, portable) | timm | Zen 4, avx512_vnni | 99.10% | 99.10% | 99.08% | 98.9% |
| u8 x u8 (zero point 128) | official / timm | Zen 4, avx512_vnni | 99.09% / 99.21% | 99.11% / 99.14% | | 99.2% / 99.4% |
| 8-bit, unsafe pairs limited | official / timm | Zen 4, avx512_vnni | 88.95% / 91.12% | 88.96% / 91.11% | | 88.2% / 89.0% |

The Xeon rows (Intel, AMX host: exact int32 like VNNI) are today's run on a busy shared machine, accuracy only,
cells marked not run were not reached by its deadline. The Zen 4 rows are the quiet-machine run of ``python benchmarks/int8_isa.py --qemu 1000 --repeats 3``, whose
7-bit form was ``--isa avx2``: the same model as today's default (same calibration and quantization, weights
equal initializer for initializer, checked on the official reference). Top-1 of the 7-bit form stays within
0.12 point of eager on every 8,000-image run (0.4 on qemu's 1,000; one qemu image is 0.1 point). Its speed on
VNNI kernels is the 8-bit form's (ConvNeXt-T, same run: 1.009x, 1.006-1.011x over 3 repeats; an earlier
invocation 0.997x): the same kernels; u8 x u8 keeps 8-bit accuracy but runs ONNX Runtime's slower u8 x u8
kernels (0.59x). Limiting only the pairs that can overflow changes ~2% of them, but by up to 63 codes each, on
the large weights that matter most.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from ..errors import InputError
from ..isa import ALL_X86, X86_PATHS, HostIsa, IsaTarget
from .graph import module_of, nodes_matching, op_class

TARGETS = ("cpu", "tensorrt")
INT8_CLASSES = ("stem_conv", "downsample_conv", "dwconv", "pwconv1", "pwconv2", "head", "residual_add",
                "conv_output")
# Stages whose residual stream (and the depthwise conv, LayerNorm input, residual Add and downsample conv
# that touch it) stay float; see the module doc.
FLOAT_STREAM_STAGES = (2, 3)
STREAM_CLASSES = ("dwconv", "norm_input", "residual_add", "downsample_conv")
FLOAT_CLASSES = ("layernorm",)


@dataclass(frozen=True)
class Target:
    name: str
    activation_type: str  # "uint8" | "int8"
    activation_symmetric: bool
    dedicated_qdq_pair: bool
    quantize_bias: bool  # int32 bias behind a DequantizeLinear (ONNX Runtime's QLinearConv) or float bias
    quantized_classes: tuple[str, ...]
    float_stream_stages: tuple[int, ...] = FLOAT_STREAM_STAGES


TARGET_RECIPES = {
    "cpu": Target("cpu", "uint8", False, False, True, INT8_CLASSES + ("norm_input", "gelu")),
    "tensorrt": Target("tensorrt", "int8", True, True, False, INT8_CLASSES + ("norm_input",)),
}


def get_target(name: str) -> Target:
    if name not in TARGET_RECIPES:
        raise InputError(f"--target {name!r}: use one of {', '.join(TARGETS)}")
    return TARGET_RECIPES[name]


def weight_range_bits(isa: IsaTarget | None) -> int:
    """7-bit wherever a path the artifact is made for may saturate u8 x s8 pairs (the default ``x86`` included),
    8-bit for paths that accumulate exactly (VNNI, AMX; TensorRT: ``None``); see the module doc's measurements."""
    return 7 if isa is not None and isa.saturating else 8


def isa_report(isa: IsaTarget | None, host: HostIsa, weight_bits: int) -> dict:
    """The manifest's ``isa`` entry: what the artifact's integer weights were made and validated for."""
    if isa is None:
        return {"made_for": "tensorrt", "runs_on": ["tensorrt"], "weight_bits": weight_bits, "host": host.to_dict(),
                "note": "TensorRT's int8 kernels accumulate in int32; ONNX Runtime on this host only checks the graph"}
    runs_on = isa.runs_on if weight_bits == 8 else IsaTarget(ALL_X86, host).runs_on
    return {"made_for": isa.name, "runs_on": list(runs_on), "portable": set(runs_on) >= set(X86_PATHS),
            "weight_bits": weight_bits, "host": host.to_dict()}


def recipe_class(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]],
                 producers: dict[str, onnx.NodeProto]) -> str:
    """op_class, plus ``norm_input`` for the Transpose that takes a conv's or Add's output into a LayerNorm."""
    if node.op_type == "Transpose":
        producer = producers.get(node.input[0])
        feeds_norm = any(c.op_type == "LayerNormalization" for c in consumers.get(node.output[0], []))
        if feeds_norm and producer is not None and producer.op_type in ("Conv", "Add"):
            return "norm_input"
    return op_class(node)


def stream_stage(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> int | None:
    """The stage whose residual stream a node reads or writes (a downsample's norm reads the previous stage's)."""
    match = re.match(r"^stages\.(\d+)\.", node.name)
    if match:
        return int(match.group(1))
    match = re.match(r"^downsamples\.(\d+)\.1/", node.name)  # writes the next stage's stream
    if match:
        return int(match.group(1)) + 1
    producer = producers.get(node.input[0]) if node.input else None
    match = re.match(r"^stages\.(\d+)\.\d+/Add$", producer.name) if producer is not None else None
    return int(match.group(1)) if match else None


def fallback_unit(node_name: str) -> str:
    """The unit the fallback moves back to float at once: a block, the stem, a downsample, the head."""
    module = module_of(node_name)
    match = re.match(r"^(stages\.\d+\.\d+|downsamples\.\d+|stem|head)\b", module)
    return match.group(1) if match else module


@dataclass(frozen=True)
class Wiring:
    """Which node reads and writes which tensor (what keeping a node float implies for its neighbours)."""

    weighted_io: dict[str, tuple[str, str]]  # Conv/Gemm node -> (activation input, output)
    readers: dict[str, tuple[str, ...]]  # tensor -> nodes reading it

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "Wiring":
        readers: dict[str, list[str]] = {}
        for node in model.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node.name)
        weighted = {n.name: (n.input[0], n.output[0]) for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
        return cls(weighted, {k: tuple(v) for k, v in readers.items()})


@dataclass(frozen=True)
class QuantPlan:
    """The nodes a recipe quantizes, by class, after exclusions."""

    target: Target
    classes: dict[str, str]  # quantized node -> class, graph order
    excluded: tuple[str, ...]  # nodes the recipe would quantize but the user or the fallback kept float
    wiring: Wiring

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def without(self, names: Iterable[str]) -> "QuantPlan":
        """The plan with ``names`` float, and float for real: ONNX Runtime quantizes the weights of a conv that
        sits between a DequantizeLinear and a QuantizeLinear by itself, so where a float conv's input stays
        quantized (the residual stream into a depthwise conv), the node reading its output goes float too."""
        names = set(names) & set(self.classes)
        while True:
            kept = {n for n in self.classes if n not in names}
            quantized_inputs = {tensor for tensor, readers in self.wiring.readers.items()
                                if any(r in kept for r in readers)}
            implied = {reader for node, (source, output) in self.wiring.weighted_io.items()
                       if node not in kept and source in quantized_inputs and output in quantized_inputs
                       for reader in self.wiring.readers.get(output, ()) if reader in kept}
            if not implied:
                break
            names |= implied
        moved = tuple(n for n in self.classes if n in names)
        return QuantPlan(self.target, {n: c for n, c in self.classes.items() if n not in names},
                         self.excluded + moved, self.wiring)

    def units(self) -> dict[str, list[str]]:
        units: dict[str, list[str]] = {}
        for name in self.classes:
            units.setdefault(fallback_unit(name), []).append(name)
        return units

    def report(self, weight_bits: int = 8) -> dict:
        """What the manifest lists: per-class counts and names, and what stayed float."""
        by_class: dict[str, list[str]] = {}
        for name, cls in self.classes.items():
            by_class.setdefault(cls, []).append(name)
        return {
            "target": self.target.name,
            "activations": f"{self.target.activation_type} "
                           f"{'symmetric (zero point 0)' if self.target.activation_symmetric else 'asymmetric'}",
            "weights": "int8 per-channel symmetric" + (", 7-bit range [-64, 64] (overflow-safe)"
                                                       if weight_bits == 7 else ""),
            "weight_bits": weight_bits,
            "counts": {cls: len(names) for cls, names in by_class.items()},
            "nodes": by_class,
            "float": {"classes": [c for c in ("layernorm", "gelu") if c not in self.target.quantized_classes],
                      "residual_stream_stages": list(self.target.float_stream_stages),
                      "excluded": list(self.excluded)},
        }


def plan_quantization(model: onnx.ModelProto, target: Target, exclude: Sequence[str] = (),
                      warn=lambda message: None) -> QuantPlan:
    """The recipe applied to a named fused graph; ``exclude`` (fnmatch patterns) keeps nodes float."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node
    classes = {}
    for node in model.graph.node:
        cls = recipe_class(node, consumers, producers)
        if cls in STREAM_CLASSES and stream_stage(node, producers) in target.float_stream_stages:
            continue
        if cls in target.quantized_classes:
            classes[node.name] = cls
    matches = nodes_matching(model, exclude)
    for pattern, names in matches.items():
        if not names:
            warn(f"warning: --exclude {pattern!r} matches no node; node names look like "
                 f"'stages.0.0.pwconv1/Conv', 'stem.0/Conv', 'head/Gemm' (patterns may also match the module path)")
        elif not any(n in classes for n in names):
            warn(f"warning: --exclude {pattern!r} matches only nodes that are float anyway ({', '.join(names[:3])})")
    plan = QuantPlan(target, classes, (), Wiring.of(model))
    return plan.without({n for names in matches.values() for n in names})


def tap_conv_outputs(model: onnx.ModelProto, plan: QuantPlan) -> tuple[onnx.ModelProto, QuantPlan]:
    """Give every INT8 conv whose output no INT8 node reads a quantized output of its own.

    ONNX Runtime runs a conv as QLinearConv only with a Q on its output; where the readers stay
    float (the residual Add of a float-stream stage reads pwconv2, the first blocks of such a
    stage read the downsample conv), an ``Identity`` "tap" in the plan puts that Q there.
    """
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    planned = set(plan.classes)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in tapped.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    nodes, classes = [], dict(plan.classes)
    for node in tapped.graph.node:
        nodes.append(node)
        if node.op_type != "Conv" or node.name not in planned:
            continue
        output = node.output[0]
        if any(r.name in planned for r in readers.get(output, [])):
            continue
        tap = helper.make_node("Identity", [output], [f"{output}.tap"], name=f"{module_of(node.name)}/Identity")
        for reader in readers.get(output, []):
            for index, name in enumerate(reader.input):
                if name == output:
                    reader.input[index] = tap.output[0]
        nodes.append(tap)
        classes[tap.name] = "conv_output"
    del tapped.graph.node[:]
    tapped.graph.node.extend(nodes)
    ordered = {n.name: classes[n.name] for n in tapped.graph.node if n.name in classes}
    return tapped, QuantPlan(plan.target, ordered, plan.excluded, Wiring.of(tapped))
