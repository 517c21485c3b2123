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
from server.middleware import HeaderLimitMiddleware, RequestIdMiddleware, RequestMetrics
from server.routes import health, info, segment, v2, web
from server.settings import Settings
from server.upload import BodyBudget


def create_app(settings: Settings, backend_loader: BackendLoader = load_backend) -> FastAPI:
    """Build the service. ``backend_loader(settings) -> Backend`` is called once at start-up (in a worker
    thread); pass your own to serve a test double or a preloaded backend (``lambda _: backend``).
    """
    service = Service(
        settings=settings,
        metrics=Metrics(),
        bodies=BodyBudget(settings.max_inflight_body_bytes),
    )
    app = FastAPI(
        title="FCN semantic segmentation",
        version="1.0",
        summary="POST an image, get a per-pixel class map (label PNG or COCO-RLE JSON)",
        lifespan=lifespan(service, backend_loader),
        docs_url="/docs" if settings.docs_pages else None,
        redoc_url="/redoc" if settings.docs_pages else None,
        redirect_slashes=False,  # a redirect would be built from the client's Host header
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
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    app.add_middleware(RequestIdMiddleware)
    install_handlers(app)
    for module in (health, info, segment, web):
        app.include_router(module.router)
    v2.install(app)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR, check_dir=False), name="static")
    return app
