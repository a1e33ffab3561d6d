"""CompreFace's REST API at its own paths (issue 31), for CompreFace's SDKs, Double-Take and scripts
written against it: recognition (subjects, faces, recognize, verify), detection and verification,
images as multipart `file` or base64 JSON, and its error shape `{"message", "code"}`.

A translation only: the work is GalleryService's (gallery/service.py) and the pipeline's. The
`x-api-key` of a CompreFace service is a facerest key scoped to one gallery (issue 30's key ring;
each route's rule, `allow(..., gallery=KEY)`, checks its role and picks that gallery), so one
server stands in for several services. Similarities are facerest's calibrated decisions mapped to
0..1 (api/compat.py: confidence); docs/moving.md documents every field and difference.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, RootModel
from starlette.datastructures import UploadFile
from starlette.responses import Response

from facerest.api.access import KEY, Grant, allow
from facerest.api.compat import compat_gallery, confidence, decode, embeddings_body, error_route, read_upload
from facerest.api.responses import JSONResponse
from facerest.api.routes import app_state, parse_body
from facerest.api.state import AppState
from facerest.errors import (
    BadInput,
    Conflict,
    FaceRestError,
    Forbidden,
    ImageDecodeError,
    ImageTooLarge,
    NoFace,
    NotFound,
    StorageUnavailable,
    Unauthorized,
)
from facerest.gallery.calibration import Decision
from facerest.gallery.people import UNSORTED
from facerest.gallery.service import FoundFace, GalleryService, check_name
from facerest.gallery.store import MAX_TOP_K, StoredFace, SubjectMatch
from facerest.models.faces import Face
from facerest.pipeline import ExtractOptions

NO_FACE = "No face is found in the given image"
#: at most this many ids in one "delete multiple examples" body
MAX_IDS_PER_DELETE = 1000
#: CompreFace's page size when none is asked, and the largest one answered here
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 20, 1000


class CompreFaceRefusal(FaceRestError):
    """A refusal CompreFace answers with a code of its own (e.g. 34: a request part is missing)."""

    def __init__(self, detail: str, compreface_code: int, status: int = 400) -> None:
        super().__init__(detail)
        self.compreface_code = compreface_code
        self.status_code = status
        self.code = "bad_input"


def _compreface_code(status: int, exc: Exception) -> tuple[int, int]:
    """(HTTP status, CompreFace code) for an error: its codes where its clients read them."""
    if isinstance(exc, CompreFaceRefusal):
        return exc.status_code, exc.compreface_code
    if isinstance(exc, RequestValidationError):
        missing = any(e.get("type") == "missing" for e in exc.errors())
        return 400, 33 if missing else 26  # MISSING_REQUEST_PARAMETER, VALIDATION_CONSTRAINT_VIOLATION
    if isinstance(exc, NoFace):
        return 400, 28  # NO_FACES_FOUND: Double-Take reads it as "no face", not as a failure
    if isinstance(exc, Unauthorized):
        return 401, 10  # MODEL_NOT_FOUND: no service with this key
    if isinstance(exc, Forbidden):
        return 403, 0  # facerest's roles: CompreFace has no code for them (UNDEFINED)
    if isinstance(exc, NotFound):
        return 404, 44 if str(exc.detail).startswith("Image") else 42  # EMBEDDING / SUBJECT_NOT_FOUND
    if isinstance(exc, Conflict):
        return 400, 43  # SUBJECT_ALREADY_EXISTS
    if isinstance(exc, ImageDecodeError | ImageTooLarge):
        return (413 if isinstance(exc, ImageTooLarge) else 400), 21  # UNAVAILABLE_FILE_EXTENSION
    if isinstance(exc, BadInput):
        return exc.status_code, 36  # INCORRECT_ARGUMENT
    return status, 0  # UNDEFINED


def _render(request: Request, status: int, message: str, exc: Exception) -> Response:
    status, code = _compreface_code(status, exc)
    if isinstance(exc, Unauthorized) and "x-api-key" not in request.headers:
        message, code = "Missing header: x-api-key", 20  # MISSING_REQUEST_HEADER
    return JSONResponse({"message": message, "code": code}, status)


router = APIRouter(prefix="/api/v1", tags=["CompreFace"], route_class=error_route(_render))


# --- what every route needs: its access rule, the action and the key's one gallery ---


def _rule(action: str) -> Any:
    """The route's one rule: the action, on the gallery the service key is scoped to."""
    return Depends(allow(action, gallery=KEY))


