"""Several GPUs behind one port: one uvicorn master per GPU, all accepting on one socket.

`facerest serve` with FACEREST_GPUS=0,1 binds host:port once, then starts one process group per
GPU with CUDA_VISIBLE_DEVICES set to that GPU; each group builds its TensorRT engines (once, before
its workers exist) and runs FACEREST_WORKERS uvicorn workers that inherit the listening socket.
The kernel hands each new connection to whichever worker accepts first, so the GPUs share the
load without a proxy. Each process sees exactly one GPU as device 0, which is why provider options
never need a per-worker device id.

Why not worker index -> device: uvicorn's workers do not know their index and are restarted under
new pids; the environment of a process group is fixed at its start and survives restarts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facerest.config import Settings

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def group_environment(base: dict[str, str], gpu: int) -> dict[str, str]:
    env = dict(base)
    env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    # in PCI order, so FACEREST_GPUS means what nvidia-smi shows
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def serve_on_gpus(settings: Settings) -> int:
    """Run one process group per GPU until a signal or a group's death; returns the exit status."""
    sock = bind_socket(settings.host, settings.port)
    groups: list[subprocess.Popen] = []
    for gpu in settings.gpus:
        command = [
            sys.executable,
            "-m",
            "facerest.serving.gpus",
            "--fd",
            str(sock.fileno()),
            "--gpu",
            str(gpu),
        ]
        groups.append(
            subprocess.Popen(command, env=group_environment(dict(os.environ), gpu), pass_fds=[sock.fileno()])
        )
        log.info("GPU %d: %d worker(s), process group %d", gpu, settings.workers, groups[-1].pid)
    sock.close()  # the groups hold it now

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for group in groups:
            if group.poll() is None:
                group.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while any(g.poll() is None for g in groups):
        dead = [g for g in groups if g.poll() is not None]
        if dead and not stopping:
            # one GPU's group is gone: stop the rest so the supervisor (docker, systemd) restarts all
            log.error("a GPU process group exited with %s; stopping the others", dead[0].returncode)
            status = dead[0].returncode or 1
            forward(signal.SIGTERM, None)
        time.sleep(0.5)
    if not stopping and status == 0:  # every group was gone before the first look (a start failure)
        status = next((g.returncode for g in groups if g.returncode), 0)
    return status


def serve_group(fd: int, gpu: int) -> None:
    """One GPU's uvicorn master: engines first, then the workers on the inherited socket."""
    from facerest.config import Settings
    from facerest.errors import FaceRestError
    from facerest.logs import configure_logging
    from facerest.preparation import prepare_runtime_apart
    from facerest.serving.workers import serve_workers

    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    try:  # in a child: this process only supervises and must not hold a CUDA context
        prepare_runtime_apart(settings)
    except FaceRestError as exc:
        print(f"error: GPU {gpu}: {exc.detail}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    sock = socket.socket(fileno=fd)  # family and type come from the descriptor
    log.info("GPU %d group serving with %d worker(s)", gpu, settings.workers)
    sys.exit(serve_workers(settings, sock))


def main() -> None:
    parser = argparse.ArgumentParser(description="one GPU's process group (started by `facerest serve`)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--gpu", type=int, required=True)
    args = parser.parse_args()
    serve_group(args.fd, args.gpu)


if __name__ == "__main__":
    main()
