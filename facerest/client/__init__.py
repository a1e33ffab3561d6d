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

from facerest.client.asynchronous import AsyncClient
from facerest.client.errors import (
    APIError,
    BadRequest,
    ClientTimeout,
    ConnectionFailed,
    FaceRestClientError,
    Forbidden,
    InvalidImage,
    ModelMismatch,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    ValidationFailed,
)
from facerest.client.images import ImageLike, image_bytes, split_images
from facerest.client.results import (
    Enrolment,
    ExtractResult,
    Face,
    GalleryInfo,
    Health,
    ImageResult,
    Info,
    SearchResult,
    Verification,
)
from facerest.client.sync import Client

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
    "Forbidden",
    "GalleryInfo",
    "Health",
    "ImageLike",
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
    "image_bytes",
    "split_images",
]
