"""convnext-export: ConvNeXt from checkpoint to fast, precision-explicit ONNX.

The Python API (``convnext_export.api``): ``export_model(...)`` and ``benchmark(...)`` do what the two commands
do and return what they print and write. They are imported on first use, so ``import convnext_export`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "benchmark", "export_model", "export_request"]


def __getattr__(name: str):
    if name in ("benchmark", "export_model", "export_request"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'convnext_export' has no attribute {name!r}")