def _service(request: Request) -> tuple[AppState, GalleryService]:
    state = app_state(request)
    if state.gallery is None:
        raise StorageUnavailable("the gallery service is not running")
    return state, state.gallery


# CompreFace's query parameters, as it names and bounds them
Limit = Annotated[int, Query(ge=0, description="Faces per image, the largest first; 0: all.")]
DetProb = Annotated[
    float | None, Query(ge=0.0, le=1.0, description="Detection score a face needs (default: the server's).")
]
Plugins = Annotated[
    str,
    Query(
        description="Comma-separated: age, gender, landmarks, mask, calculator (the embedding); others "
        "(pose) are ignored, as CompreFace ignores plugins it does not run."
    ),
]
Status = Annotated[bool, Query(description="Add plugins_versions (the models that answered).")]
PredictionCount = Annotated[int, Query(ge=1, description=f"Subjects per face (at most {MAX_TOP_K}).")]


class Base64File(BaseModel):
    model_config = ConfigDict(extra="ignore")
    file: str = Field(description="The image, base64.")


class Base64Pair(BaseModel):
    model_config = ConfigDict(extra="ignore")
    source_image: str
    target_image: str


class SubjectBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    subject: str = Field(min_length=1)


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    embeddings: list[list[float]] = Field(min_length=1)


class SourceTargetsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    source: list[float] = Field(min_length=1)
    targets: list[list[float]] = Field(min_length=1)


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/")


async def _images(request: Request, state: AppState, fields: tuple[str, ...]) -> list[str | bytes]:
    """The images of a body, by field name: multipart files, or base64 strings in JSON."""
    if _is_multipart(request):
        async with request.form(max_files=len(fields) + 2, max_fields=len(fields) + 8) as form:
            out: list[str | bytes] = []
            for name in fields:
                upload = form.get(name)
                if not isinstance(upload, UploadFile):
                    raise CompreFaceRefusal(f"Required request part '{name}' is not present", 34)
                out.append(await read_upload(upload, state.settings))
            return out
    if fields == ("file",):
        body: Base64File = await parse_body(request, Base64File)
        return [body.file]
    pair: Base64Pair = await parse_body(request, Base64Pair)
    return [pair.source_image, pair.target_image]


def _plugins(face_plugins: str) -> set[str]:
    return {p.strip().lower() for p in face_plugins.split(",") if p.strip()}


def _options(
    state: AppState, det_prob: float | None, limit: int, plugins: set[str], detect_faces: bool = True
) -> ExtractOptions:
    models = state.analyzer.models
    return ExtractOptions(
        threshold=state.settings.det_thresh if det_prob is None else det_prob,
        limit_faces=limit,
        return_landmarks="landmarks" in plugins,
        extract_embedding=True,
        extract_ga=bool(plugins & {"age", "gender"}) and models.genderage is not None,
        detect_masks="mask" in plugins and models.mask is not None,
        # detect_faces=false: the image is a face crop (the largest face, else the whole image)
        single_face=not detect_faces,
    )


def _loaded(images: list[str | bytes], state: AppState) -> list[np.ndarray]:
    """Pixels; an image that is no image (or no base64) is CompreFace's code 21."""
    out = []
    for image in decode(images, state.settings):
        if isinstance(image, BadInput) and not isinstance(image, ImageTooLarge):
            raise CompreFaceRefusal(image.detail, 21)  # UNAVAILABLE_FILE_EXTENSION / not Base64
        if isinstance(image, FaceRestError):
            raise image
        out.append(image)
    return out


def _record(found: FoundFace) -> Face:
    assert found.face is not None  # the detection options were ours: each face keeps its record
    return found.face


