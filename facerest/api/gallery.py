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
from fastapi import APIRouter, FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from facerest.api.responses import JSONResponse
from facerest.api.routes import app_state, parse_body, parsed_body
from facerest.api.schemas import Images
from facerest.api.state import AppState
from facerest.errors import BadInput, FaceRestError, NotFound, StorageUnavailable
from facerest.gallery import gallery_url, index_options, open_store
from facerest.gallery.service import FoundFace, GalleryService, check_name
from facerest.gallery.store import MAX_TOP_K
from facerest.imaging.loader import Loaded, load_images

log = logging.getLogger(__name__)

Similarity = Annotated[float, Field(ge=-1.0, le=1.0)]
Embeddings = list[list[float]]


class EnrolRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    images: Images | None = None
    all_faces: StrictBool = Field(False, description="Enrol every face found, not only the largest.")
    embeddings: Embeddings | None = Field(None, description="Embeddings of the server's recognizer.")
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
        description="Cosine similarity at or above which the best subject is named (default: calibrated).",
    )
    img_req_headers: dict[str, str] = Field(default_factory=dict)


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    images: Images | None = None
    embeddings: Embeddings | None = None
    gallery: str | None = None
    subject: str | None = None
    threshold: Similarity | None = None
    img_req_headers: dict[str, str] = Field(default_factory=dict)


class RenameRequest(BaseModel):
    new_name: str


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
    state.gallery = GalleryService(store, state.analyzer, state.settings, store_error=reason)
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


def _box(face: FoundFace) -> dict[str, Any]:
    bbox = None if face.bbox is None else [round(v) for v in face.bbox]
    return {"bbox": bbox, "prob": face.prob}


@router.get("/galleries", summary="Every gallery with its model and size")
async def list_galleries(request: Request) -> JSONResponse:
    state, service = _service(request)
    found = await state.run(service.store.galleries)
    return JSONResponse(
        {
            "galleries": [
                {
                    "name": g.name,
                    "model": g.model.name,
                    "model_md5": g.model.md5,
                    "subjects": g.subjects,
                    "faces": g.faces,
                }
                for g in found
            ]
        }
    )


@router.delete("/gallery/{gallery}", summary="Delete a gallery and every face in it")
async def delete_gallery(request: Request, gallery: str) -> JSONResponse:
    state, service = _service(request)
    if not await state.run(lambda: service.store.delete_gallery(gallery)):
        raise NotFound(f"no gallery {gallery!r}")
    return JSONResponse({"gallery": gallery, "deleted": True})


@router.post(
    "/gallery/{gallery}/subjects/{subject}/faces",
    openapi_extra=parsed_body(EnrolRequest),
    summary="Enrol faces into a subject",
)
async def enrol(request: Request, gallery: str, subject: str) -> JSONResponse:
    """From images (the largest face of each, or all with `all_faces`) and/or posted embeddings.

    The gallery is created on first use and records the recognizer; images without a face are
    listed in `failed`.
    """
    state, service = _service(request)
    req: EnrolRequest = await parse_body(request, EnrolRequest)

    def work():  # type: ignore[no-untyped-def]
        images = _images(state, req.images, req.img_req_headers)
        return service.enrol(gallery, subject, images, req.embeddings or [], req.all_faces)

    done = await state.run(work)
    return JSONResponse(
        {
            "gallery": gallery,
            "subject": subject,
            "added": [{"face_id": face_id, **_box(face)} for face_id, face in done.added],
            "failed": [{"index": index, "detail": detail} for index, detail in done.failed],
        }
    )


@router.get("/gallery/{gallery}/subjects", summary="The subjects of a gallery and their face counts")
async def list_subjects(request: Request, gallery: str) -> JSONResponse:
    state, service = _service(request)

    def work() -> list[tuple[str, int]]:
        service.require(gallery)
        return service.store.subjects(gallery)

    subjects = await state.run(work)
    return JSONResponse({"gallery": gallery, "subjects": [{"subject": s, "faces": n} for s, n in subjects]})


@router.get("/gallery/{gallery}/subjects/{subject}", summary="The faces of one subject")
async def get_subject(
    request: Request,
    gallery: str,
    subject: str,
    embeddings: bool = Query(False, description="Add each face's embedding (for export)."),
) -> JSONResponse:
    state, service = _service(request)

    def work():  # type: ignore[no-untyped-def]
        if service.store.gallery(gallery) is None:
            raise NotFound(f"no gallery {gallery!r}")
        return service.store.faces(gallery, subject, with_embeddings=embeddings)

    faces = await state.run(work)
    if not faces:
        raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
    out = []
    for f in faces:
        item: dict[str, Any] = {
            "face_id": f.face_id,
            "bbox": None if f.bbox is None else [round(v) for v in f.bbox],
            "prob": f.prob,
            "image_hash": f.image_hash,
            "model": f.model,
            "added_at": f.added_at,
        }
        if f.embedding is not None:
            item["embedding"] = f.embedding.tolist()
        out.append(item)
    return JSONResponse({"gallery": gallery, "subject": subject, "faces": out})


