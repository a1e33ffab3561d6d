"""The facerest REST app as a Ray Serve deployment: N replicas, optional autoscaling.

Each replica is the same FastAPI app `facerest serve` runs (same routes, same pipeline, its own
models and inference scheduler), built inside the replica; Ray's proxy spreads requests over the
replicas and the autoscaler adds or removes them between FACEREST_RAY_REPLICAS and
FACEREST_RAY_MAX_REPLICAS, aiming at FACEREST_RAY_TARGET_REQUESTS ongoing requests each.
Every answer carries `X-Facerest-Replica`, the Ray replica that served it.

    facerest ray serve                      # a local Ray instance, or FACEREST_RAY_ADDRESS
    serve run facerest.serving.ray_serve:app        # the Ray CLI (settings from the environment)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from facerest.config import Settings
from facerest.errors import BackendUnavailable

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "facerest"
APP_NAME = "facerest"


def _replica_app(settings_data: dict[str, Any]) -> Callable[[], FastAPI]:
    """A builder Ray calls inside each replica (the app and its models are never pickled)."""

    def build() -> FastAPI:
        from fastapi import Request, Response
        from ray import serve

        from facerest.api.app import create_app
        from facerest.logs import configure_logging

        settings = Settings.model_validate(settings_data)
        configure_logging(settings.log_level, json_lines=settings.log_json)
        app = create_app(settings)
        replica = serve.get_replica_context().replica_id.unique_id

        @app.middleware("http")
        async def tag_replica(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            response = await call_next(request)
            response.headers["X-Facerest-Replica"] = replica
            return response

        return app

    return build


def autoscaling(settings: Settings) -> dict[str, Any] | None:
    if settings.ray_max_replicas <= settings.ray_replicas:
        return None
    return {
        "min_replicas": settings.ray_replicas,
        "initial_replicas": settings.ray_replicas,
        "max_replicas": settings.ray_max_replicas,
        "target_ongoing_requests": settings.ray_target_requests,
    }


def build_application(settings: Settings) -> Application:
    try:
        from ray import serve
    except ImportError as exc:
        raise BackendUnavailable(f"Ray Serve is not installed ({exc}); install `facerest[ray]`") from exc
    # each replica's inference session uses the CPUs Ray reserves for it, no more
    replica_settings = settings.model_copy(update={"threads": max(1, math.floor(settings.ray_replica_cpus))})
    scaling = autoscaling(settings)
    deployment = serve.deployment(
        serve.ingress(_replica_app(replica_settings.model_dump(mode="json")))(type("FaceRest", (), {})),
        name=DEPLOYMENT_NAME,
        num_replicas=None if scaling else settings.ray_replicas,
        autoscaling_config=scaling,
        max_ongoing_requests=settings.queue_size,
        ray_actor_options={"num_cpus": settings.ray_replica_cpus, "num_gpus": settings.ray_replica_gpus},
        health_check_period_s=10,
    )
    return deployment.bind()


def run(settings: Settings, *, blocking: bool = True, local_cpus: int | None = None) -> None:
    """Start (or join) Ray, deploy the app on host:port; block until interrupted when asked to."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address, include_dashboard=False)
        else:
            need = math.ceil(
                settings.ray_replica_cpus * max(settings.ray_replicas, settings.ray_max_replicas)
            )
            ray.init(
                num_cpus=local_cpus or need,
                include_dashboard=False,
                # the images travel over HTTP, not through the object store: keep it small
                object_store_memory=256 << 20,
            )
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_application(settings), name=APP_NAME, route_prefix="/", blocking=False)
    log.info(
        "facerest on Ray Serve at http://%s:%d (%d replicas)",
        settings.host,
        settings.port,
        settings.ray_replicas,
    )
    if not blocking:
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


def __getattr__(name: str) -> Any:
    # `serve run facerest.serving.ray_serve:app` (settings from the environment); built on first access
    if name == "app":
        return build_application(Settings())
    raise AttributeError(name)
