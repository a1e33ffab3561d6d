"""Gallery endpoints: enrol, list, rename, delete, search (1:N) and /verify (1:1).

Parsing and serialising only: the work runs in `GalleryService` in a worker thread.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError, WithJsonSchema

from facerest.api.access import BODY, Grant, allow
from facerest.api.responses import JSONResponse
from facerest.api.routes import app_state, face_marks, parse_body, parsed_body
from facerest.api.schemas import Images, Name
from facerest.api.serialize import MSGPACK_TYPES
from facerest.api.state import AppState
from facerest.errors import BadInput, FaceRestError, StorageUnavailable, TooManyEmbeddings
from facerest.gallery import gallery_url, index_options, open_store
from facerest.gallery.pages import DEFAULT_PAGE, MAX_CURSOR, Page
from facerest.gallery.reembed import shown_state
from facerest.gallery.service import Enrolled, FoundFace, GalleryService, check_embedding_count
from facerest.gallery.store import MAX_PAGE, MAX_TOP_K, UNSORTED, GalleryInfo, ReembedJob, StoredFace
from facerest.imaging.loader import Loaded, load_images

log = logging.getLogger(__name__)

Similarity = Annotated[float, Field(ge=-1.0, le=1.0)]
#: every list is a page (issue 29): `limit` rows after `cursor` (the last page's `next_cursor`)
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Rows per page (at most {MAX_PAGE}).")]
Cursor = Annotated[
    str | None,
    Query(max_length=MAX_CURSOR, description="`next_cursor` of the previous page (absent: the first page)."),
]
Needle = Annotated[
    str | None, Query(max_length=200, description="Only rows whose name contains this (case-insensitive).")
]
ErrorRate = Annotated[float, Field(gt=0.0, lt=1.0)]
#: embedding lists are only counted while the body is parsed (on the event loop); their numbers
#: are validated in the worker thread (`_vectors`), so 40,000 posted vectors cost the loop nothing
Embeddings = Annotated[
    list[Any],
    WithJsonSchema({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}),
]
_VECTORS = TypeAdapter(list[list[float]])
#: no recognizer gives longer embeddings; a longer list is refused before its numbers are read
MAX_EMBEDDING_VALUES = 4096
#: JSON arrays a gallery body holds besides its embeddings (the embeddings list, images, urls)
MAX_OTHER_ARRAYS = 8


class EnrolRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    images: Images | None = None
    all_faces: StrictBool = Field(False, description="Enrol every face found, not only the largest.")
    embeddings: Embeddings | None = Field(None, description="Embeddings of the server's recognizer.")
    force: StrictBool = Field(
        False, description="Enrol faces below the quality floors (FACEREST_ENROL_*) too."
    )
    return_quality: StrictBool = Field(False, description="Add each added face's quality.")
    img_req_headers: dict[str, str] = Field(default_factory=dict)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    images: Images | None = None
    embeddings: Embeddings | None = None
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description=f"Subjects listed per face (at most {MAX_TOP_K}).")
    exact: StrictBool = Field(
        False,
        description="Search every face exhaustively instead of through the gallery's approximate index "
        "(slower on large galleries; the same answer on small ones, which are always scanned).",
    )
    threshold: Similarity | None = Field(
        None,
        description="Cosine similarity at or above which the best subject is named (default: "
        "from FACEREST_SEARCH_FPIR).",
    )
    fmr: ErrorRate | None = Field(
        None, description="Decision point as a false-match rate per comparison (e.g. 1e-3), not a cosine."
    )
    fpir: ErrorRate | None = Field(
        None,
        description="Decision point as the chance a stranger is matched to anyone in the gallery; turned "
        "into the per-comparison FMR for its current number of subjects.",
    )
    return_quality: StrictBool = Field(False, description="Add each probe face's quality.")
    img_req_headers: dict[str, str] = Field(default_factory=dict)


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    images: Images | None = None
    embeddings: Embeddings | None = None
    gallery: Name | None = None
    subject: Name | None = None
    threshold: Similarity | None = None
    fmr: ErrorRate | None = Field(
        None, description="Decision point as a false-match rate (default FACEREST_VERIFY_FMR)."
    )
    img_req_headers: dict[str, str] = Field(default_factory=dict)


class RenameRequest(BaseModel):
    new_name: Name


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Opens the store after the app's own lifespan has loaded the models; closes it first."""
    state: AppState = app.state.facerest
    url = gallery_url(state.settings)
    store, reason = None, ""
    try:
        store = await anyio.to_thread.run_sync(open_store, url, index_options(state.settings))
        log.info("gallery storage: %s", url.split("://")[0])
    except (FaceRestError, OSError, sqlite3.Error) as exc:
        # the rest of the service works without its gallery; gallery requests say why not
        reason = exc.detail if isinstance(exc, FaceRestError) else f"{type(exc).__name__}: {exc}"
        log.error("gallery storage %s cannot be opened: %s", url.split("://")[0], reason)
    state.gallery = GalleryService(
        store, state.analyzer, state.settings, store_error=reason, events=state.events
    )
    if store is not None:  # moves a crashed server left are taken up once their lease runs out
        state.gallery.reembeds.resume_interrupted()
    try:
        yield
    finally:
        service, state.gallery = state.gallery, None
        await anyio.to_thread.run_sync(service.close)


