"""`facerest serve` on one machine: uvicorn's master and FACEREST_WORKERS worker processes."""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from facerest.api.http_protocol import uvicorn_options
from facerest.config import Settings
from facerest.logs import uvicorn_log_config

#: uvicorn's exit status for a worker that could not start (its lifespan failed)
STARTUP_FAILED = 3


def serve_workers(settings: Settings, sock: socket.socket | None = None) -> int:
    """Run the API until stopped; each worker builds its app (and loads the models) itself.
    `sock`: a listening socket to serve on (a GPU group's inherited one) instead of host:port.
    Returns the exit status: 0 after serving, STARTUP_FAILED when a worker could not start."""
    config = uvicorn.Config(
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
        **uvicorn_options(settings),  # head size, read timeouts, connection cap (issue 14)
    )
    sockets = [sock] if sock is not None else None
    if settings.workers == 1:
        server = uvicorn.Server(config)
        server.run(sockets=sockets)  # a failed start: the lifespan logged its one `error:` line
        return 0 if server.started else STARTUP_FAILED
    supervisor = Multiprocess(config, sockets=sockets or [config.bind_socket()])
    supervisor.run()
    # uvicorn's supervisor stops when a worker fails to start, but exits 0: say it did not serve
    if any(process.exitcode == STARTUP_FAILED for process in supervisor.processes):
        return STARTUP_FAILED
    return 0
