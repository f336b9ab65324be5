"""The TensorRT step: ONNX (precision already explicit) -> engine bytes + what TensorRT chose.

Small modules with one job each: ``availability`` (is there a GPU and the package?),
``profiles`` (optimization profile from the batch options), ``build`` (the builder),
``inspect`` (per-layer precision from the engine inspector), ``compat`` (may this engine
run here?), ``runner`` (run an engine on torch CUDA buffers), ``engine_step`` (the export
road's step: ``model.engine`` and its manifest entry). ``tensorrt`` itself is imported only
inside functions that need it, so everything else works without it.
"""
