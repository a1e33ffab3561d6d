"""Request bodies, as InsightFace-REST clients send them (see docs/api.md)."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from facerest.gallery.service import MAX_NAME_LENGTH, NAME_PATTERN, NAME_RULE, name_problem

Threshold = Annotated[float, Field(ge=0.0, le=1.0)]

# InsightFace-REST's request models are lax pydantic models with Optional fields: its clients send
# `null` for an option they leave unset (IFRClientAsync's img_req_headers) and strings for
# booleans (benchmark.py's "msgpack": "True"). The fields InsightFace-REST has take what it takes,
# and the published schema says so; facerest's own fields stay strict.
TRUE_WORDS = ("1", "on", "t", "true", "y", "yes")
FALSE_WORDS = ("0", "off", "f", "false", "n", "no")
_NUMBER_TEXT = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_INTEGER_TEXT = r"^\s*[+]?\d+\s*$"


def _lax_bool(value: Any) -> Any:
    """Pydantic's lax booleans, as InsightFace-REST parses them: 0/1 and the words of TRUE/FALSE_WORDS."""
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    if type(value) in (int, float) and value in (0, 1):
        return bool(value)
    return value


def _lax_number(value: Any) -> Any:
    """A number written as text ("0.6", "5") as pydantic's lax mode reads it; an integral float as an int."""
    if isinstance(value, str) and re.fullmatch(_NUMBER_TEXT, value):
        number = float(value)
        return int(number) if number.is_integer() and re.fullmatch(_INTEGER_TEXT, value) else number
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _any_case(word: str) -> str:
    """A regular expression of `word` in any case, without inline flags (not every validator has them)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


_BOOL_SCHEMA = {
    "anyOf": [
        {"type": "boolean"},
        # any case, as pydantic reads them ("True", "YES"): a pattern, since an enum cannot say so
        {"type": "string", "pattern": "^(" + "|".join(map(_any_case, TRUE_WORDS + FALSE_WORDS)) + ")$"},
        {"type": "integer", "enum": [0, 1]},
        {"type": "null"},
    ]
}
#: an InsightFace-REST boolean: true/false, 0/1, or one of the words pydantic reads as one
IfrBool = Annotated[StrictBool, BeforeValidator(_lax_bool), WithJsonSchema(_BOOL_SCHEMA)]
#: an InsightFace-REST count: an integer >= 0, also written as text
IfrCount = Annotated[
    int,
    Field(ge=0, strict=True),
    BeforeValidator(_lax_number),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": _INTEGER_TEXT},
                {"type": "null"},
            ]
        }
    ),
]
#: an InsightFace-REST face width: a number >= 0, also written as text
IfrSize = Annotated[
    float,
    Field(ge=0, strict=True),
    BeforeValidator(_lax_number),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _NUMBER_TEXT},
                {"type": "null"},
            ]
        }
    ),
]
IfrThreshold = Annotated[
    float,
    Field(ge=0.0, le=1.0, strict=True),
    BeforeValidator(_lax_number),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1},
                {"type": "string", "pattern": _NUMBER_TEXT},
                {"type": "null"},
            ]
        }
    ),
]


#: an InsightFace-REST header map; null is {}
IfrHeaders = Annotated[
    dict[str, str],
    WithJsonSchema(
        {"anyOf": [{"type": "object", "additionalProperties": {"type": "string"}}, {"type": "null"}]}
    ),
]


class IfrOptions(BaseModel):
    """A body with InsightFace-REST's fields: `null` for one of them means its default, as
    InsightFace-REST's Optional fields do (IFRClientAsync sends `img_req_headers: null`)."""

    #: the fields of InsightFace-REST's own request models (a subclass adds its own)
    IFR_FIELDS: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in cls.IFR_FIELDS)}
        return data


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


#: marks are kept as float32, which holds every whole pixel up to 2^24: a coordinate beyond it
#: (1e39 overflowed to infinity, issue 28) names no pixel of any image this server decodes
MAX_COORDINATE = float(1 << 24)
Coordinate = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_COORDINATE, le=MAX_COORDINATE)]


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


