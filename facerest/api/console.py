"""The console at /console (issue 29): one page, its script and style, served from the package.

It is a client of the public API and nothing more: every call it makes carries the key the user
typed (X-API-Key), so it can do exactly what that key can do through the API. The page and its
files hold nothing secret and are served without a key (the page is where the key is typed).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends
from starlette.responses import RedirectResponse, Response

from facerest.api.access import public
from facerest.errors import NotFound

router = APIRouter(include_in_schema=False)

# the only files served: a fixed list, so no request path ever reaches the file system
_STATIC = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
#: the page's own rules: scripts and styles from this server only, no frames, no plugins
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files("facerest.api").joinpath("static", name).read_bytes()


@router.get("/console", dependencies=[Depends(public())])
async def console_page() -> Response:
    return Response(_read("console.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/console/", dependencies=[Depends(public())])
async def console_slash() -> Response:
    # relative: right behind any path prefix (the page's own links are relative to /console)
    return RedirectResponse("../console", status_code=308)


@router.get("/console/static/{name}", dependencies=[Depends(public())])
async def console_static(name: str) -> Response:
    media = _STATIC.get(name)
    if media is None:
        raise NotFound(f"no console file named {name!r}")
    return Response(_read(name), media_type=media, headers=_HEADERS)
