"""convnext-export: ConvNeXt from checkpoint to fast, precision-explicit ONNX."""

__version__ = "0.1.0"
