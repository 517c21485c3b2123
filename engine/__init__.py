"""Running TensorRT engines: the engine sidecar and profile (pure data) and the runner.

``engine.spec`` imports neither torch nor TensorRT; ``engine.runtime`` is the only module of the project
that imports ``tensorrt`` and the CUDA runtime binding. The server runs engines through it; the build
(``export/trt.py``) uses its environment probe and TensorRT handle.
"""
