"""Checkpoint → ONNX (pre/post-processing inside the graph) → FP16 ONNX → TensorRT engine / Triton repo.

Importing this package imports nothing heavy: ``export.sidecar`` and ``export.trt`` are used by the
server, which never imports torch.
"""
