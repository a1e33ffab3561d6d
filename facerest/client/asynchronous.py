"""`AsyncClient`: the same calls as `Client`, awaitable; every call is built by facerest.client.calls."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any, TypeVar, Unpack

import httpx

from facerest.client import calls, results
from facerest.client.base import CONNECTION_LIMITS, BaseClient
from facerest.client.calls import Call, DrawArgs, EnrolArgs, Exchange, ExtractArgs, SearchArgs, VerifyArgs
from facerest.client.errors import Overloaded
from facerest.client.images import ImageLike

T = TypeVar("T")


class AsyncClient(BaseClient):
    """The same calls as `Client`, awaitable; use `async with` or `await aclose()`."""

    def __init__(self, base_url: str = "http://localhost:18081", **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, headers=self.headers, limits=CONNECTION_LIMITS
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
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

    async def _run(self, exchange: Exchange[T]) -> T:
        body = await self._send(exchange.call)
        while (call := calls.more(exchange, body)) is not None:  # a list: every page of it
            body = calls.joined(exchange, body, await self._send(call))
        return exchange.parse(body)

    # service

    async def extract(
        self, images: ImageLike | Sequence[ImageLike], **options: Unpack[ExtractArgs]
    ) -> results.ExtractResult:
        """Faces of every image, in the order given; a bad image fails alone (`status == "failed"`).

        Keywords (defaults in facerest.client.calls.extract): fmt, threshold, return_face_data,
        return_landmarks, extract_embedding, extract_ga, detect_masks, embed_only, limit_faces,
        min_face_size, max_size, verbose_timings; any other keyword goes into the body as is.
        """
        return await self._run(calls.extract(images, self.fmt, **options))

    async def draw(self, image: ImageLike, **options: Unpack[DrawArgs]) -> bytes:
        """JPEG of the image with the detected faces drawn on it."""
        return await self._run(calls.draw(image, **options))

    async def info(self) -> results.Info:
        return await self._run(calls.info())

    async def health(self) -> results.Health:
        """Readiness; a server that is up but not ready gives `ok=False` rather than an exception."""
        try:
            return await self._run(calls.health())
        except Overloaded as exc:
            return results.unavailable_health(exc.detail)

    # gallery

    async def enrol(
        self,
        gallery: str,
        subject: str,
        images: ImageLike | Sequence[ImageLike] | None = None,
        **options: Unpack[EnrolArgs],
    ) -> results.Enrolment:
        """Add the face(s) of each image (or the given `embeddings`) to `subject` in `gallery`."""
        return await self._run(calls.enrol(gallery, subject, images, **options))

    enroll = enrol

    async def galleries(self) -> list[results.GalleryInfo]:
        return await self._run(calls.galleries())

    async def delete_gallery(self, gallery: str) -> None:
        await self._run(calls.delete_gallery(gallery))

    async def subjects(self, gallery: str) -> list[results.SubjectSummary]:
        return await self._run(calls.subjects(gallery))

    async def subject(self, gallery: str, subject: str) -> results.SubjectDetail:
        return await self._run(calls.subject(gallery, subject))

    async def rename_subject(self, gallery: str, subject: str, new_name: str) -> None:
        await self._run(calls.rename_subject(gallery, subject, new_name))

    async def delete_subject(self, gallery: str, subject: str) -> None:
        await self._run(calls.delete_subject(gallery, subject))

    async def delete_face(self, gallery: str, face_id: str) -> None:
        await self._run(calls.delete_face(gallery, face_id))

    async def search(
        self,
        gallery: str,
        images: ImageLike | Sequence[ImageLike] | None = None,
        **options: Unpack[SearchArgs],
    ) -> results.SearchResult:
        """Who is in each image: per face, the best subject above the threshold and the top matches."""
        return await self._run(calls.search(gallery, images, **options))

    async def verify(
        self, images: Sequence[ImageLike] | None = None, **options: Unpack[VerifyArgs]
    ) -> results.Verification:
        """Same person? Two images, two embeddings, or one image against a gallery subject."""
        return await self._run(calls.verify(images, **options))