def _face(face: Face, plugins: set[str]) -> dict[str, Any]:
    """One face as CompreFace writes it: plugin fields, then its box and landmarks."""
    out: dict[str, Any] = {}
    if "age" in plugins and face.age is not None:
        out["age"] = {"probability": None, "high": int(face.age), "low": int(face.age)}
    if "gender" in plugins and face.gender is not None:
        out["gender"] = {"probability": None, "value": face.gender}
    if "mask" in plugins and face.mask_probs is not None:
        masked = face.mask_probs.get("mask", 0.0)
        out["mask"] = {
            "probability": round(float(max(masked, 1.0 - masked)), 5),
            "value": "with_mask" if face.mask else "without_mask",
        }
    if "calculator" in plugins and face.embedding is not None:
        out["embedding"] = [float(v) for v in face.embedding]
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    out["box"] = {
        "probability": round(float(face.score), 5),
        "x_max": round(x2),
        "y_max": round(y2),
        "x_min": max(round(x1), 0),
        "y_min": max(round(y1), 0),
    }
    if "landmarks" in plugins and face.landmarks is not None:
        out["landmarks"] = [[round(float(x)), round(float(y))] for x, y in face.landmarks]
    return out


def _versions(state: AppState, plugins: set[str]) -> dict[str, str]:
    """The models that answered, under CompreFace's plugin slugs."""
    s, models = state.settings, state.analyzer.models
    out = {"detector": s.det_name}
    if models.recognizer is not None:
        out["calculator"] = models.recognizer.entry.name
    if models.genderage is not None:
        out.update({p: models.genderage.entry.name for p in ("age", "gender") if p in plugins})
    if "mask" in plugins and models.mask is not None:
        out["mask"] = models.mask.entry.name
    return out


def _similarity(service: GalleryService, cosine: float, decision: Decision) -> float:
    return confidence(cosine, decision, service.calibration)


# --- image ids: CompreFace's are UUIDs, facerest's faces are numbered ---


def uuid_of(face_id: int) -> str:
    """A face id as a UUID-shaped string (its 64 bits in the last two groups)."""
    return f"00000000-0000-0000-{(face_id >> 48) & 0xFFFF:04x}-{face_id & 0xFFFFFFFFFFFF:012x}"


_UUID = re.compile(r"^00000000-0000-0000-([0-9a-fA-F]{4})-([0-9a-fA-F]{12})$")


def face_id_of(value: str) -> int | None:
    """The face id an image_id names, or None when it names no face of this server."""
    match = _UUID.match(value.strip())
    if match:
        number = int(match.group(1) + match.group(2), 16)
    elif value.strip().isdigit() and len(value.strip()) < 20:
        number = int(value.strip())
    else:
        return None
    return number if 1 <= number < 2**63 else None


# --- the gallery behind a key (blocking helpers, run in worker threads): the gallery service's
# pages, lookups and deletion path (issues 29 and 30), so erasure and events are the native API's ---


def _subjects(service: GalleryService, gallery: str) -> list[tuple[str, int]]:
    """(subject, faces) by name, without the unsorted faces; none when the gallery is not there."""
    if service.store.gallery(gallery) is None:
        return []
    return [(s, n) for s, n in service.store.subjects(gallery) if s != UNSORTED]


def _faces_page(
    service: GalleryService, gallery: str, subject: str | None, page: int, size: int
) -> tuple[list[StoredFace], int]:
    """CompreFace's numbered page of a gallery's faces (or one subject's), by subject then id, and
    how many there are: whole subjects are skipped by their counts, then the store's keyset pages."""
    counts = [(s, n) for s, n in _subjects(service, gallery) if subject is None or s == subject]
    total = sum(n for _, n in counts)
    skip, out = page * size, []
    for name, count in counts:
        if skip >= count:
            skip -= count
            continue
        rows = service.store.faces_page(gallery, name, None, min(skip + size - len(out), count))
        out += rows[skip:]
        skip = 0
        if len(out) >= size:
            break
    return out[:size], total


def _face_of(service: GalleryService, gallery: str, raw_id: str, embedding: bool = False) -> StoredFace:
    """The face an image_id names in this gallery (with its embedding when asked); NotFound else."""
    face_id = face_id_of(raw_id)
    if face_id is None or service.store.gallery(gallery) is None:
        raise NotFound(f"Image {raw_id[:100]} not found")
    try:
        face = service.face(gallery, face_id)
    except NotFound:
        raise NotFound(f"Image {raw_id[:100]} not found") from None
    if embedding:
        kept = service.store.faces(gallery, face.subject, with_embeddings=True)
        face = next((f for f in kept if f.face_id == face_id), None)  # type: ignore[assignment]
        if face is None:  # deleted meanwhile
            raise NotFound(f"Image {raw_id[:100]} not found")
    return face


