"""GPU work at start (the GPU check, engine builds) in a child process, so a supervisor never
holds a CUDA context.

A process that touches CUDA keeps a context of ~300-500 MB on its GPU until it exits. The
process that starts the workers (uvicorn's master, or `facerest serve`'s per-GPU group) only
waits on them, so the engine builds and checks run in a short-lived spawned child instead.
"""

from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING

from facerest.config import Settings
from facerest.errors import BackendUnavailable, FaceRestError
from facerest.preparation.stage import prepare_runtime
from facerest.runtime.gpu import uses_gpu

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


def _child(values: dict[str, object], reply: Connection) -> None:
    try:
        prepare_runtime(Settings(**values))  # every field given: exactly the parent's settings
    except FaceRestError as exc:
        reply.send(exc.detail)
        raise SystemExit(1) from None
    reply.send("")


def prepare_runtime_apart(settings: Settings) -> None:
    """`prepare_runtime` (GPU check, engine builds), in a spawned child when it touches the GPU,
    so this process (which goes on to supervise workers) never creates a CUDA context. Raises
    BackendUnavailable with the child's one-line reason when it fails."""
    if not uses_gpu(settings):
        prepare_runtime(settings)
        return
    # spawn, not fork: a fresh interpreter that inherits the environment (CUDA_VISIBLE_DEVICES)
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(settings.model_dump(), send), name="facerest-prepare-gpu")
    child.start()
    send.close()
    try:
        message = receive.recv()
    except EOFError:  # died before answering (killed, or crashed inside a driver)
        message = ""
    child.join()
    if message or child.exitcode:
        raise BackendUnavailable(message or f"preparing the GPU runtime failed (exit {child.exitcode})")
