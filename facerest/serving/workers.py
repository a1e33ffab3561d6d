"""`facerest serve` on one machine: uvicorn's master and FACEREST_WORKERS worker processes."""

from __future__ import annotations

import uvicorn

from facerest.config import Settings
from facerest.logs import uvicorn_log_config


def serve_workers(settings: Settings) -> None:
    """Run the API until stopped; each worker builds its app (and loads the models) itself."""
    uvicorn.run(
        "facerest.api.app:factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_level, settings.log_json),
        access_log=False,  # facerest.access logs every request, with its latency and request id
        timeout_graceful_shutdown=int(settings.request_timeout_s),
        proxy_headers=True,
    )