router = APIRouter(tags=["gallery"], lifespan=lifespan)


def _service(request: Request) -> tuple[AppState, GalleryService]:
    state = app_state(request)
    if state.gallery is None:
        raise StorageUnavailable("the gallery service is not running")
    return state, state.gallery


def _images(state: AppState, images: Images | None, headers: dict[str, str]) -> list[Loaded]:
    if images is None:
        return []
    return load_images(images.data, images.urls, state.settings, headers)


def _quality(face: FoundFace, asked: bool) -> dict[str, Any]:
    if not asked or face.quality is None:
        return {}
    return {"quality": face.quality.to_json()}


async def _parse(request: Request, state: AppState, model: type[BaseModel]) -> Any:
    """`parse_body`, after a cheap look at a JSON body: each posted embedding is one `[` (base64
    and plain text hold none), so a body of 40,000 embeddings is refused before the JSON parser
    spends seconds (holding the interpreter) building 20 million numbers."""
    raw = await request.body()  # read once; parse_body gets it from the request's cache
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in MSGPACK_TYPES:
        arrays = raw.count(b"[")
        if arrays - MAX_OTHER_ARRAYS > state.settings.max_embeddings_per_body:
            raise TooManyEmbeddings(
                f"the body holds {arrays} JSON arrays: more embeddings than the limit of "
                f"{state.settings.max_embeddings_per_body}"
            )
    return await parse_body(request, model)


def _counted(state: AppState, embeddings: list[Any] | None) -> list[Any]:
    """The posted embeddings, their count and lengths checked (cheap: nothing is converted)."""
    embeddings = embeddings or []
    check_embedding_count(len(embeddings), state.settings)
    for i, vector in enumerate(embeddings):
        if not isinstance(vector, list) or len(vector) > MAX_EMBEDDING_VALUES:
            raise BadInput(f"embedding {i} must be a list of at most {MAX_EMBEDDING_VALUES} numbers")
    return embeddings


def _vectors(embeddings: list[Any]) -> list[list[float]]:
    """The posted embeddings as numbers (in the worker thread: it is the costly part)."""
    try:
        return _VECTORS.validate_python(embeddings)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", "embeddings", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from exc


def _box(face: FoundFace) -> dict[str, Any]:
    bbox = None if face.bbox is None else [round(v) for v in face.bbox]
    return {"bbox": bbox, "prob": face.prob}


def gallery_body(g: GalleryInfo) -> dict[str, Any]:
    return {
        "name": g.name,
        "model": g.model.name,
        "model_md5": g.model.md5,
        "subjects": g.subjects,
        "faces": g.faces,
        "index": g.index,
    }