@router.patch(
    "/gallery/{gallery}/subjects/{subject}",
    openapi_extra=parsed_body(RenameRequest),
    summary="Rename a subject",
)
async def rename_subject(request: Request, gallery: str, subject: str) -> JSONResponse:
    state, service = _service(request)
    req: RenameRequest = await parse_body(request, RenameRequest)
    check_name("subject", req.new_name)
    moved = await state.run(lambda: service.store.rename_subject(gallery, subject, req.new_name))
    return JSONResponse({"gallery": gallery, "subject": req.new_name, "faces": moved})


@router.delete("/gallery/{gallery}/subjects/{subject}", summary="Delete a subject and its faces")
async def delete_subject(request: Request, gallery: str, subject: str) -> JSONResponse:
    state, service = _service(request)
    deleted = await state.run(lambda: service.store.delete_subject(gallery, subject))
    if not deleted:
        raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
    return JSONResponse({"gallery": gallery, "subject": subject, "deleted_faces": deleted})


#: face ids are 64-bit integers in both stores; a larger number can name no face
FACE_ID_MAX = 2**63 - 1


@router.delete("/gallery/{gallery}/faces/{face_id}", summary="Delete one face")
async def delete_face(
    request: Request, gallery: str, face_id: Annotated[int, Path(ge=1, le=FACE_ID_MAX)]
) -> JSONResponse:
    state, service = _service(request)
    if not await state.run(lambda: service.store.delete_face(gallery, face_id)):
        raise NotFound(f"no face {face_id} in gallery {gallery!r}")
    return JSONResponse({"gallery": gallery, "face_id": face_id, "deleted": True})


@router.post(
    "/gallery/{gallery}/search",
    openapi_extra=parsed_body(SearchRequest),
    summary="Identify every face in the images (1:N)",
)
async def search(request: Request, gallery: str) -> JSONResponse:
    """For every face, the `top_k` closest subjects; `subject` is null below the threshold.

    `data` holds one entry per image (request order), then one per posted embedding.
    """
    state, service = _service(request)
    req: SearchRequest = await parse_body(request, SearchRequest)

    def work():  # type: ignore[no-untyped-def]
        images = _images(state, req.images, req.img_req_headers)
        return service.search(gallery, images, req.embeddings or [], req.top_k, req.threshold, req.exact)

    results = await state.run(work)
    data: list[dict[str, Any]] = []
    for result in results:
        if isinstance(result, FaceRestError):
            data.append({"status": "failed", "traceback": result.detail, "code": result.code, "faces": []})
            continue
        faces = [
            {
                **_box(hit.face),
                "subject": hit.subject,
                "similarity": hit.matches[0].similarity if hit.matches else None,
                "matches": [{"subject": m.subject, "similarity": m.similarity} for m in hit.matches],
            }
            for hit in result
        ]
        data.append({"status": "ok", "faces": faces})
    return JSONResponse({"gallery": gallery, "threshold": service.threshold(req.threshold), "data": data})


@router.post(
    "/verify",
    openapi_extra=parsed_body(VerifyRequest),
    summary="Same person? Two images, an image and a subject, or two embeddings",
)
async def verify(request: Request) -> JSONResponse:
    """Compares the largest face of each image (or the posted embeddings); against a subject, its
    closest face counts. `same` is `similarity >= threshold`."""
    state, service = _service(request)
    req: VerifyRequest = await parse_body(request, VerifyRequest)
    image_count = len(req.images.data or []) + len(req.images.urls or []) if req.images else 0
    inputs = image_count + len(req.embeddings or [])
    with_subject = req.gallery is not None or req.subject is not None
    if with_subject and (req.gallery is None or req.subject is None):
        raise BadInput("verify against a subject needs both `gallery` and `subject`")
    wanted = 1 if with_subject else 2
    if inputs != wanted:
        raise BadInput(
            f"verify takes two images or two embeddings, or one of them with `gallery` and `subject`; "
            f"got {inputs} input(s){' and a subject' if with_subject else ''}"
        )

    def work() -> float:
        images = _images(state, req.images, req.img_req_headers)
        vectors = service.one_face(images) + service.embeddings(req.embeddings or [])
        if with_subject:
            return service.subject_similarity(req.gallery or "", req.subject or "", vectors[0])
        return float(vectors[0] @ vectors[1])

    similarity = await state.run(work)
    threshold = service.threshold(req.threshold)
    return JSONResponse(
        {
            "similarity": similarity,
            "same": similarity >= threshold,
            "threshold": threshold,
            "model": service.model.name if service.model else None,
        }
    )
