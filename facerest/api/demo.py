"""The demo page at /demo: one HTML page, its script and style, all served from the package."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends
from starlette.responses import Response

from facerest.api.access import allow
from facerest.errors import NotFound

router = APIRouter(include_in_schema=False)

# the only files served: a fixed list, so no request path ever reaches the file system
_STATIC = {
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}


def _read(name: str) -> bytes:
    return resources.files("facerest.api").joinpath("static", name).read_bytes()


@router.get("/demo", dependencies=[Depends(allow("extract"))])
async def demo_page() -> Response:
    return Response(_read("demo.html"), media_type="text/html; charset=utf-8")


@router.get("/demo/static/{name}", dependencies=[Depends(allow("extract"))])
async def demo_static(name: str) -> Response:
    media = _STATIC.get(name)
    if media is None:
        raise NotFound(f"no demo file named {name!r}")
    return Response(_read(name), media_type=media, headers={"Cache-Control": "no-cache"})