def _delete_subjects(service: GalleryService, gallery: str, grant: Grant, subject: str | None) -> int:
    """Every face of `subject` (None: of every subject) through the one deletion path."""
    deleted = 0
    for name, _ in _subjects(service, gallery):
        if subject is None or name == subject:
            grant.touched(subjects=[name])
            removed = service.delete_subject(gallery, name)
            grant.touched(faces=removed.faces)
            deleted += len(removed.faces)
    return deleted


# --- subjects ---


@router.get("/recognition/subjects", summary="CompreFace: list subjects")
@router.get("/recognition/subjects/", include_in_schema=False)
async def list_subjects(request: Request, grant: Grant = _rule("read")) -> JSONResponse:
    state, service = _service(request)
    gallery = compat_gallery(grant)
    subjects = await state.run(lambda: _subjects(service, gallery))
    grant.touched(subjects=[s for s, _ in subjects])
    return JSONResponse({"subjects": [s for s, _ in subjects]})


@router.post("/recognition/subjects", status_code=201, summary="CompreFace: add a subject")
async def add_subject(request: Request, grant: Grant = _rule("enrol")) -> JSONResponse:
    """A subject exists in facerest once it has a face: the name is checked and answered, and the
    first face added under it creates it."""
    compat_gallery(grant)
    body: SubjectBody = await parse_body(request, SubjectBody)
    check_name("subject", body.subject)
    grant.touched(subjects=[body.subject])
    return JSONResponse({"subject": body.subject}, 201)


@router.put("/recognition/subjects/{subject}", summary="CompreFace: rename a subject")
async def rename_subject(request: Request, subject: str, grant: Grant = _rule("edit")) -> JSONResponse:
    """To a name that exists already: the two subjects are merged, as CompreFace merges them."""
    state, service = _service(request)
    gallery = compat_gallery(grant)
    body: SubjectBody = await parse_body(request, SubjectBody)
    grant.touched(subjects=[subject, body.subject])
    if body.subject == subject:
        return JSONResponse({"updated": False})

    def work() -> bool:
        if service.store.gallery(gallery) is None:
            raise NotFound(f"Subject {subject} not found")
        try:
            return service.rename(gallery, subject, body.subject) > 0
        except Conflict:
            return service.merge(gallery, subject, body.subject).moved > 0

    return JSONResponse({"updated": await state.run(work)})


@router.delete("/recognition/subjects/{subject}", summary="CompreFace: delete a subject and its faces")
async def delete_subject(request: Request, subject: str, grant: Grant = _rule("delete")) -> JSONResponse:
    state, service = _service(request)
    gallery = compat_gallery(grant)

    def work() -> None:
        if not _delete_subjects(service, gallery, grant, subject):
            raise NotFound(f"Subject {subject} not found")

    await state.run(work)
    return JSONResponse({"subject": subject})


@router.delete("/recognition/subjects", summary="CompreFace: delete every subject")
async def delete_subjects(request: Request, grant: Grant = _rule("delete")) -> JSONResponse:
    state, service = _service(request)
    gallery = compat_gallery(grant)

    def work() -> int:
        subjects = _subjects(service, gallery)
        _delete_subjects(service, gallery, grant, None)
        return len(subjects)

    return JSONResponse({"deleted": await state.run(work)})


# --- faces (CompreFace's "examples" of subjects) ---


@router.post("/recognition/faces", status_code=201, summary="CompreFace: add an example of a subject")
async def add_face(
    request: Request,
    subject: Annotated[str, Query(min_length=1)],
    det_prob_threshold: DetProb = None,
    grant: Grant = _rule("enrol"),
) -> JSONResponse:
    """The largest face of the image joins the subject (created if new); faces below the
    enrolment floors (FACEREST_ENROL_*) are refused with the reason."""
    state, service = _service(request)
    gallery = compat_gallery(grant)
    image = (await _images(request, state, ("file",)))[0]
    grant.touched(subjects=[subject])

    def work() -> int:
        loaded = _loaded([image], state)
        done = service.enrol(gallery, subject, loaded)
        if not done.added:
            reason = done.failed[0][1] if done.failed else NO_FACE
            raise NoFace(NO_FACE) if reason in ("no face found", NO_FACE) else BadInput(reason)
        return done.added[0][0]

    face_id = await state.run(work)
    grant.touched(faces=[face_id])
    return JSONResponse({"image_id": uuid_of(face_id), "subject": subject}, 201)