class ImageOptions(IfrOptions):
    """What every endpoint that detects faces accepts."""

    # strict: the published schema says integer / number, so `true` or `"5"` is refused, not coerced;
    # InsightFace-REST's own fields take what InsightFace-REST takes (the Ifr* types), and say so
    model_config = ConfigDict(extra="ignore", strict=True)
    IFR_FIELDS = frozenset({"threshold", "limit_faces", "min_face_size", "max_size"})

    threshold: IfrThreshold | None = Field(
        None, description="Detection score threshold (server default if absent)."
    )
    limit_faces: IfrCount = Field(0, description="Keep the N largest faces, largest first; 0 = all.")
    min_face_size: IfrSize = Field(0, description="Drop faces whose box is narrower than this (pixels).")
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
    IFR_FIELDS = ImageOptions.IFR_FIELDS | {
        "embed_only",
        "return_face_data",
        "return_landmarks",
        "extract_embedding",
        "extract_ga",
        "detect_masks",
        "verbose_timings",
        "msgpack",
        "img_req_headers",
        "api_ver",
    }

    images: Images
    embed_only: IfrBool = Field(False, description="Inputs are 112x112 aligned crops: skip detection.")
    return_face_data: IfrBool = Field(False, description="Add each aligned crop as base64 JPEG (`facedata`).")
    return_landmarks: Literal[5, 106] | IfrBool = Field(
        False,
        description="Add the 5 landmarks of each face (`landmarks`); 106 also adds the 106 dense ones "
        "(`landmarks106`, the same as return_dense_landmarks).",
    )
    return_dense_landmarks: StrictBool = Field(
        False, description="Add 106 landmarks (`landmarks106`); needs FACEREST_LANDMARKS_NAME."
    )
    extract_embedding: IfrBool = Field(True, description="Compute embeddings (`vec`, `norm`).")
    extract_ga: IfrBool = Field(False, description="Estimate gender and age.")
    detect_masks: IfrBool = Field(False, description="Classify masks; needs FACEREST_MASK_NAME.")
    return_quality: StrictBool = Field(
        False,
        description="Add each face's `quality`: score and parts (size, detector score, sharpness, pose, "
        "cut by the edge).",
    )
    verbose_timings: IfrBool = Field(False, description="Add per-stage timings to `took`.")
    msgpack: IfrBool = Field(False, description="Answer in msgpack.")
    img_req_headers: IfrHeaders = Field(default_factory=dict, description="Headers sent with URL fetches.")
    api_ver: Literal["1", "2", 1, 2] = Field(
        "2", description='"2": envelope with timings; "1": a list of faces per image, no envelope.'
    )
    face_fields: Literal["insightface", "facerest"] = Field(
        "insightface",
        description='How faces are written: "insightface" as InsightFace-REST writes them (every field '
        "its clients read, null when not asked; gender 0 = female, 1 = male; facedata base64 also in "
        'msgpack); "facerest": only the fields asked for, gender as "male"/"female", facedata raw bytes '
        "in msgpack (facerest's own client sends this).",
    )

    @model_validator(mode="after")
    def _landmark_count(self) -> ExtractRequest:
        # `return_landmarks: 106` (issue 5): the 5 points as ever, plus the dense ones
        if self.return_landmarks is not True and self.return_landmarks in (5, 106):
            self.return_dense_landmarks = self.return_dense_landmarks or self.return_landmarks == 106
            self.return_landmarks = True
        return self


class DrawRequest(ImageOptions):
    IFR_FIELDS = ImageOptions.IFR_FIELDS | {"draw_landmarks", "draw_scores", "draw_sizes", "detect_masks"}

    images: Images
    draw_landmarks: IfrBool = True
    draw_scores: IfrBool = True
    draw_sizes: IfrBool = True
    detect_masks: IfrBool = False
