"""The FCN segmentation inference service: FastAPI routes over a shape-bucketed dynamic batcher.

Nothing in this package imports torch; TensorRT is imported only through ``export.trt``.
"""
