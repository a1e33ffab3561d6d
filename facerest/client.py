"""Python client for a facerest (or InsightFace-REST) server: `Client` and `AsyncClient`.

    from facerest.client import Client

    with Client("http://localhost:18081") as fr:
        result = fr.extract(["photo.jpg", open("b.jpg", "rb").read(), bgr_array], return_landmarks=True)
        for image in result.images:
            for face in image.faces:
                print(face.bbox, face.prob, face.vec[:4])

Images may be file paths, encoded bytes, numpy arrays (BGR, as OpenCV gives them) or http(s) URLs
(fetched by the server). /extract goes as msgpack with raw image bytes by default (no base64);
`fmt="json"` sends JSON. Every failure raises a `FaceRestClientError` subclass; 503 answers are
retried with back-off, honouring the server's Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import cv2
import httpx
import msgpack
import numpy as np
import orjson

log = logging.getLogger(__name__)

ImageLike = str | os.PathLike | bytes | bytearray | np.ndarray
Format = Literal["msgpack", "json"]
MSGPACK = "application/msgpack"
MSGPACK_ANSWER = "application/x-msgpack"
T = TypeVar("T")


# --- errors ---------------------------------------------------------------------------------


class FaceRestClientError(Exception):
    """Base of every error the client raises."""


class ConnectionFailed(FaceRestClientError):
    """The server could not be reached (refused, DNS, reset...)."""


class ClientTimeout(FaceRestClientError):
    """The server did not answer within the client's timeout."""


class InvalidImage(FaceRestClientError):
    """An input given to the client is not an image it can send (missing file, bad array...)."""


class APIError(FaceRestClientError):
    """The server answered with an error: `status` (HTTP), `code` and `detail` from its body."""

    def __init__(self, status: int, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(APIError):
    """400: the server could not process the input (bad image, refused URL, missing model...)."""


class ValidationFailed(APIError):
    """422: the request body does not match the API's schema."""


class NotFound(APIError):
    """404: no such gallery, subject, face or endpoint."""


class ModelMismatch(APIError):
    """409: the gallery was built with another recognizer than the server runs."""


class PayloadTooLarge(APIError):
    """413: too many images, or an image or body above the server's limits."""


class Unauthorized(APIError):
    """401/403: a missing or wrong API key."""


class Overloaded(APIError):
    """503: the server is at its limit and every retry was used up."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: ModelMismatch,
    413: PayloadTooLarge,
    422: ValidationFailed,
    503: Overloaded,
}


def _error_from(response: httpx.Response) -> APIError:
    detail, code = response.text[:500], "http_error"
    try:
        body = _decode_body(response)
        if isinstance(body, dict):
            detail = str(body.get("detail", detail))
            code = str(body.get("code", code))
    except Exception:  # a proxy's HTML error page: keep its text as the detail
        pass
    cls = _BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else APIError)
    return cls(response.status_code, code, detail, _retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date or nothing: our own back-off decides


# --- results ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Face:
    bbox: tuple[int, int, int, int]  # x1, y1, x2, y2 in the original image's pixels
    prob: float
    size: int = 0
    num_det: int = 0
    vec: np.ndarray | None = None  # (512,) float32, unit length
    norm: float | None = None
    landmarks: np.ndarray | None = None  # (5, 2)
    landmarks106: np.ndarray | None = None
    gender: str | None = None
    age: int | None = None
    mask: bool | None = None
    mask_probs: dict[str, float] | None = None
    facedata: bytes | None = None  # JPEG of the aligned 112x112 crop

    def crop(self) -> np.ndarray | None:
        """The aligned crop as a BGR array (needs `return_face_data=True`)."""
        if self.facedata is None:
            return None
        return cv2.imdecode(np.frombuffer(self.facedata, np.uint8), cv2.IMREAD_COLOR)


@dataclass(slots=True)
class ImageResult:
    status: str  # "ok" | "failed"
    faces: list[Face] = field(default_factory=list)
    took_ms: float = 0.0
    error: str | None = None  # the server's short reason when failed
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(slots=True)
class ExtractResult:
    images: list[ImageResult]  # in the order the images were given
    took: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Health:
    ok: bool
    status: str
    detail: str | None = None
    models: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Info:
    version: str
    models: dict[str, Any]
    defaults: dict[str, Any]
    limits: dict[str, Any]
    raw: dict[str, Any]


@dataclass(slots=True)
class EnrolledFace:
    face_id: str
    bbox: tuple[int, ...]
    prob: float


@dataclass(slots=True)
class FailedImage:
    index: int
    detail: str


@dataclass(slots=True)
class Enrolment:
    gallery: str
    subject: str
    added: list[EnrolledFace]
    failed: list[FailedImage] = field(default_factory=list)


@dataclass(slots=True)
class GalleryInfo:
    name: str
    model: str | None
    subjects: int
    faces: int


@dataclass(slots=True)
class SubjectSummary:
    subject: str
    faces: int


@dataclass(slots=True)
class StoredFace:
    face_id: str
    bbox: tuple[int, ...] | None
    prob: float | None
    image_hash: str | None
    model: str | None
    added_at: Any


@dataclass(slots=True)
class SubjectDetail:
    subject: str
    faces: list[StoredFace]


@dataclass(slots=True)
class Match:
    subject: str
    similarity: float


@dataclass(slots=True)
class SearchFace:
    bbox: tuple[int, ...] | None
    prob: float | None
    subject: str | None  # the best match above the threshold, or None
    similarity: float | None
    matches: list[Match]


@dataclass(slots=True)
class SearchImage:
    status: str
    faces: list[SearchFace]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(slots=True)
class SearchResult:
    threshold: float | None
    images: list[SearchImage]


@dataclass(slots=True)
class Verification:
    similarity: float
    same: bool
    threshold: float


# --- encoding images and bodies ---------------------------------------------------------------


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def image_bytes(image: ImageLike) -> bytes:
    """Encoded bytes for a path, bytes or BGR array (arrays go as lossless PNG)."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InvalidImage(f"arrays must be uint8 HxW or HxWxC (BGR); got {image.dtype} {image.shape}")
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise InvalidImage(f"could not encode an array of shape {image.shape}")
        return encoded.tobytes()
    path = Path(image)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"cannot read {path}: {exc.strerror or exc}") from exc


