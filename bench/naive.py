"""The naive baseline server: what a user writes by hand around an ONNX file, for ``bench.http`` to compare.

    python -m bench.naive --onnx PLAIN.onnx --port 8001                       # float NCHW in, scores out
    python -m bench.naive --onnx models/demo/fcn8s-demo.onnx --graph deployable --port 8002

FastAPI + uvicorn, one ONNX Runtime session with its default options, ``POST /segment`` (multipart field
``image`` or a raw body) answered with a palette PNG of the labels. The blocking work runs on Starlette's
thread pool, as FastAPI does for a plain ``def`` endpoint. No resizing, padding, batching, queue or limits.

``--graph plain`` (the default, :func:`bench.models.export_naive`): PIL decode → RGB → numpy normalisation
(the model metadata's :class:`~common.metadata.Normalization`) → NCHW float → ``session.run`` → numpy argmax.
``--graph deployable``: the service's own graph (uint8 NHWC in, labels out), fed the decoded RGB as is —
"the naive server on the service's graph", which isolates what the serving layer itself gains.
``GET /health/ready`` answers 200 once the session exists (the benchmark's launcher waits on it).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from common.classes import flat_palette
from common.metadata import ModelMetadata
from common.onnxrt import create_session, read_metadata

Graph = Literal["plain", "deployable"]


class NaiveSegmenter:
    """Bytes → labels PNG with one session, in plain numpy and PIL."""

    def __init__(self, onnx: Path, graph: Graph) -> None:
        self.metadata: ModelMetadata = read_metadata(onnx)[0]
        self.session = create_session(onnx)
        self.input_name = self.session.get_inputs()[0].name
        self.graph = graph
        norm = self.metadata.normalization
        self.flip = norm.channel_order == "BGR"
        self.scale = np.float32(norm.scale)
        self.mean = np.asarray(norm.mean, dtype=np.float32)
        self.std = np.asarray(norm.std, dtype=np.float32)
        self.palette = flat_palette([tuple(c) for c in self.metadata.palette])

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        """``uint8 [H, W]`` class indices of an ``uint8 [H, W, 3]`` RGB image."""
        if self.graph == "deployable":
            return self.session.run(None, {self.input_name: rgb[None]})[0][0]
        x = rgb.astype(np.float32)
        if self.flip:
            x = x[..., ::-1]
        x = (x * self.scale - self.mean) / self.std
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        scores = self.session.run(None, {self.input_name: x})[0]
        return scores[0].argmax(axis=0).astype(np.uint8)

    def __call__(self, data: bytes) -> bytes:
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        image = Image.fromarray(self.labels(rgb), mode="P")
        image.putpalette(self.palette)
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()


def create_app(segmenter: NaiveSegmenter) -> FastAPI:
    """The two endpoints."""
    app = FastAPI(title="naive FCN server")

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/segment")
    async def segment(request: Request) -> Response:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                detail = '{"detail": "send the image in the multipart field image"}'
                return Response(detail, 400, media_type="application/json")
            data = await upload.read()
        else:
            data = await request.body()
        try:
            body = await run_in_threadpool(segmenter, data)
        except Exception as error:  # what a hand-written server does: any failure is the client's image
            return Response(f'{{"detail": "{type(error).__name__}"}}', 400, media_type="application/json")
        return Response(body, media_type="image/png")

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX file (with fcn_metadata)")
    parser.add_argument("--graph", choices=["plain", "deployable"], default="plain")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="info", help="uvicorn's (info = one access line a request)")
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(
        create_app(NaiveSegmenter(args.onnx, args.graph)),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