@router.get("/recognition/faces", summary="CompreFace: list examples, paged")
async def list_faces(
    request: Request,
    page: Annotated[int, Query(ge=0, le=2**31)] = 0,
    size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    subject: str | None = None,
    grant: Grant = _rule("read"),
) -> JSONResponse:
    state, service = _service(request)
    gallery = compat_gallery(grant)
    faces, total = await state.run(lambda: _faces_page(service, gallery, subject or None, page, size))
    grant.touched(subjects={f.subject for f in faces}, faces=[f.face_id for f in faces])
    return JSONResponse(
        {
            "faces": [{"image_id": uuid_of(f.face_id), "subject": f.subject} for f in faces],
            "page_number": page,
            "page_size": size,
            "total_pages": math.ceil(total / size),
            "total_elements": total,
        }
    )


@router.delete("/recognition/faces", summary="CompreFace: delete the examples of a subject (or all)")
async def delete_faces(
    request: Request, subject: str | None = None, grant: Grant = _rule("delete")
) -> JSONResponse:
    state, service = _service(request)
    gallery = compat_gallery(grant)
    deleted = await state.run(lambda: _delete_subjects(service, gallery, grant, subject or None))
    return JSONResponse({"deleted": deleted})


@router.delete("/recognition/faces/{image_id}", summary="CompreFace: delete an example by id")
async def delete_face(request: Request, image_id: str, grant: Grant = _rule("delete")) -> JSONResponse:
    state, service = _service(request)
    gallery = compat_gallery(grant)

    def work() -> StoredFace:
        face = _face_of(service, gallery, image_id)
        grant.touched(subjects=[face.subject], faces=[face.face_id])
        service.delete_face(gallery, face.face_id)
        return face

    face = await state.run(work)
    return JSONResponse({"image_id": image_id, "subject": face.subject})


@router.post("/recognition/faces/delete", summary="CompreFace: delete several examples by id")
async def delete_many(request: Request, grant: Grant = _rule("delete")) -> JSONResponse:
    """Ids that name no face of this service are skipped, as CompreFace skips them."""
    state, service = _service(request)
    gallery = compat_gallery(grant)
    ids = await parse_body(request, _IdList)

    def work() -> list[dict[str, str]]:
        named: dict[int, tuple[str, StoredFace]] = {}
        for raw in ids.root:
            try:
                face = _face_of(service, gallery, raw)
            except NotFound:
                continue
            named.setdefault(face.face_id, (raw, face))
        removed = service.delete_faces(gallery, list(named)) if named else None
        gone = [] if removed is None else removed.faces
        grant.touched(subjects={named[i][1].subject for i in gone}, faces=gone)
        return [{"image_id": named[i][0], "subject": named[i][1].subject} for i in gone]

    return JSONResponse(await state.run(work))


class _IdList(RootModel[Annotated[list[str], Field(max_length=MAX_IDS_PER_DELETE)]]):
    pass


# --- recognition and verification against the collection ---


