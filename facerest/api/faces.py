"""Faces and people, the console's API and usable on its own (issue 29): pages of unsorted faces
and clusters, one face and its picture, moving faces, merging subjects, a subject's picture.

Parsing and serialising only: the work runs in `GalleryService`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.responses import Response

from facerest.api.access import Grant, allow
from facerest.api.gallery import (
    DEFAULT_PAGE,
    FACE_ID_MAX,
    Cursor,
    FaceIdPath,
    Limit,
    Needle,
    _service,
    face_body,
    page_body,
)
from facerest.api.responses import JSONResponse
from facerest.api.routes import parse_body, parsed_body
from facerest.api.schemas import Name
from facerest.gallery.service import Moved
from facerest.gallery.store import MAX_PAGE, UNSORTED, StoredFace
from facerest.imaging.crops import FaceCrop

FaceId = Annotated[int, Field(ge=1, le=FACE_ID_MAX)]
#: a face id can be written a picture is asked for again: the same id never names another face
IMAGE_CACHE = "private, max-age=300"
_IMAGE = {200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}
_CONFLICT = {409: {"description": "The subject exists (`new: true`) or the gallery has another model"}}


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    face_ids: list[FaceId] = Field(min_length=1, max_length=MAX_PAGE, description="Faces of the gallery.")
    subject: Name | None = Field(
        description="The subject they go to (created when new); null: back to the unsorted faces."
    )
    new: StrictBool = Field(False, description="The subject must be new (a split): 409 when it exists.")


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    into: Name = Field(description="The subject that gets every face (created when new).")


class RepresentativeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    face_id: FaceId


router = APIRouter(tags=["people"])


def image_response(crop: FaceCrop) -> Response:
    return Response(crop.jpeg, media_type="image/jpeg", headers={"Cache-Control": IMAGE_CACHE})


def moved_body(gallery: str, done: Moved) -> dict[str, Any]:
    return {
        "gallery": gallery,
        "subject": done.subject,
        "moved": done.moved,
        "same_photo": [list(pair) for pair in done.same_photo],
    }


@router.get("/gallery/{gallery}/faces", summary="The faces enrolled without a subject, a page at a time")
async def list_unsorted(
    request: Request,
    gallery: Name,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Only faces whose source contains this.")
    ] = None,
    grant: Grant = Depends(allow("read", gallery="gallery")),
) -> JSONResponse:
    state, service = _service(request)
    page = await state.run(lambda: service.faces_page(gallery, None, limit, cursor, q))
    grant.touched(faces=[f.face_id for f in page.items])
    return page_body("faces", page, [face_body(f) for f in page.items], gallery=gallery)


@router.get("/gallery/{gallery}/faces/{face_id}", summary="One face: its subject, quality, source, picture")
async def get_face(
    request: Request,
    gallery: Name,
    face_id: FaceIdPath,
    grant: Grant = Depends(allow("read", gallery="gallery")),
) -> JSONResponse:
    """`image`: the picture's size and the 5 landmarks in its pixels (null: no picture kept)."""
    state, service = _service(request)

    def work() -> tuple[StoredFace, FaceCrop | None]:
        face = service.face(gallery, face_id)
        return face, service.store.face_crop(gallery, face_id) if face.has_crop else None

    grant.touched(faces=[face_id])
    face, crop = await state.run(work)
    grant.touched(subjects=[] if face.subject == UNSORTED else [face.subject])
    image = (
        None if crop is None else {"width": crop.width, "height": crop.height, "landmarks": crop.landmarks}
    )
    return JSONResponse({"gallery": gallery, **face_body(face, subject=True), "image": image})


@router.get(
    "/gallery/{gallery}/faces/{face_id}/image",
    summary="The picture kept with a face (JPEG)",
    response_class=Response,
    responses=_IMAGE,
)
async def face_image(
    request: Request,
    gallery: Name,
    face_id: FaceIdPath,
    grant: Grant = Depends(allow("read", gallery="gallery")),
) -> Response:
    """A square around the face, twice its box (cut by the photo's edge), at most
    FACEREST_GALLERY_CROP_SIZE pixels. 404 for a face enrolled from an embedding."""
    state, service = _service(request)
    grant.touched(faces=[face_id])
    return image_response(await state.run(lambda: service.face_image(gallery, face_id)))


@router.post(
    "/gallery/{gallery}/faces/move",
    openapi_extra=parsed_body(MoveRequest),
    summary="Move faces to another subject, a new one (split) or back to the unsorted faces",
    responses=_CONFLICT,
)
async def move_faces(
    request: Request, gallery: Name, grant: Grant = Depends(allow("edit", gallery="gallery"))
) -> JSONResponse:
    """All or nothing: a face not in the gallery answers 404 and none moves."""
    state, service = _service(request)
    req: MoveRequest = await parse_body(request, MoveRequest)
    grant.touched(subjects=[] if req.subject is None else [req.subject], faces=req.face_ids)
    done = await state.run(lambda: service.move(gallery, req.face_ids, req.subject, req.new))
    return JSONResponse(moved_body(gallery, done))


@router.post(
    "/gallery/{gallery}/subjects/{subject}/merge",
    openapi_extra=parsed_body(MergeRequest),
    summary="Merge a subject into another",
)
async def merge_subject(
    request: Request,
    gallery: Name,
    subject: Name,
    grant: Grant = Depends(allow("edit", gallery="gallery")),
) -> JSONResponse:
    """Every face of `subject` goes to `into`, which keeps its own picture; `subject` is gone."""
    state, service = _service(request)
    req: MergeRequest = await parse_body(request, MergeRequest)
    grant.touched(subjects=[subject, req.into])
    done = await state.run(lambda: service.merge(gallery, subject, req.into))
    return JSONResponse(moved_body(gallery, done))


@router.put(
    "/gallery/{gallery}/subjects/{subject}/representative",
    openapi_extra=parsed_body(RepresentativeRequest),
    summary="Choose the face that shows a subject",
)
async def set_representative(
    request: Request,
    gallery: Name,
    subject: Name,
    grant: Grant = Depends(allow("edit", gallery="gallery")),
) -> JSONResponse:
    state, service = _service(request)
    req: RepresentativeRequest = await parse_body(request, RepresentativeRequest)
    grant.touched(subjects=[subject], faces=[req.face_id])
    await state.run(lambda: service.set_representative(gallery, subject, req.face_id))
    return JSONResponse({"gallery": gallery, "subject": subject, "representative": req.face_id})


@router.get("/gallery/{gallery}/clusters", summary="The unsorted faces grouped into people, a page at a time")
async def list_clusters(
    request: Request,
    gallery: Name,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    q: Needle = None,
    grant: Grant = Depends(allow("read", gallery="gallery")),
) -> JSONResponse:
    """As `POST .../cluster` (incremental, the server's decision point), largest first; `q`: the
    suggested subject's name contains it. Two faces of one picture are never one cluster."""
    state, service = _service(request)
    decision, page = await state.run(lambda: service.clusters_page(gallery, limit, cursor, q))
    grant.touched(
        faces=[f.face_id for c in page.items for f in c.faces],
        candidates=[c.suggested_subject for c in page.items if c.suggested_subject],
    )
    rows = [
        {
            "cluster_id": c.cluster_id,
            "size": len(c.faces),
            "faces": [{"face_id": f.face_id, "has_image": f.has_crop} for f in c.faces],
            "representatives": [f.face_id for f in c.representatives],
            "suggested_subject": c.suggested_subject,
            "similarity": c.similarity,
        }
        for c in page.items
    ]
    return page_body("clusters", page, rows, gallery=gallery, decision=decision.to_json())
