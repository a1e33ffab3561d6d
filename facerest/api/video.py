"""Video endpoints (issue 17): a file or URL in, face tracks out; live-stream jobs with SSE events.

Parsing and serialising only: decoding, tracking and jobs live in facerest/video/.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from facerest.api.access import BODY, Grant, allow
from facerest.api.http_protocol import decimal_header
from facerest.api.responses import JSONResponse
from facerest.api.routes import app_state, parse_body, parsed_body
from facerest.api.state import AppState
from facerest.errors import FaceRestError, FeatureUnavailable, NotFound, StorageUnavailable, VideoTooLarge
from facerest.events import TrackFinished
from facerest.imaging.loader import fetch_policy
from facerest.imaging.sources import load_source
from facerest.pipeline import ExtractOptions
from facerest.video.analyze import Identify, VideoAnalyzer, VideoOptions, track_body, track_event
from facerest.video.decode import Sampling, VideoLimits, VideoSource
from facerest.video.jobs import JobManager, Listener, VideoJob
from facerest.video.tracker import Track, TrackerConfig, track_gap

#: an event stream that stays silent this long gets a comment line (proxies close silent streams)
KEEP_ALIVE_S = 15.0

Fps = Field(None, ge=0.0, le=120.0, description="Frames sampled per second of video; 0: every frame.")


class VideoOptionsBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    fps: float | None = Fps
    keyframes: bool = Field(False, description="Sample the key frames only (fps is then ignored).")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Detection score threshold.")
    min_face_size: float = Field(0, ge=0, description="Ignore faces narrower than this (pixels).")
    extract_ga: bool = Field(False, description="Gender and age per track (majority / median).")
    return_embedding: bool = Field(True, description="Each track's aggregated embedding as `vec`.")
    gallery: str | None = Field(None, description="Identify each track in this gallery.")
    gallery_threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="Similarity at which a track is a subject (gallery default)."
    )
    return_crops: bool = Field(False, description="Each track's best face as a JPEG (base64), `best.image`.")


class VideoExtractRequest(VideoOptionsBody):
    url: str = Field(description="http(s) URL of a video file (the image URL rules apply).")
    return_boxes: bool = Field(False, description="Every sampled frame's box of each track.")
    img_req_headers: dict[str, str] = Field(default_factory=dict, description="Headers for the download.")


class VideoJobRequest(VideoOptionsBody):
    url: str = Field(description="Live stream: http(s) (MJPEG, MPEG-TS, ...) or rtsp(s).")
    webhook: str | None = Field(
        None, description="Also POST every event as JSON to this http(s) URL (the image URL rules apply)."
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: AppState = app.state.facerest
    jobs = JobManager(state.analyzer, state.settings, state.events)
    app.state.video_jobs = jobs
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(jobs.close)


router = APIRouter(tags=["video"], lifespan=lifespan)


def _sampling(body: VideoOptionsBody, state: AppState) -> Sampling:
    fps = state.settings.video_default_fps if body.fps is None else body.fps
    return Sampling(fps=fps, keyframes=body.keyframes)


def _video_options(body: VideoOptionsBody, state: AppState, return_boxes: bool) -> VideoOptions:
    extract = ExtractOptions(
        threshold=state.settings.det_thresh if body.threshold is None else body.threshold,
        min_face_size=body.min_face_size,
        extract_embedding=state.analyzer.models.recognizer is not None,
        extract_ga=body.extract_ga,
    )
    tracker = TrackerConfig(max_gap_s=track_gap(state.settings.video_track_gap_s, _sampling(body, state)))
    tracker.high_score = extract.threshold
    settings = state.settings
    # each track's best face is kept as a picture when it is asked for, or for the review queue
    # of the gallery the tracks are identified in
    review = body.gallery is not None and settings.people_review and settings.gallery_keep_crops
    crop_size = settings.gallery_crop_size if body.return_crops or review else 0
    return VideoOptions(extract=extract, return_boxes=return_boxes, tracker=tracker, crop_size=crop_size)


def _identifier(state: AppState, body: VideoOptionsBody) -> Identify | None:
    if body.gallery is None:
        return None
    service = state.gallery
    if service is None:
        raise StorageUnavailable("the gallery service is not running")
    if state.analyzer.models.recognizer is None:
        raise FeatureUnavailable("identifying tracks needs a face recognizer; set FACEREST_REC_NAME")
    gallery, limit = body.gallery, body.gallery_threshold

    def identify(embeddings: list[np.ndarray]) -> list[dict[str, Any]]:
        """Blocking (the gallery store). Called with [] first: an unknown gallery fails the
        request before any frame is decoded."""
        service.require(gallery)
        if not embeddings:
            return []
        # the gallery's default decision (an FPIR) unless the request gives a raw threshold
        # the tracks are published as tracks (TrackFinished), not as a search of embeddings
        decision, found = service.search(
            gallery, embeddings=[e.tolist() for e in embeddings], top_k=1, threshold=limit, emit=False
        )
        out = []
        for entry in found:
            if isinstance(entry, FaceRestError) or not entry:
                out.append({"subject": None, "unknown": True, "similarity": None})
                continue
            match = entry[0]
            best = match.matches[0].similarity if match.matches else None
            out.append(
                {
                    "subject": match.subject,
                    "unknown": match.subject is None,
                    "similarity": None if best is None else round(best, 4),
                    "threshold": round(decision.threshold, 4),
                }
            )
        return out

    return identify


def _analyse(
    state: AppState,
    data: bytes,
    body: VideoOptionsBody,
    return_boxes: bool,
    identify: Identify | None,
    name: str,
) -> dict[str, Any]:
    """Blocking: decode, track and identify one video file."""
    settings = state.settings
    if identify is not None:
        identify([])
    options = _video_options(body, state, return_boxes)
    deadline = time.monotonic() + settings.video_timeout_s
    ended: list[Track] = []
    with VideoSource(data, VideoLimits.from_settings(settings), _sampling(body, state)) as source:
        video = VideoAnalyzer(state.analyzer, settings.video_frames_in_flight)
        tracker = video.run(source.frames(deadline), options, ended.extend, deadline=deadline)
        ended.extend(tracker.finish())
        info = source.info
    ended.sort(key=lambda t: (t.first.t, t.id))
    identities: list[dict[str, Any] | None] = [None] * len(ended)
    if identify is not None:
        embedded = [i for i, t in enumerate(ended) if t.embedding is not None]
        for i, identity in zip(embedded, identify([ended[i].embedding for i in embedded]), strict=True):  # type: ignore[misc]
            identities[i] = identity
        if state.events.wants(TrackFinished):  # the review queue keeps the tracks nobody could name
            for track, identity in zip(ended, identities, strict=True):
                state.events.publish(track_event(track, identity, body.gallery, "video", name))
    sampling = _sampling(body, state)
    return {
        "video": {
            "codec": info.codec,
            "container": info.container,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "duration_s": info.duration_s,
            "frames_decoded": info.frames_decoded,
            "frames_sampled": info.frames_sampled,
            "sample_fps": None if sampling.keyframes else sampling.fps,
            "keyframes": sampling.keyframes,
        },
        "tracks": [
            track_body(t, identity, embedding=body.return_embedding, crop=body.return_crops)
            for t, identity in zip(ended, identities, strict=True)
        ],
    }


async def _respond(
    state: AppState, data: bytes, body: VideoOptionsBody, return_boxes: bool, name: str, grant: Grant
) -> JSONResponse:
    started = time.perf_counter()
    identify = _identifier(state, body)
    answer = await state.run(lambda: _analyse(state, data, body, return_boxes, identify, name))
    named = [(t.get("identity") or {}).get("subject") for t in answer["tracks"]]
    grant.touched(subjects=[s for s in named if s])
    answer["took"] = {"total_ms": round((time.perf_counter() - started) * 1000, 1)}
    return JSONResponse(answer)


def _searches(grant: Grant, body: VideoOptionsBody) -> None:
    """Identifying tracks in a gallery is a search of it: the key must be allowed to."""
    if body.gallery is not None:
        grant.use_gallery(body.gallery, "search")


_NO_GALLERY = {404: {"description": "The `gallery` named does not exist"}}


@router.post(
    "/multipart/video/extract", summary="Face tracks of an uploaded video file", responses=_NO_GALLERY
)
async def video_extract_multipart(
    request: Request,
    file: UploadFile = File(..., description="A video file (MP4, WebM, MKV, AVI, MOV...)"),
    fps: float | None = Form(None, ge=0.0, le=120.0, description="Frames sampled per second; 0: all."),
    keyframes: bool = Form(False),
    threshold: float | None = Form(None, ge=0.0, le=1.0),
    min_face_size: float = Form(0, ge=0),
    extract_ga: bool = Form(False),
    return_embedding: bool = Form(True),
    return_boxes: bool = Form(False),
    gallery: str | None = Form(None),
    gallery_threshold: float | None = Form(None, ge=-1.0, le=1.0),
    return_crops: bool = Form(False),
    grant: Grant = Depends(allow("extract", gallery=BODY)),
) -> Response:
    """One entry per track (a person's continuous appearance): first/last timestamp, best frame,
    aggregated embedding, optional per-frame boxes, gender/age and gallery identity."""
    state = app_state(request)
    limit = state.settings.video_max_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise VideoTooLarge(f"{file.filename or 'upload'} is larger than the limit of {limit} bytes")
    body = VideoOptionsBody(
        fps=fps,
        keyframes=keyframes,
        threshold=threshold,
        min_face_size=min_face_size,
        extract_ga=extract_ga,
        return_embedding=return_embedding,
        gallery=gallery or None,
        gallery_threshold=gallery_threshold,
        return_crops=return_crops,
    )
    _searches(grant, body)
    name = f"upload {(file.filename or 'video')[:100]}"
    return await _respond(state, data, body, return_boxes, name, grant)


@router.post(
    "/video/extract",
    openapi_extra=parsed_body(VideoExtractRequest),
    summary="Face tracks of a video file fetched from a URL",
    responses=_NO_GALLERY,
)
async def video_extract_url(
    request: Request, grant: Grant = Depends(allow("extract", gallery=BODY))
) -> Response:
    state = app_state(request)
    req: VideoExtractRequest = await parse_body(request, VideoExtractRequest)
    _searches(grant, req)  # before the download
    policy = replace(fetch_policy(state.settings), max_bytes=state.settings.video_max_bytes)
    data = await state.run(lambda: load_source(req.url, policy, req.img_req_headers))
    name = urlsplit(req.url).path.rsplit("/", 1)[-1][:100]
    return await _respond(state, data, req, req.return_boxes, name, grant)


def _jobs(request: Request) -> JobManager:
    state = app_state(request)
    if not state.settings.video_streams_enabled:
        raise FeatureUnavailable("live-stream jobs are off on this server (FACEREST_VIDEO_STREAMS_ENABLED)")
    return request.app.state.video_jobs


def _mine(grant: Grant, job: VideoJob) -> bool:
    """A job belongs to the key that made it; an admin of every gallery sees every job."""
    return grant.principal.sees_everything or job.owner == grant.principal.name


def _described(job: VideoJob) -> dict[str, Any]:
    return {**job.describe(), "owner": job.owner}


def _own_job(request: Request, grant: Grant, job_id: str) -> VideoJob:
    """The job, when this key may see it; another key's job is answered as no job at all."""
    job = _jobs(request).get(job_id)
    if not _mine(grant, job):
        raise NotFound(f"no video job {job_id!r}")
    return job


@router.post(
    "/video/jobs",
    openapi_extra=parsed_body(VideoJobRequest),
    status_code=201,
    summary="Start a live-stream job (when the operator enabled streams)",
    responses={**_NO_GALLERY, 429: {"description": "FACEREST_VIDEO_MAX_JOBS jobs are running"}},
)
async def create_job(request: Request, grant: Grant = Depends(allow("stream", gallery=BODY))) -> JSONResponse:
    """Tracks are published as they end: `GET /video/jobs/{id}/events` (Server-Sent Events). The
    job belongs to the key that made it: other keys neither see nor stop it (admins do)."""
    state = app_state(request)
    req: VideoJobRequest = await parse_body(request, VideoJobRequest)
    if req.gallery is not None:
        grant.use_gallery(req.gallery)
    jobs = _jobs(request)
    identify = _identifier(state, req)
    if identify is not None:
        await anyio.to_thread.run_sync(identify, [])
    job = await anyio.to_thread.run_sync(
        lambda: jobs.create(
            req.url,
            _sampling(req, state),
            _video_options(req, state, return_boxes=False),
            return_embedding=req.return_embedding,
            identify=identify,
            webhook=req.webhook,
            gallery=req.gallery,
            return_crops=req.return_crops,
            owner=grant.principal.name,
        )
    )
    return JSONResponse(_described(job), 201)


@router.get("/video/jobs", summary="The stream jobs of this key (an admin's: every one)")
async def list_jobs(request: Request, grant: Grant = Depends(allow("stream"))) -> JSONResponse:
    mine = [_described(job) for job in _jobs(request).list() if _mine(grant, job)]
    return JSONResponse({"jobs": mine})


@router.get("/video/jobs/{job_id}", summary="A stream job's state and counters")
async def get_job(request: Request, job_id: str, grant: Grant = Depends(allow("stream"))) -> JSONResponse:
    return JSONResponse(_described(_own_job(request, grant, job_id)))


@router.delete("/video/jobs/{job_id}", summary="Stop a stream job and free what it holds")
async def delete_job(request: Request, job_id: str, grant: Grant = Depends(allow("stream"))) -> JSONResponse:
    jobs = _jobs(request)
    _own_job(request, grant, job_id)
    job = await anyio.to_thread.run_sync(lambda: jobs.delete(job_id))
    return JSONResponse({**_described(job), "deleted": True})


@router.get(
    "/video/jobs/{job_id}/events",
    summary="Finished tracks and status changes as Server-Sent Events",
    responses={
        200: {"content": {"text/event-stream": {}}},
        429: {"description": "FACEREST_VIDEO_MAX_LISTENERS event streams are open"},
    },
)
async def job_events(
    request: Request, job_id: str, grant: Grant = Depends(allow("stream"))
) -> StreamingResponse:
    """`event: track` carries one finished track (the body of /multipart/video/extract's tracks),
    `event: status` the job's status changes. The stream ends when the job does; reconnect with
    `Last-Event-ID` to resume after the last event received (a value that is not an event id
    resumes from the first event kept)."""
    jobs = _jobs(request)
    job = _own_job(request, grant, job_id)
    # the SSE resume header, any client's: ASCII digits only (int() raised on "²" and on 4301 digits)
    last = decimal_header(request.headers.get("last-event-id")) or 0
    listener = jobs.listen()  # before the answer starts: past the limit, a 429
    events = _events(job, last, listener)
    # an answer never sent never starts its generator, whose `finally` would free the place
    weakref.finalize(events, listener.close)
    return StreamingResponse(events, media_type="text/event-stream")


async def _events(job: VideoJob, last: int, listener: Listener) -> AsyncIterator[bytes]:
    """The job's events after `last`, waiting on this loop for the next (no worker thread: 300
    listeners held the thread pool that uploads wait on, issue 28). The stream ends with the
    job, or is cancelled when the client goes (Starlette watches for the disconnect)."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake() -> None:  # from the job's thread
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(changed.set)

    unsubscribe = job.subscribe(wake)
    try:
        while True:
            changed.clear()
            for event in job.events_after(last):
                last = event.id
                yield (
                    f"id: {event.id}\nevent: {event.type}\ndata: ".encode()
                    + orjson.dumps(event.data)
                    + b"\n\n"
                )
            if job.finished and not job.events_after(last):
                return
            try:
                await asyncio.wait_for(changed.wait(), KEEP_ALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"  # proxies close connections that stay silent
    finally:
        unsubscribe()
        listener.close()