@router.post("/recognition/recognize", summary="CompreFace: recognize the faces of an image")
async def recognize(
    request: Request,
    limit: Limit = 0,
    det_prob_threshold: DetProb = None,
    prediction_count: PredictionCount = 1,
    face_plugins: Plugins = "",
    status: Status = False,
    detect_faces: bool = True,
    grant: Grant = _rule("search"),
) -> JSONResponse:
    """Each face with its `prediction_count` closest subjects; `similarity` reads 0.6 at facerest's
    decision point (docs/moving.md)."""
    state, service = _service(request)
    gallery = compat_gallery(grant)
    image = (await _images(request, state, ("file",)))[0]
    plugins = _plugins(face_plugins)
    options = _options(state, det_prob_threshold, limit, plugins, detect_faces)

    def work() -> tuple[Decision | None, list[tuple[FoundFace, list[SubjectMatch]]]]:
        loaded = _loaded([image], state)
        if service.store.gallery(gallery) is None:  # nothing enrolled with this key yet
            found = service.detect(loaded, largest_only=False, options=options)[0]
            if found.error is not None:
                raise found.error
            return None, [(face, []) for face in found.faces]
        decision, answers = service.search(
            gallery, loaded, top_k=min(prediction_count, MAX_TOP_K), detect_options=options
        )
        answer = answers[0]
        if isinstance(answer, FaceRestError):
            raise answer
        # who was looked up: the subjects named, and those answered as candidates below the decision
        grant.touched(
            subjects=[hit.subject for hit in answer if hit.subject is not None],
            candidates=[m.subject for hit in answer for m in hit.matches],
        )
        return decision, [(hit.face, hit.matches) for hit in answer]

    decision, faces = await state.run(work)
    if not faces:
        raise NoFace(NO_FACE)
    result = []
    for found, matches in faces:
        item = _face(_record(found), plugins)
        item["subjects"] = [
            {"subject": m.subject, "similarity": _similarity(service, m.similarity, decision)}
            for m in matches
            if decision is not None
        ]
        result.append(item)
    answer: dict[str, Any] = {"result": result}
    if status:
        answer["plugins_versions"] = _versions(state, plugins)
    return JSONResponse(answer)


@router.post("/recognition/faces/{image_id}/verify", summary="CompreFace: compare an image with one example")
async def verify_face(
    request: Request,
    image_id: str,
    limit: Limit = 0,
    det_prob_threshold: DetProb = None,
    face_plugins: Plugins = "",
    status: Status = False,
    grant: Grant = _rule("verify"),
) -> JSONResponse:
    state, service = _service(request)
    gallery = compat_gallery(grant)
    image = (await _images(request, state, ("file",)))[0]
    plugins = _plugins(face_plugins)
    options = _options(state, det_prob_threshold, limit, plugins)

    def work() -> tuple[StoredFace, list[FoundFace]]:
        face = _face_of(service, gallery, image_id, embedding=True)
        grant.touched(subjects=[face.subject], faces=[face.face_id])
        found = service.detect(_loaded([image], state), largest_only=False, options=options)[0]
        if found.error is not None:
            raise found.error
        return face, found.faces

    stored, faces = await state.run(work)
    if not faces:
        raise NoFace(NO_FACE)
    decision = service.decision()
    assert stored.embedding is not None
    result = [
        {
            **_face(_record(found), plugins),
            "subject": stored.subject,
            "similarity": _similarity(service, float(found.embedding @ stored.embedding), decision),
        }
        for found in faces
    ]
    answer: dict[str, Any] = {"result": result}
    if status:
        answer["plugins_versions"] = _versions(state, plugins)
    return JSONResponse(answer)


@router.post("/recognition/embeddings/recognize", summary="CompreFace: recognize posted embeddings")
async def recognize_embeddings(
    request: Request, prediction_count: PredictionCount = 1, grant: Grant = _rule("search")
) -> JSONResponse:
    state, service = _service(request)
    gallery = compat_gallery(grant)
    body: EmbeddingsBody = await embeddings_body(request, state.settings, EmbeddingsBody)

    def work() -> tuple[Decision | None, list[list[SubjectMatch]]]:
        vectors = service.embeddings(body.embeddings)  # checked against the recognizer in use
        if service.store.gallery(gallery) is None:
            return None, [[] for _ in vectors]
        decision, answers = service.search(
            gallery, embeddings=[v.tolist() for v in vectors], top_k=min(prediction_count, MAX_TOP_K)
        )
        hits = [hit for a in answers if isinstance(a, list) for hit in a]
        grant.touched(
            subjects=[hit.subject for hit in hits if hit.subject is not None],
            candidates=[m.subject for hit in hits for m in hit.matches],
        )
        return decision, [a[0].matches if isinstance(a, list) and a else [] for a in answers]

    decision, matches = await state.run(work)
    result = [
        {
            "embedding": embedding,
            "similarities": [
                {"subject": m.subject, "similarity": _similarity(service, m.similarity, decision)}
                for m in found
                if decision is not None
            ],
        }
        for embedding, found in zip(body.embeddings, matches, strict=True)
    ]
    return JSONResponse({"result": result})


