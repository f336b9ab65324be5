"""Run a serialized engine on torch CUDA tensors (no cuda-python: torch owns the buffers and streams).

TensorRT 10/11 name-based I/O: ``set_input_shape`` and ``set_tensor_address`` per I/O tensor,
then ``execute_async_v3(stream)``. ``infer`` runs on torch's current stream, so callers choose
it (``run`` uses a stream of its own: TensorRT's docs advise against the legacy default stream).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConvNeXtExportError, InputError
from .availability import TensorRTRuntime
from .profiles import BatchProfile


def torch_dtype(trt, datatype):
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT8: torch.int8,
             trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool}
    if datatype not in table:
        raise ConvNeXtExportError(f"engine I/O of TensorRT type {datatype} is not supported here")
    return table[datatype]


class EngineRunner:
    """One engine, one execution context; float32 NCHW images in, logits out."""

    def __init__(self, plan: bytes, runtime: TensorRTRuntime, profile: BatchProfile) -> None:
        import torch

        trt = runtime.trt
        self.profile, self.device = profile, torch.device("cuda", runtime.device.index)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ConvNeXtExportError("TensorRT could not deserialize the engine (see its log above); rebuild it "
                                      "with convnext-export ... --trt on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConvNeXtExportError(f"expected one input and one output, the engine has {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        self.stream = torch.cuda.Stream(self.device)

    def infer(self, images):
        """A CUDA tensor (N,3,H,W) -> CUDA logits (N,K) in the engine's output type, enqueued on the current stream."""
        import torch

        batch = int(images.shape[0])
        if not self.profile.accepts(batch):
            raise InputError(f"batch {batch} is outside the engine's profile {self.profile.min}..{self.profile.max}; "
                             f"rebuild with --min-batch/--max-batch covering it")
        x = images.to(self.device, self.input_dtype).contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype,
                          device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise ConvNeXtExportError("TensorRT execute_async_v3 failed (see its log above)")
        return out

    def run(self, images: np.ndarray) -> np.ndarray:
        """Host float32 images -> host float32 logits (copies included; synchronizes)."""
        import torch

        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)
            return self.infer(x).float().cpu().numpy()
