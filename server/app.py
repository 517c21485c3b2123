"""The app factory: ``create_app(settings, backend_loader)`` wires lifespan, middleware, errors and routes.

The request path is in :mod:`server.routes.segment`; the service's state and life in
:mod:`server.lifecycle`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from server.backends.select import BackendLoader, load_backend
from server.errors import install_handlers
from server.lifecycle import Service, lifespan
from server.metrics import Metrics
from server.middleware import HeaderLimitMiddleware, RequestIdMiddleware
from server.routes import health, info, segment, v2, web
from server.settings import Settings


def create_app(settings: Settings, backend_loader: BackendLoader = load_backend) -> FastAPI:
    """Build the service. ``backend_loader(settings) -> Backend`` is called once at start-up (in a worker
    thread); pass your own to serve a test double or a preloaded backend (``lambda _: backend``).
    """
    service = Service(settings=settings, metrics=Metrics())
    app = FastAPI(
        title="FCN semantic segmentation",
        version="1.0",
        summary="POST an image, get a per-pixel class map (label PNG or COCO-RLE JSON)",
        lifespan=lifespan(service, backend_loader),
    )
    app.state.service = service
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Accept", "X-API-Key", "X-Request-ID"],
            expose_headers=list(segment.TIMING_HEADERS),
        )
    app.add_middleware(HeaderLimitMiddleware, limit=settings.max_header_bytes)
    app.add_middleware(RequestIdMiddleware)
    install_handlers(app)
    for module in (health, info, segment, web):
        app.include_router(module.router)
    v2.install(app)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR, check_dir=False), name="static")
    return app
