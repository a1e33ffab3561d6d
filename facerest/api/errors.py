"""The one place where exceptions become HTTP answers: `{"detail": ..., "code": ...}`.

Stack traces go to the log only; a response never carries more than the one-line detail.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from facerest.api.responses import JSONResponse
from facerest.errors import FaceRestError, Overloaded

log = logging.getLogger(__name__)

# where a handler leaves the error code of the answer, for the metrics middleware to count
ERROR_CODE_KEY = "facerest.error_code"

_HTTP_CODES = {
    400: "bad_input",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def error_body(detail: str, code: str) -> dict[str, Any]:
    return {"detail": detail, "code": code}


def error_response(
    request: Request, detail: str, code: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    request.scope[ERROR_CODE_KEY] = code
    return JSONResponse(error_body(detail, code), status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FaceRestError)
    async def _facerest(request: Request, exc: FaceRestError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Overloaded) else None
        if exc.status_code >= 500 and not isinstance(exc, Overloaded):
            log.error("%s %s failed: %s", request.method, request.url.path, exc.detail)
        return error_response(request, exc.detail, exc.code, exc.status_code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, _validation_detail(exc), "validation_error", 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(request, str(exc.detail), code, exc.status_code, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request, "internal error; see the server log", "internal_error", 500)
