"""The demo web page at ``/`` (its assets are mounted at ``/static`` by the app factory)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from server.errors import error_response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> Response:
    """The page itself."""
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return error_response(404, "the web page is not installed (server/static/index.html)")
    return FileResponse(page)