def face_body(f: StoredFace, subject: bool = False) -> dict[str, Any]:
    """A stored face as the API writes it (`subject` too where the list is not one subject's)."""
    item: dict[str, Any] = {
        "face_id": f.face_id,
        "bbox": None if f.bbox is None else [round(v) for v in f.bbox],
        "prob": f.prob,
        "image_hash": f.image_hash,
        "model": f.model,
        "added_at": f.added_at,
        "quality": f.quality,
        "source": f.source,
        "has_image": f.has_crop,
        "representative": f.representative,
    }
    if subject:
        item["subject"] = None if f.subject == UNSORTED else f.subject
    if f.embedding is not None:
        item["embedding"] = f.embedding.tolist()
    return item


def page_body(key: str, page: Page[Any], rows: list[Any], **extra: Any) -> JSONResponse:
    return JSONResponse({**extra, key: rows, "next_cursor": page.next_cursor})


def added_body(done: Enrolled, asked_quality: bool) -> dict[str, Any]:
    return {
        "added": [
            {"face_id": face_id, **_box(face), **_quality(face, asked_quality)}
            for face_id, face in done.added
        ],
        "failed": [{"index": index, "detail": detail} for index, detail in done.failed],
        # two faces of one picture in one subject: one of them is someone else (move it)
        "same_photo": [list(pair) for pair in done.same_photo],
    }


@router.get("/galleries", summary="Every gallery with its model and size, a page at a time")
async def list_galleries(
    request: Request,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    q: Needle = None,
    grant: Grant = Depends(allow("read")),
) -> JSONResponse:
    """A key limited to some galleries sees only those (issue 30)."""
    state, service = _service(request)
    only = grant.principal.galleries
    page = await state.run(lambda: service.galleries_page(limit, cursor, q, only))
    return page_body("galleries", page, [gallery_body(g) for g in page.items])


@router.put(
    "/gallery/{gallery}",
    summary="Create an empty gallery for the recognizer in use",
    responses={
        201: {"description": "Created", "content": {"application/json": {}}},
        409: {"description": "The gallery exists, built with another recognizer"},
    },
)
async def create_gallery(
    request: Request, gallery: Name, _: Grant = Depends(allow("manage", gallery="gallery"))
) -> JSONResponse:
    """A gallery is also created by its first enrolment; this makes one to enrol into later. 201
    when new, 200 when it exists (409 when it was built with another recognizer)."""
    state, service = _service(request)
    info, created = await state.run(lambda: service.create_gallery(gallery))
    return JSONResponse({**gallery_body(info), "created": created}, 201 if created else 200)


@router.get("/gallery/{gallery}", summary="One gallery: its model, size and index")
async def get_gallery(
    request: Request, gallery: Name, _: Grant = Depends(allow("read", gallery="gallery"))
) -> JSONResponse:
    state, service = _service(request)
    info = await state.run(lambda: service.info(gallery))
    return JSONResponse(gallery_body(info))


@router.delete("/gallery/{gallery}", summary="Delete a gallery and every face in it")
async def delete_gallery(
    request: Request, gallery: Name, _: Grant = Depends(allow("manage", gallery="gallery"))
) -> JSONResponse:
    """Its faces, their pictures, its review queue, its index and the feedback given on it."""
    state, service = _service(request)
    await state.run(lambda: service.delete_gallery(gallery))
    return JSONResponse({"gallery": gallery, "deleted": True})


@router.post(
    "/gallery/{gallery}/subjects/{subject}/faces",
    openapi_extra=parsed_body(EnrolRequest),
    summary="Enrol faces into a subject",
)
async def enrol(
    request: Request,
    gallery: Name,
    subject: Name,
    grant: Grant = Depends(allow("enrol", gallery="gallery")),
) -> JSONResponse:
    """From images (the largest face of each, or all with `all_faces`, or the faces marked in
    `images.faces`) and/or posted embeddings.

    The gallery is created on first use and records the recognizer; images without a face are
    listed in `failed`. Each face keeps a picture (FACEREST_GALLERY_KEEP_CROPS); `same_photo` lists
    pairs of the subject's faces taken from one picture.
    """
    state, service = _service(request)
    req: EnrolRequest = await _parse(request, state, EnrolRequest)
    embeddings = _counted(state, req.embeddings)
    # counted before any work (FACEREST_MAX_FACES_PER_REQUEST, FACEREST_MAX_BOX_MARKS_PER_REQUEST)
    marks = face_marks(req.images, state.settings) if req.images is not None else None

    def work():  # type: ignore[no-untyped-def]
        vectors = _vectors(embeddings)
        images = _images(state, req.images, req.img_req_headers)
        return service.enrol(gallery, subject, images, vectors, req.all_faces, req.force, marks)

    done = await state.run(work)
    grant.touched(subjects=[subject], faces=[face_id for face_id, _ in done.added])
    return JSONResponse({"gallery": gallery, "subject": subject, **added_body(done, req.return_quality)})