@router.post(
    "/recognition/embeddings/faces/{image_id}/verify",
    summary="CompreFace: compare embeddings with one example",
)
async def verify_embeddings(request: Request, image_id: str, grant: Grant = _rule("verify")) -> JSONResponse:
    state, service = _service(request)
    gallery = compat_gallery(grant)
    body: EmbeddingsBody = await embeddings_body(request, state.settings, EmbeddingsBody)

    def work() -> list[float]:
        vectors = service.embeddings(body.embeddings)
        face = _face_of(service, gallery, image_id, embedding=True)
        grant.touched(subjects=[face.subject], faces=[face.face_id])
        assert face.embedding is not None
        return [float(v @ face.embedding) for v in vectors]

    cosines = await state.run(work)
    return JSONResponse({"result": _ranked(service, body.embeddings, cosines)})


def _ranked(
    service: GalleryService, embeddings: list[list[float]], cosines: list[float]
) -> list[dict[str, Any]]:
    decision = service.decision()
    rows = [
        {"embedding": e, "similarity": _similarity(service, c, decision)}
        for e, c in zip(embeddings, cosines, strict=True)
    ]
    return sorted(rows, key=lambda r: -r["similarity"])


# --- detection and verification services (no collection) ---


@router.post("/detection/detect", summary="CompreFace: detect the faces of an image")
async def detect(
    request: Request,
    limit: Limit = 0,
    det_prob_threshold: DetProb = None,
    face_plugins: Plugins = "",
    status: Status = False,
    _: Grant = Depends(allow("extract")),
) -> JSONResponse:
    state = app_state(request)
    image = (await _images(request, state, ("file",)))[0]
    plugins = _plugins(face_plugins)
    # detection only: the recognizer runs when the embedding (`calculator`) is asked for
    options = replace(
        _options(state, det_prob_threshold, limit, plugins), extract_embedding="calculator" in plugins
    )
    result = await state.run(lambda: state.analyzer.process(_loaded([image], state), options)[0])
    if not result.ok:
        raise BadInput(result.error or "the image failed")
    if not result.faces:
        raise NoFace(NO_FACE)
    answer: dict[str, Any] = {"result": [_face(f, plugins) for f in result.faces]}
    if status:
        answer["plugins_versions"] = _versions(state, plugins)
    return JSONResponse(answer)


@router.post("/verification/verify", summary="CompreFace: compare the faces of two images")
async def verify_images(
    request: Request,
    limit: Limit = 0,
    det_prob_threshold: DetProb = None,
    face_plugins: Plugins = "",
    status: Status = False,
    _: Grant = Depends(allow("extract")),
) -> JSONResponse:
    """The source image's largest face against every face of the target image."""
    state, service = _service(request)
    source, target = await _images(request, state, ("source_image", "target_image"))
    plugins = _plugins(face_plugins)
    options = _options(state, det_prob_threshold, limit, plugins)

    def work() -> tuple[FoundFace, list[FoundFace]]:
        first, second = service.detect(_loaded([source, target], state), largest_only=False, options=options)
        for found in (first, second):
            if found.error is not None:
                raise found.error
            if not found.faces:
                raise NoFace(NO_FACE)
        return max(first.faces, key=_area), second.faces

    source_face, target_faces = await state.run(work)
    decision = service.decision()
    matches = [
        {
            **_face(_record(face), plugins),
            "similarity": _similarity(service, float(face.embedding @ source_face.embedding), decision),
        }
        for face in target_faces
    ]
    entry: dict[str, Any] = {
        "source_image_face": _face(_record(source_face), plugins),
        "face_matches": matches,
    }
    entry["plugins_versions"] = _versions(state, plugins)
    return JSONResponse({"result": [entry]})


@router.post("/verification/embeddings/verify", summary="CompreFace: compare embeddings")
async def verify_embedding_pairs(request: Request, _: Grant = Depends(allow("extract"))) -> JSONResponse:
    state, service = _service(request)
    body: SourceTargetsBody = await embeddings_body(request, state.settings, SourceTargetsBody)

    def work() -> list[float]:
        source, *targets = service.embeddings([body.source, *body.targets])
        return [float(t @ source) for t in targets]

    cosines = await state.run(work)
    return JSONResponse({"result": _ranked(service, body.targets, cosines)})


def _area(face: FoundFace) -> float:
    x1, y1, x2, y2 = face.bbox or (0.0, 0.0, 0.0, 0.0)
    return (x2 - x1) * (y2 - y1)
