"""One exception type per failure kind; the API maps each to an HTTP status in one place."""

from __future__ import annotations


class FaceRestError(Exception):
    """Base of every error the service raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadInput(FaceRestError):
    """The client sent something that cannot be processed."""

    status_code = 400
    code = "bad_input"


class OutsideCalibration(BadInput):
    """An error rate the recognizer's calibration has too little data to turn into a threshold."""

    status_code = 422
    code = "outside_calibration"


class ImageDecodeError(BadInput):
    code = "image_decode_error"


class ImageTooLarge(BadInput):
    status_code = 413
    code = "image_too_large"


class TooManyImages(BadInput):
    status_code = 413
    code = "too_many_images"


class TooManyEmbeddings(BadInput):
    status_code = 413
    code = "too_many_embeddings"


class SearchTooLarge(BadInput):
    """A search would compare more query x gallery faces than the server allows at once."""

    status_code = 413
    code = "search_too_large"


class BodyTooLarge(BadInput):
    status_code = 413
    code = "body_too_large"


class NoFace(BadInput):
    """An image that must show a face (to enrol or verify it) shows none."""

    code = "no_face"


class UrlRefused(BadInput):
    """A URL points where the operator did not allow fetching (private address, bad scheme...)."""

    code = "url_refused"


class UrlFetchFailed(BadInput):
    code = "url_fetch_failed"


class VideoDecodeError(BadInput):
    """The upload or stream is not a video FFmpeg can decode (truncated, not a video, no video track)."""

    code = "video_decode_error"


class VideoTooLarge(BadInput):
    """A video over one of the operator's limits (duration, resolution, sampled frames, bytes)."""

    status_code = 413
    code = "video_too_large"


class TooManyJobs(FaceRestError):
    """The server runs as many live-stream jobs as FACEREST_VIDEO_MAX_JOBS allows."""

    status_code = 429
    code = "too_many_jobs"


class TooManyListeners(FaceRestError):
    """The server holds as many event streams open as FACEREST_VIDEO_MAX_LISTENERS allows."""

    status_code = 429
    code = "too_many_listeners"


class TooManyFaces(BadInput):
    """More faces marked by hand than a request may embed, or more unsorted faces than one
    clustering may group (FACEREST_MAX_FACES_PER_REQUEST, _MAX_BOX_MARKS_PER_REQUEST,
    _CLUSTER_MAX_FACES)."""

    status_code = 413
    code = "too_many_faces"


class FeatureUnavailable(FaceRestError):
    """The request asks for a model the server was not started with."""

    status_code = 400
    code = "feature_unavailable"


class ModelMismatch(FaceRestError):
    status_code = 409
    code = "model_mismatch"


class Conflict(FaceRestError):
    """The request clashes with what is stored (e.g. renaming a subject onto an existing one)."""

    status_code = 409
    code = "conflict"


class Unauthorized(FaceRestError):
    """A key the route checks itself (the CompreFace and DeepStack APIs) is missing or refused."""

    status_code = 401
    code = "unauthorized"


class NotFound(FaceRestError):
    status_code = 404
    code = "not_found"


class Forbidden(FaceRestError):
    """The key is valid but its role or its galleries do not cover the request (issue 30)."""

    status_code = 403
    code = "forbidden"


class Overloaded(FaceRestError):
    """The inference queue is full; the client should retry later."""

    status_code = 503
    code = "overloaded"

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class StorageUnavailable(FaceRestError):
    """The gallery database could not be opened or reached."""

    status_code = 503
    code = "storage_unavailable"


class RequestTimeout(FaceRestError):
    status_code = 504
    code = "timeout"


class ModelError(FaceRestError):
    """A model file is missing, corrupt or unusable; raised at start, never per request."""

    code = "model_error"


class ModelMissing(ModelError):
    code = "model_missing"


class ChecksumMismatch(ModelError):
    code = "checksum_mismatch"


class DownloadFailed(ModelError):
    code = "download_failed"


class BackendUnavailable(ModelError):
    code = "backend_unavailable"


class LicenceRefused(ModelError):
    """FACEREST_COMMERCIAL_USE=true and a configured model's licence does not allow it (issue 32)."""

    code = "licence_refused"


class InferenceBackendError(FaceRestError):
    """A remote inference backend (Triton) failed or could not be reached during a request."""

    status_code = 503
    code = "backend_error"
