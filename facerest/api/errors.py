"""The one place where exceptions become HTTP answers: `{"detail": ..., "code": ...}`.

Stack traces go to the log only; a response never carries more than the one-line detail.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from facerest.api.responses import JSONResponse
from facerest.errors import FaceRestError, Overloaded, RequestTimeout

log = logging.getLogger(__name__)

# where a handler leaves the error code of the answer, for the metrics middleware to count
ERROR_CODE_KEY = "facerest.error_code"

_HTTP_CODES = {
    400: "bad_input",
    401: "unauthorized",
    403: "forbidden",
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
        if isinstance(exc, RequestTimeout):
            log.warning("%s %s: %s", request.method, request.url.path, exc.detail)
        elif exc.status_code >= 500 and not isinstance(exc, Overloaded):
            log.error("%s %s failed: %s", request.method, request.url.path, exc.detail)
        return error_response(request, exc.detail, exc.code, exc.status_code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, _validation_detail(exc), "validation_error", 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(request, str(exc.detail), code, exc.status_code, exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # the client left (or broke the body framing) mid-body: nobody reads this answer; no trace
        log.info("%s %s: client disconnected before the body was read", request.method, request.url.path)
        return error_response(request, "the client disconnected", "client_disconnected", 400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request, "internal error; see the server log", "internal_error", 500)


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    detail: str = Field(description="What went wrong, in one line (never a stack trace).")
    code: str = Field(
        description="Stable machine-readable kind: validation_error, bad_input, image_decode_error, "
        "image_too_large, too_many_images, body_too_large, unauthorized, forbidden, not_found, overloaded, "
        "timeout, feature_unavailable, model_mismatch, ..."
    )


# the error answers any operation may give, whatever its route declares
_DOCUMENTED_ERRORS = {
    "400": "Bad input (malformed body, unavailable feature...)",
    "401": "Missing or wrong API key (when keys are configured)",
    "403": "The key's role or galleries do not cover this request (the detail says which)",
    "413": "Body, image or image count over its limit",
    "422": "The body or a parameter does not match the schema",
    "503": "Overloaded: retry after the Retry-After header's seconds",
    "504": "The request took longer than FACEREST_REQUEST_TIMEOUT_S",
}


def document_errors(schema: dict[str, Any]) -> None:
    """Declare the one error shape for every operation of an OpenAPI schema (in place)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema()
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, path_item in schema.get("paths", {}).items():
        errors = dict(_DOCUMENTED_ERRORS)
        if "{" in path:  # a path naming a resource may name one that does not exist
            errors["404"] = "No such resource"
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status, description in errors.items():
                declared = responses.setdefault(status, {"description": description})
                # FastAPI's own 422 describes its list-of-errors body, which we never send
                if status == "422" or "content" not in declared:
                    declared["content"] = error
                declared.setdefault("description", description)
            if status_headers := responses.get("503"):
                status_headers.setdefault("headers", {})["Retry-After"] = {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer"},
                }
    # FastAPI's validation error models are unused once every 422 points at ErrorBody
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
