"""Typed results of every call, and the parsers that build them from the server's answers."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np


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


def parse_extract(body: dict[str, Any], order: list[int]) -> ExtractResult:
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


def parse_enrolment(body: dict[str, Any]) -> Enrolment:
    return Enrolment(
        gallery=body["gallery"],
        subject=body["subject"],
        added=[
            EnrolledFace(str(a["face_id"]), _bbox(a.get("bbox")) or (), a.get("prob")) for a in body["added"]
        ],
        failed=[FailedImage(int(f["index"]), str(f["detail"])) for f in body.get("failed", [])],
    )


def parse_search(body: dict[str, Any], order: list[int] | None) -> SearchResult:
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


def parse_info(body: dict[str, Any]) -> Info:
    return Info(
        version=str(body.get("version", "")),
        models=body.get("models", {}),
        defaults=body.get("defaults", {}),
        limits=body.get("limits", {}),
        raw=body,
    )


def parse_health(body: dict[str, Any]) -> Health:
    return Health(ok=body.get("status") == "ok", status=body.get("status", ""), models=body.get("models", {}))


def parse_galleries(body: dict[str, Any]) -> list[GalleryInfo]:
    return [
        GalleryInfo(g["name"], g.get("model"), int(g.get("subjects", 0)), int(g.get("faces", 0)))
        for g in body["galleries"]
    ]


def parse_subjects(body: dict[str, Any]) -> list[SubjectSummary]:
    return [SubjectSummary(s["subject"], int(s.get("faces", 0))) for s in body["subjects"]]


def parse_subject(body: dict[str, Any]) -> SubjectDetail:
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


def parse_verification(body: dict[str, Any]) -> Verification:
    return Verification(float(body["similarity"]), bool(body["same"]), float(body["threshold"]))


def unavailable_health(detail: str) -> Health:
    """A server that is up but answers 503 to /health: not ready, rather than an exception."""
    return Health(ok=False, status="unavailable", detail=detail)
