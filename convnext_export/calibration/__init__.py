"""Calibrated INT8 for the fused ConvNeXt graph.

data      calibration images (any dataset form, or seeded noise) and the hold-out that checks them
ranges    activation ranges from ONNX Runtime's calibrators, fed from an iterable of batches
equalize  the exact per-channel rescaling of each stage's residual stream that per-tensor INT8 needs
cache     ranges saved beside the artifact under a key of everything they depend on
recipe    which nodes are INT8, per op class, stage and target (cpu | tensorrt)
quantize  the plan applied with ONNX Runtime's QDQ quantizer
fallback  the most harmful units moved back to float until a top-1 agreement budget holds
int8      the step the pipeline calls: all of the above, checked against the eager model
"""

from .int8 import DEFAULT_METHOD, Int8Options, Int8Result, build_int8

__all__ = ["DEFAULT_METHOD", "Int8Options", "Int8Result", "build_int8"]