@router.get("/gallery/{gallery}/subjects", summary="The subjects of a gallery, a page at a time")
async def list_subjects(
    request: Request,
    gallery: Name,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    q: Needle = None,
    _: Grant = Depends(allow("read", gallery="gallery")),
) -> JSONResponse:
    """Sorted by name; each with its number of faces and the face that shows it
    (`representative`: the one chosen, else the best quality one)."""
    state, service = _service(request)
    page = await state.run(lambda: service.subjects_page(gallery, limit, cursor, q))
    rows = [{"subject": s.subject, "faces": s.faces, "representative": s.representative} for s in page.items]
    return page_body("subjects", page, rows, gallery=gallery)


@router.get("/gallery/{gallery}/subjects/{subject}", summary="The faces of one subject, a page at a time")
async def get_subject(
    request: Request,
    gallery: Name,
    subject: Name,
    embeddings: bool = Query(False, description="Add each face's embedding (for export: operator)."),
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Only faces whose source contains this.")
    ] = None,
    grant: Grant = Depends(allow("read", gallery="gallery")),
) -> JSONResponse:
    state, service = _service(request)
    if embeddings:
        grant.require("export", gallery)

    def work() -> Page[StoredFace]:
        page = service.faces_page(gallery, subject, limit, cursor, q)
        if embeddings:  # the page's faces again, with their vectors
            wanted = {f.face_id for f in page.items}
            page.items = [
                f for f in service.store.faces(gallery, subject, with_embeddings=True) if f.face_id in wanted
            ]
        return page

    page = await state.run(work)
    grant.touched(subjects=[subject], faces=[f.face_id for f in page.items])
    return page_body("faces", page, [face_body(f) for f in page.items], gallery=gallery, subject=subject)


@router.patch(
    "/gallery/{gallery}/subjects/{subject}",
    openapi_extra=parsed_body(RenameRequest),
    summary="Rename a subject",
)
async def rename_subject(
    request: Request,
    gallery: Name,
    subject: Name,
    grant: Grant = Depends(allow("edit", gallery="gallery")),
) -> JSONResponse:
    state, service = _service(request)
    req: RenameRequest = await parse_body(request, RenameRequest)
    grant.touched(subjects=[subject, req.new_name])
    moved = await state.run(lambda: service.rename(gallery, subject, req.new_name))
    return JSONResponse({"gallery": gallery, "subject": req.new_name, "faces": moved})


@router.delete("/gallery/{gallery}/subjects/{subject}", summary="Delete a subject and its faces")
async def delete_subject(
    request: Request,
    gallery: Name,
    subject: Name,
    grant: Grant = Depends(allow("delete", gallery="gallery")),
) -> JSONResponse:
    state, service = _service(request)
    grant.touched(subjects=[subject])
    removed = await state.run(lambda: service.delete_subject(gallery, subject))
    grant.touched(faces=removed.faces)
    return JSONResponse({"gallery": gallery, "subject": subject, "deleted_faces": len(removed.faces)})


#: face ids are 64-bit integers in both stores; a larger number can name no face
FACE_ID_MAX = 2**63 - 1
FaceIdPath = Annotated[int, Path(ge=1, le=FACE_ID_MAX)]


