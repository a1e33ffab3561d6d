"""What the CompreFace and DeepStack adapters share (issue 31): the gallery a key reaches (chosen
by the access rule, api/access.py: key_gallery), the 0..1 similarity their clients set thresholds
on, images from their bodies, and routes whose errors take the other API's shape.

The adapters (api/compreface.py, api/deepstack.py) translate requests and answers only; the work
is GalleryService's and the pipeline's, which never learn which API called.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from facerest.api.access import Grant
from facerest.api.errors import ERROR_CODE_KEY
from facerest.api.routes import parse_body
from facerest.config import Settings
from facerest.errors import FaceRestError, ImageTooLarge, TooManyEmbeddings
from facerest.gallery.calibration import Calibration, Decision, fpir_for_fmr
from facerest.gallery.service import check_name
from facerest.imaging.loader import Loaded, load_images

log = logging.getLogger(__name__)


def compat_gallery(grant: Grant) -> str:
    """The one gallery of the CompreFace service or DeepStack server the request's key stands for:
    its rule (`allow(..., gallery=KEY)`, api/access.py: key_gallery) chose and checked it."""
    assert grant.gallery is not None  # a KEY rule always names one
    return check_name("gallery", grant.gallery)


# --- the similarity other APIs' clients threshold ---

#: the similarity at the decision point in force (Double-Take's default "match", 60 %) and the
#: highest one a face below it can read (its default "unknown", 40 %)
AT_DECISION = 0.6
BELOW_DECISION = 0.4
#: similarity per decade of false matches away from the decision point
PER_DECADE = 0.2
#: without a calibration: decades per unit of cosine away from the threshold
DECADES_PER_COSINE = 10.0


def confidence(cosine: float, decision: Decision, calibration: Calibration | None) -> float:
    """A cosine as the 0..1 similarity CompreFace and DeepStack clients set thresholds on.

    A face facerest names (cosine at or above the decision's threshold) reads 0.6 or more, 0.2 more
    for every decade fewer strangers that score this high than at the decision point; a face it
    does not name reads below 0.4, 0.2 less for every decade more strangers. So Double-Take's
    defaults (match from 60 %, "unknown" below 40 %) are facerest's own decision, a threshold of
    0.8 asks for 100 times fewer false matches, and 0.2 lets through faces that strangers reach 10
    times as often as at the decision point. The rate is the false-match rate per comparison for
    1:1 and, for a search, the chance that a stranger scores this high against any of the gallery's
    subjects (FPIR over `decision.subjects`): `decades = log10(rate at decision / rate here)`.
    Without a calibration, 0.1 of cosine counts as a decade.
    """
    if calibration is None or decision.fmr is None:
        decades = DECADES_PER_COSINE * (cosine - decision.threshold)
    else:
        subjects = max(decision.subjects or 1, 1)
        at_decision = fpir_for_fmr(decision.fmr, subjects)
        here = max(fpir_for_fmr(calibration.fmr_at(cosine), subjects), 1e-300)
        decades = math.log10(at_decision / here)
    if cosine >= decision.threshold:  # named: the step functions of a calibration never say less
        value = AT_DECISION + PER_DECADE * max(decades, 0.0)
    else:
        value = min(BELOW_DECISION + PER_DECADE * min(decades, 0.0), BELOW_DECISION - 1e-5)
    return round(min(max(value, 0.0), 1.0), 5)


# --- images ---


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    limit = settings.max_image_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"{upload.filename or 'upload'} is larger than the limit of {limit} bytes")
    return data


def decode(images: list[str | bytes], settings: Settings) -> list[Loaded]:
    """Uploaded bytes or base64 text -> pixels or a per-image error (blocking: a worker thread).
    Never a URL: these APIs take images in the body only."""
    return load_images(images, None, settings)


async def embeddings_body(request: Request, settings: Settings, model: type[BaseModel]) -> Any:
    """A JSON body of embeddings, refused before it is parsed when it holds more arrays than
    FACEREST_MAX_EMBEDDINGS_PER_BODY allows (each embedding is one `[`): 40,000 posted vectors
    cost the event loop nothing."""
    raw = await request.body()
    if raw.count(b"[") - 2 > settings.max_embeddings_per_body:
        raise TooManyEmbeddings(
            f"the body holds more embeddings than the limit of {settings.max_embeddings_per_body}"
        )
    return await parse_body(request, model)


# --- errors in the other API's shape ---

#: (request, HTTP status, message, the exception) -> the other API's error answer
Render = Callable[[Request, int, str, Exception], Response]


def error_route(render: Render) -> type[APIRoute]:
    """A route class whose errors (ours, validation, HTTP, a vanished client) are answered by
    `render(request, status, message, error)` in the other API's shape, never as a 500."""

    class ShapedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                try:
                    return await handler(request)
                except FaceRestError as exc:
                    if exc.status_code >= 500:
                        log.warning("%s %s: %s", request.method, request.url.path, exc.detail)
                    request.scope[ERROR_CODE_KEY] = exc.code
                    answer = render(request, exc.status_code, exc.detail, exc)
                    if exc.status_code == 503:
                        answer.headers["Retry-After"] = str(getattr(exc, "retry_after_s", 1))
                    return answer
                except RequestValidationError as exc:
                    request.scope[ERROR_CODE_KEY] = "validation_error"
                    return render(request, 400, validation_message(exc), exc)
                except StarletteHTTPException as exc:
                    request.scope[ERROR_CODE_KEY] = "http_error"
                    return render(request, exc.status_code, str(exc.detail), exc)
                except ClientDisconnect as exc:
                    request.scope[ERROR_CODE_KEY] = "client_disconnected"
                    return render(request, 400, "the client disconnected", exc)

            return run

    return ShapedRoute


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
