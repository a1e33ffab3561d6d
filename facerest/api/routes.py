"""Endpoints. Each one parses, hands the work to the pipeline off the event loop, and serialises."""

from __future__ import annotations

import base64
import importlib.metadata
import time
from typing import Any

import anyio
import msgpack
import numpy as np
import orjson
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from threadpoolctl import threadpool_info

from facerest import __version__
from facerest.api.access import allow, public
from facerest.api.responses import JSONResponse, body_response
from facerest.api.schemas import DrawRequest, ExtractRequest, ImageOptions, Images
from facerest.api.serialize import MSGPACK_TYPES, FaceFields, encode_jpeg, v1_body, v2_body
from facerest.api.state import AppState
from facerest.config import Settings
from facerest.errors import BadInput, FaceRestError, ImageTooLarge, TooManyFaces
from facerest.imaging.draw import draw_faces
from facerest.imaging.loader import load_images
from facerest.imaging.marks import FaceMark
from facerest.pipeline import ExtractOptions, Timings

router = APIRouter()


def app_state(request: Request) -> AppState:
    return request.app.state.facerest


def _wants_msgpack(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(t in accept for t in MSGPACK_TYPES)


def _string_keyed(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    for key, _ in pairs:
        if not isinstance(key, str):
            raise ValueError(f"map keys must be strings, not {type(key).__name__}")
    return dict(pairs)


#: bodies from this size are decoded in a worker thread: decoding holds the interpreter (a
#: search of 1,000 posted embeddings, 5 MB of JSON: 60 ms), and in the event loop nothing else
#: is read or answered meanwhile (issue 28)
DECODE_IN_THREAD_FROM = 256 * 1024


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    """JSON or msgpack body -> a validated request model."""
    # FACEREST_MAX_BODY_BYTES is enforced for every body by HardeningMiddleware while it streams in
    raw = await request.body()
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if len(raw) >= DECODE_IN_THREAD_FROM:
        return await anyio.to_thread.run_sync(_decoded, raw, media, model)
    return _decoded(raw, media, model)


def _decoded(raw: bytes, media: str, model: type[BaseModel]) -> Any:
    try:
        if media in MSGPACK_TYPES:
            # keys must be strings: an array or map as a key is unhashable (was a 500), and no
            # field of ours has any other key type
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, object_pairs_hook=_string_keyed)
        elif media.startswith("multipart/"):
            raise BadInput("multipart bodies go to the /multipart/... endpoints")
        else:  # JSON, also when curl -d labels it form-urlencoded
            obj = orjson.loads(raw)
    except (
        orjson.JSONDecodeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        ValueError,
    ) as exc:
        if isinstance(exc, FaceRestError):
            raise
        raise BadInput(
            f"the body is not valid {'msgpack' if media in MSGPACK_TYPES else 'JSON'}: {exc}"
        ) from exc
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


def _options(req: ImageOptions, state: AppState, **flags: Any) -> ExtractOptions:
    max_size = req.max_size
    if isinstance(max_size, int):
        max_size = [max_size, max_size]
    return ExtractOptions(
        threshold=state.settings.det_thresh if req.threshold is None else req.threshold,
        limit_faces=req.limit_faces,
        min_face_size=req.min_face_size,
        max_size=None if max_size is None else (max_size[0], max_size[1]),
        single_face=req.single_face,
        detect_scale=req.detect_scale,
        **flags,
    )


def _extract_options(req: ExtractRequest, state: AppState) -> ExtractOptions:
    return _options(
        req,
        state,
        embed_only=req.embed_only,
        return_face_data=req.return_face_data,
        return_landmarks=req.return_landmarks,
        extract_embedding=req.extract_embedding or req.embed_only,
        extract_ga=req.extract_ga,
        detect_masks=req.detect_masks,
        dense_landmarks=req.return_dense_landmarks,
        marks=face_marks(req.images, state.settings),
        return_quality=req.return_quality,
    )


def face_marks(images: Images, settings: Settings) -> list[list[FaceMark] | None] | None:
    """The faces marked by hand, per image; TooManyFaces before any work when they are more than
    a request may embed (FACEREST_MAX_FACES_PER_REQUEST, as detected faces) or more boxes alone
    than it may search (FACEREST_MAX_BOX_MARKS_PER_REQUEST: each can cost a detector pass)."""
    if images.faces is None:
        return None
    marked = [m for marks in images.faces if marks is not None for m in marks]
    if len(marked) > settings.max_faces_per_request:
        raise TooManyFaces(
            f"{len(marked)} faces marked in one request; the limit is {settings.max_faces_per_request} "
            "(FACEREST_MAX_FACES_PER_REQUEST)"
        )
    boxes = sum(1 for m in marked if m.landmarks is None)
    if boxes > settings.max_box_marks_per_request:
        raise TooManyFaces(
            f"{boxes} faces marked by a box alone in one request; the limit is "
            f"{settings.max_box_marks_per_request} (FACEREST_MAX_BOX_MARKS_PER_REQUEST; marks with "
            "landmarks need no search)"
        )
    return [
        None
        if marks is None
        else [
            FaceMark(
                None if m.bbox is None else np.asarray(m.bbox, np.float32),
                None if m.landmarks is None else np.asarray(m.landmarks, np.float32),
            )
            for m in marks
        ]
        for marks in images.faces
    ]


async def run_extract(state: AppState, req: ExtractRequest, binary: bool) -> Response:
    options = _extract_options(req, state)
    timings = Timings()
    started = time.perf_counter()
    # the time limit counts from here, not from when a worker thread picks the request up
    deadline = time.monotonic() + state.settings.request_timeout_s

    def work():  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        images = load_images(req.images.data, req.images.urls, state.settings, req.img_req_headers, deadline)
        timings.extra["read_imgs_ms"] = (time.perf_counter() - t0) * 1000
        return state.analyzer.process(images, options, timings, deadline)

    results = await state.run(work)
    took = {"total_ms": (time.perf_counter() - started) * 1000}
    if req.verbose_timings:
        took.update(
            read_imgs_ms=timings.extra["read_imgs_ms"],
            detect_all_ms=timings.detect_ms,
            embed_all_ms=timings.faces_ms,
        )
    state.metrics.record_results(results)
    legacy = str(req.api_ver) == "1" or (
        "max_size" in req.model_fields_set and "api_ver" not in req.model_fields_set
    )
    if legacy:
        body: Any = v1_body(results, binary=binary, landmarks=req.return_landmarks, fields=req.face_fields)
    else:
        body = v2_body(results, took, binary=binary, landmarks=req.return_landmarks, fields=req.face_fields)
    return body_response(body, binary=binary)


#: request models that routes read from JSON or msgpack bodies themselves (app.py publishes them)
PARSED_BODIES: list[type[BaseModel]] = []


def parsed_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route that parses `model` with `parse_body`, so the schema shows it."""
    PARSED_BODIES.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    content = {"application/json": {"schema": ref}, "application/msgpack": {"schema": ref}}
    return {"requestBody": {"required": True, "content": content}}


@router.post(
    "/extract",
    dependencies=[Depends(allow("extract"))],
    openapi_extra=parsed_body(ExtractRequest),
    summary="Detect faces and extract embeddings, gender/age, masks",
    responses={200: {"content": {"application/json": {}, "application/x-msgpack": {}}}},
)
async def extract(request: Request) -> Response:
    """Body in JSON or msgpack (`Content-Type: application/msgpack`, raw image bytes allowed).

    Answer in msgpack when `msgpack: true` or `Accept: application/x-msgpack`.
    """
    req: ExtractRequest = await parse_body(request, ExtractRequest)
    return await run_extract(app_state(request), req, req.msgpack or _wants_msgpack(request))


@router.post(
    "/multipart/extract",
    dependencies=[Depends(allow("extract"))],
    summary="Same as /extract, images uploaded as files",
    responses={200: {"content": {"application/json": {}, "application/x-msgpack": {}}}},
)
async def extract_multipart(
    request: Request,
    files: list[UploadFile] = File(..., description="Images"),
    threshold: float | None = Form(None, ge=0.0, le=1.0),
    embed_only: bool = Form(False),
    return_face_data: bool = Form(False),
    return_landmarks: bool = Form(False),
    extract_embedding: bool = Form(True),
    extract_ga: bool = Form(False),
    detect_masks: bool = Form(False),
    limit_faces: int = Form(0, ge=0),
    min_face_size: float = Form(0, ge=0),
    single_face: bool = Form(False),
    verbose_timings: bool = Form(False),
    msgpack: bool = Form(False),
    api_ver: str = Form("2", pattern="^[12]$"),
    face_fields: FaceFields = Form("insightface", description="As in /extract."),
) -> Response:
    state = app_state(request)
    data = [await _read_upload(f, state) for f in files]
    req = ExtractRequest(
        images={"data": data},
        threshold=threshold,
        embed_only=embed_only,
        return_face_data=return_face_data,
        return_landmarks=return_landmarks,
        extract_embedding=extract_embedding,
        extract_ga=extract_ga,
        detect_masks=detect_masks,
        limit_faces=limit_faces,
        min_face_size=min_face_size,
        single_face=single_face,
        verbose_timings=verbose_timings,
        msgpack=msgpack,
        api_ver=api_ver,
        face_fields=face_fields,
    )
    return await run_extract(state, req, msgpack or _wants_msgpack(request))


async def _read_upload(upload: UploadFile, state: AppState) -> bytes:
    limit = state.settings.max_image_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"{upload.filename or 'upload'} is larger than the limit of {limit} bytes")
    return data


async def _draw(
    state: AppState,
    data: list[str | bytes] | None,
    urls: list[str] | None,
    options: ExtractOptions,
    headers: dict[str, str],
    **style: bool,
) -> list[bytes | FaceRestError]:
    def work() -> list[bytes | FaceRestError]:
        images = load_images(data, urls, state.settings, headers)
        results = state.analyzer.process(images, options)
        out: list[bytes | FaceRestError] = []
        for image, result in zip(images, results, strict=True):
            if isinstance(image, FaceRestError):
                out.append(image)
            else:
                out.append(encode_jpeg(draw_faces(image, result.faces, **style)))
        return out

    return await state.run(work)


@router.post(
    "/draw_detections",
    dependencies=[Depends(allow("extract"))],
    openapi_extra=parsed_body(DrawRequest),
    summary="Draw the detected faces on each image",
    responses={200: {"content": {"image/jpeg": {}, "application/json": {}}}},
)
async def draw_detections(request: Request) -> Response:
    """One image: the JPEG itself. Several: JSON `{"data": [{"status", "image": base64 JPEG}]}`."""
    state = app_state(request)
    req: DrawRequest = await parse_body(request, DrawRequest)
    options = _options(req, state, extract_embedding=False, detect_masks=req.detect_masks)
    drawn = await _draw(
        state,
        req.images.data,
        req.images.urls,
        options,
        {},
        landmarks=req.draw_landmarks,
        scores=req.draw_scores,
        sizes=req.draw_sizes,
    )
    if len(drawn) == 1:
        if isinstance(drawn[0], FaceRestError):
            raise drawn[0]
        return Response(drawn[0], media_type="image/jpeg")
    data = [
        {"status": "failed", "traceback": d.detail, "code": d.code}
        if isinstance(d, FaceRestError)
        else {"status": "ok", "image": base64.b64encode(d).decode("ascii")}
        for d in drawn
    ]
    return JSONResponse({"data": data})


@router.post(
    "/multipart/draw_detections",
    dependencies=[Depends(allow("extract"))],
    summary="Draw the detected faces on an uploaded image",
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def draw_detections_multipart(
    request: Request,
    file: UploadFile = File(...),
    threshold: float = Form(0.6, ge=0.0, le=1.0),
    draw_landmarks: bool = Form(True),
    draw_scores: bool = Form(True),
    draw_sizes: bool = Form(True),
    limit_faces: int = Form(0, ge=0),
    min_face_size: float = Form(0, ge=0),
    use_rotation: bool = Form(False, description="Accepted for compatibility; has no effect."),
) -> Response:
    state = app_state(request)
    data = await _read_upload(file, state)
    req = ImageOptions(threshold=threshold, limit_faces=limit_faces, min_face_size=min_face_size)
    options = _options(req, state, extract_embedding=False)
    drawn = await _draw(
        state, [data], None, options, {}, landmarks=draw_landmarks, scores=draw_scores, sizes=draw_sizes
    )
    if isinstance(drawn[0], FaceRestError):
        raise drawn[0]
    return Response(drawn[0], media_type="image/jpeg")


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@router.get("/info", dependencies=[Depends(allow("info"))], summary="Version, models and settings in force")
async def info(request: Request) -> JSONResponse:
    state = app_state(request)
    s = state.settings
    import onnxruntime

    models = state.analyzer.models
    return JSONResponse(
        {
            "version": __version__,
            "tensorrt_version": _installed_version("tensorrt"),
            "onnxruntime_version": onnxruntime.__version__,
            "log_level": s.log_level,
            "models": {
                "inference_backend": s.runtime,
                "det_name": s.det_name,
                "rec_name": s.rec_name or None,
                "ga_name": s.ga_name or None,
                "mask_detector": s.mask_name or None,
                "landmarks_name": s.landmarks_name or None,
                "rec_batch_size": s.rec_batch_size,
                "det_batch_size": s.det_batch_size,
                "fp16": s.force_fp16,
                # InsightFace-REST's names for the same settings: its clients print them
                "max_size": s.max_size,
                "force_fp16": s.force_fp16,
                "triton_uri": s.triton_uri if s.runtime == "triton" else None,
                "providers": models.backends,
                # issue 32: each model's licence and whether it allows commercial use; the pack
                # the names came from and whether the operator declared commercial use
                "licences": models.licences(),
                "model_pack": s.model_pack,
                "commercial_use": s.commercial_use,
            },
            "defaults": {
                "threshold": s.det_thresh,
                "max_size": s.max_size,
                "return_face_data": False,
                "extract_embedding": True,
                "extract_ga": False,
                "api_ver": "2",
                # the rest of InsightFace-REST's `defaults`
                "det_thresh": s.det_thresh,
                "return_landmarks": False,
                "detect_masks": False,
                "img_req_headers": {},
                "sslv3_hack": False,
                "face_fields": "insightface",
            },
            "limits": {
                "max_images_per_request": s.max_images_per_request,
                "max_image_bytes": s.max_image_bytes,
                "max_image_pixels": s.max_image_pixels,
                "max_body_bytes": s.max_body_bytes,
                "max_faces_per_image": s.max_faces_per_image,
                "queue_size": s.queue_size,
                "max_request_pixels": s.max_request_pixels,
                "request_timeout_s": s.request_timeout_s,
                "max_jpeg_scans": s.max_jpeg_scans,
                "max_detector_pixels": s.max_detector_pixels,
                "max_faces_per_request": s.max_faces_per_request,
                "max_embeddings_per_body": s.max_embeddings_per_body,
                "max_search_comparisons": s.max_search_comparisons,
                # issue 28
                "max_box_marks_per_request": s.max_box_marks_per_request,
                "cluster_max_faces": s.cluster_max_faces,
                "video_formats": s.video_formats,
                "video_max_fps": s.video_max_fps,
                "video_max_pixels_per_byte": s.video_max_pixels_per_byte,
                "video_max_frames_per_sample": s.video_max_frames_per_sample,
                "video_max_frame_bytes": s.video_max_frame_bytes,
                "video_max_listeners": s.video_max_listeners,
            },
            # enforced per connection, before a route or the API key check (api/http_protocol.py)
            "http_limits": {
                "max_header_bytes": s.max_header_bytes,
                "max_request_line_bytes": s.max_request_line_bytes,
                "header_timeout_s": s.header_timeout_s,
                "body_timeout_s": s.body_timeout_s,
                "keep_alive_timeout_s": s.keep_alive_timeout_s,
                "max_connections": s.max_connections,
            },
            "threads": s.threads,
            # what the BLAS in use runs with (FACEREST_BLAS_THREADS, set at start)
            "blas_threads": max(
                (p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=None
            ),
            "decisions": _decisions(state),
            # the APIs this server answers and where it publishes (issue 31)
            "apis": {
                "facerest": True,
                "insightface_rest": True,
                "compreface": s.compreface_enabled,
                "deepstack": s.deepstack_enabled,
            },
            "publishing": {"mqtt": None if not s.mqtt_url else {"topic_prefix": s.mqtt_topic_prefix}},
        }
    )


def _decisions(state: AppState) -> dict[str, Any]:
    """The default decision points and the recognizer's calibration behind them (issue 20)."""
    from facerest.gallery.calibration import row_json

    calibration = state.gallery.calibration if state.gallery is not None else None
    return {
        "verify_fmr": state.settings.verify_fmr,
        "search_fpir": state.settings.search_fpir,
        "calibration": None
        if calibration is None
        else {
            "source": calibration.source,
            "model": calibration.model,
            "impostor_pairs": calibration.impostor_pairs,
            "calibrated_fmr_range": [calibration.min_fmr, calibration.max_fmr],
            "thresholds": [row_json(row) for row in calibration.table()],
        },
    }


@router.get(
    "/health", dependencies=[Depends(public())], summary="Ready when the models are loaded and answer"
)
async def health(request: Request) -> JSONResponse:
    state = app_state(request)
    probe = np.zeros((64, 64, 3), np.uint8)
    try:
        await state.run(lambda: state.analyzer.process([probe], ExtractOptions(extract_embedding=False)))
    except FaceRestError as exc:
        return JSONResponse({"status": "unavailable", "detail": exc.detail, "code": exc.code}, 503)
    return JSONResponse({"status": "ok", "models": state.analyzer.models.backends})


@router.get("/", dependencies=[Depends(public())], include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/docs")