@router.delete("/gallery/{gallery}/faces/{face_id}", summary="Delete one face")
async def delete_face(
    request: Request,
    gallery: Name,
    face_id: FaceIdPath,
    grant: Grant = Depends(allow("delete", gallery="gallery")),
) -> JSONResponse:
    """The face, its picture, its index entry and the feedback given on it."""
    state, service = _service(request)
    grant.touched(faces=[face_id])
    await state.run(lambda: service.delete_face(gallery, face_id))
    return JSONResponse({"gallery": gallery, "face_id": face_id, "deleted": True})


# --- moving a gallery to another recognizer (issue 32). Access rule for all three: admin (the
# move changes which model answers for the gallery, and loads a model on the server) ---


class ReembedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Catalogue name of the recognizer to move to (absent: take up the gallery's "
        "unfinished move).",
    )
    into: Name | None = Field(
        None, description="Make this new gallery instead of moving the gallery in place (it stays as it is)."
    )
    drop_missing: StrictBool = Field(
        False,
        description="In place: delete the faces that keep no crop to embed again (listed in `missing`) at "
        "the switch; without it such a gallery is refused.",
    )


def reembed_body(job: ReembedJob, lease_s: float) -> dict[str, Any]:
    return {
        "gallery": job.gallery,
        "state": shown_state(job, lease_s),
        "model": job.target.name,
        "model_md5": job.target.md5,
        "dim": job.target.dim,
        "alignment": job.alignment,
        "from_model": job.source.name,
        "from_model_md5": job.source.md5,
        "into": job.into,
        "drop_missing": job.drop_missing,
        "faces": job.faces,
        "done": job.done,
        "missing": {"count": job.missing_count, "face_ids": job.missing},
        "review_items": job.review_items,
        "review_done": job.review_done,
        "review_dropped": job.review_dropped,
        "started_at": job.started_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
        "error": job.error,
    }


@router.post(
    "/gallery/{gallery}/reembed",
    openapi_extra=parsed_body(ReembedRequest),
    status_code=202,
    summary="Move a gallery to another recognizer, embedding its faces again from their pictures",
    responses={
        202: {"description": "The move began (or was taken up)", "content": {"application/json": {}}},
        409: {
            "description": "A move is under way or unfinished, `into` exists, or faces would be lost "
            "(`drop_missing`)"
        },
    },
)
async def reembed(
    request: Request, gallery: Name, grant: Grant = Depends(allow("manage", gallery="gallery"))
) -> JSONResponse:
    """In the background: searches answer from the old model until the switch (or `into` is made).
    Unknown models, recognizers that do not fit, an existing `into` and faces that would be lost
    are refused before anything changes. Asked again, it takes up an interrupted move."""
    state, service = _service(request)
    req: ReembedRequest = await parse_body(request, ReembedRequest)
    if req.into is not None:  # a new gallery: the key must be allowed to make that one too
        grant.require("manage", req.into)
    job = await state.run(lambda: service.reembeds.start(gallery, req.model, req.into, req.drop_missing))
    return JSONResponse(reembed_body(job, state.settings.reembed_lease_s), 202)


@router.get("/gallery/{gallery}/reembed", summary="How a gallery's move to another recognizer is going")
async def reembed_status(
    request: Request, gallery: Name, _: Grant = Depends(allow("read", gallery="gallery"))
) -> JSONResponse:
    state, service = _service(request)
    job = await state.run(lambda: service.reembeds.status(gallery))
    return JSONResponse(reembed_body(job, state.settings.reembed_lease_s))


@router.delete("/gallery/{gallery}/reembed", summary="Cancel a gallery's unfinished move")
async def reembed_cancel(
    request: Request, gallery: Name, _: Grant = Depends(allow("manage", gallery="gallery"))
) -> JSONResponse:
    """The embeddings written for it are deleted; the gallery stays as it was."""
    state, service = _service(request)
    await state.run(lambda: service.reembeds.cancel(gallery))
    return JSONResponse({"gallery": gallery, "cancelled": True})


