"""Every request as a `Call` built without I/O: the one request builder both clients share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

import msgpack
import numpy as np
import orjson

from facerest.client import results
from facerest.client.codec import MSGPACK, MSGPACK_ANSWER, Format
from facerest.client.errors import InvalidImage
from facerest.client.images import ImageLike, images_field, split_images

T = TypeVar("T")


@dataclass(slots=True)
class Call:
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


def locals_options(values: dict[str, Any], skip: tuple[str, ...] = ("images",)) -> dict[str, Any]:
    """A function's keyword arguments -> the request's option fields."""
    options = {k: v for k, v in values.items() if k not in ("fmt", "default_fmt", "extra", *skip)}
    options.update(values.get("extra") or {})
    if options.get("max_size") is not None:
        options["max_size"] = list(options["max_size"])
    return options


def quote_segment(segment: str) -> str:
    return quote(segment, safe="")


def gallery_path(gallery: str) -> str:
    return f"/gallery/{quote_segment(gallery)}"


def subject_path(gallery: str, subject: str) -> str:
    return f"{gallery_path(gallery)}/subjects/{quote_segment(subject)}"


def embeddings_field(embeddings: Sequence[Sequence[float] | np.ndarray]) -> list[list[float]]:
    return [np.asarray(v, np.float32).tolist() for v in embeddings]


def gallery_images(images: ImageLike | Sequence[ImageLike] | None) -> tuple[dict | None, list[int] | None]:
    if images is None:
        return None, None
    data, urls, order = split_images(images)
    # the gallery API's bodies are JSON (see docs/api.md): images go as base64
    return images_field(data, urls, "json"), order


def _nothing(_: Any) -> None:
    return None


def _as_is(answer: Any) -> Any:
    return answer


# --- every operation, once: its request and how its answer is read ---------------------------------
# The defaults live here; the clients' methods take the same keywords (typed by the *Args dicts).


@dataclass(slots=True, frozen=True)
class Exchange(Generic[T]):
    """A request and the parser of its answer: the sync client sends it, the async one awaits it."""

    call: Call
    parse: Callable[[Any], T]
    #: the answer is one page of this list (issue 29): the client asks for the next pages and joins them
    pages: str | None = None


#: rows the clients ask for per page of a list (the server's most)
PAGE = 1000


def paged(path: str, key: str, parse: Callable[[Any], T]) -> Exchange[T]:
    """A whole list, asked for a page at a time (`more` gives each next call)."""
    return Exchange(Call("GET", f"{path}?limit={PAGE}"), parse, pages=key)


def more(exchange: Exchange[Any], body: Any) -> Call | None:
    """The call for the page after `body`, or None when it was the last."""
    cursor = body.get("next_cursor") if exchange.pages and isinstance(body, dict) else None
    if not cursor:
        return None
    return Call("GET", f"{exchange.call.path}&cursor={quote(cursor, safe='')}")


def joined(exchange: Exchange[Any], body: dict[str, Any], page: dict[str, Any]) -> dict[str, Any]:
    key = exchange.pages or ""
    return {**page, key: [*body[key], *page[key]]}


class ExtractArgs(TypedDict, total=False):
    fmt: Format | None
    threshold: float | None
    return_face_data: bool
    return_landmarks: bool
    extract_embedding: bool
    extract_ga: bool
    detect_masks: bool
    embed_only: bool
    limit_faces: int
    min_face_size: float
    max_size: Sequence[int] | None
    verbose_timings: bool


def extract(
    images: ImageLike | Sequence[ImageLike],
    default_fmt: Format,
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
) -> Exchange[results.ExtractResult]:
    options = locals_options(locals())
    fmt = fmt or default_fmt
    data, urls, order = split_images(images)
    body = {k: v for k, v in options.items() if v is not None}
    body["images"] = images_field(data, urls, fmt)
    body["api_ver"] = "2"  # typed results need the envelope, also when max_size is given
    body.setdefault("face_fields", "facerest")  # gender as a word, only the fields asked for
    return Exchange(Call("POST", "/extract", body, fmt), lambda answer: results.parse_extract(answer, order))


class DrawArgs(TypedDict, total=False):
    threshold: float | None
    draw_landmarks: bool
    draw_scores: bool
    draw_sizes: bool
    limit_faces: int
    min_face_size: float


def draw(
    image: ImageLike,
    *,
    threshold: float | None = None,
    draw_landmarks: bool = True,
    draw_scores: bool = True,
    draw_sizes: bool = True,
    limit_faces: int = 0,
    min_face_size: float = 0,
) -> Exchange[bytes]:
    options = locals_options(locals(), skip=("image",))
    data, urls, _ = split_images(image)
    body = {k: v for k, v in options.items() if v is not None}
    body["images"] = images_field(data, urls, "json")
    return Exchange(Call("POST", "/draw_detections", body), _as_is)


def info() -> Exchange[results.Info]:
    return Exchange(Call("GET", "/info"), results.parse_info)


def health() -> Exchange[results.Health]:
    return Exchange(Call("GET", "/health", retry=False), results.parse_health)


class EnrolArgs(TypedDict, total=False):
    embeddings: Sequence[Sequence[float] | np.ndarray] | None
    all_faces: bool


def enrol(
    gallery: str,
    subject: str,
    images: ImageLike | Sequence[ImageLike] | None = None,
    *,
    embeddings: Sequence[Sequence[float] | np.ndarray] | None = None,
    all_faces: bool = False,
) -> Exchange[results.Enrolment]:
    fields, _ = gallery_images(images)
    body: dict[str, Any] = {"images": fields or {}, "all_faces": all_faces}
    if embeddings is not None:
        body["embeddings"] = embeddings_field(embeddings)
    return Exchange(Call("POST", f"{subject_path(gallery, subject)}/faces", body), results.parse_enrolment)


def galleries() -> Exchange[list[results.GalleryInfo]]:
    return paged("/galleries", "galleries", results.parse_galleries)


def delete_gallery(gallery: str) -> Exchange[None]:
    return Exchange(Call("DELETE", gallery_path(gallery)), _nothing)


def subjects(gallery: str) -> Exchange[list[results.SubjectSummary]]:
    return paged(f"{gallery_path(gallery)}/subjects", "subjects", results.parse_subjects)


def subject(gallery: str, subject: str) -> Exchange[results.SubjectDetail]:
    return paged(subject_path(gallery, subject), "faces", results.parse_subject)


def rename_subject(gallery: str, subject: str, new_name: str) -> Exchange[None]:
    return Exchange(Call("PATCH", subject_path(gallery, subject), {"new_name": new_name}), _nothing)


def delete_subject(gallery: str, subject: str) -> Exchange[None]:
    return Exchange(Call("DELETE", subject_path(gallery, subject)), _nothing)


def delete_face(gallery: str, face_id: str) -> Exchange[None]:
    path = f"{gallery_path(gallery)}/faces/{quote_segment(str(face_id))}"
    return Exchange(Call("DELETE", path), _nothing)


class SearchArgs(TypedDict, total=False):
    embeddings: Sequence[Sequence[float] | np.ndarray] | None
    top_k: int
    threshold: float | None


def search(
    gallery: str,
    images: ImageLike | Sequence[ImageLike] | None = None,
    *,
    embeddings: Sequence[Sequence[float] | np.ndarray] | None = None,
    top_k: int = 5,
    threshold: float | None = None,
) -> Exchange[results.SearchResult]:
    fields, order = gallery_images(images)
    body: dict[str, Any] = {"images": fields or {}, "top_k": top_k, "threshold": threshold}
    if embeddings is not None:
        body["embeddings"] = embeddings_field(embeddings)
    call = Call("POST", f"{gallery_path(gallery)}/search", body)
    return Exchange(call, lambda answer: results.parse_search(answer, order))


class VerifyArgs(TypedDict, total=False):
    embeddings: Sequence[Sequence[float] | np.ndarray] | None
    gallery: str | None
    subject: str | None
    threshold: float | None


def verify(
    images: Sequence[ImageLike] | None = None,
    *,
    embeddings: Sequence[Sequence[float] | np.ndarray] | None = None,
    gallery: str | None = None,
    subject: str | None = None,
    threshold: float | None = None,
) -> Exchange[results.Verification]:
    body: dict[str, Any] = {}
    if images is not None:
        data, urls, _ = split_images(images)
        if data and urls:
            raise InvalidImage("verify takes images all as data or all as URLs, not a mix")
        body["images"] = images_field(data, urls, "json")
    if embeddings is not None:
        body["embeddings"] = embeddings_field(embeddings)
    if gallery is not None:
        body["gallery"], body["subject"] = gallery, subject
    if threshold is not None:
        body["threshold"] = threshold
    return Exchange(Call("POST", "/verify", body), results.parse_verification)
