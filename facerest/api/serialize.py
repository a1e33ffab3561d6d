"""Pipeline results -> the answer shapes clients parse (v1 lists, v2 envelope), JSON or msgpack."""

from __future__ import annotations

import base64
from typing import Any, Literal

import msgpack
import numpy as np
import orjson
import simplejpeg

from facerest.models.faces import Face, ImageResult

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="BGR")


#: how faces are written (the `face_fields` request option): "insightface" as InsightFace-REST
#: writes them, "facerest" facerest's own way (docs/api.md, "InsightFace-REST's answers")
FaceFields = Literal["insightface", "facerest"]

#: InsightFace-REST's face keys, each present in its answers (null when not asked for): its
#: clients' pydantic models declare them without defaults, so a missing key fails their parsing
IFR_FACE_KEYS = ("landmarks", "vec", "norm", "gender", "age", "mask", "mask_probs", "facedata")


def face_dict(
    face: Face,
    *,
    binary: bool,
    landmarks: bool = False,
    legacy_det: bool = False,
    fields: FaceFields = "facerest",
) -> dict[str, Any]:
    ifr = fields == "insightface"
    bbox = np.round(face.bbox).astype(int).tolist()
    out: dict[str, Any] = {
        "bbox": bbox,
        "prob": face.score,
        "size": bbox[2] - bbox[0],
        "num_det": face.index,
    }
    if ifr:
        out.update(dict.fromkeys(IFR_FACE_KEYS))
    if legacy_det:
        out["det"] = face.index
        if ifr:  # the 2020 API's own keys
            out["status"] = "Ok"
            out["mask_prob"] = None if face.mask_probs is None else face.mask_probs["mask"]
    if landmarks and face.landmarks is not None:
        out["landmarks"] = np.round(face.landmarks).astype(int).tolist()
    if face.landmarks_dense is not None:
        out["landmarks106"] = np.round(face.landmarks_dense, 1).tolist()
    if face.embedding is not None:
        out["vec"] = face.embedding.tolist() if binary else face.embedding
        out["norm"] = face.norm
    if face.gender is not None:
        # InsightFace-REST answers genderage_v1's class index: 0 female, 1 male
        out["gender"] = int(face.gender == "male") if ifr else face.gender
        out["age"] = face.age
    if face.mask is not None:
        out["mask"] = face.mask
        out["mask_probs"] = face.mask_probs
    if face.crop is not None:
        data = encode_jpeg(face.crop)
        # InsightFace-REST sends base64 text in msgpack answers too; facerest sends the bytes
        out["facedata"] = data if binary and not ifr else base64.b64encode(data).decode("ascii")
    if face.whole_image:
        out["whole_image"] = True
    if face.quality is not None:
        out["quality"] = face.quality.to_json()
    if face.marked is not None:
        out["marked"] = face.marked
    return out


def v2_body(
    results: list[ImageResult],
    took: dict[str, float],
    *,
    binary: bool,
    landmarks: bool = False,
    fields: FaceFields = "facerest",
) -> dict[str, Any]:
    data = []
    for result in results:
        item: dict[str, Any] = {
            "status": "ok" if result.ok else "failed",
            "took_ms": round(result.took_ms, 3),
        }
        if result.ok:
            item["faces"] = [
                face_dict(f, binary=binary, landmarks=landmarks, fields=fields) for f in result.faces
            ]
        else:
            item["traceback"] = result.error
            item["code"] = result.error_code
            item["faces"] = []
        data.append(item)
    return {"took": {k: round(v, 3) for k, v in took.items()}, "data": data}


def v1_body(
    results: list[ImageResult], *, binary: bool, landmarks: bool = False, fields: FaceFields = "facerest"
) -> list[list[dict[str, Any]]]:
    """One list of faces per image (failed images: an empty list), as the 2020 API answered."""
    return [
        [face_dict(f, binary=binary, landmarks=landmarks, legacy_det=True, fields=fields) for f in r.faces]
        for r in results
    ]


def dumps(body: Any, *, binary: bool) -> bytes:
    if binary:
        return msgpack.packb(body, use_single_float=True)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