def split_images(images: ImageLike | Sequence[ImageLike]) -> tuple[list[bytes], list[str], list[int]]:
    """-> (encoded data, URLs, the server's answer index for each input in the caller's order).

    The server answers for `data` entries first, then `urls`; the order map puts results back.
    """
    items: Sequence[ImageLike]
    if isinstance(images, str | os.PathLike | bytes | bytearray | np.ndarray):
        items = [images]
    else:
        items = list(images)
    data: list[bytes] = []
    urls: list[str] = []
    where: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str) and _is_url(item):
            where.append(("url", len(urls)))
            urls.append(item)
        else:
            where.append(("data", len(data)))
            data.append(image_bytes(item))
    order = [i if kind == "data" else len(data) + i for kind, i in where]
    return data, urls, order


def _images_field(data: list[bytes], urls: list[str], fmt: Format) -> dict[str, list]:
    field_: dict[str, list] = {}
    if data:
        field_["data"] = data if fmt == "msgpack" else [base64.b64encode(d).decode("ascii") for d in data]
    if urls:
        field_["urls"] = urls
    return field_


@dataclass(slots=True)
class _Call:
    """One HTTP exchange, built without I/O so the sync and async clients share it."""

    method: str
    path: str
    body: Any = None
    fmt: Format = "json"
    retry: bool = True

    def request_kwargs(self) -> dict[str, Any]:
        headers = {"Accept": f"{MSGPACK_ANSWER}, application/json;q=0.9"}
        kwargs: dict[str, Any] = {"headers": headers}
        if self.body is not None:
            if self.fmt == "msgpack":
                kwargs["content"] = msgpack.packb(self.body, use_bin_type=True)
                headers["Content-Type"] = MSGPACK
            else:
                kwargs["content"] = orjson.dumps(self.body, option=orjson.OPT_SERIALIZE_NUMPY)
                headers["Content-Type"] = "application/json"
        return kwargs


def _decode_body(response: httpx.Response) -> Any:
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in (MSGPACK, MSGPACK_ANSWER):
        return msgpack.unpackb(response.content, raw=False, strict_map_key=False)
    if media == "application/json":
        return orjson.loads(response.content)
    return response.content


def _array(value: Any, dtype: type = np.float32) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=dtype)


