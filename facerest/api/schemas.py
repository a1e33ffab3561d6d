"""Request bodies, as InsightFace-REST clients send them (see docs/api.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
    model_validator,
)

from facerest.gallery.service import MAX_NAME_LENGTH, NAME_PATTERN, NAME_RULE, name_problem

Threshold = Annotated[float, Field(ge=0.0, le=1.0)]
SizeEdge = Annotated[int, Field(ge=0, le=8192)]  # so the published schema states the bounds too


def _valid_name(value: str) -> str:
    problem = name_problem(value)  # what a pattern cannot say: printable, not "." or ".."
    if problem is not None:
        raise ValueError(problem)
    return value


#: a gallery or subject name, in a path or a body: one rule (gallery/service.py), in the schema
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN),
    AfterValidator(_valid_name),
    Field(description=f"A gallery or subject name: {NAME_RULE}."),
]


Coordinate = Annotated[float, Field(allow_inf_nan=False)]


class FaceMarkIn(BaseModel):
    """A face marked by hand: its box, its 5 landmarks, or both (image pixels)."""

    model_config = ConfigDict(extra="forbid")

    bbox: Annotated[list[Coordinate], Field(min_length=4, max_length=4)] | None = Field(
        None, description="x1, y1, x2, y2."
    )
    landmarks: (
        Annotated[
            list[Annotated[list[Coordinate], Field(min_length=2, max_length=2)]],
            Field(min_length=5, max_length=5),
        ]
        | None
    ) = Field(
        None,
        description="[x, y] of the left eye, right eye, nose tip, left and right mouth corner "
        "(the order the detector returns them in).",
    )

    @model_validator(mode="after")
    def _something(self) -> FaceMarkIn:
        if self.bbox is None and self.landmarks is None:
            raise ValueError("a face mark needs `bbox` or `landmarks`")
        return self


class Images(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[str | bytes] | None = Field(
        None,
        description="Base64 images (a `data:...;base64,` prefix is allowed); raw bytes in msgpack bodies.",
    )
    urls: list[str] | None = Field(None, description="http(s) URLs to fetch the images from.")
    faces: list[list[FaceMarkIn] | None] | None = Field(
        None,
        description="/extract only: per image (`data` first, then `urls`), the faces marked by hand, "
        "embedded instead of detected ones; null for an image: detect as usual.",
    )

    @model_validator(mode="after")
    def _one_entry_per_image(self) -> Images:
        if self.faces is not None:
            count = len(self.data or []) + len(self.urls or [])
            if len(self.faces) != count:
                raise ValueError(f"images.faces has {len(self.faces)} entries for {count} images")
        return self


class ImageOptions(BaseModel):
    """What every endpoint that detects faces accepts."""

    # strict: the published schema says integer / number, so `true` or `"5"` is refused, not coerced
    model_config = ConfigDict(extra="ignore", strict=True)

    threshold: Threshold | None = Field(
        None, description="Detection score threshold (server default if absent)."
    )
    limit_faces: int = Field(0, ge=0, description="Keep the N largest faces; 0 = all.")
    min_face_size: float = Field(0, ge=0, description="Drop faces whose box is narrower than this (pixels).")
    max_size: Annotated[list[SizeEdge], Field(min_length=2, max_length=2)] | SizeEdge | None = Field(
        None, description="Largest detector input [w, h] (0 = do not resize); server setting if absent."
    )
    single_face: StrictBool = Field(
        False, description="The image is one face: when none is found, the whole image is taken as the face."
    )
    detect_scale: Literal["adaptive", "reference", "native"] | None = Field(
        None,
        description="Detector scale for this request (server's FACEREST_DETECT_SCALE if absent): "
        '"reference" gives InsightFace\'s own scale, for embeddings equal to galleries it enrolled.',
    )

    @field_validator("max_size")
    @classmethod
    def _size(cls, value: list[int] | int | None) -> list[int] | int | None:
        if isinstance(value, list) and (len(value) != 2 or any(v < 0 or v > 8192 for v in value)):
            raise ValueError("max_size must be [width, height], each between 0 and 8192")
        if isinstance(value, int) and not 0 <= value <= 8192:
            raise ValueError("max_size must be between 0 and 8192")
        return value


class ExtractRequest(ImageOptions):
    images: Images
    embed_only: StrictBool = Field(False, description="Inputs are 112x112 aligned crops: skip detection.")
    return_face_data: StrictBool = Field(
        False, description="Add each aligned crop as base64 JPEG (`facedata`)."
    )
    return_landmarks: StrictBool | Literal[5, 106] = Field(
        False,
        description="Add the 5 landmarks of each face (`landmarks`); 106 also adds the 106 dense ones "
        "(`landmarks106`, the same as return_dense_landmarks).",
    )
    return_dense_landmarks: StrictBool = Field(
        False, description="Add 106 landmarks (`landmarks106`); needs FACEREST_LANDMARKS_NAME."
    )
    extract_embedding: StrictBool = Field(True, description="Compute embeddings (`vec`, `norm`).")
    extract_ga: StrictBool = Field(False, description="Estimate gender and age.")
    detect_masks: StrictBool = Field(False, description="Classify masks; needs FACEREST_MASK_NAME.")
    return_quality: StrictBool = Field(
        False,
        description="Add each face's `quality`: score and parts (size, detector score, sharpness, pose, "
        "cut by the edge).",
    )
    verbose_timings: StrictBool = Field(False, description="Add per-stage timings to `took`.")
    msgpack: StrictBool = Field(False, description="Answer in msgpack.")
    img_req_headers: dict[str, str] = Field(
        default_factory=dict, description="Headers sent with URL fetches."
    )
    api_ver: Literal["1", "2", 1, 2] = Field(
        "2", description='"2": envelope with timings; "1": a list of faces per image, no envelope.'
    )

    @model_validator(mode="after")
    def _landmark_count(self) -> ExtractRequest:
        # `return_landmarks: 106` (issue 5): the 5 points as ever, plus the dense ones
        if self.return_landmarks is not True and self.return_landmarks in (5, 106):
            self.return_dense_landmarks = self.return_dense_landmarks or self.return_landmarks == 106
            self.return_landmarks = True
        return self


class DrawRequest(ImageOptions):
    images: Images
    draw_landmarks: StrictBool = True
    draw_scores: StrictBool = True
    draw_sizes: StrictBool = True
    detect_masks: StrictBool = False
