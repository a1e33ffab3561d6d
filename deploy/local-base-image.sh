#!/usr/bin/env bash
# Make a Debian base image without any registry: debootstrap a minimal bookworm with Python 3.11
# and import it into the local Docker engine. For machines that reach a Debian mirror and PyPI
# but no container registry (the Dockerfiles take it as BASE_IMAGE):
#
#   sudo deploy/local-base-image.sh [TAG]          # default tag: facerest-base:bookworm
#   docker build --network host --build-arg BASE_IMAGE=facerest-base:bookworm -f deploy/Dockerfile.cpu .
#
# The host's CA bundle goes into the image, so pip inside a build trusts what the host trusts
# (a TLS-inspecting proxy's certificate included).
set -euo pipefail
tag=${1:-facerest-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >&2
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$tag"
