"""People in a gallery (issue 20): faces enrolled without a subject, grouped by clustering, and
feedback on who is who. Parsing and serialising only: the work runs in `GalleryService`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from facerest.api.access import Grant, allow
from facerest.api.gallery import (
    FACE_ID_MAX,
    EnrolRequest,
    ErrorRate,
    Similarity,
    _counted,
    _images,
    _parse,
    _service,
    _vectors,
    added_body,
)
from facerest.api.responses import JSONResponse
from facerest.api.routes import face_marks, parse_body, parsed_body
from facerest.errors import TooManyFaces
from facerest.gallery.store import StoredFace

FaceId = Annotated[int, Field(ge=1, le=FACE_ID_MAX)]
#: pairs and "not" items in one feedback body (issue 28: 3,000,000 pairs held the event loop 9 s)
MAX_FEEDBACK_ITEMS = 10_000


class ClusterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: Similarity | None = Field(None, description="Decision point as a cosine.")
    fmr: ErrorRate | None = Field(
        None,
        description="Decision point as a false-match rate (default: FACEREST_SEARCH_FPIR over the faces).",
    )
    recluster: StrictBool = Field(
        False, description="Cluster every face afresh instead of adding new faces to the last clusters."
    )


class NotSubject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    face_id: FaceId | None = Field(None, description="A face of the gallery that is not `subject`.")
    image_hash: str | None = Field(
        None,
        pattern="^[0-9a-f]{64}$",
        description="Instead of `face_id`: a searched picture (its `image_hash` in the search answer) "
        "none of whose faces is `subject`.",
    )
    subject: str

    @model_validator(mode="after")
    def _one_of(self) -> NotSubject:
        if (self.face_id is None) == (self.image_hash is None):
            raise ValueError("give either face_id or image_hash")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    different: list[Annotated[list[FaceId], Field(min_length=2, max_length=2)]] = Field(
        default_factory=list,
        max_length=MAX_FEEDBACK_ITEMS,
        description="Pairs of face ids that are different people.",
    )
    not_: list[NotSubject] = Field(
        default_factory=list,
        alias="not",
        max_length=MAX_FEEDBACK_ITEMS,
        description="Faces that are not the named subject.",
    )


router = APIRouter(tags=["gallery"])


def _face(face: StoredFace) -> dict[str, Any]:
    return {"face_id": face.face_id, "bbox": None if face.bbox is None else [round(v) for v in face.bbox]}


@router.post(
    "/gallery/{gallery}/faces",
    openapi_extra=parsed_body(EnrolRequest),
    summary="Enrol faces without a subject (for clustering)",
)
async def enrol_unsorted(
    request: Request, gallery: str, grant: Grant = Depends(allow("enrol", gallery="gallery"))
) -> JSONResponse:
    """As enrolling into a subject, with the subject left open: `POST /gallery/{gallery}/cluster`
    groups these faces into people."""
    state, service = _service(request)
    # the embeddings are read as enrolling into a subject reads them (issue 28: an int, a string
    # or strings as embeddings were 500s here, 4xx there)
    req: EnrolRequest = await _parse(request, state, EnrolRequest)
    embeddings = _counted(state, req.embeddings)
    # counted before any work (FACEREST_MAX_FACES_PER_REQUEST, FACEREST_MAX_BOX_MARKS_PER_REQUEST)
    marks = face_marks(req.images, state.settings) if req.images is not None else None

    def work():  # type: ignore[no-untyped-def]
        vectors = _vectors(embeddings)
        images = _images(state, req.images, req.img_req_headers)
        return service.enrol(gallery, None, images, vectors, req.all_faces, req.force, marks)

    done = await state.run(work)
    grant.touched(faces=[face_id for face_id, _ in done.added])
    return JSONResponse({"gallery": gallery, "subject": None, **added_body(done, req.return_quality)})


@router.post(
    "/gallery/{gallery}/cluster",
    openapi_extra=parsed_body(ClusterRequest),
    summary="Group the faces enrolled without a subject into people",
)
async def cluster(
    request: Request, gallery: str, _: Grant = Depends(allow("review", gallery="gallery"))
) -> JSONResponse:
    """Clusters (largest first) of the unsorted faces, each with its most central faces and the
    enrolled subject it matches at the decision point, if any. New faces join the last clusters
    (cluster ids stay put) unless `recluster`; "different" feedback always holds."""
    state, service = _service(request)
    req: ClusterRequest = await parse_body(request, ClusterRequest)
    decision, clusters = await state.run(
        lambda: service.cluster(gallery, req.threshold, req.fmr, req.recluster)
    )
    return JSONResponse(
        {
            "gallery": gallery,
            "decision": decision.to_json(),
            "clusters": [
                {
                    "cluster_id": c.cluster_id,
                    "faces": [_face(f) for f in c.faces],
                    "representatives": [_face(f) for f in c.representatives],
                    "suggested_subject": c.suggested_subject,
                    "similarity": c.similarity,
                }
                for c in clusters
            ],
        }
    )


@router.post(
    "/gallery/{gallery}/feedback",
    openapi_extra=parsed_body(FeedbackRequest),
    summary='Say "these faces are different people" or "this face is not X"',
)
async def feedback(
    request: Request, gallery: str, grant: Grant = Depends(allow("edit", gallery="gallery"))
) -> JSONResponse:
    """Kept for the gallery: later clustering never groups a "different" pair, never suggests X
    for a cluster holding a face that is "not X", and search never names X for a probe of the same
    picture. Unknown faces or subjects: 404, nothing stored."""
    state, service = _service(request)
    raw = await request.body()  # each pair is a JSON array and each "not" an object: counted unparsed
    if raw.count(b"[") + raw.count(b"{") > 2 * MAX_FEEDBACK_ITEMS + 2:
        raise TooManyFaces(
            f"a feedback body names at most {MAX_FEEDBACK_ITEMS} pairs and {MAX_FEEDBACK_ITEMS} faces"
        )
    req: FeedbackRequest = await parse_body(request, FeedbackRequest)
    different = [(a, b) for a, b in req.different]
    not_subject = [(n.face_id, n.subject) for n in req.not_ if n.face_id is not None]
    not_in_picture = [(n.image_hash, n.subject) for n in req.not_ if n.image_hash is not None]
    grant.touched(
        subjects=[n.subject for n in req.not_],
        faces=[i for pair in different for i in pair] + [i for i, _ in not_subject],
    )
    await state.run(lambda: service.feedback(gallery, different, not_subject, not_in_picture))
    return JSONResponse({"gallery": gallery, "different": len(different), "not": len(not_subject)})
