"""The INT8 peers, built the same way for peers.py's ConvNeXt-T timing and peers_accuracy.py's trained references.

Each builder takes a ``PeerSource`` (one checkpoint, its eager and timm models, the calibration images) and
returns a batch runner, float32 (N, 3, H, W) -> logits. Every peer calibrates on ``source.calibration``, one
image per call, as its tutorial does. ``dynamic_batch`` exports the ONNX and PT2E peers with a dynamic batch so
that accuracy runs can feed many images per call; timing uses the static batch-1 graphs.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.calibration.int8 import Int8Options
from convnext_export.pipeline import ExportRequest, export_artifact

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PeerSource:
    """One checkpoint and what every peer builds from it."""

    checkpoint: Path
    model: torch.nn.Module  # this project's eager ConvNeXt, loaded from the checkpoint
    timm_model: torch.nn.Module  # timm's ConvNeXt with the same weights
    calibration: np.ndarray  # float32 (N, 3, H, W), preprocessed
    work: Path
    threads: int
    dynamic_batch: bool = False

    @property
    def example(self) -> torch.Tensor:
        # a dynamic batch dimension cannot be traced from a batch of 1 (torch.export specializes 0 and 1)
        return torch.from_numpy(self.calibration[:2] if self.dynamic_batch else self.calibration[:1])


def timm_model_for(checkpoint: Path, size: str, num_classes: int) -> torch.nn.Module:
    """timm's ConvNeXt (its own default per size: atto..nano with conv_mlp) from an official or timm checkpoint."""
    import timm
    from timm.models.convnext import checkpoint_filter_fn

    model = timm.create_model(f"convnext_{size}", pretrained=False, num_classes=num_classes).eval()
    model.load_state_dict(checkpoint_filter_fn(torch.load(checkpoint, map_location="cpu", weights_only=True), model))
    return model


def torch_runner(module: Callable, autocast: bool = False) -> Runner:
    @torch.inference_mode()
    def run(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images)
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return module(x).float().numpy()
        return module(x).float().numpy()

    return run


def openvino_runner(ov_model, threads: int) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(ov_model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    print(f"  OpenVINO inference precision: {precision}", file=sys.stderr)

    def run(images: np.ndarray) -> np.ndarray:
        request.infer({0: images})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    return run


def ours(source: PeerSource, precision: str, int8: Int8Options) -> Runner:
    """This project's artifact (default recipe, --target cpu) in ONNX Runtime CPU; dynamic batch by default."""
    request = ExportRequest(weights=source.checkpoint, precision=precision, out=source.work / f"ours-{precision}",
                            force=True, int8=int8)
    return OnnxRuntimeBackend(export_artifact(request).artifact.model_path, threads=source.threads).run


def timm_onnx(source: PeerSource, opset: int | None = None) -> Path:
    """timm's model through ``torch.onnx.export`` (dynamo, defaults or the given opset), written once."""
    batch = "dynamic" if source.dynamic_batch else "b1"
    path = source.work / f"timm-opset{opset or 'default'}-{batch}.onnx"
    if not path.exists():
        kwargs = {} if opset is None else {"opset_version": opset}
        if source.dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        with contextlib.redirect_stdout(sys.stderr):  # the exporter reports progress on stdout
            torch.onnx.export(source.timm_model, (source.example,), str(path), dynamo=True, external_data=False,
                              **kwargs)
    return path


def ort_quantize_static(source: PeerSource, **options) -> Runner:
    """ONNX Runtime's ``quantize_static`` (QDQ) on the timm export; ``options`` as its keyword arguments."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    model = timm_onnx(source)
    input_name = onnx.load(str(model), load_external_data=False).graph.input[0].name
    calibration = source.calibration

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.images = iter(calibration)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {input_name: image[None]}

    suffix = "-".join(f"{key}-{value}" for key, value in sorted(options.items())) or "defaults"
    out = model.with_name(f"{model.stem}-quantize-static-{suffix}.onnx")
    quantize_static(str(model), str(out), Reader(), **options)
    return OnnxRuntimeBackend(out, threads=source.threads).run


def pt2e_int8(source: PeerSource) -> Runner:
    """PyTorch's x86 INT8: PT2E with torchao's X86InductorQuantizer (default config), torch.compile with freezing."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if source.dynamic_batch else {}
    exported = torch.export.export(copy.deepcopy(source.model), (source.example,), **dynamic).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for image in source.calibration:
            prepared(torch.from_numpy(image[None]))
    compiled = torch_runner(torch.compile(convert_pt2e(prepared), dynamic=source.dynamic_batch or None))

    def run(images: np.ndarray) -> np.ndarray:
        # as the x86 inductor INT8 tutorial: freezing constant-folds the int8 weights into oneDNN's kernels; on
        # for every call, so that a recompile (a new batch size) is frozen too
        with inductor_config.patch(freezing=True):
            return compiled(images)

    run(source.example.numpy())  # compile now
    return run


def nncf_int8(source: PeerSource) -> Runner:
    """OpenVINO + NNCF: ``nncf.quantize`` defaults (its subset_size 300 takes all of up to 300 images) on
    ``ov.convert_model`` of timm's model."""
    import nncf
    import openvino as ov

    ov_model = ov.convert_model(source.timm_model, example_input=source.example)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars go to stdout
        quantized = nncf.quantize(ov_model, nncf.Dataset([image[None] for image in source.calibration]))
    return openvino_runner(quantized, source.threads)
