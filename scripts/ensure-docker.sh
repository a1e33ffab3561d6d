#!/usr/bin/env bash
# A Docker engine for the CPU image test (tests/test_deploy.py::test_cpu_image_builds_and_serves):
# installs Debian's docker.io (dockerd, containerd, runc) and debootstrap when missing, and starts
# dockerd when no engine answers. Never fails the build: where the engine cannot run, the test
# skips and says why; this script writes the reason to $REASON_FILE, which the test quotes.
#
# No registry is needed: deploy/local-base-image.sh debootstraps the base image from the Debian
# mirror (the test runs it when facerest-base:bookworm is absent).
#
# In a container without its own network stack, dockerd is started without iptables and without
# its bridge (the test runs the image with --network host); the storage driver falls back from
# overlay2 to vfs where overlay mounts are refused.
set -u
REASON_FILE=${REASON_FILE:-/tmp/facerest-docker-unavailable}
LOG=${DOCKERD_LOG:-/tmp/facerest-dockerd.log}
rm -f "$REASON_FILE"

say_why() {
    echo "ensure-docker: $1; the Docker image test will skip" >&2
    echo "$1" >"$REASON_FILE"
    exit 0
}

engine_answers() {
    timeout 20 docker info --format '{{.ServerVersion}}' >/dev/null 2>&1
}

if command -v docker >/dev/null 2>&1 && engine_answers; then
    exit 0
fi

. "$(dirname "$0")/privileges.sh"
choose_sudo || say_why "not root and no passwordless sudo: cannot install or start dockerd"

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say_why "no dockerd and no apt-get to install Debian's docker.io"
    fi
    echo "ensure-docker: installing Debian's docker.io and debootstrap (once)" >&2
    if ! { $SUDO apt-get $APT_WAIT update -qq \
            && $SUDO apt-get $APT_WAIT install -y -qq --no-install-recommends docker.io debootstrap; } \
            >/tmp/ensure-docker-apt.log 2>&1; then
        say_why "apt-get install docker.io failed (see /tmp/ensure-docker-apt.log)"
    fi
fi

start_dockerd() {  # $1: storage driver
    echo "ensure-docker: starting dockerd (storage driver $1, log $LOG)" >&2
    # setsid: the engine outlives this script (and make); it is left running for later runs
    $SUDO setsid dockerd --storage-driver "$1" --iptables=false --bridge=none >"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 30); do
        if engine_answers; then
            return 0
        fi
        if ! kill -0 $! 2>/dev/null; then
            return 1
        fi
        sleep 1
    done
    return 1
}

if start_dockerd overlay2; then
    exit 0
fi
$SUDO pkill -F /var/run/docker.pid 2>/dev/null
sleep 1
if start_dockerd vfs; then
    exit 0
fi
say_why "dockerd did not start: $(grep -E 'level=(fatal|error)' "$LOG" | tail -1 | cut -c1-300)"
