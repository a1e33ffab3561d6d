"""The review queue (issue 29): faces searches, video requests and stream jobs could not name,
for a person to assign to a subject, make a new subject, refuse a name for, or dismiss.

Parsing and serialising only: the work runs in `GalleryService`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.responses import Response

from facerest.api.access import Grant, allow
from facerest.api.faces import _CONFLICT, _IMAGE, image_response, moved_body
from facerest.api.gallery import DEFAULT_PAGE, FACE_ID_MAX, Cursor, Limit, _service, page_body
from facerest.api.responses import JSONResponse
from facerest.api.routes import parse_body, parsed_body
from facerest.api.schemas import Name
from facerest.gallery.store import MAX_PAGE

ReviewId = Annotated[int, Field(ge=1, le=FACE_ID_MAX)]
ReviewIds = Annotated[list[ReviewId], Field(min_length=1, max_length=MAX_PAGE, description="Review items.")]


class AssignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    review_ids: ReviewIds
    subject: Name = Field(description="The subject the faces are enrolled into (created when new).")
    new: StrictBool = Field(False, description="A new subject: 409 when it exists.")


class NotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    review_ids: ReviewIds
    subject: Name = Field(description="A subject these faces are not.")


class DismissRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    review_ids: ReviewIds


router = APIRouter(tags=["review"])


@router.get("/gallery/{gallery}/review", summary="The review queue, by group, a page at a time")
async def list_review(
    request: Request,
    gallery: Name,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Only items one of whose candidates' names contains this (case-insensitive).",
        ),
    ] = None,
    grant: Grant = Depends(allow("review", gallery="gallery")),
) -> JSONResponse:
    """Items of one group look like one person (`group`: the id of its first item), oldest group
    first. Each has where it came from (`source` search, video or stream, and `ref`), when
    (`created_at`, unix time), its closest subjects (`candidates`, without those it was said not
    to be), and whether its picture was kept (`has_image`)."""
    state, service = _service(request)
    page = await state.run(lambda: service.review_page(gallery, limit, cursor, q))
    # who the queued faces may be: the names shown are lookups of those people
    grant.touched(candidates=[s for item in page.items for s, _ in item.candidates])
    rows = [
        {
            "review_id": item.review_id,
            "group": item.group,
            "source": item.source,
            "ref": item.ref,
            "created_at": item.created_at,
            "candidates": [
                {"subject": subject, "similarity": similarity, "fmr": service.fmr_at(similarity)}
                for subject, similarity in item.candidates
                if subject not in item.excluded
            ],
            "excluded": item.excluded,
            "bbox": None if item.bbox is None else [round(v) for v in item.bbox],
            "prob": item.prob,
            "quality": item.quality,
            "image_hash": item.image_hash,
            "has_image": item.has_crop,
        }
        for item in page.items
    ]
    return page_body("items", page, rows, gallery=gallery)


@router.get(
    "/gallery/{gallery}/review/{review_id}/image",
    summary="The picture of a review item (JPEG)",
    response_class=Response,
    responses=_IMAGE,
)
async def review_image(
    request: Request,
    gallery: Name,
    review_id: Annotated[int, Path(ge=1, le=FACE_ID_MAX)],
    _: Grant = Depends(allow("review", gallery="gallery")),
) -> Response:
    state, service = _service(request)
    return image_response(await state.run(lambda: service.review_image(gallery, review_id)))


@router.post(
    "/gallery/{gallery}/review/assign",
    openapi_extra=parsed_body(AssignRequest),
    summary="Enrol review items into a subject (or a new one)",
    responses=_CONFLICT,
)
async def assign(
    request: Request, gallery: Name, grant: Grant = Depends(allow("review", gallery="gallery"))
) -> JSONResponse:
    """All or nothing, in one transaction: the items become faces of the subject (with their
    pictures) and leave the queue; an item not queued answers 404 and nothing changes."""
    state, service = _service(request)
    req: AssignRequest = await parse_body(request, AssignRequest)
    grant.touched(subjects=[req.subject])
    done = await state.run(lambda: service.review_assign(gallery, req.review_ids, req.subject, req.new))
    grant.touched(faces=done.face_ids)
    return JSONResponse({**moved_body(gallery, done), "face_ids": done.face_ids})


@router.post(
    "/gallery/{gallery}/review/not",
    openapi_extra=parsed_body(NotRequest),
    summary='Say review items are "not X"',
)
async def not_subject(
    request: Request, gallery: Name, grant: Grant = Depends(allow("review", gallery="gallery"))
) -> JSONResponse:
    """X is no longer suggested for them, and searches of the same pictures never name X; the
    items stay queued."""
    state, service = _service(request)
    req: NotRequest = await parse_body(request, NotRequest)
    grant.touched(subjects=[req.subject])
    changed = await state.run(lambda: service.review_not(gallery, req.review_ids, req.subject))
    return JSONResponse({"gallery": gallery, "subject": req.subject, "changed": changed})


@router.post(
    "/gallery/{gallery}/review/dismiss",
    openapi_extra=parsed_body(DismissRequest),
    summary="Take review items off the queue",
)
async def dismiss(
    request: Request, gallery: Name, _: Grant = Depends(allow("review", gallery="gallery"))
) -> JSONResponse:
    state, service = _service(request)
    req: DismissRequest = await parse_body(request, DismissRequest)
    dismissed = await state.run(lambda: service.review_dismiss(gallery, req.review_ids))
    return JSONResponse({"gallery": gallery, "dismissed": dismissed})