@router.post(
    "/gallery/{gallery}/search",
    openapi_extra=parsed_body(SearchRequest),
    summary="Identify every face in the images (1:N)",
)
async def search(
    request: Request, gallery: Name, grant: Grant = Depends(allow("search", gallery="gallery"))
) -> JSONResponse:
    """For every face, the `top_k` closest subjects; `subject` is null below the threshold.

    `data` holds one entry per image (request order), then one per posted embedding.
    """
    state, service = _service(request)
    req: SearchRequest = await _parse(request, state, SearchRequest)
    embeddings = _counted(state, req.embeddings)

    def work():  # type: ignore[no-untyped-def]
        vectors = _vectors(embeddings)
        images = _images(state, req.images, req.img_req_headers)
        return service.search(
            gallery, images, vectors, req.top_k, req.threshold, req.fmr, req.fpir, req.exact
        )

    decision, results = await state.run(work)
    data: list[dict[str, Any]] = []
    for result in results:
        if isinstance(result, FaceRestError):
            data.append({"status": "failed", "traceback": result.detail, "code": result.code, "faces": []})
            continue
        # who was looked up: the subjects named, and those shown as candidates below the threshold
        grant.touched(
            subjects=[hit.subject for hit in result if hit.subject is not None],
            candidates=[m.subject for hit in result for m in hit.matches],
        )
        faces = [
            {
                **_box(hit.face),
                "subject": hit.subject,
                "unknown": hit.subject is None,
                # below the enrolment floors: a match (or none) means less than for a good face
                "low_quality": bool(hit.face.issues),
                "quality_issues": hit.face.issues,
                **_quality(hit.face, req.return_quality),
                "similarity": hit.matches[0].similarity if hit.matches else None,
                "fmr": hit.fmrs[0] if hit.fmrs else None,
                "matches": [
                    {"subject": m.subject, "similarity": m.similarity, "fmr": fmr}
                    for m, fmr in zip(hit.matches, hit.fmrs, strict=True)
                ],
            }
            for hit in result
        ]
        # the picture's hash: what "no face of this picture is X" feedback names
        data.append({"status": "ok", "image_hash": result[0].image_hash if result else None, "faces": faces})
    return JSONResponse(
        {"gallery": gallery, "threshold": decision.threshold, "decision": decision.to_json(), "data": data}
    )


@router.post(
    "/verify",
    openapi_extra=parsed_body(VerifyRequest),
    summary="Same person? Two images, an image and a subject, or two embeddings",
)
async def verify(request: Request, grant: Grant = Depends(allow("verify", gallery=BODY))) -> JSONResponse:
    """Compares the largest face of each image (or the posted embeddings); against a subject, its
    closest face counts. `same` is `similarity >= threshold`."""
    state, service = _service(request)
    req: VerifyRequest = await _parse(request, state, VerifyRequest)
    embeddings = _counted(state, req.embeddings)
    image_count = len(req.images.data or []) + len(req.images.urls or []) if req.images else 0
    inputs = image_count + len(embeddings)
    with_subject = req.gallery is not None or req.subject is not None
    if with_subject and (req.gallery is None or req.subject is None):
        raise BadInput("verify against a subject needs both `gallery` and `subject`")
    if req.gallery is not None and req.subject is not None:
        grant.use_gallery(req.gallery)
        grant.touched(subjects=[req.subject])
    wanted = 1 if with_subject else 2
    if inputs != wanted:
        raise BadInput(
            f"verify takes two images or two embeddings, or one of them with `gallery` and `subject`; "
            f"got {inputs} input(s){' and a subject' if with_subject else ''}"
        )

    def work() -> float:
        posted = _vectors(embeddings)
        images = _images(state, req.images, req.img_req_headers)
        vectors = service.one_face(images) + service.embeddings(posted)
        if with_subject:
            return service.subject_similarity(req.gallery or "", req.subject or "", vectors[0])
        return float(vectors[0] @ vectors[1])

    decision = service.decision(threshold=req.threshold, fmr=req.fmr)  # a bad fmr: 422 before any work
    similarity = await state.run(work)
    return JSONResponse(
        {
            "similarity": similarity,
            "same": similarity >= decision.threshold,
            "threshold": decision.threshold,
            "fmr": service.fmr_at(similarity),
            "decision": decision.to_json(),
            "model": service.model.name if service.model else None,
        }
    )
