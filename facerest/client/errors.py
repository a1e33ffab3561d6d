"""Every error the client raises: transport failures, bad inputs and the server's error answers."""

from __future__ import annotations

import httpx

from facerest.client.codec import decode_body


class FaceRestClientError(Exception):
    """Base of every error the client raises."""


class ConnectionFailed(FaceRestClientError):
    """The server could not be reached (refused, DNS, reset...)."""


class ClientTimeout(FaceRestClientError):
    """The server did not answer within the client's timeout."""


class InvalidImage(FaceRestClientError):
    """An input given to the client is not an image it can send (missing file, bad array...)."""


class APIError(FaceRestClientError):
    """The server answered with an error: `status` (HTTP), `code` and `detail` from its body."""

    def __init__(self, status: int, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(APIError):
    """400: the server could not process the input (bad image, refused URL, missing model...)."""


class ValidationFailed(APIError):
    """422: the request body does not match the API's schema."""


class NotFound(APIError):
    """404: no such gallery, subject, face or endpoint."""


class ModelMismatch(APIError):
    """409: the gallery was built with another recognizer than the server runs."""


class PayloadTooLarge(APIError):
    """413: too many images, or an image or body above the server's limits."""


class Unauthorized(APIError):
    """401/403: a missing or wrong API key."""


class Forbidden(Unauthorized):
    """403: a valid key whose role or galleries do not cover the request (`detail` says which)."""


class Overloaded(APIError):
    """503: the server is at its limit and every retry was used up."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: ModelMismatch,
    413: PayloadTooLarge,
    422: ValidationFailed,
    503: Overloaded,
}


def error_from(response: httpx.Response) -> APIError:
    detail, code = response.text[:500], "http_error"
    try:
        body = decode_body(response)
        if isinstance(body, dict):
            detail = str(body.get("detail", detail))
            code = str(body.get("code", code))
    except Exception:  # a proxy's HTML error page: keep its text as the detail
        pass
    cls = _BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else APIError)
    return cls(response.status_code, code, detail, retry_after(response))


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date or nothing: our own back-off decides