def _blob(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return base64.b64decode(value)


def _face(d: dict[str, Any]) -> Face:
    bbox = tuple(int(v) for v in d["bbox"])
    return Face(
        bbox=bbox,  # type: ignore[arg-type]
        prob=float(d["prob"]),
        size=int(d.get("size", bbox[2] - bbox[0])),
        num_det=int(d.get("num_det", d.get("det", 0))),
        vec=_array(d.get("vec")),
        norm=d.get("norm"),
        landmarks=_array(d.get("landmarks")),
        landmarks106=_array(d.get("landmarks106")),
        gender=d.get("gender"),
        age=d.get("age"),
        mask=d.get("mask"),
        mask_probs=d.get("mask_probs"),
        facedata=_blob(d.get("facedata")),
    )


def _extract_result(body: dict[str, Any], order: list[int]) -> ExtractResult:
    images = [
        ImageResult(
            status=item.get("status", "ok"),
            faces=[_face(f) for f in item.get("faces") or []],
            took_ms=float(item.get("took_ms", 0.0)),
            error=item.get("traceback"),
            code=item.get("code"),
        )
        for item in body["data"]
    ]
    return ExtractResult(images=[images[i] for i in order], took=dict(body.get("took", {})))


def _bbox(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


def _enrolment(body: dict[str, Any]) -> Enrolment:
    return Enrolment(
        gallery=body["gallery"],
        subject=body["subject"],
        added=[
            EnrolledFace(str(a["face_id"]), _bbox(a.get("bbox")) or (), a.get("prob")) for a in body["added"]
        ],
        failed=[FailedImage(int(f["index"]), str(f["detail"])) for f in body.get("failed", [])],
    )


def _search_result(body: dict[str, Any], order: list[int] | None) -> SearchResult:
    images = [
        SearchImage(
            status=item.get("status", "ok"),
            error=item.get("traceback") or item.get("detail"),
            faces=[
                SearchFace(
                    bbox=_bbox(f.get("bbox")),
                    prob=f.get("prob"),
                    subject=f.get("subject"),
                    similarity=f.get("similarity"),
                    matches=[Match(m["subject"], float(m["similarity"])) for m in f.get("matches", [])],
                )
                for f in item.get("faces", [])
            ],
        )
        for item in body["data"]
    ]
    if order is not None:
        images = [images[i] for i in order]
    return SearchResult(threshold=body.get("threshold"), images=images)


def _extract_call(
    images: ImageLike | Sequence[ImageLike], fmt: Format, options: dict[str, Any]
) -> tuple[_Call, list[int]]:
    data, urls, order = split_images(images)
    body = {k: v for k, v in options.items() if v is not None}
    body["images"] = _images_field(data, urls, fmt)
    body["api_ver"] = "2"  # typed results need the envelope, also when max_size is given
    return _Call("POST", "/extract", body, fmt), order


def _verify_body(
    images: Sequence[ImageLike] | None,
    embeddings: Sequence[Sequence[float] | np.ndarray] | None,
    gallery: str | None,
    subject: str | None,
    threshold: float | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if images is not None:
        data, urls, _ = split_images(images)
        if data and urls:
            raise InvalidImage("verify takes images all as data or all as URLs, not a mix")
        body["images"] = _images_field(data, urls, "json")
    if embeddings is not None:
        body["embeddings"] = [np.asarray(v, np.float32).tolist() for v in embeddings]
    if gallery is not None:
        body["gallery"], body["subject"] = gallery, subject
    if threshold is not None:
        body["threshold"] = threshold
    return body


def _gallery_images(images: ImageLike | Sequence[ImageLike] | None) -> tuple[dict | None, list[int] | None]:
    if images is None:
        return None, None
    data, urls, order = split_images(images)
    # the gallery API's bodies are JSON (see docs/api.md): images go as base64
    return _images_field(data, urls, "json"), order


def _quote(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


# --- the clients --------------------------------------------------------------------------------


class _Base:
    def __init__(
        self,
        base_url: str = "http://localhost:18081",
        *,
        fmt: Format = "msgpack",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        api_key: str | None = None,
    ) -> None:
        if fmt not in ("msgpack", "json"):
            raise ValueError("fmt must be 'msgpack' or 'json'")
        self.base_url = base_url.rstrip("/")
        self.fmt: Format = fmt
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def _retry_delay(self, call: _Call, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before trying a 503 again (Retry-After when given, else doubling);
        None when this answer is final."""
        if response.status_code != 503 or not call.retry or attempt >= self.retries:
            return None
        retry_after = _retry_after(response)
        delay = min(self.backoff * (2**attempt) if retry_after is None else retry_after, self.max_backoff)
        log.warning(
            "%s %s: server overloaded, retry %d in %.2f s", call.method, call.path, attempt + 1, delay
        )
        return delay

    def _transport_error(self, call: _Call, exc: httpx.HTTPError) -> FaceRestClientError:
        if isinstance(exc, httpx.TimeoutException):
            return ClientTimeout(f"{call.method} {call.path}: no answer in {self.timeout} s")
        return ConnectionFailed(f"{call.method} {self.base_url}{call.path}: {exc}")

    @staticmethod
    def _check(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise _error_from(response)
        return _decode_body(response)

    def _fmt(self, fmt: Format | None) -> Format:
        return fmt or self.fmt


class Client(_Base):
    """Blocking client; use as a context manager or call `close()`."""

    def __init__(self, base_url: str = "http://localhost:18081", **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> Any:
        kwargs = call.request_kwargs()
        for attempt in itertools.count():
            try:
                response = self._http.request(call.method, call.path, **kwargs)
            except httpx.HTTPError as exc:
                raise self._transport_error(call, exc) from exc
            delay = self._retry_delay(call, attempt, response)
            if delay is None:
                return self._check(response)
            time.sleep(delay)

    # service

    def extract(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        fmt: Format | None = None,
        threshold: float | None = None,
        return_face_data: bool = False,
        return_landmarks: bool = False,
        extract_embedding: bool = True,
        extract_ga: bool = False,
        detect_masks: bool = False,
        embed_only: bool = False,
        limit_faces: int = 0,
        min_face_size: float = 0,
        max_size: Sequence[int] | None = None,
        verbose_timings: bool = False,
        **extra: Any,
    ) -> ExtractResult:
        """Faces of every image, in the order given; a bad image fails alone (`status == "failed"`)."""
        call, order = _extract_call(images, self._fmt(fmt), _locals_options(locals()))
        return _extract_result(self._send(call), order)

    def draw(
        self,
        image: ImageLike,
        *,
        threshold: float | None = None,
        draw_landmarks: bool = True,
        draw_scores: bool = True,
        draw_sizes: bool = True,
        limit_faces: int = 0,
        min_face_size: float = 0,
    ) -> bytes:
        """JPEG of the image with the detected faces drawn on it."""
        return self._send(_draw_call(image, _locals_options(locals(), skip=("image",))))

    def info(self) -> Info:
        return _info(self._send(_Call("GET", "/info")))

    def health(self) -> Health:
        """Readiness; a server that is up but not ready gives `ok=False` rather than an exception."""
        try:
            return _health(self._send(_Call("GET", "/health", retry=False)))
        except Overloaded as exc:
            return Health(ok=False, status="unavailable", detail=exc.detail)

    # gallery

    def enrol(
        self,
        gallery: str,
        subject: str,
        images: ImageLike | Sequence[ImageLike] | None = None,
        *,
        embeddings: Sequence[Sequence[float] | np.ndarray] | None = None,
        all_faces: bool = False,
    ) -> Enrolment:
        """Add the face(s) of each image (or the given embeddings) to `subject` in `gallery`."""
        return _enrolment(self._send(_enrol_call(gallery, subject, images, embeddings, all_faces)))

    enroll = enrol

    def galleries(self) -> list[GalleryInfo]:
        return _galleries(self._send(_Call("GET", "/galleries")))

    def delete_gallery(self, gallery: str) -> None:
        self._send(_Call("DELETE", f"/gallery/{_quote(gallery)}"))

    def subjects(self, gallery: str) -> list[SubjectSummary]:
        return _subjects(self._send(_Call("GET", f"/gallery/{_quote(gallery)}/subjects")))

    def subject(self, gallery: str, subject: str) -> SubjectDetail:
        return _subject(self._send(_Call("GET", _subject_path(gallery, subject))))

    def rename_subject(self, gallery: str, subject: str, new_name: str) -> None:
        self._send(_Call("PATCH", _subject_path(gallery, subject), {"new_name": new_name}))

    def delete_subject(self, gallery: str, subject: str) -> None:
        self._send(_Call("DELETE", _subject_path(gallery, subject)))

    def delete_face(self, gallery: str, face_id: str) -> None:
        self._send(_Call("DELETE", f"/gallery/{_quote(gallery)}/faces/{_quote(str(face_id))}"))

    def search(
        self,
        gallery: str,
        images: ImageLike | Sequence[ImageLike] | None = None,
        *,
        embeddings: Sequence[Sequence[float] | np.ndarray] | None = None,
        top_k: int = 5,
        threshold: float | None = None,
    ) -> SearchResult:
        """Who is in each image: per face, the best subject above the threshold and the top matches."""
        call, order = _search_call(gallery, images, embeddings, top_k, threshold)
        return _search_result(self._send(call), order)

    def verify(
        self,
        images: Sequence[ImageLike] | None = None,
        *,
        embeddings: Sequence[Sequence[float] | np.ndarray] | None = None,
        gallery: str | None = None,
        subject: str | None = None,
        threshold: float | None = None,
    ) -> Verification:
        """Same person? Two images, two embeddings, or one image against a gallery subject."""
        body = _verify_body(images, embeddings, gallery, subject, threshold)
        return _verification(self._send(_Call("POST", "/verify", body)))


class AsyncClient(_Base):
    """The same calls as `Client`, awaitable; use `async with` or `await aclose()`."""

    def __init__(self, base_url: str = "http://localhost:18081", **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> Any:
        kwargs = call.request_kwargs()
        for attempt in itertools.count():
            try:
                response = await self._http.request(call.method, call.path, **kwargs)
            except httpx.HTTPError as exc:
                raise self._transport_error(call, exc) from exc
            delay = self._retry_delay(call, attempt, response)
            if delay is None:
                return self._check(response)
            await asyncio.sleep(delay)

    async def extract(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        fmt: Format | None = None,
        threshold: float | None = None,
        return_face_data: bool = False,
        return_landmarks: bool = False,
        extract_embedding: bool = True,
        extract_ga: bool = False,
        detect_masks: bool = False,
        embed_only: bool = False,
        limit_faces: int = 0,
        min_face_size: float = 0,
        max_size: Sequence[int] | None = None,
        verbose_timings: bool = False,
        **extra: Any,
    ) -> ExtractResult:
        call, order = _extract_call(images, self._fmt(fmt), _locals_options(locals()))
        return _extract_result(await self._send(call), order)

    async def draw(
        self,
        image: ImageLike,
        *,
        threshold: float | None = None,
        draw_landmarks: bool = True,
        draw_scores: bool = True,
        draw_sizes: bool = True,
        limit_faces: int = 0,
        min_face_size: float = 0,
    ) -> bytes:
        return await self._send(_draw_call(image, _locals_options(locals(), skip=("image",))))

    async def info(self) -> Info:
        return _info(await self._send(_Call("GET", "/info")))

    async def health(self) -> Health:
        try:
            return _health(await self._send(_Call("GET", "/health", retry=False)))
        except Overloaded as exc:
            return Health(ok=False, status="unavailable", detail=exc.detail)

    async def enrol(
        self,
        gallery: str,
        subject: str,
        images: ImageLike | Sequence[ImageLike] | None = None,
        *,
        embeddings: Sequence[Sequence[float] | np.ndarray] | None = None,
        all_faces: bool = False,
    ) -> Enrolment:
        return _enrolment(await self._send(_enrol_call(gallery, subject, images, embeddings, all_faces)))

    enroll = enrol

    async def galleries(self) -> list[GalleryInfo]:
        return _galleries(await self._send(_Call("GET", "/galleries")))

    async def delete_gallery(self, gallery: str) -> None:
        await self._send(_Call("DELETE", f"/gallery/{_quote(gallery)}"))

    async def subjects(self, gallery: str) -> list[SubjectSummary]:
        return _subjects(await self._send(_Call("GET", f"/gallery/{_quote(gallery)}/subjects")))

    async def subject(self, gallery: str, subject: str) -> SubjectDetail:
        return _subject(await self._send(_Call("GET", _subject_path(gallery, subject))))

    async def rename_subject(self, gallery: str, subject: str, new_name: str) -> None:
        await self._send(_Call("PATCH", _subject_path(gallery, subject), {"new_name": new_name}))

    async def delete_subject(self, gallery: str, subject: str) -> None:
        await self._send(_Call("DELETE", _subject_path(gallery, subject)))

    async def delete_face(self, gallery: str, face_id: str) -> None:
        await self._send(_Call("DELETE", f"/gallery/{_quote(gallery)}/faces/{_quote(str(face_id))}"))

    async def search(
        self,
        gallery: str,
        images: ImageLike | Sequence[ImageLike] | None = None,
        *,
        embeddings: Sequence[Sequence[float] | np.ndarray] | None = None,
        top_k: int = 5,
        threshold: float | None = None,
    ) -> SearchResult:
        call, order = _search_call(gallery, images, embeddings, top_k, threshold)
        return _search_result(await self._send(call), order)

    async def verify(
        self,
        images: Sequence[ImageLike] | None = None,
        *,
        embeddings: Sequence[Sequence[float] | np.ndarray] | None = None,
        gallery: str | None = None,
        subject: str | None = None,
        threshold: float | None = None,
    ) -> Verification:
        body = _verify_body(images, embeddings, gallery, subject, threshold)
        return _verification(await self._send(_Call("POST", "/verify", body)))


# --- request builders and answer parsers shared by both clients ---------------------------------


def _locals_options(values: dict[str, Any], skip: tuple[str, ...] = ("images",)) -> dict[str, Any]:
    """A method's keyword arguments -> the request's option fields."""
    options = {k: v for k, v in values.items() if k not in ("self", "fmt", "extra", *skip)}
    options.update(values.get("extra") or {})
    if options.get("max_size") is not None:
        options["max_size"] = list(options["max_size"])
    return options


def _draw_call(image: ImageLike, options: dict[str, Any]) -> _Call:
    data, urls, _ = split_images(image)
    body = {k: v for k, v in options.items() if v is not None}
    body["images"] = _images_field(data, urls, "json")
    return _Call("POST", "/draw_detections", body)


def _enrol_call(
    gallery: str,
    subject: str,
    images: ImageLike | Sequence[ImageLike] | None,
    embeddings: Sequence[Sequence[float] | np.ndarray] | None,
    all_faces: bool,
) -> _Call:
    images_field, _ = _gallery_images(images)
    body: dict[str, Any] = {"images": images_field or {}, "all_faces": all_faces}
    if embeddings is not None:
        body["embeddings"] = [np.asarray(v, np.float32).tolist() for v in embeddings]
    return _Call("POST", f"{_subject_path(gallery, subject)}/faces", body)


def _search_call(
    gallery: str,
    images: ImageLike | Sequence[ImageLike] | None,
    embeddings: Sequence[Sequence[float] | np.ndarray] | None,
    top_k: int,
    threshold: float | None,
) -> tuple[_Call, list[int] | None]:
    images_field, order = _gallery_images(images)
    body: dict[str, Any] = {"images": images_field or {}, "top_k": top_k, "threshold": threshold}
    if embeddings is not None:
        body["embeddings"] = [np.asarray(v, np.float32).tolist() for v in embeddings]
    return _Call("POST", f"/gallery/{_quote(gallery)}/search", body), order


def _subject_path(gallery: str, subject: str) -> str:
    return f"/gallery/{_quote(gallery)}/subjects/{_quote(subject)}"


def _info(body: dict[str, Any]) -> Info:
    return Info(
        version=str(body.get("version", "")),
        models=body.get("models", {}),
        defaults=body.get("defaults", {}),
        limits=body.get("limits", {}),
        raw=body,
    )


def _health(body: dict[str, Any]) -> Health:
    return Health(ok=body.get("status") == "ok", status=body.get("status", ""), models=body.get("models", {}))


def _galleries(body: dict[str, Any]) -> list[GalleryInfo]:
    return [
        GalleryInfo(g["name"], g.get("model"), int(g.get("subjects", 0)), int(g.get("faces", 0)))
        for g in body["galleries"]
    ]


def _subjects(body: dict[str, Any]) -> list[SubjectSummary]:
    return [SubjectSummary(s["subject"], int(s.get("faces", 0))) for s in body["subjects"]]


def _subject(body: dict[str, Any]) -> SubjectDetail:
    return SubjectDetail(
        subject=body["subject"],
        faces=[
            StoredFace(
                face_id=str(f["face_id"]),
                bbox=_bbox(f.get("bbox")),
                prob=f.get("prob"),
                image_hash=f.get("image_hash"),
                model=f.get("model"),
                added_at=f.get("added_at"),
            )
            for f in body["faces"]
        ],
    )


def _verification(body: dict[str, Any]) -> Verification:
    return Verification(float(body["similarity"]), bool(body["same"]), float(body["threshold"]))


__all__ = [
    "APIError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientTimeout",
    "ConnectionFailed",
    "Enrolment",
    "ExtractResult",
    "Face",
    "FaceRestClientError",
    "GalleryInfo",
    "Health",
    "ImageResult",
    "Info",
    "InvalidImage",
    "ModelMismatch",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "SearchResult",
    "ServerError",
    "Unauthorized",
    "ValidationFailed",
    "Verification",
]
