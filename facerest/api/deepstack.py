"""DeepStack's face API at its own paths (issue 31), as DeepStack and CodeProject.AI answer it, for
Double-Take, Home Assistant's DeepStack face integration, the DeepStack SDKs and scripts: multipart
forms in (`image`, `userid`, `min_confidence`, `api_key`), `{"success", ...}` out.

A translation only: the work is GalleryService's and the pipeline's. The `api_key` form field is a
facerest key (issue 30's key ring; the X-API-Key header works too) scoped to one gallery: each route
reads the form first (`_posted`), then its rule (`allow(..., gallery=KEY)`) checks the key's role
and picks its gallery. `confidence` is facerest's calibrated decision mapped to 0..1
(api/compat.py: confidence), so `min_confidence` chooses a decision point (docs/moving.md).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from facerest.api.access import KEY, Access, Grant, allow
from facerest.api.compat import AT_DECISION, compat_gallery, confidence, decode, error_route, read_upload
from facerest.api.responses import JSONResponse
from facerest.api.routes import app_state
from facerest.api.state import AppState
from facerest.errors import (
    FaceRestError,
    ImageDecodeError,
    ImageTooLarge,
    NoFace,
    NotFound,
    StorageUnavailable,
    Unauthorized,
)
from facerest.gallery.people import UNSORTED
from facerest.gallery.service import GalleryService
from facerest.pipeline import ExtractOptions

#: form fields one request may carry (DeepStack's register takes any number of image files)
MAX_FORM_FIELDS = 16


class DeepStackRefusal(FaceRestError):
    """A refusal in DeepStack's words (e.g. "No valid image file found")."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.status_code = status
        self.code = "bad_input"


def _render(request: Request, status: int, message: str, exc: Exception) -> Response:
    if isinstance(exc, Unauthorized):
        message = "Incorrect api key"  # DeepStack's words
    elif isinstance(exc, ImageDecodeError) and not isinstance(exc, ImageTooLarge):
        message = "invalid image"
    elif status == 422:
        status = 400
    return JSONResponse({"success": False, "error": message, "duration": 0}, status)


router = APIRouter(prefix="/v1/vision/face", tags=["DeepStack"], route_class=error_route(_render))


def _service(request: Request) -> tuple[AppState, GalleryService]:
    state = app_state(request)
    if state.gallery is None:
        raise StorageUnavailable("the gallery service is not running")
    return state, state.gallery


@dataclass(slots=True)
class Posted:
    """A DeepStack form: its text fields (names lower-cased) and its files, in order."""

    fields: dict[str, str] = field(default_factory=dict)
    images: list[bytes] = field(default_factory=list)


async def _posted(request: Request) -> Posted:
    """The form, read before the route's rule: its `api_key` field is the request's key (looked up
    in the key ring, Access.use_key); the file fields' names do not matter (DeepStack reads `image`,
    its register any name, CodeProject.AI's match `image1`/`image2`)."""
    state = app_state(request)
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        posted = Posted()
    else:
        limit = state.settings.max_images_per_request
        async with request.form(max_files=limit, max_fields=MAX_FORM_FIELDS) as form:
            posted = Posted(
                _fields(form),
                [await read_upload(v, state.settings) for _, v in form.multi_items() if _is_file(v)],
            )
    key = posted.fields.get("api_key", "")
    if key:
        access: Access = request.app.state.access
        access.use_key(request.scope, key)
    return posted


Form = Depends(_posted)


def _is_file(value: Any) -> bool:
    return isinstance(value, UploadFile)


def _fields(form: FormData) -> dict[str, str]:
    # CodeProject.AI's .NET client writes `userId`; DeepStack reads `userid`
    return {k.lower(): v for k, v in form.multi_items() if isinstance(v, str)}


