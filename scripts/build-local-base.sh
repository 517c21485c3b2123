#!/usr/bin/env bash
# Build a local Debian 12 + Python 3.11 base image without any image registry:
#   debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm ROOTFS
#   tar -C ROOTFS -c . | docker import - TAG
# For machines where `FROM python:3.11-slim-bookworm` cannot be pulled; pass the result as
# `--build-arg BASE_IMAGE=TAG`. Skipped when TAG already exists. Needs root (debootstrap, chroot).
# Usage: scripts/build-local-base.sh [TAG]   (default local/debian-py:bookworm; uses DOCKER_HOST)
set -euo pipefail
tag=${1:-local/debian-py:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag exists: skipped" >&2
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "installing debootstrap ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >&2
fi

rootfs=$(mktemp -d /var/tmp/fcn8s-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
start=$(date +%s)
echo "debootstrap bookworm into $rootfs (about a minute) ..." >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >&2
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$tag" >&2
echo "base image $tag built in $(( $(date +%s) - start )) s" >&2
