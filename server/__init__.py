"""The FCN segmentation inference service: FastAPI routes over a shape-bucketed dynamic batcher.

Nothing in this package imports torch or ``export/``; TensorRT is imported only through ``engine.runtime``.
"""