def _min_confidence(fields: dict[str, str]) -> float | None:
    raw = fields.get("min_confidence", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise DeepStackRefusal("Invalid value for min_confidence") from None
    if not 0.0 <= value <= 1.0:  # DeepStack refuses > 1; a negative one is as meaningless
        raise DeepStackRefusal(
            "min_confidence cannot be greater than 1" if value > 1 else "Invalid value for min_confidence"
        )
    return value


def _userid(fields: dict[str, str]) -> str:
    userid = fields.get("userid", "").strip()
    if not userid:
        raise DeepStackRefusal("userid not specified")
    return userid


def _one_image(images: list[bytes]) -> bytes:
    if not images:
        raise DeepStackRefusal("No valid image file found")
    return images[0]


def _loaded(images: list[bytes], state: AppState) -> list[np.ndarray]:
    out = []
    for image in decode(list(images), state.settings):
        if isinstance(image, FaceRestError):
            raise image
        out.append(image)
    return out


def _box(bbox: list[float] | None) -> dict[str, int]:
    x1, y1, x2, y2 = bbox or (0.0, 0.0, 0.0, 0.0)
    return {"x_min": max(round(x1), 0), "y_min": max(round(y1), 0), "x_max": round(x2), "y_max": round(y2)}


def _ok(started: float, **body: Any) -> JSONResponse:
    return JSONResponse({"success": True, **body, "duration": round(time.perf_counter() - started, 4)})


@router.post("", summary="DeepStack: detect faces")
@router.post("/", include_in_schema=False)
async def detect(
    request: Request, posted: Posted = Form, _: Grant = Depends(allow("extract"))
) -> JSONResponse:
    """`min_confidence`: the detection score a face needs (default: the server's)."""
    started = time.perf_counter()
    state = app_state(request)
    fields, images = posted.fields, posted.images
    image = _one_image(images)
    threshold = _min_confidence(fields)
    options = ExtractOptions(  # detection only: no recognizer run
        threshold=state.settings.det_thresh if threshold is None else threshold, extract_embedding=False
    )
    result = await state.run(lambda: state.analyzer.process(_loaded([image], state), options)[0])
    if not result.ok:
        raise DeepStackRefusal(result.error or "invalid image")
    predictions = [
        {"confidence": round(float(f.score), 5), **_box([float(v) for v in f.bbox])} for f in result.faces
    ]
    return _ok(started, predictions=predictions, count=len(predictions))


@router.post("/register", summary="DeepStack: register the face of one or more images as a user")
async def register(
    request: Request, posted: Posted = Form, grant: Grant = Depends(allow("enrol", gallery=KEY))
) -> JSONResponse:
    """The largest face of each image joins the user (created if new)."""
    started = time.perf_counter()
    state, service = _service(request)
    fields, images = posted.fields, posted.images
    gallery = compat_gallery(grant)
    userid = _userid(fields)
    if not images:
        raise DeepStackRefusal("No valid image file found")
    grant.touched(subjects=[userid])

    def work() -> str:
        existed = service.store.gallery(gallery) is not None and bool(service.store.faces(gallery, userid))
        done = service.enrol(gallery, userid, decode(list(images), state.settings))
        if not done.added:
            reasons = {reason for _, reason in done.failed}
            if reasons <= {"no face found"}:
                raise DeepStackRefusal("no face detected")
            raise DeepStackRefusal("; ".join(sorted(reasons)))
        grant.touched(faces=[face_id for face_id, _ in done.added])
        return "face updated" if existed else "face added"

    return _ok(started, message=await state.run(work))


@router.post("/recognize", summary="DeepStack: recognize the faces of an image")
async def recognize(
    request: Request, posted: Posted = Form, grant: Grant = Depends(allow("search", gallery=KEY))
) -> JSONResponse:
    """Every face with its closest user; `userid` "unknown" (confidence 0) below the decision point:
    facerest's (0.6) unless `min_confidence` asks for another."""
    started = time.perf_counter()
    state, service = _service(request)
    fields, images = posted.fields, posted.images
    gallery = compat_gallery(grant)
    image = _one_image(images)
    wanted = _min_confidence(fields)
    options = ExtractOptions(threshold=state.settings.det_thresh)

    def work() -> list[dict[str, Any]]:
        loaded = _loaded([image], state)
        if service.store.gallery(gallery) is None:  # nobody registered with this key yet
            found = service.detect(loaded, largest_only=False, options=options)[0]
            if found.error is not None:
                raise found.error
            return [{"confidence": 0, "userid": "unknown", **_box(f.bbox)} for f in found.faces]
        decision, answers = service.search(gallery, loaded, top_k=1, detect_options=options)
        answer = answers[0]
        if isinstance(answer, FaceRestError):
            raise answer
        out = []
        for hit in answer:
            best = hit.matches[0] if hit.matches else None
            grant.touched(candidates=[m.subject for m in hit.matches])
            score = confidence(best.similarity, decision, service.calibration) if best else 0.0
            named = best is not None and score >= (AT_DECISION if wanted is None else wanted)
            if named and best is not None:
                grant.touched(subjects=[best.subject])
            out.append(
                {
                    "confidence": score if named else 0,
                    "userid": best.subject if named and best is not None else "unknown",
                    **_box(hit.face.bbox),
                }
            )
        return out

    predictions = await state.run(work)
    known = sum(p["userid"] != "unknown" for p in predictions)
    message = "A face was recognised" if known else "No known faces"
    return _ok(started, predictions=predictions, count=len(predictions), message=message)


@router.post("/list", summary="DeepStack: the registered users")
async def list_faces(
    request: Request, posted: Posted = Form, grant: Grant = Depends(allow("read", gallery=KEY))
) -> JSONResponse:
    started = time.perf_counter()
    state, service = _service(request)
    gallery = compat_gallery(grant)

    def work() -> list[str]:
        if service.store.gallery(gallery) is None:
            return []
        return [s for s, _ in service.store.subjects(gallery) if s != UNSORTED]

    users = await state.run(work)
    grant.touched(subjects=users)
    return _ok(started, faces=users)


@router.post("/delete", summary="DeepStack: delete a registered user and their faces")
async def delete(
    request: Request, posted: Posted = Form, grant: Grant = Depends(allow("delete", gallery=KEY))
) -> JSONResponse:
    """Succeeds whether or not the user existed, as DeepStack does."""
    started = time.perf_counter()
    state, service = _service(request)
    gallery = compat_gallery(grant)
    userid = _userid(posted.fields)
    grant.touched(subjects=[userid])

    def work() -> None:
        if service.store.gallery(gallery) is None:
            return
        # the one deletion path: pictures, review items, feedback and index entries go too; a
        # user that is not there is no error (DeepStack's answer)
        with contextlib.suppress(NotFound):
            grant.touched(faces=service.delete_subject(gallery, userid).faces)

    await state.run(work)
    return _ok(started)


@router.post("/match", summary="DeepStack: how similar are the faces of two images")
async def match(
    request: Request, posted: Posted = Form, _: Grant = Depends(allow("extract"))
) -> JSONResponse:
    """The largest face of each image; `similarity` as `confidence` reads it (0.6: facerest's
    1:1 decision point)."""
    started = time.perf_counter()
    state, service = _service(request)
    images = posted.images
    if len(images) < 2:
        raise DeepStackRefusal("No valid image file found")

    def work() -> float:
        try:
            first, second = service.one_face(_loaded(images[:2], state))
        except NoFace:
            raise DeepStackRefusal("no face found") from None
        return float(first @ second)

    cosine = await state.run(work)
    return _ok(started, similarity=confidence(cosine, service.decision(), service.calibration))
